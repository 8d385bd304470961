"""A thin I/O layer over libvirt-python for the ``vm`` kind, plus pure domain-XML helpers.

:class:`NodeIO` wraps one open libvirt connection (one per node per run: a ``test:///file``
connection is a private in-memory copy, and a ``qemu+ssh://`` one is expensive to open, so the
provider keeps it for read, apply and re-read). It only executes; every decision is in the
plan. Tests inject failures by replacing its methods.

The pure domain-XML helpers are in :mod:`reconciler.kinds.vm.domainxml`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import libvirt

from reconciler.errors import ProviderError
from reconciler.kinds.vm.domainxml import xml_uuid

# libvirt prints every error to stderr by default; we report them ourselves, with context.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

class RawDomain(NamedTuple):
    """One domain as listed: name, activity and its XML documents (``live_xml`` only for
    an active domain, ``config_xml`` only for a persistent one)."""

    name: str
    state: int  # libvirt.VIR_DOMAIN_* state
    persistent: bool
    config_xml: str | None
    live_xml: str | None

    @property
    def uuid(self) -> str:
        """The domain's UUID, from its XML (read when needed, not while listing: the
        listing runs next to other nodes' listings, and anything that holds the GIL there
        delays them). Raises ValueError for XML without one, which libvirt never writes."""
        text = self.config_xml if self.config_xml is not None else self.live_xml
        uuid = xml_uuid(text or "")
        if not uuid:
            raise ValueError(f"domain {self.name}: no <uuid> in its XML")
        return uuid


STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}

MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


def _err(e: libvirt.libvirtError) -> str:
    msg = e.get_error_message() or str(e)
    return str(msg)


class NodeIO:
    """Every libvirt call the ``vm`` kind makes on one node, through one open connection.

    Methods raise :class:`ProviderError` (with libvirt's message) on failure.
    """

    def __init__(self, name: str, conn: Any) -> None:
        self.name = name
        self.conn = conn

    # ------------------------------------------------------------------------------ reads
    def capacity(self) -> tuple[int, int]:
        """(memory KiB, CPUs) of the node, from ``virNodeGetInfo``."""
        try:
            info = self.conn.getInfo()
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: reading node info: {_err(e)}") from e
        return int(info[1]) * 1024, int(info[2])

    def list_domains(self) -> list[RawDomain]:
        """Every domain on the node with the XML documents the plan needs.

        One listing of every domain and one of the transient ones; per domain one
        ``XMLDesc(0)``, which is the live XML of a running domain and the definition of a
        stopped one (libvirt writes ``id='N'`` on the root element only when it runs), and
        for a running one its state and inactive XML: every document the plan needs, and
        no call per domain beyond them (the UUID is in the XML). A domain that vanishes
        while being read is skipped (it is gone); one that stops while being read is taken
        as stopped.
        """
        c = self.conn
        try:
            doms = c.listAllDomains(0)
            transient = {
                d.name() for d in c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
            }
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: listing domains: {_err(e)}") from e
        out: list[RawDomain] = []
        shutoff = libvirt.VIR_DOMAIN_SHUTOFF
        for d in doms:
            name = d.name()
            persistent = name not in transient
            try:
                xml = d.XMLDesc(0)
                state, config, live = shutoff, xml, None
                if xml.find(" id='", 0, xml.find(">")) > 0:
                    state = d.state()[0]
                    if state == shutoff and not persistent:
                        continue  # a transient domain that stopped no longer exists
                    if state != shutoff:
                        live = xml
                    config = d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if persistent else None
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue
                raise ProviderError(f"node {self.name}: reading {name}: {_err(e)}") from e
            out.append(RawDomain(name, state, persistent, config, live))
        return out

    def _lookup(self, uuid: str) -> Any:
        try:
            return self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: no domain with UUID {uuid}: {_err(e)}") from e

    def config_xml(self, uuid: str) -> str:
        """The inactive (persistent) XML of the domain with ``uuid``."""
        try:
            return str(self._lookup(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: reading XML of {uuid}: {_err(e)}") from e

    def find(self, name: str) -> tuple[str, bool, bool] | None:
        """(UUID, active, persistent) of the domain called ``name``, or None."""
        try:
            d = self.conn.lookupByName(name)
            return str(d.UUIDString()), bool(d.isActive()), bool(d.isPersistent())
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise ProviderError(f"node {self.name}: looking up {name}: {_err(e)}") from e

    def is_active(self, uuid: str) -> bool:
        """Whether the domain with ``uuid`` is running (or paused)."""
        try:
            return bool(self._lookup(uuid).isActive())
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: reading state of {uuid}: {_err(e)}") from e

    # ----------------------------------------------------------------------------- writes
    def define(self, xml: str) -> str:
        """Define (or redefine, same UUID) a persistent domain; return its UUID."""
        try:
            return str(self.conn.defineXML(xml).UUIDString())
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: defining domain: {_err(e)}") from e

    def _on(self, uuid: str, doing: str, call: Callable[[Any], Any]) -> Any:
        """``call(domain)`` on the domain with ``uuid``; ProviderError saying what it was
        ``doing`` when libvirt fails."""
        try:
            return call(self._lookup(uuid))
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: {doing} {uuid}: {_err(e)}") from e

    def undefine(self, uuid: str) -> None:
        """Remove the persistent definition of the (inactive) domain with ``uuid``."""
        self._on(uuid, "undefining", lambda d: d.undefine())

    def start(self, uuid: str) -> None:
        """Start the defined domain with ``uuid``."""
        self._on(uuid, "starting", lambda d: d.create())

    def state(self, uuid: str) -> str:
        """The state of the domain with ``uuid``, by :data:`STATE_NAMES` (``paused`` ...)."""
        state = self._on(uuid, "reading state of", lambda d: d.state()[0])
        return STATE_NAMES.get(state, "nostate")

    def resume(self, uuid: str) -> None:
        """Resume the paused domain with ``uuid``."""
        self._on(uuid, "resuming", lambda d: d.resume())

    def destroy(self, uuid: str) -> None:
        """Stop the domain with ``uuid`` at once (only ever a stale paused copy: a paused
        guest cannot shut down)."""
        self._on(uuid, "stopping", lambda d: d.destroy())

    def shutdown(
        self,
        uuid: str,
        timeout: float,
        *,
        poll: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bool:
        """Ask the guest to shut down (ACPI) and wait up to ``timeout`` seconds for it to be
        off. Returns whether it stopped; never forces it off (``destroy``)."""
        dom = self._lookup(uuid)
        try:
            if not dom.isActive():
                return True
            dom.shutdown()
            deadline = time.monotonic() + timeout
            while dom.isActive():
                if time.monotonic() >= deadline:
                    return False
                sleep(poll)
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: shutting down {uuid}: {_err(e)}") from e
        return True

    def migrate_live(
        self, uuid: str, dest: NodeIO, xml: str, persist_xml: str, uri: str | None = None
    ) -> None:
        """Live-migrate to ``dest``: ``xml`` is the running domain there (new VNC port),
        ``persist_xml`` its persistent definition there (also the new port: without it libvirt
        persists the source's definition, whose port the next start would clash on); it is
        undefined here. ``uri`` is where QEMU sends the memory (``tcp://host``), None for
        libvirt's choice. Client-managed (no peer-to-peer): the daemons need not reach each
        other, only the QEMU processes do."""
        params: dict[str, Any] = {
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml,
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: persist_xml,
        }
        if uri is not None:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = uri
        try:
            self._lookup(uuid).migrate3(dest.conn, params, MIGRATE_FLAGS)
        except libvirt.libvirtError as e:
            raise ProviderError(
                f"node {self.name}: live migration of {uuid} to {dest.name}: {_err(e)}"
            ) from e

    def live_xml(self, uuid: str) -> str:
        """The live XML of the running domain with ``uuid``."""
        try:
            return str(self._lookup(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: reading live XML of {uuid}: {_err(e)}") from e


def in_process_uri(uri: str) -> bool:
    """Whether ``uri`` names a driver that runs inside this process (``test:///...``, no
    transport, no host): its calls never wait on a socket."""
    scheme, sep, rest = uri.partition("://")
    return bool(sep) and scheme == "test" and rest.startswith("/")


def open_node(name: str, uri: str) -> NodeIO:
    """Open a connection to ``uri`` (read-write). Raises ProviderError when unreachable,
    with the first line of libvirt's message only: a ``test:///<file>`` URI's parse error
    goes on to quote the file's content."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        first = _err(e).splitlines()[0] if _err(e) else ""
        raise ProviderError(f"node {name} ({uri}) is unreachable: {first}") from e
    if conn is None:  # older bindings return None instead of raising
        raise ProviderError(f"node {name} ({uri}) is unreachable")
    return NodeIO(name, conn)
