"""``reconcile import`` of VM placement from two libvirt ``test:///`` nodes (node files
under the test's directory, allowed by the host configuration): import, then the dry-run of
the controller is empty; what cannot be placed, and URIs the host does not allow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler.kinds.vm.domainxml import VncConfig
from reconciler.kinds.vm.importer import from_nodes
from reconciler.kinds.vm.read import DomainLive, NodeLive
from tests import hostcfg, importrun
from tests.kinds.vm.test_testdriver import domain_xml, node_xml

pytest.importorskip("libvirt", reason="needs libvirt's Python bindings (python3-libvirt)")

PAUSED = "<test:runstate>3</test:runstate>"


def _nodes(tmp: Path, kvm1: list[str], kvm2: list[str]) -> tuple[str, str]:
    uris = []
    for name, doms in (("kvm1", kvm1), ("kvm2", kvm2)):
        path = tmp / f"{name}.xml"
        path.write_text(node_xml(doms))
        uris.append(f"test://{path}")
    return uris[0], uris[1]


def _env(tmp: Path, *, allow: bool = True) -> dict[str, str]:
    config = hostcfg.write(tmp / "host", allowed_dirs=[tmp], allow_test_driver=allow)
    return hostcfg.env_with(config)


def test_two_nodes_round_trip(tmp_path: Path) -> None:
    kvm1, kvm2 = _nodes(
        tmp_path,
        [domain_xml("web", "11111111-0000-0000-0000-000000000001", port=5901),
         domain_xml("db", "11111111-0000-0000-0000-000000000002", port=5903, running=False)],
        [domain_xml("mail", "11111111-0000-0000-0000-000000000003", port=5902),
         domain_xml("frozen", "11111111-0000-0000-0000-000000000004", port=5904).replace(
             "</domain>", f"{PAUSED}</domain>")],
    )  # fmt: skip
    repo = importrun.new_repo(tmp_path)
    env = _env(tmp_path)
    importrun.round_trip(
        repo, tmp_path, "--node", f"kvm1={kvm1}", "--node", f"kvm2={kvm2}",
        env=env, only="vm",
    )  # fmt: skip
    text = (repo / "vms.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["controller"] == importrun.HOST and doc["storage"] == "shared"
    assert doc["nodes"] == {"kvm1": {"uri": kvm1}, "kvm2": {"uri": kvm2}}
    assert doc["vms"] == {
        "db": {"node": "kvm1", "vnc_port": 5903, "state": "shutoff"},
        "mail": {"node": "kvm2", "vnc_port": 5902, "state": "running"},
        "web": {"node": "kvm1", "vnc_port": 5901, "state": "running"},
    }
    assert "# not imported: vm/frozen: state paused" in text
    # A second import adds nothing and leaves the file as it is.
    again = importrun.import_to(
        repo, "--node", f"kvm1={kvm1}", "--node", f"kvm2={kvm2}", "--only", "vm", env=env
    )
    assert again.returncode == 0 and (repo / "vms.yaml").read_text() == text
    assert "not imported: vm/web: already in vms.yaml" in again.stderr


def test_autoport_is_said_to_change_on_the_first_run(tmp_path: Path) -> None:
    kvm1, _ = _nodes(tmp_path, [domain_xml("web", "11111111-0000-0000-0000-000000000001")], [])
    repo = importrun.new_repo(tmp_path)
    env = _env(tmp_path)
    imp = importrun.import_to(repo, "--node", f"kvm1={kvm1}", "--only", "vm", env=env)
    assert imp.returncode == 0, imp.stderr
    assert "vm/web: the first run changes" in imp.stderr  # said, not discovered
    assert "autoport" in (repo / "vms.yaml").read_text()
    plan = importrun.dry_run(repo, tmp_path, "--only", "vm", env=env)
    assert plan.returncode == 2 and "web" in plan.stdout  # and so it is


def test_node_uris_the_host_does_not_allow(tmp_path: Path) -> None:
    kvm1, _ = _nodes(tmp_path, [], [])
    repo = importrun.new_repo(tmp_path)
    imp = importrun.import_to(
        repo, "--node", f"kvm1={kvm1}", "--node", "kvm9=qemu+ext:///system?command=/bin/sh",
        "--node", "oops", "--only", "vm", env=_env(tmp_path, allow=False),
    )  # fmt: skip
    assert imp.returncode == 1
    assert "error: node/kvm1: " in imp.stderr and "test driver is not allowed" in imp.stderr
    assert "error: node/kvm9: " in imp.stderr and "runs a command" in imp.stderr
    assert "--node 'oops': expected NAME=URI" in imp.stderr
    assert "Traceback" not in imp.stderr
    assert not (repo / "vms.yaml").exists()


def test_domains_that_cannot_be_placed() -> None:
    vnc = VncConfig(5900, False)
    lives = {
        "a": NodeLive({"twice": DomainLive("twice", "u1", "running", vnc=vnc),
                       "temp": DomainLive("temp", "u2", "running", persistent=False)}),
        "b": NodeLive({"twice": DomainLive("twice", "u1", "shutoff", vnc=vnc)}),
        "c": NodeLive(error="node c (qemu+ssh://c/system) is unreachable: no route"),
    }  # fmt: skip
    found = from_nodes({"a": "test:///a", "b": "test:///b", "c": "qemu+ssh://c/system"}, lives, "x")
    assert {s.address: s.reason for s in found.skipped} == {
        "vm/temp": "transient (no persistent definition)",
        "vm/twice": "defined on several nodes (a, b)",
    }
    assert [e.address for e in found.errors] == ["node/c"]
    assert [r.name for r in found.resources] == ["a", "b"]  # the nodes, no VM
