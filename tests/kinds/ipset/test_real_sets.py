"""Issue 14, items 3-8, through the real command line against real sets, in namespaces.

What other projects' sets hold and reconciler once got wrong: a default ``timeout`` (members
we add vanished), a full set (``Hash is full`` on every run), ``nomatch`` entries, counters,
comments and ``skbinfo``, a hand-made ``mgmt-rnew`` (destroyed as our temporary set), and rules
with a negated or wildcard interface (never recognised when pruning). Every test runs
``reconcile`` in a network namespace it creates and checks the result with ``ipset save`` and
``iptables -S``; the negated interface is also checked with real packets.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.kinds.ipset.test_kernel import Host
from tests.netns import Netns

pytestmark = pytest.mark.kernel


@pytest.fixture
def host(netns: Netns, tmp_path: Path) -> Host:
    """A host under test in a fresh namespace."""
    return Host(netns, tmp_path)


def saved(host: Host, name: str) -> list[str]:
    """``ipset save NAME`` lines, without the random initval."""
    return [ln for ln in host.ns.ipset_save().splitlines() if ln.split()[1:2] == [name]]


def ours(host: Host) -> dict[str, dict[str, object]]:
    """The ipset ownership records of the host's state dir."""
    data = json.loads((host.state / "ours.json").read_text())
    records: dict[str, dict[str, object]] = data.get("ipset", {})
    return records


def test_timeout_set_keeps_the_members_git_lists(host: Host) -> None:
    """Item 3: in a hand-made set with a default timeout, the members reconciler adds are
    permanent, an expiring member git lists is made permanent, and the plan says the set has
    a timeout, also when it has nothing to change."""
    host.ns.run(["ipset", "create", "mgmt", "hash:net", "timeout", "1"])
    host.ns.run(["ipset", "add", "mgmt", "192.0.2.0/24"])  # expires with the set's default
    host.write(
        "ipsets:\n  mgmt:\n    type: hash:net\n    members: [192.0.2.0/24, 198.51.100.0/24]\n"
    )
    code, plan = host.plan()
    assert code == 2
    (change,) = plan["changes"]
    assert change["ops"] == [
        {"op": "add_member", "member": "192.0.2.0/24", "timeout": 0},
        {"op": "add_member", "member": "198.51.100.0/24", "timeout": 0},
    ]
    assert any("default timeout of 1 s" in w for w in change["warnings"])
    text = host.reconcile("--dry-run").stdout
    assert "+ member 198.51.100.0/24 (permanent: timeout 0)" in text

    proc = host.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    time.sleep(2.5)  # well past the set's default timeout
    assert host.ns.ipset_members("mgmt") == {"192.0.2.0/24", "198.51.100.0/24"}
    assert all(" timeout 0" in ln for ln in saved(host, "mgmt") if ln.startswith("add "))
    code, plan = host.plan()
    assert (code, plan["changes"], plan["errors"]) == (0, [], [])
    (warning,) = plan["warnings"]
    assert warning["address"] == "ipset/mgmt" and "default timeout of 1 s" in warning["message"]


FULL = """\
ipsets:
  mgmt:
    type: hash:net
    maxelem: 4
    members: [{members}]
    firewall: {{chain: INPUT, target: ACCEPT}}
"""


def test_full_set_changes_by_deleting_first_or_swapping(host: Host) -> None:
    """Item 4: a set at maxelem changes: an unrelated replacement deletes first, a narrowed
    network (whose addresses must never drop out) goes through a swapped-in set."""
    host.write(FULL.format(members="192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 10.10.0.0/16"))
    assert host.apply().returncode == 0
    host.write(FULL.format(members="192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 10.20.0.0/16"))
    code, plan = host.plan()
    assert code == 2
    (change,) = plan["changes"]
    assert [o["op"] for o in change["ops"]] == ["delete_member", "add_member"]
    assert "would pass its maxelem 4" in change["warnings"][0]
    proc = host.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10.20.0.0/16" in host.ns.ipset_members("mgmt")

    host.write(FULL.format(members="192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 10.20.1.0/24"))
    code, plan = host.plan()
    (change,) = plan["changes"]
    assert change["action"] == "replace" and "swapped in" in change["warnings"][0]
    proc = host.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert host.ns.ipset_members("mgmt") == {
        "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.20.1.0/24",
    }  # fmt: skip
    assert "maxelem 4" in saved(host, "mgmt")[0]
    assert "-A INPUT -m set --match-set mgmt src -j ACCEPT" in host.ns.iptables_rules()
    assert [n for n in host.ns.ipset_save().split() if "~" in n] == []  # no temporary left
    assert host.plan()[0] == 0


