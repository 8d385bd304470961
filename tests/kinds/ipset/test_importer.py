"""``reconcile import`` of ipsets: a save file's parser, what cannot be expressed, and round
trips on the real kernel (sets and rules made by hand in a namespace, and a restore file):
import, then the dry-run is empty."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from reconciler.errors import ValidationError
from reconciler.kinds.ipset import firewall
from reconciler.kinds.ipset.importer import from_sets, parse_save
from tests import importrun
from tests.netns import Netns

SAVE = """\
create mgmt hash:net family inet hashsize 1024 maxelem 4096 bucketsize 12 initval 0x5a1b2c3d
add mgmt 192.0.2.0/24
add mgmt 198.51.100.7
add mgmt 203.0.113.0-203.0.113.127
create mgmt6 hash:net family inet6 hashsize 1024 maxelem 65536 counters comment
add mgmt6 2001:db8::/32 packets 0 bytes 0 comment "office"
create f2b hash:ip family inet hashsize 1024 maxelem 65536 timeout 600
add f2b 192.0.2.9 timeout 412
create holes hash:net family inet hashsize 1024 maxelem 65536
add holes 10.0.0.0/8
add holes 10.1.0.0/16 nomatch
create dyn hash:net family inet hashsize 1024 maxelem 65536 timeout 0
"""


def _by_name(text: str) -> dict[str, object]:
    sets, _lines = parse_save(text, "rules.save")
    found = from_sets(sets, (), lambda n: f"from rules.save ({n})", None)
    return {r.name: r.value for r in found.resources} | {s.address: s.reason for s in found.skipped}


def test_save_file_sets_members_and_options() -> None:
    got = _by_name(SAVE)
    assert got["mgmt"] == {
        "type": "hash:net",
        "maxelem": 4096,
        "members": ["192.0.2.0/24", "198.51.100.7/32", "203.0.113.0/25"],
    }
    assert got["mgmt6"] == {"type": "hash:net", "family": "inet6", "members": ["2001:db8::/32"]}
    assert "hash:ip" in str(got["ipset/f2b"])
    assert "nomatch" in str(got["ipset/holes"]) and "10.1.0.0/16" in str(got["ipset/holes"])
    assert "timeout" in str(got["ipset/dyn"])


def test_save_file_lines_are_named_in_comments() -> None:
    sets, lines = parse_save(SAVE, "rules.save")
    assert lines["mgmt"] == [1, 2, 3, 4]
    found = from_sets(sets, (), lambda n: f"from rules.save:{lines[n][0]}", None)
    mgmt = next(r for r in found.resources if r.name == "mgmt")
    assert mgmt.notes[0] == "from rules.save:1"
    assert any("created with comment, counters" in n for r in found.resources for n in r.notes)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("add mgmt 192.0.2.0/24\n", "rules.save:1:1: add mgmt", "no create line above"),
        ("create a hash:net\nadd a 192.0.2.300/24\n", "rules.save:2:1: add a", "not a network"),
        ("create a hash:net maxelem lots\n", "rules.save:1:1: create a", "must be a number"),
        ("create a hash:net bogus 1\n", "rules.save:1:1: create a", "unknown create option"),
        ("create a hash:net\nadd a 10.0.0.0/8 frobnicate\n", "rules.save:2:1", "unknown add"),
        ("create a hash:net family inet6\nadd a 10.0.0.0/8\n", "rules.save:2:1", "family inet6"),
        ("create a hash:net\ncreate a hash:net\n", "rules.save:2:1", "created twice"),
        ("swap a b\n", "rules.save:1:1", "unknown command 'swap'"),
        ('create a hash:net comment "open\n', "rules.save:1:1", "cannot split"),
    ],
)
def test_malformed_save_file_names_file_and_line(text: str, where: str, message: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_save(text, "rules.save")
    assert where in str(e.value) and message in str(e.value), str(e.value)


def _rule(spec: str, chain: str = "INPUT", binary: str = "iptables") -> firewall.Rule:
    return firewall.parse_save(binary, f"*filter\n-A {chain} {spec}\nCOMMIT\n")[0]


def test_rules_the_schema_can_write_and_the_ones_it_cannot() -> None:
    sets, _ = parse_save("create mgmt hash:net\nadd mgmt 192.0.2.0/24\n", "f")
    rules = [
        _rule("-m set --match-set mgmt src -j DROP", chain="FORWARD"),
        _rule("-p tcp -m set --match-set mgmt src -j ACCEPT"),
        _rule("! -i eth0 -m set --match-set mgmt src -j ACCEPT"),
        _rule("-m set --match-set mgmt src -j ACCEPT", binary="iptables-legacy"),
    ]
    found = from_sets(sets, rules, lambda n: "here", "iptables-save")
    (mgmt,) = found.resources
    assert mgmt.value["firewall"] == {"chain": "INPUT", "in_interface": "!eth0", "target": "ACCEPT"}
    notes = "\n".join(mgmt.notes)
    assert "-p tcp" in notes and "FORWARD" in notes and "other iptables backend" in notes


# ------------------------------------------------------------------------- round trips
def _fixture_sets(ns: Netns) -> None:
    for argv in (
        ["ipset", "create", "mgmt", "hash:net", "maxelem", "1024"],
        ["ipset", "add", "mgmt", "192.0.2.0/24"],
        ["ipset", "add", "mgmt", "198.51.100.7"],
        ["ipset", "create", "admins6", "hash:net", "family", "inet6"],
        ["ipset", "add", "admins6", "2001:db8:1::/48"],
        ["ipset", "create", "empty", "hash:net"],
        ["ipset", "create", "f2b", "hash:net", "timeout", "600"],
        ["ipset", "add", "f2b", "203.0.113.9"],
        ["iptables", "-I", "INPUT", "-i", "eth0", "-m", "set", "--match-set", "mgmt", "src",
         "-j", "ACCEPT"],
        ["iptables", "-A", "FORWARD", "-m", "set", "--match-set", "mgmt", "src", "-j", "DROP"],
        ["ip6tables", "-I", "INPUT", "!", "-i", "lo", "-m", "set", "--match-set", "admins6",
         "src", "-j", "ACCEPT"],
    ):  # fmt: skip
        ns.run(argv)


def _saved(ns: Netns) -> str:
    """``ipset save`` without the entries' running-down timeouts."""
    return re.sub(r" timeout \d+$", "", ns.ipset_save(), flags=re.MULTILINE)


