"""The ``vm`` dry-run against real ``libvirtd`` daemons (QEMU driver), next to bench_vm.

Run (as root): ``.venv/bin/python -m bench.bench_vm_libvirtd``. bench_vm measures the
dry-run on in-process ``test:///`` nodes, where every libvirt "read" is a function call
competing with our parsing for the same two CPUs. Real nodes are daemons reached over a
socket: every call is a round trip. This starts NODES independent libvirtds (each in its
own namespaces, :mod:`lab.libvirtd`; they run on this machine's CPUs too, so a
node's work still competes with ours), defines PER_NODE small domains on each (RUNNING of
them started under software emulation, the rest shut off), places every VM on its node in
``vms.yaml`` plus MOVES planned moves, and reports, interleaved over RUNS rounds (medians):

* bare: the libvirt calls the dry-run makes (:func:`bench.bench_vm._bare`), sequentially,
  on open connections;
* ours: ``VmProvider.read`` + ``diff`` on the same open connections (one thread per node).

The issue's target (<= 1.2x) is stated for bench_vm's ``test:///`` nodes; this is the
closest real setting. A benchmark is not a test: the exit status is always 0.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from bench.bench_vm import _bare
from reconciler.kinds.vm.libvirtio import NodeIO, open_node
from reconciler.kinds.vm.provider import VmProvider
from reconciler.model import HostDesired

NODES = 50  # as bench_vm: 5,000 VMs on 50 nodes
PER_NODE = 100
RUNNING = 1
MOVES = 50
RUNS = 9
TARGET = 1.2


def _domain(name: str, k: int) -> str:
    from lab.libvirtd import small_domain_xml

    return small_domain_xml(name, vnc_port=5900 + k, domain_uuid=str(uuidlib.UUID(int=k + 1)))


def main() -> int:
    """Start the daemons, run the benchmark, print the table; always returns 0."""
    from lab import libvirtd

    reason = libvirtd.reason_unavailable()
    if reason is not None:
        print(f"bench_vm_libvirtd: skipped: {reason}")
        return 0
    names = [f"n{i}" for i in range(NODES)]
    t0 = time.perf_counter()
    # 50 daemons probing QEMU at once on two CPUs take a while to come up.
    with libvirtd.libvirt_daemons(names, timeout=600) as started:
        opened = {n: open_node(n, node.uri) for n, node in started.items()}
        vms: dict[str, Any] = {}
        for i, n in enumerate(names):
            conn = opened[n].conn
            for j in range(PER_NODE):
                k = i * PER_NODE + j
                name = f"vm{k:05d}"
                dom = conn.defineXML(_domain(name, k))
                if j < RUNNING:
                    dom.create()
                target = n
                if j == RUNNING and i < MOVES:  # a shut-off VM to move to the next node
                    target = names[(i + 1) % NODES]
                state = "running" if j < RUNNING else "shutoff"
                vms[name] = {"node": target, "vnc_port": "auto", "state": state}
        setup = time.perf_counter() - t0
        config = {
            "controller": "master",
            "storage": "shared",
            "nodes": {n: {"uri": node.uri} for n, node in started.items()},
            "vms": vms,
        }
        conns = {n: io.conn for n, io in opened.items()}
        desired = HostDesired(host="master")

        def connect(name: str, uri: str) -> NodeIO:
            return opened[name]

        with tempfile.TemporaryDirectory(prefix="bench-vm-libvirtd-") as d:

            def ours() -> Any:
                p = VmProvider(config, Path(d), connect=connect)
                return p.diff(desired, p.read(desired))

            changes, errors = ours()
            assert not errors, errors
            assert len(changes) == MOVES, [c.address for c in changes]
            assert _bare(conns) == NODES * PER_NODE
            bare_t: list[float] = []
            ours_t: list[float] = []
            for _ in range(RUNS):
                t = time.perf_counter()
                _bare(conns)
                bare_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                ours()
                ours_t.append(time.perf_counter() - t)
        for io in opened.values():
            io.conn.close()
    t_bare, t_ours = statistics.median(bare_t), statistics.median(ours_t)
    print(
        f"vm dry-run on {NODES} real libvirtd nodes (QEMU driver, this machine's CPUs): "
        f"{NODES * PER_NODE} VMs, {NODES * RUNNING} running, {MOVES} moves planned "
        f"(set-up {setup:.0f} s)"
    )
    print(f"{'':52} {'median':>10} {'vs bare':>8}")
    for label, t in (
        ("bare libvirt calls, sequential (open connections)", t_bare),
        ("ours: read (one thread per node) + diff", t_ours),
    ):
        print(f"{label:52} {t * 1000:8.1f} ms {t / t_bare:7.2f}x")
    ratio = t_ours / t_bare
    verdict = "within" if ratio <= TARGET else "above"
    print(f"ours is {verdict} {TARGET}x the bare calls here ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a benchmark reports, it does not fail the build
        print(f"bench_vm_libvirtd: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(0)
