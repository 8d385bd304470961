"""Reading the nodes: the live records of domains and nodes, and a pool of node
connections that reads them (concurrently, one connection per node, kept for apply)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from reconciler.errors import ReconcilerError
from reconciler.kinds.vm.domainxml import (
    DomainXmlInfo,
    VncConfig,
    live_vnc_port,
    parse_definition,
    parse_domain_xml,
)
from reconciler.kinds.vm.libvirtio import STATE_NAMES, NodeIO, RawDomain, in_process_uri, open_node

MAX_READ_THREADS = 32
Connect = Callable[[str, str], NodeIO]


class DomainLive(NamedTuple):
    """One domain on one node, normalised. Plain data, so golden tests can build it (a
    NamedTuple rather than a frozen dataclass: as immutable, three times faster to build,
    and a read builds 5,000 of them).

    ``vnc`` is the VNC configuration from the inactive XML (the live XML for a transient
    domain), None without VNC graphics; ``live_vnc_port`` the port it listens on now (an
    active domain only). ``state`` is ``running``, ``shutoff``, ``paused`` ...
    """

    name: str
    uuid: str
    state: str
    persistent: bool = True
    vnc: VncConfig | None = None
    live_vnc_port: int | None = None
    memory_kib: int = 0
    vcpus: int = 1

    @property
    def active(self) -> bool:
        """True unless the domain is shut off (paused and crashed domains hold resources)."""
        return self.state != "shutoff"

    @property
    def config_port(self) -> int | None:
        """The fixed port in its configuration, None with ``autoport`` or without VNC."""
        if self.vnc is None or self.vnc.autoport:
            return None
        return self.vnc.port

    def ports(self) -> set[int]:
        """Every VNC port this domain holds on its node: configured and listening now."""
        return {p for p in (self.config_port, self.live_vnc_port) if p is not None}


@dataclass(frozen=True)
class NodeLive:
    """A node's domains by name and capacity; ``error`` set when it could not be read."""

    domains: Mapping[str, DomainLive] = field(default_factory=dict)
    memory_kib: int = 0
    cpus: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Definition:
    """A ``definition:`` file read from the repository (in ``read``, never in ``diff``)."""

    path: str
    xml: str | None = None
    info: DomainXmlInfo | None = None
    error: str | None = None


@dataclass(frozen=True)
class VmLive:
    """Everything ``diff`` needs: every node in ``vms.yaml`` and the definitions in git."""

    nodes: Mapping[str, NodeLive]
    definitions: Mapping[str, Definition] = field(default_factory=dict)


def domain_from_raw(raw: RawDomain) -> DomainLive:
    """Normalise one listed domain (parses its XML documents)."""
    text = raw.config_xml if raw.config_xml is not None else raw.live_xml
    assert text is not None  # a domain is persistent or active (else it does not exist)
    memory_kib, vcpus, vnc = parse_domain_xml(text)[:3]
    # From the live XML only the port is needed (the one libvirt picked, with autoport).
    live = raw.live_xml
    return DomainLive(
        raw.name,
        raw.uuid,
        STATE_NAMES.get(raw.state, "unknown"),
        raw.persistent,
        vnc,
        live_vnc_port(live) if live is not None else None,
        memory_kib,
        vcpus,
    )


def read_definitions(config: Mapping[str, Any], repo: Path) -> dict[str, Definition]:
    """Read and parse every ``definition:`` file named in ``config`` (validated vms.yaml)."""
    out: dict[str, Definition] = {}
    for vm, spec in config.get("vms", {}).items():
        rel = spec.get("definition")
        if not rel:
            continue
        try:
            text = (repo / rel).read_text()
            info = parse_definition(text)
        except (OSError, ValueError) as e:
            out[vm] = Definition(rel, error=f"definition {rel}: {e}")
            continue
        out[vm] = Definition(rel, text, info)
    return out



class Nodes:
    """One connection per node of ``config`` (``vms.yaml``), opened on first use by
    ``connect(name, uri)`` and kept for apply and re-read."""

    def __init__(self, config: Mapping[str, Any], connect: Connect = open_node) -> None:
        self.config = config
        self.connect = connect
        self._nodes: dict[str, NodeIO] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every connection opened."""
        for io in self._nodes.values():
            with contextlib.suppress(Exception):  # best effort: the run is over
                io.conn.close()
        self._nodes.clear()

    def get(self, name: str) -> NodeIO:
        """The connection to node ``name``, opened now if it is not yet."""
        with self._lock:
            io = self._nodes.get(name)
        if io is None:
            io = self.connect(name, self.config["nodes"][name]["uri"])
            with self._lock:
                io = self._nodes.setdefault(name, io)
        return io

    def _fetch_node(self, name: str) -> tuple[int, int, list[RawDomain]] | str:
        """(memory KiB, CPUs, domains as listed) of a node, or why it could not be read.
        Only libvirt calls: the parsing is left to :func:`_node_live`."""
        try:
            io = self.get(name)
            memory, cpus = io.capacity()
            return memory, cpus, io.list_domains()
        except ReconcilerError as e:
            return e.message

    def _open_quietly(self, name: str) -> None:
        # A failure is reported by _fetch_node, which tries again.
        with contextlib.suppress(ReconcilerError):
            self.get(name)

    def _fetch_batch(
        self, names: list[str]
    ) -> list[tuple[str, tuple[int, int, list[RawDomain]] | str]]:
        return [(n, self._fetch_node(n)) for n in names]

    def read(self) -> dict[str, NodeLive]:
        """Every node's live state (remote nodes concurrently, one thread per node;
        in-process ones on one thread per CPU). Writes nothing. An unreachable node is
        recorded as an error for that node, not raised."""
        nodes_cfg = self.config.get("nodes", {})
        names = sorted(nodes_cfg)
        # Concurrency hides network round trips and, when opening a node, its parsing in C;
        # libvirt calls release the GIL, so an in-process driver's reads also run in
        # parallel, on as many threads as there are CPUs (bench/bench_vm.py: 2 threads on 2
        # CPUs beat 1 and 3; 50 threads were 3x slower than one). Parsing the XML holds the
        # GIL: done in the workers it stalls the other worker's next libvirt call each time,
        # so the workers only fetch, and this thread parses afterwards.
        local = [n for n in names if in_process_uri(nodes_cfg[n].get("uri", ""))]
        k = max(1, min(len(local), os.cpu_count() or 1))
        batches = [local[i::k] for i in range(k)] if local else []
        batches += [[n] for n in names if n not in local]
        workers = max(1, min(MAX_READ_THREADS, len(names)))
        with ThreadPoolExecutor(workers, thread_name_prefix="vm-read") as pool:
            list(pool.map(self._open_quietly, local))
            fetched = dict(f for batch in pool.map(self._fetch_batch, batches) for f in batch)
        return {n: _node_live(n, fetched[n]) for n in names}


def _node_live(name: str, fetched: tuple[int, int, list[RawDomain]] | str) -> NodeLive:
    if isinstance(fetched, str):
        return NodeLive(error=fetched)
    memory, cpus, raws = fetched
    try:
        domains = {r.name: domain_from_raw(r) for r in raws}
    except ValueError as e:
        return NodeLive(error=f"node {name}: unreadable domain XML: {e}")
    return NodeLive(domains, memory, cpus)
