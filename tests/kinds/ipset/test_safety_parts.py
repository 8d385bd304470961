"""The pure parts of issue 13's ipset safety: host bits, tombstones, the SSH client's address,
both iptables backends read into one live state, the filter table's jumps, and the CI
dry-run's view of a tombstone. No root needed (the kernel tests are in
test_safe_by_default.py)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from reconciler import desired as desired_mod
from reconciler.cidr import canonical_network, parse_network
from reconciler.errors import ValidationError
from reconciler.kinds.ipset import firewall
from reconciler.kinds.ipset.against import ipset_change
from reconciler.kinds.ipset.checks import IpsetTombstone, is_tombstone
from reconciler.kinds.ipset.provider import normalise_client, ssh_client_address
from reconciler.model import IpsetSpec
from tests import clirun
from tests.netns import Netns

FACTS = Path(__file__).parent / "facts"


# ---------------------------------------------------------------------------- host bits
def _has_host_bits(text: str) -> bool | None:
    """ipaddress's answer: None for no network, else whether strict parsing refuses it."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    try:
        ipaddress.ip_network(text)
    except ValueError:
        return True
    return False


@given(st.ip_addresses(), st.integers(0, 128))
def test_host_bits_agree_with_ipaddress(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address, plen: int
) -> None:
    text = f"{addr}/{plen % (addr.max_prefixlen + 1)}"
    version, prefixlen, canon, host = parse_network(text)
    assert (version, prefixlen, canon) == canonical_network(text)
    assert (host is not None) == _has_host_bits(text)
    if host is not None:
        assert host == f"{addr}/{addr.max_prefixlen}"


@pytest.mark.parametrize("text", ["192.0.2.7", "2001:db8::1", "10.0.0.0/8", "2001:DB8::/32"])
def test_no_host_bits(text: str) -> None:
    assert parse_network(text)[3] is None


def _repo(tmp_path: Path, fleet: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "hosts").mkdir(parents=True, exist_ok=True)
    (repo / "fleet.yaml").write_text(fleet)
    (repo / "hosts" / "h1.yaml").write_text("{}\n")
    return repo


HOST_BITS = """\
ipsets:
  mgmt:
    type: hash:net
    members:
      - 192.0.2.0/24
      - 10.10.0.1/24
  mgmt6:
    type: hash:net
    family: inet6
    members: ["2001:db8:1::/48", "2001:db8::1/64"]
"""


def test_host_bits_are_a_validation_error_with_file_and_line(tmp_path: Path) -> None:
    proc = clirun.reconcile("validate", "--repo", str(_repo(tmp_path, HOST_BITS)))
    assert proc.returncode == 1
    assert (
        "fleet.yaml:6:9: ipsets.mgmt.members[1]: 10.10.0.1/24: host bits set; "
        "did you mean 10.10.0.1/32 or 10.10.0.0/24?"
    ) in proc.stderr
    assert (
        "fleet.yaml:10:34: ipsets.mgmt6.members[1]: 2001:db8::1/64: host bits set; "
        "did you mean 2001:db8::1/128 or 2001:db8::/64?"
    ) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_zero_prefix_is_reported_before_host_bits(tmp_path: Path) -> None:
    repo = _repo(tmp_path, "ipsets:\n  m: {type: 'hash:net', members: [10.0.0.1/0]}\n")
    with pytest.raises(ValidationError) as e:
        desired_mod.load_host(repo, "h1")
    (problem,) = e.value.problems
    assert "the kernel rejects /0" in problem.message


# ---------------------------------------------------------------------------- tombstones
def test_tombstone_needs_no_type_or_members(tmp_path: Path) -> None:
    repo = _repo(
        tmp_path,
        "ipsets:\n  mgmt: {absent: true}\n  keep: {absent: false, type: 'hash:net', members: []}\n",
    )
    assert clirun.reconcile("validate", "--repo", str(repo)).returncode == 0
    h = desired_mod.load_host(repo, "h1")
    assert is_tombstone(h.ipsets["mgmt"]) and not is_tombstone(h.ipsets["keep"])
    assert h.ipsets["mgmt"] == IpsetTombstone("mgmt")
    assert h.ipsets["mgmt"] != IpsetSpec("mgmt")
    assert h.ipsets["mgmt"].source is not None and h.ipsets["mgmt"].source.line == 2


