"""End to end against real libvirt daemons (QEMU driver, software emulation): issue 5.

Two independent nodes, "kvm1" and "kvm2" (reconciler/libvirtd.py, shared with the lab: one
libvirtd + virtlogd each, in their own mount, network and PID namespaces), run small diskless
domains under TCG.

1. The problem, reproduced for real: two domains with VNC port 5901 on one node, the second
   does not start; the same for a VM moved by hand onto a node where 5901 is taken.
2. The reconciler's answer: the same move through ``python -m reconciler --only vm`` starts
   cleanly, and a move interrupted between define and undefine (a run killed there, and the
   state such a crash leaves built by hand) is completed by the next run.

The error texts below are what libvirt 9.0.0 / QEMU 7.2 (Debian bookworm) really say; the
tests assert on the stable part of each and print the whole message (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.libvirtd import Node, small_domain_xml
from tests import hostcfg
from tests.libvirtnodes import started_nodes

# libvirt's own allocator already holds the port for another domain of the same daemon:
#   "internal error: Failed to reserve port 5901"
RESERVE_FAILED = "Failed to reserve port 5901"
# The port is held by something that daemon's allocator does not know about (a stray process,
# or a domain of another daemon sharing the network namespace); QEMU itself fails to bind:
#   "internal error: process exited while connecting to monitor: <timestamp>
#    qemu-system-x86_64: -vnc 127.0.0.1:1,audiodev=audio1: Failed to find an available port:
#    Address already in use"
BIND_FAILED = "Failed to find an available port: Address already in use"

PROJECT_ROOT = Path(__file__).resolve().parents[3]
NODE_NAMES = ("kvm1", "kvm2")


@dataclass
class Cluster:
    """The running nodes and one open connection to each."""

    nodes: dict[str, Node]
    conns: dict[str, Any]  # libvirt.virConnect: libvirt-python ships no type information


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, Node]]:
    """Two real daemons for the whole module: starting them costs ~4 s (QEMU probing)."""
    with started_nodes(NODE_NAMES) as started:
        yield started


@pytest.fixture
def cluster(nodes: dict[str, Node]) -> Iterator[Cluster]:
    """Connections to both nodes; every domain on them is removed after the test."""
    import libvirt

    conns = {name: libvirt.open(node.uri) for name, node in nodes.items()}
    try:
        yield Cluster(nodes, conns)
    finally:
        for conn in conns.values():
            _wipe(conn)
            conn.close()


def _wipe(conn: Any) -> None:
    """Destroy and undefine every domain, so each test starts from empty nodes."""
    for dom in conn.listAllDomains():
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()


def _define(conn: Any, name: str, vnc_port: int, domain_uuid: str | None = None) -> Any:
    return conn.defineXML(small_domain_xml(name, vnc_port=vnc_port, domain_uuid=domain_uuid))


def _vnc(xml: str) -> tuple[int | None, str | None]:
    """(port, autoport) of the domain's VNC console, port None when not set or -1."""
    graphics = ET.fromstring(xml).find("./devices/graphics[@type='vnc']")
    assert graphics is not None, f"no VNC console in\n{xml}"
    port = int(graphics.get("port", "-1"))
    return (port if port > 0 else None), graphics.get("autoport")


def _start_error(dom: Any) -> str:
    """Start ``dom``, which must fail; return libvirt's message (also printed, for the record)."""
    import libvirt

    with pytest.raises(libvirt.libvirtError) as caught:
        dom.create()
    message = str(caught.value)
    print(f"\nlibvirt refused to start {dom.name()}: {message}")
    return message


def test_nodes_are_isolated_and_use_tcg(cluster: Cluster) -> None:
    """Sanity of the harness: separate daemons, TCG, VNC on loopback of each node only."""
    host_uuids = {
        ET.fromstring(conn.getCapabilities()).findtext("./host/uuid")
        for conn in cluster.conns.values()
    }
    assert len(host_uuids) == len(NODE_NAMES)  # libvirtd.conf host_uuid, distinct per node
    doms = {name: _define(conn, "probe", 5901) for name, conn in cluster.conns.items()}
    for name, dom in doms.items():
        # The same port on both nodes at once: each node has its own 127.0.0.1.
        dom.create()
        assert dom.isActive()
        node = cluster.nodes[name]
        assert ("127.0.0.1", 5901) in node.tcp_listeners()
        assert ("0.0.0.0", 5901) not in node.tcp_listeners()
        log = node.qemu_log("probe")
        assert "-accel tcg" in log, log
        assert "-vnc 127.0.0.1:1" in log, log
    # A domain defined on one node is not visible on the other.
    assert [d.name() for d in cluster.conns["kvm1"].listAllDomains()] == ["probe"]
    doms["kvm1"].destroy()
    doms["kvm1"].undefine()
    assert [d.name() for d in cluster.conns["kvm2"].listAllDomains()] == ["probe"]