@pytest.mark.kernel
def test_live_sets_round_trip(netns: Netns, tmp_path: Path) -> None:
    _fixture_sets(netns)
    repo = importrun.new_repo(tmp_path)
    before = _saved(netns)
    text = importrun.round_trip(repo, tmp_path, "--only", "ipset", ns=netns)
    data = yaml.safe_load(text)
    assert set(data["ipsets"]) == {"mgmt", "admins6", "empty"}
    assert data["ipsets"]["mgmt"]["firewall"] == {
        "chain": "INPUT", "in_interface": "eth0", "target": "ACCEPT"
    }  # fmt: skip
    assert data["ipsets"]["admins6"]["firewall"]["in_interface"] == "!lo"
    assert "# not imported: ipset/f2b: created with timeout support" in text
    assert "from ipset netlink on host h1" in text
    assert _saved(netns) == before  # import and dry-run changed nothing


@pytest.mark.kernel
def test_restore_file_round_trip(netns: Netns, tmp_path: Path) -> None:
    save = tmp_path / "ipset.rules"
    save.write_text(textwrap.dedent(SAVE))
    netns.run(["ipset", "restore", "-!", "-file", str(save)])
    repo = importrun.new_repo(tmp_path)
    imp = importrun.import_to(repo, "--ipset-save", str(save), "--only", "ipset", ns=netns)
    assert imp.returncode == 0, imp.stderr
    assert "not imported: ipset/holes" in imp.stderr and "nomatch" in imp.stderr
    assert f"from {save}:lines 1-4" in (repo / "hosts" / "h1.yaml").read_text()
    assert importrun.validate(repo).returncode == 0
    plan = importrun.dry_run(repo, tmp_path, ns=netns)
    assert plan.returncode == 0, plan.stdout + plan.stderr


@pytest.mark.kernel
def test_import_into_a_repo_keeps_what_is_there(netns: Netns, tmp_path: Path) -> None:
    _fixture_sets(netns)
    repo = importrun.new_repo(tmp_path)
    (repo / "hosts").mkdir()
    mine = "# mine\nipsets:\n    mgmt:   # hand-written\n        type: hash:net\n" \
           "        members: [192.0.2.0/24, 198.51.100.7/32]\n"  # fmt: skip
    (repo / "hosts" / "h1.yaml").write_text(mine)
    (repo / "fleet.yaml").write_text("ipsets:\n  empty: {type: hash:net, members: []}\n")
    imp = importrun.import_to(repo, "--only", "ipset", ns=netns)
    assert imp.returncode == 0, imp.stderr
    text = (repo / "hosts" / "h1.yaml").read_text()
    assert text.startswith(mine)  # what was there is untouched, new sets come after
    assert "not imported: ipset/mgmt: already in hosts/h1.yaml" in imp.stderr
    assert "not imported: ipset/empty: already in fleet.yaml" in imp.stderr
    assert "\n    admins6:\n" in text  # the file's own indentation
    assert importrun.validate(repo).returncode == 0
    again = importrun.import_to(repo, "--only", "ipset", ns=netns)
    assert again.returncode == 0 and (repo / "hosts" / "h1.yaml").read_text() == text
