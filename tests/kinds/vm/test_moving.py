"""VMs being moved are recorded in the state dir (issue 14), against libvirt's ``test:///``
driver (real libvirt calls, no daemon; the nodes of :mod:`.test_testdriver`).

A move is recorded before its first write and the record goes when it is done; a record that
cannot be written stops the move; the states only an interrupted live migration leaves (the
guest paused on the source, alone or beside the copy running on the target) converge when a
record says the migration was ours, and stay an error without one. The test driver cannot
migrate: the kill suite covers a migration killed mid-way on real daemons.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from reconciler import engine
from reconciler.errors import ProviderError, StateError
from reconciler.kinds.vm import moving
from reconciler.kinds.vm.libvirtio import NodeIO
from reconciler.kinds.vm.provider import VmProvider
from reconciler.state import StateDir
from tests.kinds.vm import test_testdriver
from tests.kinds.vm.test_testdriver import DESIRED, U2, Nodes, domain_xml

nodes = test_testdriver.nodes  # the fixture: test:/// nodes opened once per test


def _run(provider: VmProvider, state: StateDir) -> engine.RunResult:
    plan, _ = engine.make_plan(DESIRED, [provider])
    return engine.apply_plan(DESIRED, [provider], plan, state)


def _records(state: StateDir) -> dict[str, dict[str, Any]]:
    return StateDir(state.path).ours("vm")  # read afresh


def test_a_move_is_recorded_until_its_source_copy_is_undefined(
    nodes: Nodes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes.add("kvm1", [domain_xml("vm2", U2, port=5901, running=False)])
    nodes.add("kvm4", [])
    cfg = nodes.config({"vm2": {"node": "kvm4"}})
    state = StateDir(tmp_path / "state")

    def crash(self: NodeIO, uuid: str) -> None:
        raise ProviderError("simulated crash between define and undefine")

    with monkeypatch.context() as m:
        m.setattr(NodeIO, "undefine", crash)
        result = _run(VmProvider(cfg, tmp_path, connect=nodes.connect, state=state), state)
    assert not result.ok
    assert _records(state) == {"vm2": {"uuid": U2, "from": "kvm1", "to": "kvm4", "how": "move",
                                       "intent": "moving VM vm2 from kvm1 to kvm4"}}  # fmt: skip
    result = _run(VmProvider(cfg, tmp_path, connect=nodes.connect, state=state), state)
    assert result.ok, result.errors
    assert "vm2" not in nodes.domains("kvm1") and nodes.domains("kvm4")["vm2"][:2] == (U2, True)
    assert _records(state) == {}


def test_a_move_that_cannot_be_recorded_is_not_started(nodes: Nodes, tmp_path: Path) -> None:
    nodes.add("kvm1", [domain_xml("vm2", U2, port=5901, running=False)])
    nodes.add("kvm4", [])
    state = StateDir(tmp_path / "state")

    def refuse(*_args: object, **_kw: object) -> None:
        raise StateError(f"cannot write {state.ours_file}: Read-only file system")

    state.intend = refuse  # type: ignore[method-assign]
    p = VmProvider(nodes.config({"vm2": {"node": "kvm4"}}), tmp_path, connect=nodes.connect,
                   state=state)  # fmt: skip
    result = _run(p, state)
    assert [e.address for e in result.errors] == ["vm/vm2"]
    assert "could not be recorded as ours" in result.errors[0].message
    assert "vm2" not in nodes.domains("kvm4") and "vm2" in nodes.domains("kvm1")


def _paused_source(
    nodes: Nodes, tmp_path: Path, spec: dict[str, Any], *, on_target: bool, recorded: bool
) -> tuple[VmProvider, StateDir]:
    """vm2 paused on kvm1 (the source), running on kvm4 too when ``on_target``; the state
    dir records the migration kvm1 -> kvm4 when ``recorded``; git says ``spec``."""
    nodes.add("kvm1", [domain_xml("vm2", U2, port=5901)])
    nodes.add("kvm4", [domain_xml("vm2", U2, port=5901)] if on_target else [])
    state = StateDir(tmp_path / "state")
    if recorded:
        state.intend("vm", "vm2", "moving VM vm2 from kvm1 to kvm4",
                     {"uuid": U2, "from": "kvm1", "to": "kvm4", "how": "migrate"})  # fmt: skip
    p = VmProvider(nodes.config({"vm2": spec}), tmp_path, connect=nodes.connect, state=state)
    nodes.connect("kvm1", nodes.uris["kvm1"]).conn.lookupByName("vm2").suspend()
    return p, state


def test_paused_on_the_source_of_our_migration_is_resumed(nodes: Nodes, tmp_path: Path) -> None:
    """The target never ran it (its incoming domain was dropped): the paused source copy is
    the VM. Here git moved it back to kvm1, so resuming is all that is left."""
    spec = {"node": "kvm1", "vnc_port": 5901}
    p, state = _paused_source(nodes, tmp_path, spec, on_target=False, recorded=True)
    plan, _ = engine.make_plan(DESIRED, [p])
    assert plan.errors == []
    (change,) = plan.changes
    assert [op.op for op in change.ops] == ["resume"]
    assert "interrupted" in change.warnings[0] and "resumed on kvm1" in change.warnings[0]
    result = engine.apply_plan(DESIRED, [p], plan, state)
    assert result.ok, result.errors
    assert nodes.connect("kvm1", nodes.uris["kvm1"]).state(U2) == "running"
    assert _records(state) == {}


def test_paused_on_the_source_and_migrating_again_resumes_first(
    nodes: Nodes, tmp_path: Path
) -> None:
    spec = {"node": "kvm4", "live_migrate": True}
    p, _ = _paused_source(nodes, tmp_path, spec, on_target=False, recorded=True)
    plan, _ = engine.make_plan(DESIRED, [p])
    assert [op.op for op in plan.changes[0].ops] == ["resume", "migrate"]


def test_stale_paused_copy_beside_the_running_one_is_discarded(
    nodes: Nodes, tmp_path: Path
) -> None:
    """The target resumed the guest, the source was never told: the paused copy is stale."""
    spec = {"node": "kvm4", "vnc_port": 5901, "live_migrate": True}
    p, state = _paused_source(nodes, tmp_path, spec, on_target=True, recorded=True)
    plan, _ = engine.make_plan(DESIRED, [p])
    assert plan.errors == []
    assert [op.op for op in plan.changes[0].ops] == ["discard_paused"]
    result = engine.apply_plan(DESIRED, [p], plan, state)
    assert result.ok, result.errors
    assert "vm2" not in nodes.domains("kvm1")
    assert nodes.domains("kvm4")["vm2"][:2] == (U2, True)
    assert _records(state) == {}


def test_without_a_record_a_paused_copy_beside_a_running_one_is_an_error(
    nodes: Nodes, tmp_path: Path
) -> None:
    spec = {"node": "kvm4", "vnc_port": 5901}
    p, _ = _paused_source(nodes, tmp_path, spec, on_target=True, recorded=False)
    plan, _ = engine.make_plan(DESIRED, [p])
    assert plan.changes == []
    assert [e.address for e in plan.errors] == ["vm/vm2"]
    assert "running on both" in plan.errors[0].message


def _incoming_copy(nodes: Nodes, tmp_path: Path) -> tuple[VmProvider, Any]:
    """vm2 running on kvm1; on kvm4 a transient copy with its UUID, as the incoming side of
    a live migration is; the state dir records the migration kvm1 -> kvm4."""
    nodes.add("kvm1", [domain_xml("vm2", U2, port=5901)])
    nodes.add("kvm4", [])
    state = StateDir(tmp_path / "state")
    state.intend("vm", "vm2", "moving VM vm2 from kvm1 to kvm4",
                 {"uuid": U2, "from": "kvm1", "to": "kvm4", "how": "migrate"})  # fmt: skip
    spec = {"node": "kvm4", "vnc_port": 5901, "live_migrate": True}
    p = VmProvider(nodes.config({"vm2": spec}), tmp_path, connect=nodes.connect, state=state)
    copy = nodes.connect("kvm4", nodes.uris["kvm4"]).conn.createXML(
        domain_xml("vm2", U2, port=5901), 0
    )
    return p, copy


def test_the_read_waits_for_the_incoming_copy_of_our_migration_to_go(
    nodes: Nodes, tmp_path: Path
) -> None:
    """A run right after one killed mid-migration: libvirt removes the incoming copy a
    moment later; the read waits for that, then plans the migration again."""
    p, copy = _incoming_copy(nodes, tmp_path)
    threading.Timer(0.5, copy.destroy).start()
    plan, _ = engine.make_plan(DESIRED, [p])
    assert plan.errors == []
    assert [op.op for op in plan.changes[0].ops] == ["migrate"]


def test_an_incoming_copy_that_stays_is_an_error_that_says_why(
    nodes: Nodes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(moving, "SETTLE_WAIT", 0.3)
    p, _ = _incoming_copy(nodes, tmp_path)
    plan, _ = engine.make_plan(DESIRED, [p])
    assert plan.changes == []
    (error,) = plan.errors
    assert "has not yet removed its incoming copy on kvm4" in error.message
    assert "never define that copy" in error.message
