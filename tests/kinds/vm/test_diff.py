"""Golden cases for the VM provider's pure diff (:func:`reconciler.kinds.vm.placement.plan_vms`).

Each file in tests/kinds/vm/golden/ holds ``vms`` (the vms.yaml text, loaded through the real
loader so defaults and validation apply), optional ``files`` (repository files such as
``vms/<vm>.xml`` definitions, read by the same code ``read`` uses), ``live`` (nodes as plain
data) and the expected changes and errors. No libvirt needed: diff is pure.

Live notation: ``live: {<node>: {memory: MiB, cpus: N, error: "...", domains: {<name>:
{uuid, state, persistent, vnc, live_port, memory: MiB, vcpus}}}}``. Defaults: a node has
65536 MiB and 64 CPUs; a domain has UUID ``uuid-<name>``, is running and persistent, has
``vnc: auto`` (a port number, ``auto`` or ``none``), 1024 MiB and 1 vCPU; a running domain
with a fixed port listens on it unless ``live_port`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import desired as desired_mod
from reconciler.kinds.vm.domainxml import VncConfig
from reconciler.kinds.vm.placement import plan_vms, unmanaged_domains
from reconciler.kinds.vm.read import DomainLive, NodeLive, VmLive, read_definitions
from tests import golden, hostcfg

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(GOLDEN.glob("*.yaml"))


def _domain(name: str, d: dict[str, Any]) -> DomainLive:
    vnc_raw = d.get("vnc", "auto")
    vnc = None
    if vnc_raw == "auto":
        vnc = VncConfig(None, True)
    elif vnc_raw != "none":
        vnc = VncConfig(int(vnc_raw), False)
    state = d.get("state", "running")
    live_port = d.get("live_port")
    if live_port is None and state != "shutoff" and vnc is not None and not vnc.autoport:
        live_port = vnc.port
    return DomainLive(
        name=name,
        uuid=d.get("uuid", f"uuid-{name}"),
        state=state,
        persistent=d.get("persistent", True),
        vnc=vnc,
        live_vnc_port=live_port,
        memory_kib=int(d.get("memory", 1024)) * 1024,
        vcpus=int(d.get("vcpus", 1)),
    )


def live_from(data: dict[str, Any], definitions: Any = None) -> VmLive:
    """Build a VmLive from the golden notation above."""
    nodes: dict[str, NodeLive] = {}
    for n, nd in (data or {}).items():
        nd = nd or {}
        if nd.get("error"):
            nodes[n] = NodeLive(error=nd["error"])
            continue
        domains = {k: _domain(k, v or {}) for k, v in (nd.get("domains") or {}).items()}
        nodes[n] = NodeLive(domains, int(nd.get("memory", 65536)) * 1024, int(nd.get("cpus", 64)))
    return VmLive(nodes, definitions or {})


def load_case(case: Path, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], VmLive]:
    """(case data, validated vms.yaml data, live state) of one golden file."""
    data = yaml.safe_load(case.read_text())
    for rel, text in (data.get("files") or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "vms.yaml").write_text(data["vms"])
    config = desired_mod.load_vms(tmp_path, config=hostcfg.permissive())  # test:/// nodes
    assert config is not None
    live_data = data.get("live") or {}
    # Every node of vms.yaml is read; an unlisted one is empty.
    for n in config["nodes"]:
        live_data.setdefault(n, {})
    return data, config, live_from(live_data, read_definitions(config, tmp_path))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden(case: Path, tmp_path: Path) -> None:
    data, config, live = load_case(case, tmp_path)
    changes, errors = plan_vms(config, live)
    expected = data["expected"]
    pairs = golden.check(expected, changes, errors)
    for want, have in pairs:
        for w in want.get("warnings", []):
            assert any(w in h for h in have.get("warnings", [])), (w, have.get("warnings"))
        if "after" in want:
            assert have["after"] == want["after"]
    if "unmanaged" in expected:
        assert unmanaged_domains(config, live) == expected["unmanaged"]
    # Pure and deterministic: the same inputs plan the same again.
    again = plan_vms(config, live)
    assert [c.to_dict() for c in again[0]] == [c.to_dict() for c in changes]


def test_cases_exist() -> None:
    assert len(CASES) >= 12


def test_auto_ports_at_scale_match_the_plain_lowest_free_search(tmp_path: Path) -> None:
    """3,000 VMs without a port: each gets the lowest port free on its node, in name order.

    The allocator skips the run of ports already claimed instead of rescanning it from 5900
    for every VM (work that grew with VMs x ports); this checks it against that plain
    search, with ports held by domains git does not manage on one node and VMs that keep
    the port they have.
    """
    nodes = ["kvm0", "kvm1", "kvm2"]
    names = [f"vm{i:04d}" for i in range(3000)]
    lines = ["controller: ctl", "storage: shared", "nodes:"]
    lines += [f"  {n}: {{uri: 'test:///{n}'}}" for n in nodes]
    lines.append("vms:")
    lines += [f"  {vm}: {{node: {nodes[i % 3]}, state: shutoff}}" for i, vm in enumerate(names)]
    (tmp_path / "vms.yaml").write_text("\n".join(lines) + "\n")
    config = desired_mod.load_vms(tmp_path, config=hostcfg.permissive())  # test:/// nodes
    assert config is not None
    # Every tenth VM already has a fixed port (kept); the rest have autoport and no port.
    # Domains git does not manage hold 5901 and 5905 on kvm1 only.
    doms: dict[str, dict[str, Any]] = {n: {} for n in nodes}
    kept = {vm: 7000 + i for i, vm in enumerate(names) if i % 10 == 0}
    for i, vm in enumerate(names):
        doms[nodes[i % 3]][vm] = {"state": "shutoff", "vnc": kept.get(vm, "auto")}
    doms["kvm1"]["legacy-a"] = {"state": "shutoff", "vnc": 5901}
    doms["kvm1"]["legacy-b"] = {"state": "running", "vnc": 5905}
    live = live_from({n: {"domains": d} for n, d in doms.items()})

    changes, errors = plan_vms(config, live)

    assert errors == []
    got = {
        op.args["vm"]: op.args["vnc_port"]
        for ch in changes
        for op in ch.ops
        if op.op == "set_vnc_port"
    }
    # The plain search: in name order, from 5900, the first port nobody claimed and no
    # unmanaged domain holds on the VM's node.
    claimed = set(kept.values())
    foreign = {"kvm1": {5901, 5905}}
    want: dict[str, int] = {}
    for i, vm in enumerate(names):
        if vm in kept:
            continue
        port = 5900
        while port in claimed or port in foreign.get(nodes[i % 3], set()):
            port += 1
        want[vm] = port
        claimed.add(port)
    assert got == want
    assert len(set(got.values()) | set(kept.values())) == len(names)  # unique, cluster-wide
