"""The ``vm`` provider against libvirt's ``test:///`` driver: real libvirt calls, no daemon.

Each node is a private in-memory ``test:///<tmp>/<node>.xml`` connection. Such a connection
does not share state with another open of the same file, so every test opens each node once
(:class:`Nodes`) and hands the provider a factory returning those connections: plan, apply
and re-read (and a second run) then all see the same nodes. The test driver cannot migrate,
so live migration is not covered here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from reconciler import engine
from reconciler.errors import ProviderError
from reconciler.kinds.vm.domainxml import parse_domain_xml
from reconciler.kinds.vm.libvirtio import NodeIO, open_node
from reconciler.kinds.vm.provider import VmProvider
from reconciler.model import HostDesired

NS = "http://libvirt.org/schemas/domain/test/1.0"
DESIRED = HostDesired(host="master")


def domain_xml(
    name: str, uuid: str, *, port: int | None = None, running: bool = True, mem_mib: int = 256
) -> str:
    """A small test-driver domain; ``port`` None means VNC with autoport."""
    vnc = (
        "<graphics type='vnc' autoport='yes'/>"
        if port is None
        else f"<graphics type='vnc' port='{port}' autoport='no'/>"
    )
    state = "" if running else "<test:runstate>5</test:runstate>"
    return (
        f"<domain type='test' xmlns:test='{NS}'><name>{name}</name><uuid>{uuid}</uuid>"
        f"<memory unit='MiB'>{mem_mib}</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        f"<devices>{vnc}</devices>{state}</domain>"
    )


def node_xml(domains: list[str], mem_mib: int = 8192, cpus: int = 8) -> str:
    """A test-driver node file holding ``domains``."""
    cpu = (
        f"<cpu><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads>"
        f"<mhz>2000</mhz><model>x86_64</model><active>{cpus}</active></cpu>"
    )
    return f"<node>{cpu}<memory>{mem_mib * 1024}</memory>{''.join(domains)}</node>"


class Nodes:
    """The nodes of one test: node files written once, each opened once, handed out again."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.uris: dict[str, str] = {}
        self.open: dict[str, NodeIO] = {}

    def add(self, name: str, domains: list[str], **kw: Any) -> None:
        path = self.tmp / f"{name}.xml"
        path.write_text(node_xml(domains, **kw))
        self.uris[name] = f"test://{path}"

    def add_unreachable(self, name: str) -> None:
        self.uris[name] = f"test://{self.tmp}/no-such-node-{name}.xml"

    def connect(self, name: str, uri: str) -> NodeIO:
        if name not in self.open:
            self.open[name] = open_node(name, uri)
        return self.open[name]

    def config(self, vms: dict[str, Any]) -> dict[str, Any]:
        for spec in vms.values():
            spec.setdefault("vnc_port", "auto")
            spec.setdefault("state", "running")
        return {
            "controller": "master",
            "storage": "shared",
            "nodes": {n: {"uri": u} for n, u in self.uris.items()},
            "vms": vms,
        }

    def domains(self, node: str) -> dict[str, tuple[str, bool, Any]]:
        """name -> (UUID, active, VNC config) on ``node``, read afresh."""
        out = {}
        for d in self.open[node].conn.listAllDomains(0):
            info = parse_domain_xml(d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            out[d.name()] = (d.UUIDString(), bool(d.isActive()), info.vnc)
        return out


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    n = Nodes(tmp_path)
    yield n
    for io in n.open.values():
        io.conn.close()


U2 = "22222222-0000-4000-8000-000000000002"
U1 = "11111111-0000-4000-8000-000000000001"
UX = "99999999-0000-4000-8000-000000000009"


def run(provider: VmProvider) -> engine.RunResult:
    plan, _ = engine.make_plan(DESIRED, [provider])
    return engine.apply_plan(DESIRED, [provider], plan, None)


def test_move_rewrites_vnc_and_keeps_uuid(nodes: Nodes, tmp_path: Path) -> None:
    # The failure: vm2 on kvm1 has 5901; on kvm4, "other" (not in git) runs on 5901.
    nodes.add("kvm1", [domain_xml("vm2", U2, port=5901, running=False)])
    nodes.add("kvm4", [domain_xml("other", UX, port=5901)])
    p = VmProvider(nodes.config({"vm2": {"node": "kvm4"}}), tmp_path, connect=nodes.connect)
    plan, _ = engine.make_plan(DESIRED, [p])
    assert [op.op for op in plan.changes[0].ops] == ["define", "undefine", "start"]
    result = engine.apply_plan(DESIRED, [p], plan, None)
    assert result.ok, result.errors
    kvm4 = nodes.domains("kvm4")
    assert "vm2" not in nodes.domains("kvm1")
    uuid, active, vnc = kvm4["vm2"]
    assert uuid == U2 and active
    assert vnc.port == 5900 and not vnc.autoport
    assert kvm4["other"][1] and kvm4["other"][2].port == 5901  # untouched
    # A second run has nothing to do (stable port).
    again, _ = engine.make_plan(DESIRED, [p])
    assert again.changes == [] and again.errors == []


def test_interrupted_move_is_finished_next_run(
    nodes: Nodes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes.add("kvm1", [domain_xml("vm2", U2, port=5901, running=False)])
    nodes.add("kvm4", [])
    cfg = nodes.config({"vm2": {"node": "kvm4"}})
    p = VmProvider(cfg, tmp_path, connect=nodes.connect)

    def crash(self: NodeIO, uuid: str) -> None:
        raise ProviderError("simulated crash between define and undefine")

    with monkeypatch.context() as m:
        m.setattr(NodeIO, "undefine", crash)
        result = run(p)
    assert not result.ok
    # Defined on both nodes, same UUID: never absent from both.
    assert nodes.domains("kvm1")["vm2"][0] == nodes.domains("kvm4")["vm2"][0] == U2
    p2 = VmProvider(cfg, tmp_path, connect=nodes.connect)  # the next run
    plan, _ = engine.make_plan(DESIRED, [p2])
    assert [op.op for op in plan.changes[0].ops] == ["undefine", "start"]
    assert any("interrupted move" in w for w in plan.changes[0].warnings)
    result = engine.apply_plan(DESIRED, [p2], plan, None)
    assert result.ok, result.errors
    assert "vm2" not in nodes.domains("kvm1")
    assert nodes.domains("kvm4")["vm2"][:2] == (U2, True)


def test_define_from_definition_and_state_changes(nodes: Nodes, tmp_path: Path) -> None:
    (tmp_path / "vms").mkdir()
    (tmp_path / "vms" / "mail1.xml").write_text(
        domain_xml("mail1", U1).replace(" xmlns:test='" + NS + "'", "")
    )
    nodes.add(
        "kvm1",
        [domain_xml("up", UX, port=5905, running=False), domain_xml("down", U2, port=5906)],
    )
    cfg = nodes.config(
        {
            "mail1": {"node": "kvm1", "vnc_port": 5903, "definition": "vms/mail1.xml"},
            "up": {"node": "kvm1", "vnc_port": 5905},
            "down": {"node": "kvm1", "vnc_port": 5906, "state": "shutoff"},
        }
    )
    p = VmProvider(cfg, tmp_path, connect=nodes.connect)
    result = run(p)
    assert result.ok, result.errors
    doms = nodes.domains("kvm1")
    assert doms["mail1"][1] and doms["mail1"][2].port == 5903 and not doms["mail1"][2].autoport
    assert doms["up"][1] and not doms["down"][1]


def test_unmanaged_untouched_and_unreachable_node(nodes: Nodes, tmp_path: Path) -> None:
    nodes.add("kvm1", [domain_xml("b", U2, port=5901, running=False), domain_xml("x", UX)])
    nodes.add("kvm2", [])
    nodes.add_unreachable("kvm3")
    cfg = nodes.config({"a": {"node": "kvm3"}, "b": {"node": "kvm2", "state": "shutoff"}})
    p = VmProvider(cfg, tmp_path, connect=nodes.connect)
    plan, _ = engine.make_plan(DESIRED, [p])
    assert {e.address for e in plan.errors} == {"node/kvm3", "vm/a"}
    assert [c.address for c in plan.changes] == ["vm/b"]
    result = engine.apply_plan(DESIRED, [p], plan, None)
    assert not result.ok  # the unreachable node is a plan error: exit 1
    assert result.applied == ["vm/b"] and result.errors == []
    assert "b" in nodes.domains("kvm2") and "b" not in nodes.domains("kvm1")
    assert nodes.domains("kvm1")["x"][:2] == (UX, True)


def test_running_vm_blocked_without_permission(nodes: Nodes, tmp_path: Path) -> None:
    nodes.add("kvm1", [domain_xml("vm2", U2, port=5901)])
    nodes.add("kvm4", [])
    p = VmProvider(nodes.config({"vm2": {"node": "kvm4"}}), tmp_path, connect=nodes.connect)
    result = run(p)
    assert not result.ok and result.plan.changes[0].refused
    assert nodes.domains("kvm1")["vm2"][:2] == (U2, True)
    assert nodes.domains("kvm4") == {}


def test_running_vm_moved_with_allow_stop(nodes: Nodes, tmp_path: Path) -> None:
    nodes.add("kvm1", [domain_xml("vm2", U2, port=5901)])
    nodes.add("kvm4", [])
    cfg = nodes.config({"vm2": {"node": "kvm4", "allow_stop": True}})
    p = VmProvider(cfg, tmp_path, connect=nodes.connect)
    result = run(p)
    assert result.ok, result.errors
    assert [o.op for o in result.plan.changes[0].ops] == ["shutdown", "define", "undefine", "start"]
    assert nodes.domains("kvm4")["vm2"][:2] == (U2, True)
    assert "vm2" not in nodes.domains("kvm1")


def test_undefine_refused_when_target_copy_missing(nodes: Nodes, tmp_path: Path) -> None:
    # apply re-checks the safety rule itself: a failed define means no undefine.
    nodes.add("kvm1", [domain_xml("vm2", U2, port=5901, running=False)])
    nodes.add("kvm4", [])
    p = VmProvider(nodes.config({"vm2": {"node": "kvm4"}}), tmp_path, connect=nodes.connect)
    plan, _ = engine.make_plan(DESIRED, [p])

    def failing_define(self: NodeIO, xml: str) -> str:
        raise ProviderError("disk full")

    orig = NodeIO.define
    try:
        NodeIO.define = failing_define  # type: ignore[method-assign]
        result = engine.apply_plan(DESIRED, [p], plan, None)
    finally:
        NodeIO.define = orig  # type: ignore[method-assign]
    assert not result.ok and "define failed" in result.errors[0].message
    assert nodes.domains("kvm1")["vm2"][0] == U2


def test_read_gets_every_document_right_in_every_state(nodes: Nodes, tmp_path: Path) -> None:
    """The read makes one XMLDesc(0) per domain and, for a running one, its state and
    inactive XML: checked on real test-driver domains in each state, including a running
    domain whose definition was changed since it started (live and configured ports
    differ) and a transient one (no definition)."""
    u3, u4, u5 = (f"{i}{i}{i}{i}0000-0000-4000-8000-00000000000{i}" for i in (3, 4, 5))
    nodes.add(
        "kvm1",
        [
            domain_xml("run", U1, port=5901),
            domain_xml("off", U2, port=5902, running=False),
            domain_xml("paused", u3, port=5903),
            domain_xml("auto", u4, port=None, mem_mib=512),
        ],
    )
    io = nodes.connect("kvm1", nodes.uris["kvm1"])
    io.conn.lookupByName("paused").suspend()
    run_dom = io.conn.lookupByName("run")  # redefined while running: takes effect on restart
    io.conn.defineXML(domain_xml("run", U1, port=5911))
    assert run_dom.isActive()
    io.conn.createXML(domain_xml("transient", u5, port=5905), 0)
    provider = VmProvider(nodes.config({}), tmp_path, connect=nodes.connect)

    node = provider.read(DESIRED).nodes["kvm1"]

    assert node.error is None
    d = node.domains
    assert sorted(d) == ["auto", "off", "paused", "run", "transient"]
    assert (d["run"].uuid, d["run"].state, d["run"].persistent) == (U1, "running", True)
    assert d["run"].config_port == 5911 and d["run"].live_vnc_port == 5901
    assert (d["off"].uuid, d["off"].state, d["off"].config_port) == (U2, "shutoff", 5902)
    assert d["off"].live_vnc_port is None
    assert (d["paused"].uuid, d["paused"].state, d["paused"].live_vnc_port) == (u3, "paused", 5903)
    assert d["auto"].vnc is not None and d["auto"].vnc.autoport
    assert d["auto"].config_port is None and d["auto"].memory_kib == 512 * 1024
    t = d["transient"]
    assert (t.uuid, t.state, t.persistent, t.live_vnc_port) == (u5, "running", False, 5905)
