"""End-to-end tests of ``reconcile`` for ipsets against the real kernel.

Every test runs the real command line inside a network namespace it creates (``ip netns
exec``), with real ``ipset``/``iptables`` objects, and checks the outcome with the standard
tools (``ipset save``, ``iptables -S``), not with our own reader.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.lock import RunLock
from tests.netns import Netns

pytestmark = pytest.mark.kernel


class Host:
    """A desired-state repo, a state dir and a namespace: one host under test."""

    def __init__(self, ns: Netns, root: Path) -> None:
        self.ns = ns
        self.repo = root / "repo"
        self.state = root / "state"
        self.lock = root / "lock"
        (self.repo / "hosts").mkdir(parents=True)
        (self.repo / "hosts" / "h1.yaml").write_text("{}\n")  # fleet defaults only

    def write(self, fleet: str) -> None:
        (self.repo / "fleet.yaml").write_text(textwrap.dedent(fleet))

    def reconcile(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}
        return self.ns.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "--repo",
                str(self.repo),
                "--host",
                "h1",
                "--state-dir",
                str(self.state),
                "--lock-file",
                str(self.lock),
                "--log-format",
                "json",
                *args,
            ],
            check=False,
            env={**base, **(env or {})},
        )

    def plan(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        proc = self.reconcile(
            "--dry-run", "--detailed-exitcode", "--output", "json", *args, env=env
        )
        assert proc.stdout, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def apply(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.reconcile(*args, env=env)


@pytest.fixture
def host(netns: Netns, tmp_path: Path) -> Host:
    return Host(netns, tmp_path)


MGMT = """\
ipsets:
  mgmt:
    type: hash:net
    family: inet
    maxelem: 65536
    members:
      - 192.0.2.0/24
      - 198.51.100.128/25
      - 203.0.113.7
    firewall: {chain: INPUT, in_interface: eth0, target: ACCEPT}
"""


def test_plan_apply_converges_and_a_bare_address_settles(host: Host) -> None:
    host.write(MGMT)
    code, plan = host.plan()
    assert code == 2
    assert [c["action"] for c in plan["changes"]] == ["create"]
    assert host.ns.ipset_save() == ""  # the dry-run created nothing

    proc = host.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified" in proc.stdout
    assert host.ns.ipset_members("mgmt") == {"192.0.2.0/24", "198.51.100.128/25", "203.0.113.7"}
    assert "create mgmt hash:net family inet hashsize 1024 maxelem 65536" in host.ns.ipset_save()
    assert "-A INPUT -i eth0 -m set --match-set mgmt src -j ACCEPT" in host.ns.iptables_rules()

    # 203.0.113.7 is stored as 203.0.113.7/32: no perpetual diff.
    code, plan = host.plan()
    assert (code, plan["changes"], plan["errors"]) == (0, [], [])
    # A second apply makes no change and inserts no duplicate rule.
    assert host.apply().returncode == 0
    assert host.ns.iptables_rules().count("--match-set mgmt") == 1


def test_drift_added_and_removed_by_hand_is_detected_and_fixed(host: Host) -> None:
    host.write(MGMT)
    assert host.apply().returncode == 0
    host.ns.run(["ipset", "add", "mgmt", "10.9.9.0/24"])
    host.ns.run(["ipset", "del", "mgmt", "192.0.2.0/24"])
    code, plan = host.plan()
    assert code == 2
    ops = plan["changes"][0]["ops"]
    assert ops == [
        {"op": "add_member", "member": "192.0.2.0/24"},
        {"op": "delete_member", "member": "10.9.9.0/24"},
    ]
    assert host.apply().returncode == 0
    assert host.ns.ipset_members("mgmt") == {"192.0.2.0/24", "198.51.100.128/25", "203.0.113.7"}
    assert host.plan()[0] == 0


def test_dry_run_changes_nothing(host: Host) -> None:
    host.write(MGMT)
    assert host.apply().returncode == 0
    # Pending work of every sort: drift, a new set, a size change, and a pruned set.
    host.ns.run(["ipset", "add", "mgmt", "10.9.9.0/24"])
    host.ns.run(
        [
            "iptables",
            "-D",
            "INPUT",
            "-i",
            "eth0",
            "-m",
            "set",
            "--match-set",
            "mgmt",
            "src",
            "-j",
            "ACCEPT",
        ]
    )
    host.write(
        MGMT.replace("maxelem: 65536", "maxelem: 4096")
        + """\
  extra:
    type: hash:net
    members: [192.0.2.0/25]
