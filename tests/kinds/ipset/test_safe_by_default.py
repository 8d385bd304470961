"""Issue 13, the ipset kind safe by default, through the real command line and the kernel.

Every test runs ``reconcile`` inside a network namespace it creates (``ip netns exec``) with
real sets and iptables rules, and checks the outcome with the standard tools: ``ipset test``
(is the SSH client still in the set?), ``ipset save`` and ``iptables-{nft,legacy} -S`` (is its
rule still there?). The lockout tests run twice: with ``iptables`` on nf_tables (Debian's
default) and, through a ``PATH`` of symlinks, on the legacy backend.

* git without any ipsets (a wrong ``--repo``) deletes nothing without ``--allow-empty``;
* a set an ACCEPT rule we manage uses is deleted only when git marks it ``absent: true``;
* the anti-lockout guard judges the whole plan, and each walk-around of issue 13 (a timer run,
  a rename, a user chain, an IPv4-mapped client, a rule of the other backend) is refused with
  the client still accepted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import desired as desired_mod
from reconciler import engine
from reconciler import kinds as registry
from reconciler.errors import ProviderError
from reconciler.kinds.base import Context
from reconciler.kinds.ipset.provider import IpsetProvider
from reconciler.plan import Change, Op
from reconciler.state import StateDir
from tests import clirun
from tests.kinds.ipset.test_kernel import Host
from tests.netns import Netns, require_kernel_lab

pytestmark = pytest.mark.kernel

CLIENT = "198.51.100.200"
SSH = {"SSH_CONNECTION": f"{CLIENT} 50000 192.0.2.1 22"}
SSH_MAPPED = {"SSH_CONNECTION": f"::ffff:{CLIENT} 50000 ::ffff:192.0.2.1 22"}

MGMT = """\
  mgmt:
    type: hash:net
    members: [192.0.2.0/24, 198.51.100.128/25]
    firewall: {chain: INPUT, in_interface: eth0, target: ACCEPT}
"""
OTHER = """\
  other:
    type: hash:net
    members: [203.0.113.0/24]
