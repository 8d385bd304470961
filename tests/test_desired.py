"""Tests for the desired-state loader: the shipped example, merging, and golden bad inputs.

Each directory under ``tests/data/desired/`` is a tiny repository plus ``expected.txt``, the
exact problem lines ``validate_repo`` must report (``file:line:column: path: message``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from reconciler.desired import (
    list_hosts,
    load_host,
    load_vms,
    validate_repo,
)
from reconciler.errors import ValidationError
from reconciler.kinds.backup.duration import parse_duration
from reconciler.kinds.nic.offloads import resolve_offload
from reconciler.model import FirewallRule, Location
from reconciler.yamlsrc import format_path, load_yaml
from tests import hostcfg

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "desired-state"
CASES = Path(__file__).resolve().parent / "data" / "desired"


def _write(base: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return base


def test_example_is_valid() -> None:
    assert [str(p) for p in validate_repo(EXAMPLE, config=hostcfg.example())] == []
    assert list_hosts(EXAMPLE) == ["db", "edge", "www"]


def test_example_load_host_merges_fleet_and_host() -> None:
    config = hostcfg.example()
    www = load_host(EXAMPLE, "www", config=config)
    db = load_host(EXAMPLE, "db", config=config)
    assert www.files == ("fleet.yaml", "hosts/www.yaml")
    assert set(www.ipsets) == {"mgmt", "mgmt6"}
    # db redefines mgmt as a whole: one extra member, source is the host file
    assert db.ipsets["mgmt"].members == www.ipsets["mgmt"].members | {"198.51.100.16/28"}
    assert db.ipsets["mgmt"].source is not None
    assert db.ipsets["mgmt"].source.file == "hosts/db.yaml"
    assert www.ipsets["mgmt"].source == Location("fleet.yaml", 3, 3)
    assert www.ipsets["mgmt"].firewall == FirewallRule("INPUT", "ACCEPT", "eth0")
    assert www.ipsets["mgmt6"].family == "inet6"
    assert www.ipsets["mgmt6"].firewall is None
    assert www.raw["nics"]["eth0"] == {"offloads": {"gso": False, "tso": False}}
    assert www.raw["backups"]["etc"]["backend"] == "restic"
    assert db.raw["backups"]["etc"]["backend"] == "tarsnap"
    assert www.raw["tarsnap"]["keyfile"] == "/root/tarsnap.key"


def test_load_host_without_host_file_is_fleet_only() -> None:
    lone = load_host(EXAMPLE, "nosuchhost", config=hostcfg.example())
    assert lone.files == ("fleet.yaml",)
    assert set(lone.ipsets) == {"mgmt", "mgmt6"}
    assert lone.raw["nics"] == {}


def test_load_host_canonicalises_and_merges(tmp_path: Path) -> None:
    repo = _write(
        tmp_path,
        {
            "fleet.yaml": (
                "ipsets:\n"
                "  a: {type: 'hash:net', members: [10.0.0.0/8, 192.0.2.7]}\n"
                "  b: {type: 'hash:net', members: [198.51.100.0/24]}\n"
                "tarsnap: {command: /usr/bin/tarsnap, keyfile: /root/k}\n"
            ),
            "hosts/h1.yaml": (
                "ipsets:\n"
                "  b:\n"
                "    type: hash:net\n"
                "    family: inet6\n"
                "    maxelem: 10\n"
                "    members: ['2001:DB8:0:0::/32']\n"
                "    firewall: {chain: MGMT}\n"
                "tarsnap: {keyfile: /root/h1.key}\n"
            ),
        },
    )
    # The host's own tarsnap command, so the repository may name it; its key files allowed.
    config = hostcfg.load(tmp_path / "host", tarsnap="/usr/bin/tarsnap", allowed_dirs=["/root"])
    h = load_host(repo, "h1", config=config)
    assert h.ipsets["a"].members == frozenset({"10.0.0.0/8", "192.0.2.7/32"})
    assert h.ipsets["b"].members == frozenset({"2001:db8::/32"})
    assert h.ipsets["b"].family == "inet6"
    assert h.ipsets["b"].maxelem == 10
    assert h.ipsets["b"].firewall == FirewallRule(chain="MGMT", target="ACCEPT")
    assert h.ipsets["b"].source == Location("hosts/h1.yaml", 2, 3)
    assert h.raw["tarsnap"] == {"command": "/usr/bin/tarsnap", "keyfile": "/root/h1.key"}


def test_load_host_raises_with_every_problem(tmp_path: Path) -> None:
    repo = _write(
        tmp_path,
        {
            "fleet.yaml": "ipsets:\n  a: {type: 'hash:net', members: [0.0.0.0/0]}\n",
            "hosts/h1.yaml": "nics:\n  eth0: {rings: {rx: 0}}\n",
            "hosts/h2.yaml": "nics: {eth0: {bogus: 1}}\n",
        },
    )
    with pytest.raises(ValidationError) as exc:
        load_host(repo, "h1")
    files = {p.file for p in exc.value.problems}
    assert files == {"fleet.yaml", "hosts/h1.yaml"}  # h2 is not this host's business


def test_load_vms() -> None:
    vms = load_vms(EXAMPLE)
    assert vms is not None
    assert vms["controller"] == "master"
    assert vms["vms"]["web"]["vnc_port"] == "auto"
    assert vms["vms"]["mail1"] == {
        "node": "kvm1",
        "vnc_port": 5903,
        "state": "shutoff",
        "definition": "vms/mail1.xml",
    }


def test_load_vms_absent_and_invalid(tmp_path: Path) -> None:
    assert load_vms(tmp_path) is None
    _write(tmp_path, {"vms.yaml": "controller: master\n"})
    with pytest.raises(ValidationError, match="missing required key 'storage'"):
        load_vms(tmp_path)


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_golden_bad_input(case: str) -> None:
    expected = (CASES / case / "expected.txt").read_text(encoding="utf-8").splitlines()
    assert expected, "a bad-input case must expect at least one problem"
    # These cases are about the schema and semantic checks: the host allows any path and
    # libvirt's test driver (tests/test_host_policy.py covers what a host refuses).
    assert [str(p) for p in validate_repo(CASES / case, config=hostcfg.permissive())] == expected


def test_non_utf8_file(tmp_path: Path) -> None:
    repo = _write(
        tmp_path,
        {"hosts/www.yaml": b"ipsets:\n  mgmt:\n    type: hash:net # caf\xe9\n    members: []\n"},
    )
    assert [str(p) for p in validate_repo(repo)] == [
        "hosts/www.yaml:3:25: <root>: not UTF-8: byte 0xe9 cannot be decoded; "
        "save the file as UTF-8"
    ]


def test_problems_in_several_files_are_all_reported() -> None:
    problems = validate_repo(CASES / "many_files")
    assert {p.file for p in problems} == {
        "fleet.yaml",
        "hosts/www.yaml",
        "hosts/db.yaml",
        "vms.yaml",
    }
    assert problems == sorted(problems)


def test_control_character_and_multiple_documents(tmp_path: Path) -> None:
    _write(tmp_path, {"a.yaml": "x: [a\x01b]\n", "b.yaml": "a: 1\n---\nb: 2\n"})
    a = load_yaml(tmp_path / "a.yaml", "a.yaml")
    assert a.data is None
    assert [str(p) for p in a.problems] == [
        "a.yaml:1:6: <root>: unreadable YAML: control character U+0001 is not allowed in YAML"
    ]
    b = load_yaml(tmp_path / "b.yaml", "b.yaml")
    assert b.data is None
    assert b.problems[0].line == 2


def test_yaml_positions_and_yaml11_scalars(tmp_path: Path) -> None:
    _write(tmp_path, {"a.yaml": "nics:\n  eth0:\n    offloads: {gso: off, tso: on}\n"})
    doc = load_yaml(tmp_path / "a.yaml", "a.yaml")
    assert doc.problems == []
    assert doc.data == {"nics": {"eth0": {"offloads": {"gso": False, "tso": True}}}}
    assert doc.keys[("nics", "eth0", "offloads", "tso")] == (3, 26)
    assert doc.values[("nics", "eth0", "offloads", "tso")] == (3, 31)
    assert doc.pos(("nics", "eth0", "missing")) == (3, 5)


def test_yaml_merge_keys_do_not_count_as_duplicates(tmp_path: Path) -> None:
    _write(tmp_path, {"a.yaml": "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n"})
    doc = load_yaml(tmp_path / "a.yaml", "a.yaml")
    assert doc.problems == []
    assert doc.data["c"] == {"x": 1, "y": 3}


def test_helpers() -> None:
    assert format_path(("ipsets", "mgmt", "members", 2)) == "ipsets.mgmt.members[2]"
    assert format_path(("nics", "eth0", "offloads", "rx-gro-hw")) == (
        "nics.eth0.offloads.rx-gro-hw"
    )
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    with pytest.raises(ValueError):
        parse_duration("hourly")
    assert resolve_offload("gso") == ("tx-generic-segmentation",)
    assert resolve_offload("rx-gro-hw") == ("rx-gro-hw",)
    with pytest.raises(KeyError):
        resolve_offload("gzo")


def test_vm_stop_and_migration_switches(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "vms.yaml": (
                "controller: master\nstorage: shared\nnodes:\n  kvm1: {uri: 'test:///default'}\n"
                "vms:\n  vm1: {node: kvm1, allow_stop: true, live_migrate: false}\n"
                "  vm2: {node: kvm1, allow_stop: 'yes'}\n"
            )
        },
    )
    problems = [str(p) for p in validate_repo(tmp_path, config=hostcfg.permissive())]
    assert len(problems) == 1 and "vms.vm2.allow_stop" in problems[0], problems


def test_the_slash_shortcut_in_tag_resolution_changes_no_value(tmp_path: Path) -> None:
    """yamlsrc resolves a plain scalar containing "/" as a string without trying YAML's
    implicit types; every value must load exactly as PyYAML's own safe loader loads it."""
    text = (
        "a: 10.0.0.0/8\nb: 2024-01-01\nc: 1/2\nd: on\ne: 0x1F\nf: 1.5e3\ng: ~\n"
        "h: '10.0.0.0/8'\ni: [192.0.2.0/24, 2001:db8::/32, 12:30:00, .inf]\nj: /etc\n"
    )
    path = tmp_path / "f.yaml"
    path.write_text(text)
    doc = load_yaml(path, "f.yaml")
    assert doc.problems == []
    assert doc.data == yaml.safe_load(text)