"""
    )
    before = (host.ns.ipset_save(), host.ns.iptables_rules(), host.ns.iptables_rules("ip6tables"))
    state_before = sorted((p.name, p.read_bytes()) for p in host.state.iterdir())
    code, plan = host.plan()
    assert code == 2 and len(plan["changes"]) == 2
    text = host.reconcile("--dry-run")
    assert text.returncode == 0 and "Plan:" in text.stdout
    after = (host.ns.ipset_save(), host.ns.iptables_rules(), host.ns.iptables_rules("ip6tables"))
    assert after == before
    assert sorted((p.name, p.read_bytes()) for p in host.state.iterdir()) == state_before


def _ping_counter(ns: Netns) -> int:
    out = ns.run(["iptables", "-L", "INPUT", "-v", "-x", "-n"]).stdout
    for line in out.splitlines():
        if "match-set mgmt src" in line:
            return int(line.split()[0])
    raise AssertionError(f"rule not found in:\n{out}")


def test_maxelem_change_swaps_while_rule_keeps_matching(host: Host) -> None:
    """A real client pings through the ACCEPT rule before and after the swap."""
    ns = host.ns
    client = Netns("rtest-cli")
    try:
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                ns.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                client.name,
            ],
            check=True,
        )
        ns.run(["ip", "addr", "add", "192.0.2.1/24", "dev", "eth0"])
        ns.run(["ip", "link", "set", "eth0", "up"])
        client.run(["ip", "addr", "add", "192.0.2.10/24", "dev", "eth0"])
        client.run(["ip", "link", "set", "eth0", "up"])
        host.write(MGMT)
        assert host.apply().returncode == 0
        ns.run(["iptables", "-P", "INPUT", "DROP"])  # only the set's rule lets the client in
        client.run(["ping", "-c", "2", "-W", "2", "192.0.2.1"])
        before = _ping_counter(ns)
        assert before >= 2

        host.write(MGMT.replace("maxelem: 65536", "maxelem: 131072"))
        code, plan = host.plan()
        assert code == 2 and plan["changes"][0]["action"] == "replace"
        proc = host.apply()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "maxelem 131072" in ns.ipset_save()
        assert "mgmt~rnew" not in ns.ipset_save()  # the temporary set is gone
        client.run(["ping", "-c", "2", "-W", "2", "192.0.2.1"])
        assert _ping_counter(ns) >= before + 2  # the same rule, now matching the new set
        assert host.plan()[0] == 0
    finally:
        client.delete()


def test_set_never_empty_during_update(host: Host, tmp_path: Path) -> None:
    """A second process watches the set with ``ipset list -t`` throughout a big update."""
    rng = random.Random(7)
    old = {f"10.{i // 256}.{i % 256}.0/24" for i in range(20000)}
    new = {f"172.{16 + i // 65536}.{(i // 256) % 256}.{i % 256}/32" for i in range(20000)}
    keep = "192.0.2.0/24"

    def fleet(members: set[str]) -> str:
        ms = "\n".join(f"      - {m}" for m in sorted(members, key=lambda _: rng.random()))
        return f"ipsets:\n  mgmt:\n    type: hash:net\n    maxelem: 65536\n    members:\n{ms}\n"

    host.write(fleet(old | {keep}))
    assert host.apply().returncode == 0
    host.write(fleet(new | {keep}))
    stop = tmp_path / "stop"
    samples = tmp_path / "samples"
    watcher = host.ns.popen(
        [
            "sh",
            "-c",
            f"while [ ! -e {stop} ]; do ipset list -t mgmt | sed -n 's/^Number of entries: //p'; "
            f"done > {samples}",
        ],
    )
    try:
        time.sleep(0.2)
        proc = host.apply()
    finally:
        stop.touch()
        watcher.wait(timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = [int(x) for x in samples.read_text().split()]
    assert len(counts) >= 3, "the watcher did not sample during the update"
    assert min(counts) >= len(old) + 1, f"the set shrank below its size before/after: {min(counts)}"
    assert host.ns.ipset_members("mgmt") == {m.removesuffix("/32") for m in new} | {keep}


def test_large_set_of_60000_members(host: Host) -> None:
    members = [f"10.{i // 256 % 256}.{i % 256}.0/24" for i in range(60000)]
    lines = "\n".join(f"      - {m}" for m in members)
    host.write(f"ipsets:\n  big:\n    type: hash:net\n    maxelem: 65536\n    members:\n{lines}\n")
    proc = host.apply()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(host.ns.ipset_members("big")) == 60000
    code, plan = host.plan()  # the read collects every message of the multi-part dump
    assert (code, plan["changes"]) == (0, [])


def test_ipv6_set_with_ip6tables_rule(host: Host) -> None:
    host.write("""\
ipsets:
  mgmt6:
    type: hash:net
    family: inet6
    members: ["2001:db8:1::/48", "2001:db8:2::1", "2001:DB8:3:0:0:0:0:0/64"]
    firewall: {chain: INPUT, target: ACCEPT}