"""
MGMT_RULE = "-A INPUT -i eth0 -m set --match-set mgmt src -j ACCEPT"


def fleet(*sets: str) -> str:
    """A fleet.yaml with these ``ipsets:`` entries."""
    return "ipsets:\n" + "".join(sets)


class Lab(Host):
    """One host under test whose ``iptables`` uses ``backend`` (nft or legacy)."""

    def __init__(self, ns: Netns, root: Path, backend: str) -> None:
        super().__init__(ns, root)
        self.backend = backend
        self.other = "legacy" if backend == "nft" else "nft"
        self.env: dict[str, str] = {}
        if backend == "legacy":
            # Debian's alternatives, for this run only: iptables & co. are the legacy ones.
            bindir = root / "bin"
            bindir.mkdir()
            for tool in ("iptables", "ip6tables"):
                for suffix in ("", "-save", "-restore"):
                    target = shutil.which(f"{tool}-legacy{suffix}")
                    assert target is not None, f"{tool}-legacy{suffix} is not installed"
                    (bindir / f"{tool}{suffix}").symlink_to(target)
            self.env["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"

    def reconcile(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real command line in the namespace, with this lab's iptables backend."""
        return super().reconcile(*args, env={**self.env, **(env or {})})

    def iptables(self, *args: str, other: bool = False) -> str:
        """``iptables-<backend> ARGS`` (the other backend's with ``other``) in the namespace."""
        backend = self.other if other else self.backend
        return self.ns.run([f"iptables-{backend}", *args]).stdout

    def rules(self) -> str:
        """The filter table of the backend reconciler writes with (``-S``)."""
        return self.iptables("-S")

    def accepted(self, set_name: str, address: str = CLIENT) -> bool:
        """The kernel's answer: is ``address`` in ``set_name`` (``ipset test``)?"""
        return self.ns.run(["ipset", "test", set_name, address], check=False).returncode == 0

    def converge(self, text: str, *args: str) -> None:
        """Write fleet.yaml and apply it without an SSH client; it must succeed."""
        self.write(text)
        proc = self.apply(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(params=["nft", "legacy"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """A host in a fresh namespace whose iptables is ``nft`` or ``legacy``."""
    require_kernel_lab(("ip", "ipset", "iptables-nft", "iptables-legacy", "iptables-nft-save",
                        "iptables-legacy-save"))  # fmt: skip
    ns = Netns()
    try:
        yield Lab(ns, tmp_path, request.param)
    finally:
        ns.delete()


@pytest.fixture
def nft_lab(tmp_path: Path) -> Iterator[Lab]:
    """A host in a fresh namespace with Debian's default backend (nf_tables)."""
    require_kernel_lab(("ip", "ipset", "iptables-nft", "iptables-legacy"))
    ns = Netns()
    try:
        yield Lab(ns, tmp_path, "nft")
    finally:
        ns.delete()


def refused(plan: dict[str, Any]) -> dict[str, str]:
    """The refused changes of a JSON plan: address -> reason."""
    return {c["address"]: c["refused"] for c in plan["changes"] if c.get("refused")}


def cli_knows(option: str) -> bool:
    """True when ``reconcile --help`` lists ``option``."""
    return option in clirun.reconcile("--help").stdout


# ------------------------------------------------------------------ 1. no pruning of everything
def test_git_without_ipsets_deletes_nothing_without_allow_empty(nft_lab: Lab) -> None:
    lab = nft_lab
    blocklist = (
        "  blocklist:\n    type: hash:net\n    members: [203.0.113.0/24]\n"
        "    firewall: {chain: INPUT, target: DROP}\n"
    )
    lab.converge(fleet(blocklist, OTHER))
    before = (lab.ns.ipset_save(), lab.rules())

    lab.write("ipsets: {}\n")  # what a --repo pointing at the wrong directory looks like
    code, plan = lab.plan()
    assert code == 1
    reasons = refused(plan)
    assert sorted(reasons) == ["ipset/blocklist", "ipset/other"]
    assert all("git declares no ipsets" in r and "--allow-empty" in r for r in reasons.values())
    for args in ((), ("--force",)):  # --force is not --allow-empty
        proc = lab.apply(*args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "REFUSED" in proc.stdout and "--allow-empty" in proc.stdout
        assert (lab.ns.ipset_save(), lab.rules()) == before

    if not cli_knows("--allow-empty"):
        pytest.skip("reconcile has no --allow-empty option yet (reconciler/cli/apply.py)")
    proc = lab.apply("--allow-empty")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lab.ns.ipset_save() == ""
    assert "match-set" not in lab.rules()


def test_allow_empty_through_the_kind_factory(nft_lab: Lab) -> None:
    """``Context.allow_empty`` reaches the provider built by the ipset kind: with it, the
    engine applies the deletions of a git without ipsets (the CLI's --allow-empty sets it)."""
    lab = nft_lab
    lab.converge(fleet(OTHER))
    lab.write("ipsets: {}\n")
    desired = desired_mod.load_host(lab.repo, "h1")
    state = StateDir(lab.state)
    for allow in (False, True):
        provider = registry.get("ipset").provider(Context(state=state, allow_empty=allow))
        assert provider is not None
        with lab.ns.entered():
            plan, _ = engine.make_plan(desired, [provider])
            result = engine.apply_plan(desired, [provider], plan, None)
        assert [c.address for c in plan.changes] == ["ipset/other"]
        assert bool(plan.changes[0].refused) is not allow
        assert result.ok is allow
        assert ("other" in lab.ns.ipset_save()) is not allow


# ------------------------------------------------- 2. deleting access needs intent (tombstone)
def test_set_with_accept_rule_is_deleted_only_by_a_tombstone(lab: Lab) -> None:
    """Walk-around (a): a timer run (no SSH client) where mgmt vanished from git."""
    lab.converge(fleet(MGMT, OTHER))
    assert MGMT_RULE in lab.rules()

    lab.write(fleet(OTHER))  # mgmt merely left git
    code, plan = lab.plan()
    assert code == 1
    assert refused(plan)["ipset/mgmt"].startswith(
        "ipset/mgmt left git but an ACCEPT rule we manage uses it; mark it `absent: true` to "
        "delete it"
    )
    for args in ((), ("--force",)):  # intent is not --force
        proc = lab.apply(*args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "mark it `absent: true`" in proc.stdout
        assert lab.accepted("mgmt") and MGMT_RULE in lab.rules()

    lab.write(fleet(OTHER, "  mgmt: {absent: true}\n"))  # the tombstone: no type, no members
    code, plan = lab.plan()
    assert code == 2 and refused(plan) == {}
    lab.converge(fleet(OTHER, "  mgmt: {absent: true}\n"))
    assert "mgmt" not in lab.ns.ipset_save()
    assert "match-set mgmt" not in lab.rules()
    # The tombstone of a set that no longer exists is a no-op.
    code, plan = lab.plan()
    assert (code, plan["changes"], plan["errors"]) == (0, [], [])


# --------------------------------------------------------- 3. the guard judges the whole plan
def test_rename_to_a_set_without_the_client_is_refused(lab: Lab) -> None:
    """Walk-around (b): mgmt becomes mgmt2, which does not hold the SSH client."""
    lab.converge(fleet(MGMT))
    mgmt2 = (
        "  mgmt2:\n    type: hash:net\n    members: [192.0.2.0/24]\n"
        "    firewall: {chain: INPUT, in_interface: eth0, target: ACCEPT}\n"
    )
    for tomb in ("", "  mgmt: {absent: true}\n"):  # vanished, or tombstoned
        lab.write(fleet(mgmt2, tomb))
        proc = lab.apply(env=SSH)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "REFUSED" in proc.stdout
        assert lab.accepted("mgmt") and MGMT_RULE in lab.rules()
    code, plan = lab.plan(env=SSH)
    assert code == 1
    assert f"deleting set mgmt would drop {CLIENT}" in refused(plan)["ipset/mgmt"]
    assert not lab.accepted("mgmt2")  # the new set was made, without the client

    # The same rename with the client in the new set goes through, new set first.
    lab.write(fleet(mgmt2.replace("[192.0.2.0/24]", "[192.0.2.0/24, 198.51.100.0/24]"),
                    "  mgmt: {absent: true}\n"))  # fmt: skip
    code, plan = lab.plan(env=SSH)
    assert code == 2 and refused(plan) == {}
    assert [c["address"] for c in plan["changes"]] == ["ipset/mgmt2", "ipset/mgmt"]
    assert plan["changes"][1]["ops"][0]["op"] == "require_applied"
    proc = lab.apply(env=SSH)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lab.accepted("mgmt2") and "match-set mgmt2 src -j ACCEPT" in lab.rules()
    assert "create mgmt " not in lab.ns.ipset_save() and MGMT_RULE not in lab.rules()


@pytest.mark.parametrize("via", ["jump", "rule_in_user_chain"])
def test_accept_through_a_user_chain_is_guarded(lab: Lab, via: str) -> None:
    """Walk-around (c): the rule jumps to a user chain that ACCEPTs (or sits in a user chain
    INPUT jumps to); dropping the client's network from the set is refused."""
    if via == "jump":
        lab.iptables("-N", "MGMT_OK")
        lab.iptables("-A", "MGMT_OK", "-j", "ACCEPT")
        fw = "{chain: INPUT, target: MGMT_OK}"
        rule = "-A INPUT -m set --match-set mgmt src -j MGMT_OK"
    else:
        lab.iptables("-N", "MGMT_IN")
        lab.iptables("-A", "INPUT", "-j", "MGMT_IN")
        fw = "{chain: MGMT_IN, target: ACCEPT}"
        rule = "-A MGMT_IN -m set --match-set mgmt src -j ACCEPT"
    text = fleet(
        "  mgmt:\n    type: hash:net\n    members: [192.0.2.0/24, 198.51.100.128/25]\n"
        f"    firewall: {fw}\n"
    )
    lab.converge(text)
    assert rule in lab.rules()
    lab.write(text.replace(", 198.51.100.128/25", ""))
    code, plan = lab.plan(env=SSH)
    assert code == 1
    assert f"would drop {CLIENT}" in refused(plan)["ipset/mgmt"]
    proc = lab.apply(env=SSH)
    assert proc.returncode == 1
    assert lab.accepted("mgmt") and rule in lab.rules()
    # Without the client it is no walk-around, just a change.
    assert lab.apply().returncode == 0
    assert not lab.accepted("mgmt")


def test_ipv4_mapped_client_is_guarded(lab: Lab) -> None:
    """Walk-around (d): SSH_CONNECTION names the client as ::ffff:198.51.100.200."""
    lab.converge(fleet(MGMT))
    lab.write(fleet(MGMT.replace(", 198.51.100.128/25", "")))
    code, plan = lab.plan(env=SSH_MAPPED)
    assert code == 1
    assert (
        f"would drop {CLIENT}, the address of the current SSH client" in refused(plan)["ipset/mgmt"]
    )
    assert lab.apply(env=SSH_MAPPED).returncode == 1
    assert lab.accepted("mgmt") and MGMT_RULE in lab.rules()
    assert lab.apply("--force", env=SSH_MAPPED).returncode == 0
    assert not lab.accepted("mgmt")


def test_set_used_by_a_rule_of_the_other_backend_is_not_managed(lab: Lab) -> None:
    """Walk-around (e): the ACCEPT rule was made with the backend reconciler does not write
    with; both are read, and the set that rule uses is left alone, naming the rule."""
    lab.converge(fleet(MGMT.replace("    firewall: {chain: INPUT, in_interface: eth0, "
                                    "target: ACCEPT}\n", ""), OTHER))  # fmt: skip
    lab.iptables("-I", "INPUT", "-m", "set", "--match-set", "mgmt", "src", "-j", "ACCEPT",
                 other=True)  # fmt: skip
    lab.write(fleet(MGMT.replace(", 198.51.100.128/25", ""),
                    OTHER.replace("203.0.113.0/24", "203.0.113.0/25")))  # fmt: skip
    other = f"iptables-{lab.other}"
    for env, args in ((SSH, ()), ({}, ()), (SSH, ("--force",))):
        code, plan = lab.plan(*args, env=env)
        assert code == 1
        assert [c["address"] for c in plan["changes"]] == ["ipset/other"]
        (error,) = plan["errors"]
        assert error["address"] == "ipset/mgmt"
        assert (
            f"{other} -t filter -A INPUT -m set --match-set mgmt src -j ACCEPT" in error["message"]
        )
    proc = lab.apply(env=SSH)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert other in proc.stdout
    assert lab.accepted("mgmt")
    assert "-A INPUT -m set --match-set mgmt src -j ACCEPT" in lab.iptables("-S", other=True)
    assert lab.ns.ipset_members("other") == {"203.0.113.0/25"}  # the other set converged


def test_removal_waits_for_the_change_that_keeps_the_client_in(netns: Netns) -> None:
    """A removal the guard lets through because the plan gives the client access elsewhere
    starts with ``require_applied``: if that other change did not apply, nothing is removed."""
    netns.run(["ipset", "create", "mgmt", "hash:net"])
    delete = Change(
        "ipset", "mgmt", "delete",
        (Op("require_applied", {"needs": "ipset/mgmt2", "reason": "it keeps the client in"}),
         Op("destroy_set", {"set": "mgmt"})),
        {"type": "hash:net", "family": "inet"},
    )  # fmt: skip
    create = Change(
        "ipset", "mgmt2", "create",
        (Op("create_set", {"set": "mgmt2", "type": "hash:net", "family": "inet",
                           "maxelem": None, "hashsize": None}),
         Op("add_member", {"member": "198.51.100.0/24"})),
        None, {"family": "inet"},
    )  # fmt: skip
    with netns.entered():
        provider = IpsetProvider(None)
        with pytest.raises(ProviderError, match="needs ipset/mgmt2 applied first"):
            provider.apply(delete)
        assert "create mgmt " in netns.ipset_save()
        provider.apply(create)
        assert [o.op for o in provider.apply(delete)] == ["require_applied", "destroy_set"]
    assert "create mgmt " not in netns.ipset_save()
    assert netns.ipset_members("mgmt2") == {"198.51.100.0/24"}


# ------------------------------------------------------------------- 4. host bits are errors
def test_host_bits_apply_nothing(nft_lab: Lab) -> None:
    lab = nft_lab
    lab.write(fleet(MGMT.replace("198.51.100.128/25", "10.10.0.1/24")))
    proc = lab.apply(env=SSH)
    assert proc.returncode == 1
    assert (
        "fleet.yaml:4:29: ipsets.mgmt.members[1]: 10.10.0.1/24: host bits set; "
        "did you mean 10.10.0.1/32 or 10.10.0.0/24?"
    ) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert lab.ns.ipset_save() == "" and "match-set" not in lab.rules()