def test_same_node_second_domain_on_5901_fails_to_start(cluster: Cluster) -> None:
    """Issue 5's failure on one node ("node A"): the second domain on 5901 will not start."""
    import libvirt

    conn = cluster.conns["kvm1"]
    first = _define(conn, "web", 5901)
    second = _define(conn, "db", 5901)  # defining is accepted: the clash shows only at start
    first.create()
    assert first.isActive()
    assert _vnc(first.XMLDesc(0)) == (5901, "no")

    message = _start_error(second)
    assert RESERVE_FAILED in message
    assert message == "internal error: Failed to reserve port 5901"
    assert not second.isActive()
    assert first.isActive()  # the running domain is unaffected
    # Whatever held the port, the failure leaves no half-started QEMU behind.
    assert second.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


def test_port_held_outside_libvirt_fails_with_address_in_use(cluster: Cluster) -> None:
    """The issue's other message: QEMU's own bind fails when libvirt's allocator saw nothing."""
    node = cluster.nodes["kvm1"]
    listener = subprocess.Popen(
        node.nsenter_net([sys.executable, "-c", _LISTENER, "5901"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        dom = _define(cluster.conns["kvm1"], "web", 5901)
        message = _start_error(dom)
        assert BIND_FAILED in message
        assert "-vnc 127.0.0.1:1" in message
        assert not dom.isActive()
    finally:
        listener.kill()
        listener.wait()
    dom.create()  # the same definition starts once the port is free again
    assert dom.isActive()


# Holds a TCP port on 127.0.0.1 (in whatever network namespace it runs in) until killed.
_LISTENER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
    print("listening", flush=True)
    sys.stdin.read()
    """
)


def test_manual_move_onto_node_using_5901_fails_to_start(cluster: Cluster) -> None:
    """The hand-made move the reconciler exists to prevent, across two real daemons."""
    import libvirt

    kvm1, kvm2 = cluster.conns["kvm1"], cluster.conns["kvm2"]
    web = _define(kvm1, "web", 5901)
    db = _define(kvm2, "db", 5901)
    web.create()
    db.create()  # the same port on two nodes is fine: they are different hosts
    assert web.isActive() and db.isActive()
    web_uuid = web.UUIDString()

    # The operator's move with shared storage: stop, `virsh dumpxml --inactive`, define on
    # the target, undefine on the source, start on the target.
    web.destroy()  # no guest OS to honour an ACPI shutdown: a hard stop is the same here
    xml = web.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    moved = kvm2.defineXML(xml)
    web.undefine()
    assert moved.UUIDString() == web_uuid

    message = _start_error(moved)
    assert RESERVE_FAILED in message
    # The VM now exists nowhere but on kvm2, and does not run there: an outage.
    assert not moved.isActive()
    assert [d.name() for d in kvm1.listAllDomains()] == []
    assert db.isActive() and _vnc(db.XMLDesc(0)) == (5901, "no")


# --- the reconciler's answer ---------------------------------------------------------------


def _write_desired_state(
    repo: Path, nodes: dict[str, Node], vms: dict[str, dict[str, object]]
) -> None:
    """A desired-state directory whose vms.yaml points at the real daemons, and next to it
    the host configuration that allows their sockets (``_reconcile`` passes it)."""
    repo.mkdir(parents=True, exist_ok=True)
    hostcfg.write(repo.parent, allowed_dirs=[node.root for node in nodes.values()])
    doc = {
        "controller": "master",
        "storage": "shared",
        "nodes": {name: {"uri": node.uri} for name, node in nodes.items()},
        "vms": vms,
    }
    (repo / "vms.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (repo / "fleet.yaml").write_text("{}\n")  # a desired-state repository says it is one


def _reconcile_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--repo", str(tmp_path / "repo"), "--host", "master", "--only", "vm",
        "--lock-file", str(tmp_path / "reconcile.lock"), "--state-dir", str(tmp_path / "state"),
        "--log-format", "json", "--config", str(tmp_path / "host-config.yaml"), *extra,
    ]  # fmt: skip


def _reconcile(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m reconciler --only vm`` on the controller host, with private lock/state."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *_reconcile_args(tmp_path, *extra)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def _assert_moved_cleanly(cluster: Cluster, name: str, domain_uuid: str, tmp_path: Path) -> None:
    """``name`` is defined on kvm2 only, same UUID, running, on a port nobody else uses."""
    import libvirt

    assert name not in {d.name() for d in cluster.conns["kvm1"].listAllDomains()}
    dom = cluster.conns["kvm2"].lookupByName(name)
    assert dom.UUIDString() == domain_uuid
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    port, autoport = _vnc(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert port is not None and autoport == "no"
    others = {
        _vnc(d.XMLDesc(0))[0]
        for conn in cluster.conns.values()
        for d in conn.listAllDomains()
        if d.UUIDString() != domain_uuid
    }
    assert port not in others
    assert ("127.0.0.1", port) in cluster.nodes["kvm2"].tcp_listeners()
    # Converged: a dry run right after finds nothing left to do.
    again = _reconcile(tmp_path, "--dry-run", "--detailed-exitcode")
    assert again.returncode == 0, _output(again)


def _port_conflict_setup(cluster: Cluster) -> str:
    """kvm2 runs "db" on 5901; "web" (also 5901) is defined, shut off, on kvm1. Its UUID."""
    db = _define(cluster.conns["kvm2"], "db", 5901)
    db.create()
    web = _define(cluster.conns["kvm1"], "web", 5901)
    return str(web.UUIDString())


_DESIRED_VMS: dict[str, dict[str, object]] = {
    "db": {"node": "kvm2", "vnc_port": 5901, "state": "running"},
    "web": {"node": "kvm2", "vnc_port": "auto", "state": "running"},
}


def test_reconciler_move_starts_cleanly(cluster: Cluster, tmp_path: Path) -> None:
    """The same move, done by the reconciler, gets a free VNC port on the target and starts."""
    web_uuid = _port_conflict_setup(cluster)
    _write_desired_state(tmp_path / "repo", cluster.nodes, _DESIRED_VMS)

    started = time.monotonic()
    proc = _reconcile(tmp_path, "--output", "json")
    print(f"\nreconciler move took {time.monotonic() - started:.1f}s")
    assert proc.returncode == 0, _output(proc)
    plan = json.loads(proc.stdout)  # the plan contract of docs/plan.md
    assert [(c["address"], c["action"]) for c in plan["changes"]] == [("vm/web", "move")]
    assert plan["summary"]["move"] == 1 and plan["errors"] == []
    _assert_moved_cleanly(cluster, "web", web_uuid, tmp_path)


def test_reconciler_completes_move_interrupted_between_define_and_undefine(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The state a crash between "define on the target" and "undefine on the source" leaves,
    built by hand (the same UUID on both nodes, the target's copy on a free port): the next
    run recognises its own move and completes it."""
    web_uuid = _port_conflict_setup(cluster)
    _define(cluster.conns["kvm2"], "web", 5990, domain_uuid=web_uuid)
    _write_desired_state(tmp_path / "repo", cluster.nodes, _DESIRED_VMS)

    proc = _reconcile(tmp_path, "--output", "json")
    assert proc.returncode == 0, _output(proc)
    plan = json.loads(proc.stdout)
    assert plan["errors"] == [], plan  # recognised as our own move, not "on two nodes"
    assert [c["address"] for c in plan["changes"]] == ["vm/web"]
    _assert_moved_cleanly(cluster, "web", web_uuid, tmp_path)


# Runs the real CLI, but the process dies (os._exit: no cleanup, no journal, the lock file
# left behind with its pid) the moment the move reaches "undefine on the source": the target
# definition has been written and verified, the source one not yet removed.
_CRASH_AT_UNDEFINE = textwrap.dedent(
    """
    import os, sys
    from reconciler.kinds.vm import libvirtio
    from reconciler.cli import main

    def crash(self, uuid):
        print(f"crashing before undefine of {uuid} on {self.name}", file=sys.stderr, flush=True)
        os._exit(137)

    libvirtio.NodeIO.undefine = crash
    sys.exit(main(sys.argv[1:]))
    """
)


def test_run_killed_between_define_and_undefine_is_finished_by_the_next(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A real run, killed between define and undefine; the next run takes over the dead
    run's lock and completes the move."""
    web_uuid = _port_conflict_setup(cluster)
    _write_desired_state(tmp_path / "repo", cluster.nodes, _DESIRED_VMS)
    args = _reconcile_args(tmp_path)
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASH_AT_UNDEFINE, *args], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert crashed.returncode == 137, _output(crashed)
    assert "crashing before undefine" in crashed.stderr
    # What the crash left: the VM defined on both nodes (never on neither), the lock file.
    on = {
        n: {d.name(): d.UUIDString() for d in c.listAllDomains()} for n, c in cluster.conns.items()
    }
    assert on["kvm1"]["web"] == on["kvm2"]["web"] == web_uuid
    assert (tmp_path / "reconcile.lock").exists()
    assert not (tmp_path / "state" / "runs.jsonl").exists()

    proc = _reconcile(tmp_path, "--output", "json")
    assert proc.returncode == 0, _output(proc)
    assert "lock_taken_over" in proc.stderr, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["errors"] == [], plan
    (change,) = plan["changes"]
    assert change["address"] == "vm/web" and change["action"] == "move"
    assert any("interrupted move" in w for w in change["warnings"])
    _assert_moved_cleanly(cluster, "web", web_uuid, tmp_path)


def _link_nodes(cluster: Cluster) -> str:
    """A veth link between the two nodes' network namespaces (10.250.0.1 - 10.250.0.2), the
    path live-migration data takes; idempotent. Returns kvm2's migration URI."""
    kvm1, kvm2 = cluster.nodes["kvm1"], cluster.nodes["kvm2"]
    probe = subprocess.run(
        kvm1.nsenter_net(["ip", "link", "show", "mig1"]), capture_output=True, check=False
    )
    if probe.returncode != 0:
        subprocess.run(
            ["ip", "link", "add", "mig1", "netns", str(kvm1.init_pid), "type", "veth",
             "peer", "name", "mig2", "netns", str(kvm2.init_pid)],
            check=True,
        )  # fmt: skip
        for node, dev, addr in ((kvm1, "mig1", "10.250.0.1/24"), (kvm2, "mig2", "10.250.0.2/24")):
            subprocess.run(node.nsenter_net(["ip", "addr", "add", addr, "dev", dev]), check=True)
            subprocess.run(node.nsenter_net(["ip", "link", "set", dev, "up"]), check=True)
    return "tcp://10.250.0.2"


def test_live_migration_moves_a_running_vm_without_stopping_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    """``live_migrate: true``: the running VM moves to kvm2 (where 5901 is taken) while it
    runs, listening on a free port there, its persistent definition carrying that port."""
    import libvirt

    migration_uri = _link_nodes(cluster)
    web_uuid = _port_conflict_setup(cluster)
    web = cluster.conns["kvm1"].lookupByUUIDString(web_uuid)
    web.create()
    vms = {
        "db": {"node": "kvm2", "vnc_port": 5901, "state": "running"},
        "web": {"node": "kvm2", "vnc_port": "auto", "state": "running", "live_migrate": True},
    }
    _write_desired_state(tmp_path / "repo", cluster.nodes, vms)
    doc = yaml.safe_load((tmp_path / "repo" / "vms.yaml").read_text())
    doc["nodes"]["kvm2"]["migration_uri"] = migration_uri
    (tmp_path / "repo" / "vms.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    proc = _reconcile(tmp_path, "--output", "json")
    assert proc.returncode == 0, _output(proc)
    (change,) = json.loads(proc.stdout)["changes"]
    assert [op["op"] for op in change["ops"]] == ["migrate"]  # no shutdown, no start
    port = change["ops"][0]["vnc_port"]
    assert port != 5901
    moved = cluster.conns["kvm2"].lookupByUUIDString(web_uuid)
    assert moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert _vnc(moved.XMLDesc(0)) == (port, "no")  # listening there now
    assert _vnc(moved.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == (port, "no")  # and after
    assert ("127.0.0.1", port) in cluster.nodes["kvm2"].tcp_listeners()
    # The QEMU log of the target shows an incoming migration, not a fresh boot.
    assert "-incoming" in cluster.nodes["kvm2"].qemu_log("web")
    _assert_moved_cleanly(cluster, "web", web_uuid, tmp_path)