""")
    assert host.apply().returncode == 0
    assert host.ns.ipset_members("mgmt6") == {"2001:db8:1::/48", "2001:db8:2::1", "2001:db8:3::/64"}
    assert "family inet6" in host.ns.ipset_save()
    assert "-A INPUT -m set --match-set mgmt6 src -j ACCEPT" in host.ns.iptables_rules("ip6tables")
    assert host.plan()[0] == 0


def test_lockout_guard_refuses_dropping_ssh_client(host: Host) -> None:
    host.write(MGMT)
    assert host.apply().returncode == 0
    host.write(MGMT.replace("      - 198.51.100.128/25\n", ""))
    ssh = {"SSH_CONNECTION": "198.51.100.200 50000 192.0.2.1 22"}
    code, plan = host.plan(env=ssh)
    assert code == 1
    assert "current SSH client" in plan["changes"][0]["refused"]
    before = host.ns.ipset_save()
    proc = host.apply(env=ssh)
    assert proc.returncode == 1
    assert "REFUSED" in proc.stdout
    assert host.ns.ipset_save() == before
    proc = host.apply("--force", env=ssh)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "198.51.100.128/25" not in host.ns.ipset_members("mgmt")


def test_guard_refuses_emptying_a_set(host: Host) -> None:
    host.write(MGMT)
    assert host.apply().returncode == 0
    host.write(
        "ipsets:\n  mgmt:\n    type: hash:net\n    maxelem: 65536\n    members: []\n"
        "    firewall: {chain: INPUT, in_interface: eth0, target: ACCEPT}\n"
    )
    proc = host.apply()
    assert proc.returncode == 1 and "would empty set mgmt" in proc.stdout
    assert len(host.ns.ipset_members("mgmt")) == 3


def test_second_run_exits_1_naming_the_lock_holder(host: Host) -> None:
    host.write(MGMT)
    with RunLock(host.lock):
        proc = host.apply()
    assert proc.returncode == 1
    assert f"pid {os.getpid()}" in proc.stderr
    assert host.ns.ipset_save() == ""


EXTRA = """\
  extra:
    type: hash:net
    members: [10.20.0.0/16]
"""


def test_prune_ours_but_never_theirs(host: Host) -> None:
    """A set of ours that left git (no ACCEPT rule uses it) is pruned; theirs is untouched.
    (Sets an ACCEPT rule uses, and a git with no ipsets at all: test_safe_by_default.py.)"""
    host.write(MGMT + EXTRA)
    assert host.apply().returncode == 0
    host.ns.run(["ipset", "create", "theirs", "hash:net"])
    host.ns.run(["ipset", "add", "theirs", "10.0.0.0/8"])
    host.write(MGMT)
    code, plan = host.plan()
    assert code == 2
    assert [(c["address"], c["action"]) for c in plan["changes"]] == [("ipset/extra", "delete")]
    assert host.apply().returncode == 0
    assert "extra" not in host.ns.ipset_save()
    assert "--match-set mgmt" in host.ns.iptables_rules()
    assert host.ns.ipset_members("theirs") == {"10.0.0.0/8"}
    assert host.plan()[0] == 0


def test_prune_refused_while_a_foreign_rule_uses_the_set(host: Host) -> None:
    host.write(MGMT)
    assert host.apply().returncode == 0
    host.ns.run(
        ["iptables", "-A", "FORWARD", "-m", "set", "--match-set", "mgmt", "dst", "-j", "DROP"]
    )
    host.write("ipsets: {}\n")
    code, plan = host.plan()
    assert code == 1
    assert "-A FORWARD -m set --match-set mgmt dst -j DROP" in plan["errors"][0]["message"]
    assert host.apply().returncode == 1
    assert "create mgmt" in host.ns.ipset_save()


def test_one_failing_resource_does_not_stop_the_others(host: Host) -> None:
    """A rule into a chain that does not exist fails for that set only; the next run finishes."""
    host.write(
        MGMT
        + """\
  other:
    type: hash:net
    members: [192.0.2.128/25]
    firewall: {chain: MGMT_IN, target: ACCEPT}
"""
    )
    proc = host.apply()
    assert proc.returncode == 1
    assert "ipset/other" in proc.stdout
    assert host.ns.ipset_members("mgmt") == {"192.0.2.0/24", "198.51.100.128/25", "203.0.113.7"}
    host.ns.run(["iptables", "-N", "MGMT_IN"])
    proc = host.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "-A MGMT_IN -m set --match-set other src -j ACCEPT" in host.ns.iptables_rules()


def test_bad_input_applies_nothing(host: Host) -> None:
    host.write(MGMT.replace("203.0.113.7", "192.0.2.300/24"))
    proc = host.apply()
    assert proc.returncode == 1
    assert "fleet.yaml:" in proc.stderr and "192.0.2.300/24" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert host.ns.ipset_save() == ""
    assert "match-set" not in host.ns.iptables_rules()