def test_nomatch_entries_are_refused_naming_them(host: Host) -> None:
    """Item 5: a set with a nomatch entry is refused with the option and why."""
    host.ns.run(["ipset", "create", "test", "hash:net"])
    host.ns.run(["ipset", "add", "test", "10.0.0.0/8"])
    host.ns.run(["ipset", "add", "test", "10.1.0.0/16", "nomatch"])
    before = host.ns.ipset_save()
    host.write("ipsets:\n  test:\n    type: hash:net\n    members: [10.0.0.0/8, 10.2.0.0/16]\n")
    code, plan = host.plan()
    assert code == 1
    (error,) = plan["errors"]
    assert error["address"] == "ipset/test"
    assert "1 nomatch entry (10.1.0.0/16)" in error["message"]
    assert "Git cannot express nomatch" in error["message"]
    proc = host.apply()
    assert proc.returncode == 1 and "nomatch" in proc.stdout
    assert host.ns.ipset_save() == before


def test_skbinfo_is_refused_counters_and_comments_are_kept(host: Host) -> None:
    """Item 5: skbinfo is refused naming it; counters and comment sets are managed, their
    kept entries keeping their comments."""
    host.ns.run(["ipset", "create", "marks", "hash:net", "skbinfo"])
    host.ns.run(["ipset", "create", "notes", "hash:net", "counters", "comment"])
    host.ns.run(["ipset", "add", "notes", "192.0.2.0/24", "comment", "office"])
    host.write(
        "ipsets:\n"
        "  marks: {type: 'hash:net', members: [10.0.0.0/8]}\n"
        "  notes: {type: 'hash:net', members: [192.0.2.0/24, 203.0.113.0/24]}\n"
    )
    proc = host.apply()
    assert proc.returncode == 1
    assert "set marks was created with the skbinfo option" in proc.stdout
    assert host.ns.ipset_members("marks") == set()
    assert host.ns.ipset_members("notes") == {"192.0.2.0/24", "203.0.113.0/24"}
    assert any('comment "office"' in ln for ln in saved(host, "notes"))


def test_temporary_sets_never_take_a_set_that_exists(host: Host) -> None:
    """Item 7: a hand-made mgmt-rnew (the old temporary name) and mgmt~rnew, and a mgmt-rnew
    in git, survive a maxelem change of mgmt; the temporary set is recorded and gone after."""
    host.ns.run(["ipset", "create", "mgmt~rnew", "hash:net"])
    host.ns.run(["ipset", "add", "mgmt~rnew", "10.0.0.0/8"])
    mgmt = "  mgmt:\n    type: hash:net\n    maxelem: {n}\n    members: [192.0.2.0/24]\n"
    git_rnew = "  mgmt-rnew:\n    type: hash:net\n    members: [198.51.100.0/24]\n"
    host.write("ipsets:\n" + mgmt.format(n=1024) + git_rnew)
    assert host.apply().returncode == 0
    host.write("ipsets:\n" + mgmt.format(n=2048) + git_rnew)
    _, plan = host.plan()
    (change,) = plan["changes"]
    assert change["ops"][0]["set"] == "mgmt~rnew2"
    proc = host.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified" in proc.stdout
    assert "maxelem 2048" in saved(host, "mgmt")[0]
    assert host.ns.ipset_members("mgmt~rnew") == {"10.0.0.0/8"}
    assert host.ns.ipset_members("mgmt-rnew") == {"198.51.100.0/24"}
    assert "mgmt~rnew2" not in host.ns.ipset_save()
    assert sorted(ours(host)) == ["mgmt", "mgmt-rnew"]


def test_a_leftover_temporary_set_is_cleaned_up(host: Host) -> None:
    """Item 7: a temporary set recorded as ours (a run killed mid-rebuild) is destroyed by
    the next run; one that is not recorded is left alone."""
    host.write("ipsets:\n  mgmt:\n    type: hash:net\n    members: [192.0.2.0/24]\n")
    assert host.apply().returncode == 0
    for name in ("mgmt~rnew", "mgmt~rnew3"):
        host.ns.run(["ipset", "create", name, "hash:net"])
    data = json.loads((host.state / "ours.json").read_text())
    data["ipset"]["mgmt~rnew"] = {
        "created": "2026-01-01T00:00:00+00:00", "rules": [], "temporary_for": "mgmt",
        "intent": "creating temporary set mgmt~rnew to rebuild mgmt",
    }  # fmt: skip
    (host.state / "ours.json").write_text(json.dumps(data))
    _, plan = host.plan()
    changes = [(c["address"], c["action"]) for c in plan["changes"]]
    assert changes == [("ipset/mgmt~rnew", "delete")]
    assert host.apply().returncode == 0
    assert "mgmt~rnew " not in host.ns.ipset_save() + " "
    assert "create mgmt~rnew3 " in host.ns.ipset_save()
    assert sorted(ours(host)) == ["mgmt"]