def test_tombstone_keeps_its_definition_checked(tmp_path: Path) -> None:
    """A tombstone may keep the set's keys (to lift it later): they must still be valid."""
    repo = _repo(
        tmp_path, "ipsets:\n  mgmt: {absent: true, type: 'hash:net', members: [10.0.0.1/8]}\n"
    )
    with pytest.raises(ValidationError) as e:
        desired_mod.load_host(repo, "h1")
    assert [p.message for p in e.value.problems] == [
        "10.0.0.1/8: host bits set; did you mean 10.0.0.1/32 or 10.0.0.0/8?"
    ]


def test_a_set_that_is_not_a_tombstone_needs_type_and_members(tmp_path: Path) -> None:
    repo = _repo(tmp_path, "ipsets:\n  a: {absent: false}\n  b: {absent: maybe}\n  c: {}\n")
    with pytest.raises(ValidationError) as e:
        desired_mod.load_host(repo, "h1")
    got = [str(p) for p in e.value.problems]
    for name, line in (("a", 2), ("b", 3), ("c", 4)):
        for key in ("members", "type"):
            assert (
                got.count(f"fleet.yaml:{line}:3: ipsets.{name}: missing required key {key!r}") == 1
            )
    assert "fleet.yaml:3:15: ipsets.b.absent: expected a boolean (true/false), got 'maybe'" in got


def test_against_a_tombstone_is_a_deletion() -> None:
    """The CI dry-run against a base revision: a set that becomes a tombstone is deleted; a
    tombstone that comes or goes with no set behind it changes nothing."""
    mgmt = IpsetSpec("mgmt", members=frozenset({"192.0.2.0/24"}))
    tomb = IpsetTombstone("mgmt")
    change = ipset_change("mgmt", mgmt, tomb)
    assert change is not None and change.action == "delete"
    assert [o.to_dict() for o in change.ops] == [{"op": "destroy_set", "set": "mgmt"}]
    assert "marked absent" in change.warnings[0]
    vanished = ipset_change("mgmt", mgmt, None)
    assert vanished is not None and "absent: true" in vanished.warnings[0]
    assert ipset_change("mgmt", None, tomb) is None
    assert ipset_change("mgmt", tomb, None) is None
    assert ipset_change("mgmt", tomb, IpsetTombstone("mgmt")) is None
    back = ipset_change("mgmt", tomb, mgmt)
    assert back is not None and back.action == "create"


# ------------------------------------------------------------------------ the SSH client
@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("198.51.100.200", "198.51.100.200"),
        ("::ffff:198.51.100.200", "198.51.100.200"),
        ("::FFFF:c633:64c8", "198.51.100.200"),
        ("2001:DB8::0:10", "2001:db8::10"),
        ("fe80::1%eth0", "fe80::1"),
        ("not-an-address", None),
        ("", None),
        (None, None),
    ],
)
def test_client_address_is_normalised(given_: str | None, expected: str | None) -> None:
    assert normalise_client(given_) == expected


def test_ssh_connection_ipv4_mapped() -> None:
    env = {"SSH_CONNECTION": "::ffff:192.0.2.5 50000 ::ffff:192.0.2.1 22"}
    assert ssh_client_address(env) == "192.0.2.5"
    assert ssh_client_address({}) is None


# ---------------------------------------------------------------- both iptables backends
def test_filter_chains_from_iptables_save() -> None:
    case = yaml.safe_load((FACTS / "save_all_tables.yaml").read_text())
    assert firewall.parse_chains(case["input"]) == {
        "INPUT": ("ACCEPT", "MGMT-IN"),
        "FORWARD": ("ACCEPT",),
        "OUTPUT": (),
        "MGMT-IN": (),
    }


