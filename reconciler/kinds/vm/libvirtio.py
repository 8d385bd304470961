"""A thin I/O layer over libvirt-python for the ``vm`` kind, plus pure domain-XML helpers.

:class:`NodeIO` wraps one open libvirt connection (one per node per run: a ``test:///file``
connection is a private in-memory copy, and a ``qemu+ssh://`` one is expensive to open, so the
provider keeps it for read, apply and re-read). It only executes; every decision is in the
plan. Tests inject failures by replacing its methods.

The XML helpers read what the plan needs (memory, vCPUs, VNC port/autoport) from libvirt's own
output with anchored regular expressions rather than a full XML parse: libvirt formats its XML
canonically, and a parse per domain was twice the cost of fetching it (5,000 domains, two XML
documents each). Anything the fast path does not recognise falls back to ElementTree.
:func:`with_vnc_port` rewrites only the ``<graphics type='vnc'>`` start tag, so everything
else in a definition (namespaced ``<qemu:commandline>``, comments, formatting) stays
byte-for-byte as it was.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, NamedTuple

import libvirt

from reconciler.errors import ProviderError

# libvirt prints every error to stderr by default; we report them ourselves, with context.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024}
_KIB.update({"m": 1024, "mib": 1024, "mb": 1000**2 / 1024, "g": 1024**2, "gib": 1024**2})
_KIB.update({"gb": 1000**3 / 1024, "t": 1024**3, "tib": 1024**3, "tb": 1000**4 / 1024})

_MEMORY = re.compile(r"<memory(?:\s+unit=['\"](\w+)['\"])?\s*>\s*(\d+)\s*</memory>")
_VCPU = re.compile(r"<vcpu\b[^>]*>\s*(\d+)\s*</vcpu>")
_GRAPHICS_VNC = re.compile(r"<graphics\b[^>]*\btype=(['\"])vnc\1[^>]*>")
_ATTR = re.compile(r"\b(port|autoport)=(['\"])([^'\"]*)\2")
# libvirt's own formatting (attribute order and quotes fixed by its XML formatter): matched
# first, each search starting where the previous element ended, because a search with a
# literal prefix skips ahead fast while a pattern spanning the elements in between
# (``.*?``) steps through them one character at a time (3x slower).
_CANON_MEM = re.compile(r"<memory unit='(\w+)'>(\d+)</memory>")
_CANON_VCPU = re.compile(r"<vcpu\b[^>]*>(\d+)</vcpu>")
_CANON_VNC = re.compile(r"<graphics type='vnc'(?: port='(-?\d+)')? autoport='(yes|no)'")


# The per-domain records below are NamedTuples, not frozen dataclasses: just as immutable,
# and built in a third of the time (a frozen dataclass sets each field through
# object.__setattr__), which counts at 5,000 domains per read.
class VncConfig(NamedTuple):
    """The first VNC ``<graphics>`` of a domain: ``port`` (None when unset or -1) and
    ``autoport`` (libvirt picks the port at start when true)."""

    port: int | None
    autoport: bool


class DomainXmlInfo(NamedTuple):
    """What the plan needs from one domain XML. ``vnc`` is None when there is no VNC."""

    memory_kib: int
    vcpus: int
    vnc: VncConfig | None
    name: str | None = None
    uuid: str | None = None


def _to_kib(value: int, unit: str | None) -> int:
    return int(value * _KIB.get((unit or "KiB").lower(), 1))


def _vnc(port_text: str | None, autoport_text: str | None) -> VncConfig:
    """libvirt's rules for a VNC ``<graphics>``'s ``port`` and ``autoport`` attributes
    (None: absent): a port of -1 or 0 means none, and autoport defaults to "no" when a
    port is given, else "yes"."""
    number = int(port_text) if port_text and port_text.lstrip("-").isdigit() else 0
    port = number if number > 0 else None
    if autoport_text is None:
        autoport_text = "no" if port else "yes"
    return VncConfig(port, autoport_text == "yes")


def _vnc_from_tag(tag: str) -> VncConfig:
    attrs = {m.group(1): m.group(3) for m in _ATTR.finditer(tag)}
    return _vnc(attrs.get("port"), attrs.get("autoport"))


def parse_domain_xml(text: str) -> DomainXmlInfo:
    """Memory (KiB, the ``<memory>`` maximum), vCPUs (the ``<vcpu>`` maximum) and the first
    VNC graphics of a domain XML. Fast path for libvirt's own output; ElementTree otherwise.

    Raises ValueError on XML that is not a domain.
    """
    if "<!--" in text or "<metadata" in text:  # may hold look-alike elements: parse it
        return parse_definition(text)
    mem = _CANON_MEM.search(text)
    if mem is not None:
        vcpu = _CANON_VCPU.search(text, mem.end())
        if vcpu is not None:
            unit, number = mem.group(1, 2)
            kib = int(number) if unit == "KiB" else _to_kib(int(number), unit)
            return DomainXmlInfo(kib, int(vcpu.group(1)), _vnc_config(text, vcpu.end()))
    mem = _MEMORY.search(text)
    vcpu = _VCPU.search(text)
    if mem is not None and vcpu is not None:
        g = _GRAPHICS_VNC.search(text)
        return DomainXmlInfo(
            _to_kib(int(mem.group(2)), mem.group(1)),
            int(vcpu.group(1)),
            _vnc_from_tag(g.group(0)) if g else None,
        )
    return parse_definition(text)


def _vnc_config(text: str, pos: int = 0) -> VncConfig | None:
    """The first VNC graphics of libvirt-formatted XML at or after ``pos`` (canonical tag
    first)."""
    c = _CANON_VNC.search(text, pos)
    if c is not None:
        return _vnc(*c.group(1, 2))
    g = _GRAPHICS_VNC.search(text, pos)
    return _vnc_from_tag(g.group(0)) if g else None


def xml_uuid(text: str) -> str | None:
    """The ``<uuid>`` of a domain XML (the first one: libvirt writes it right after
    ``<name>``), None when there is none."""
    i = text.find("<uuid>")
    if i < 0:
        return None
    j = text.find("</uuid>", i)
    return text[i + 6 : j].strip() if j > 0 else None


def live_vnc_port(text: str) -> int | None:
    """The VNC port a running domain listens on, from its live XML (None without VNC).

    Only ``<devices>`` is searched: ``<metadata>``, which comes before it, may hold anything.
    """
    vnc = _vnc_config(text, max(0, text.find("<devices>")))
    return vnc.port if vnc is not None else None


def parse_definition(text: str) -> DomainXmlInfo:
    """Like :func:`parse_domain_xml`, with a full XML parse (for hand-written definitions),
    also returning ``<name>`` and ``<uuid>``. Raises ValueError when it is not a domain."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"malformed XML: {e}") from e
    if root.tag != "domain":
        raise ValueError(f"expected a libvirt <domain>, got <{root.tag}>")
    mem_el = root.find("memory")
    mem = 0
    if mem_el is not None and (mem_el.text or "").strip().isdigit():
        mem = _to_kib(int((mem_el.text or "0").strip()), mem_el.get("unit"))
    vcpu_el = root.find("vcpu")
    vcpus = int((vcpu_el.text or "1").strip()) if vcpu_el is not None else 1
    vnc: VncConfig | None = None
    for g in root.iterfind("devices/graphics"):
        if g.get("type") == "vnc":
            vnc = _vnc(g.get("port"), g.get("autoport"))
            break
    name = root.findtext("name")
    uuid = root.findtext("uuid")
    return DomainXmlInfo(
        mem, vcpus, vnc, name.strip() if name else None, uuid.strip() if uuid else None
    )


def with_vnc_port(text: str, port: int) -> str:
    """``text`` with its first VNC graphics set to ``port='<port>' autoport='no'``.

    Only that start tag changes. Raises ValueError when the domain has no VNC graphics.
    """
    m = _GRAPHICS_VNC.search(text)
    if m is None:
        raise ValueError("the domain has no <graphics type='vnc'>")
    tag = m.group(0)
    closing = "/>" if tag.endswith("/>") else ">"
    body = tag[: -len(closing)]
    body = re.sub(r"\s+(port|autoport)=(['\"])[^'\"]*\2", "", body).rstrip()
    new_tag = f"{body} port='{port}' autoport='no'{closing}"
    return text[: m.start()] + new_tag + text[m.end() :]


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

    def undefine(self, uuid: str) -> None:
        """Remove the persistent definition of the (inactive) domain with ``uuid``."""
        try:
            self._lookup(uuid).undefine()
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: undefining {uuid}: {_err(e)}") from e

    def start(self, uuid: str) -> None:
        """Start the defined domain with ``uuid``."""
        try:
            self._lookup(uuid).create()
        except libvirt.libvirtError as e:
            raise ProviderError(f"node {self.name}: starting {uuid}: {_err(e)}") from e

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