def _veth(ns: Netns, client: Netns, ifname: str, prefix: str) -> None:
    """A link ``ifname`` between ``ns`` (``prefix``.1/24) and ``client`` (``prefix``.10/24)."""
    subprocess.run(
        ["ip", "link", "add", ifname, "netns", ns.name, "type", "veth",
         "peer", "name", "eth0", "netns", client.name],
        check=True,
    )  # fmt: skip
    ns.run(["ip", "addr", "add", f"{prefix}.1/24", "dev", ifname])
    ns.run(["ip", "link", "set", ifname, "up"])
    client.run(["ip", "addr", "add", f"{prefix}.10/24", "dev", "eth0"])
    client.run(["ip", "link", "set", "eth0", "up"])


def _pings(client: Netns, address: str) -> bool:
    return client.run(["ping", "-c", "1", "-W", "1", address], check=False).returncode == 0


def test_negated_and_wildcard_interfaces_are_ours_to_prune(host: Host, tmp_path: Path) -> None:
    """Item 8: ``in_interface: "!eth0"`` is every interface but eth0 (real packets: a client
    on lan0 gets in, one on eth0 does not), ``eth+`` is written as iptables takes it, and
    both rules, and one an earlier version wrote literally as ``-i !eth0``, are recognised as
    ours when their sets are deleted."""
    on_eth0, on_lan0 = Netns("rtest-c0"), Netns("rtest-c1")
    try:
        _veth(host.ns, on_eth0, "eth0", "192.0.2")
        _veth(host.ns, on_lan0, "lan0", "198.51.100")
        host.write("""\
ipsets:
  neg:
    type: hash:net
    members: [192.0.2.10, 198.51.100.10]
    firewall: {chain: INPUT, in_interface: "!eth0", target: ACCEPT}
  wild:
    type: hash:net
    members: [203.0.113.0/24]
    firewall: {chain: INPUT, in_interface: eth+, target: ACCEPT}
  old:
    type: hash:net
    members: [203.0.113.0/24]
""")
        proc = host.apply()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rules = host.ns.iptables_rules()
        assert "-A INPUT ! -i eth0 -m set --match-set neg src -j ACCEPT" in rules
        assert "-A INPUT -i eth+ -m set --match-set wild src -j ACCEPT" in rules
        host.ns.run(["iptables", "-P", "INPUT", "DROP"])
        assert _pings(on_lan0, "198.51.100.1")
        assert not _pings(on_eth0, "192.0.2.1")
        assert host.plan()[0] == 0

        # An earlier version wrote "!eth0" literally (an interface named "!eth0"): its record.
        host.ns.run(["iptables", "-I", "INPUT", "-i", "!eth0", "-m", "set", "--match-set",
                     "old", "src", "-j", "ACCEPT"])  # fmt: skip
        data = json.loads((host.state / "ours.json").read_text())
        data["ipset"]["old"]["rules"] = [["iptables", "INPUT", "-i", "!eth0", "-m", "set",
                                          "--match-set", "old", "src", "-j", "ACCEPT"]]  # fmt: skip
        (host.state / "ours.json").write_text(json.dumps(data))
        host.ns.run(["iptables", "-P", "INPUT", "ACCEPT"])

        host.write("ipsets:\n  neg: {absent: true}\n  wild: {absent: true}\n"
                   "  old: {absent: true}\n")  # fmt: skip
        code, plan = host.plan()
        assert code == 2 and plan["errors"] == [], plan
        proc = host.apply()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert host.ns.ipset_save() == ""
        assert "match-set" not in host.ns.iptables_rules()
    finally:
        on_eth0.delete()
        on_lan0.delete()


def test_a_bare_negation_is_a_validation_error(host: Host) -> None:
    host.write("ipsets:\n  m:\n    type: hash:net\n    members: []\n"
               "    firewall: {in_interface: '!'}\n")  # fmt: skip
    proc = host.apply()
    assert proc.returncode == 1
    assert "ipsets.m.firewall.in_interface: '!' names no interface" in proc.stderr
    assert host.ns.ipset_save() == ""