def test_filter_chains_from_iptables_S() -> None:
    text = (
        "-P INPUT DROP\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N MGMT_OK\n-N LOGGED\n"
        "-A INPUT -m set --match-set mgmt src -g MGMT_OK\n"
        '-A MGMT_OK -m comment --comment "not -j DROP" -j LOGGED\n'
        "-A LOGGED -j LOG\n-A LOGGED -j ACCEPT\n"
    )
    assert firewall.parse_chains(text) == {
        "INPUT": ("MGMT_OK",),
        "FORWARD": (),
        "OUTPUT": (),
        "MGMT_OK": ("LOGGED",),
        "LOGGED": ("ACCEPT",),
    }


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_read_rules_reads_both_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``iptables`` is nf_tables (``-V`` says so); ``iptables-legacy-save`` is installed too:
    the rules of both are read, the legacy one's under its own binary's name."""
    _script(tmp_path / "iptables", 'echo "iptables v1.8.9 (nf_tables)"')
    _script(
        tmp_path / "iptables-save",
        "printf '*filter\\n:INPUT ACCEPT [0:0]\\n"
        "-A INPUT -m set --match-set mgmt src -j ACCEPT\\nCOMMIT\\n'",
    )
    _script(
        tmp_path / "iptables-legacy-save",
        "printf '*filter\\n:INPUT ACCEPT [0:0]\\n:OK - [0:0]\\n-A OK -j ACCEPT\\n"
        "-A INPUT -m set --match-set mgmt src -j OK\\nCOMMIT\\n'",
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    tables = tmp_path / "ip_tables_names"  # the kernel lists a legacy table: it is read
    tables.write_text("filter\n")
    monkeypatch.setitem(firewall.LEGACY_TABLES, "iptables", str(tables))
    assert firewall.backend_of("iptables") == "nft"
    assert firewall.other_backend_binary("iptables") == "iptables-legacy"
    rules, chains = firewall.read_rules()
    assert [(r.binary, r.chain, r.target) for r in rules] == [
        ("iptables", "INPUT", "ACCEPT"),
        ("iptables-legacy", "INPUT", "OK"),
    ]
    assert chains == {
        "iptables": {"INPUT": ("ACCEPT",)},
        "iptables-legacy": {"INPUT": ("OK",), "OK": ("ACCEPT",)},
    }
    assert firewall.is_other_backend("iptables-legacy")
    assert not firewall.is_other_backend("ip6tables")
    # Only the backend iptables uses, as before:
    assert [r.binary for r in firewall.list_set_rules()] == ["iptables"]


def test_a_legacy_backend_without_tables_is_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No legacy table in the namespace (the kernel's list there, empty): the legacy save
    would print nothing, and is not started; a missing list is no proof, and it is run."""
    _script(tmp_path / "iptables", 'echo "iptables v1.8.9 (nf_tables)"')
    _script(tmp_path / "iptables-save", "printf '*filter\\n:INPUT ACCEPT [0:0]\\nCOMMIT\\n'")
    ran = tmp_path / "ran"
    _script(tmp_path / "iptables-legacy-save", f": > {ran}")  # a shell builtin: PATH is bare
    monkeypatch.setenv("PATH", str(tmp_path))
    tables = tmp_path / "ip_tables_names"
    tables.write_text("")
    monkeypatch.setitem(firewall.LEGACY_TABLES, "iptables", str(tables))
    assert firewall.read_rules(("iptables",)) == ([], {"iptables": {"INPUT": ()},
                                                      "iptables-legacy": {}})  # fmt: skip
    assert not ran.exists()
    tables.unlink()
    assert firewall.read_rules(("iptables",))[0] == []
    assert ran.exists()


@pytest.mark.kernel
def test_legacy_tables_are_read_in_the_namespace_of_the_thread(netns: Netns) -> None:
    """The kernel's list of legacy tables is the calling thread's namespace's: none in a
    new namespace, ``filter`` once a legacy rule is made there (and the save is run)."""
    if shutil.which("iptables-legacy") is None:
        pytest.skip("iptables-legacy is not installed")
    with netns.entered():
        assert firewall._no_legacy_tables("iptables-legacy")
    netns.run(["iptables-legacy", "-A", "INPUT", "-j", "ACCEPT"])
    with netns.entered():
        assert not firewall._no_legacy_tables("iptables-legacy")
        _, chains = firewall.read_rules(("iptables",))
    assert chains["iptables-legacy"] == {"INPUT": ("ACCEPT",), "FORWARD": (), "OUTPUT": ()}


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_backend_from_debian_alternatives(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian links iptables to xtables-<backend>-multi: the link says which, unrun."""
    multi = Path(f"/usr/sbin/xtables-{backend}-multi")
    if not multi.exists():
        pytest.skip(f"{multi} is not installed")
    (tmp_path / "iptables").symlink_to(multi)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert firewall.backend_of("iptables") == backend
