"""Domain XML as libvirt reads it, in pure functions (no libvirt needed): the memory,
vCPUs and VNC console the plan needs, and a definition rewritten to a fixed VNC port.

Read from libvirt's own output with anchored regular expressions rather than a full XML
parse: libvirt formats its XML canonically, and a parse per domain was twice the cost of
fetching it (5,000 domains, two XML documents each). Anything the fast path does not
recognise falls back to ElementTree. :func:`with_vnc_port` rewrites only the
``<graphics type='vnc'>`` element, so everything else in a definition (namespaced
``<qemu:commandline>``, comments, formatting) stays byte-for-byte as it was.

Units and rules follow libvirt's domain XML documentation (formatdomain: "Memory
Allocation", "Graphical framebuffers") and its parser (``virScaleInteger``,
``virDomainGraphicsDefParseXMLVNC``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import NamedTuple

#: libvirt's memory units (virScaleInteger): bytes, then k/m/g/t/p/e as powers of 1024
#: ("K", "KiB") or of 1000 ("KB"), the first letter in any case. Values are rounded up to
#: whole KiB, as libvirt rounds them.
_BYTES = {"b": 1, "byte": 1, "bytes": 1}
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
#: A count larger than this many digits is not a memory size or a vCPU count (Python refuses
#: to read an int of over 4,300 digits; libvirt reads 64 bits).
_MAX_DIGITS = 20


def unit_bytes(unit: str | None) -> int:
    """Bytes per unit of libvirt's ``unit=`` (default KiB); ValueError for an unknown unit."""
    if unit is None or unit == "":
        return 1024
    u = unit.lower()
    if u in _BYTES:
        return 1
    power = _POWERS.get(u[:1])
    if power is not None:
        if len(unit) == 1 or unit[1:].lower() == "ib":
            return int(1024**power)
        if unit[1:].lower() == "b":
            return int(1000**power)
    raise ValueError(f"unknown memory unit {unit!r} (libvirt knows b, KiB, KB, MiB, MB ... EiB)")


def to_kib(value: int, unit: str | None) -> int:
    """``value`` ``unit`` in KiB, rounded up as libvirt does (1000 bytes is 1 KiB)."""
    return -(-value * unit_bytes(unit) // 1024)


def _count(text: str | None, what: str) -> int:
    digits = (text or "").strip()
    if not digits.isdigit() or len(digits) > _MAX_DIGITS:
        raise ValueError(f"{what} is not a whole number of at most {_MAX_DIGITS} digits")
    return int(digits)


_MEMORY = re.compile(r"<memory(?:\s+unit=['\"](\w+)['\"])?\s*>\s*(\d+)\s*</memory>")
_VCPU = re.compile(r"<vcpu\b[^>]*>\s*(\d+)\s*</vcpu>")
_GRAPHICS_VNC = re.compile(r"<graphics\b[^>]*\btype=(['\"])vnc\1[^>]*>")
_ATTR = re.compile(r"\b(port|autoport|socket|websocket)=(['\"])([^'\"]*)\2")
_LISTEN = re.compile(r"<listen\b[^>]*\btype=(['\"])(\w+)\1")
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
    """The VNC ``<graphics>`` of a domain: ``port`` (None when unset, -1 or 0) and
    ``autoport`` (libvirt picks the port at start when true); ``listen``, the type of its
    first ``<listen>`` (``address``, ``network``: TCP; ``socket``: a UNIX socket, also the
    old ``socket=`` attribute; ``none``: no listener at all); ``websocket``, its websocket
    port if any."""

    port: int | None
    autoport: bool
    listen: str = "address"
    websocket: int | None = None

    @property
    def tcp(self) -> bool:
        """Whether the console listens on a TCP port (a unix socket or none has none)."""
        return self.listen in ("address", "network")


class DomainXmlInfo(NamedTuple):
    """What the plan needs from one domain XML. ``vnc`` is None when there is no VNC."""

    memory_kib: int
    vcpus: int
    vnc: VncConfig | None
    name: str | None = None
    uuid: str | None = None


def _vnc(
    port_text: str | None,
    autoport_text: str | None,
    listen: str = "address",
    websocket_text: str | None = None,
) -> VncConfig:
    """libvirt's rules (virDomainGraphicsDefParseXMLVNC) for a VNC ``<graphics>``: without a
    ``port``, or with the legacy ``-1``, autoport is on; a port given turns it off unless
    ``autoport`` says otherwise (``port='0'`` with autoport off is no port at all); a
    socket or ``none`` listener has no TCP port."""
    ws = int(websocket_text) if websocket_text and websocket_text.isdigit() else None
    if listen in ("socket", "none"):
        return VncConfig(None, False, listen, ws)
    number = int(port_text) if port_text and port_text.lstrip("-").isdigit() else None
    autoport = number is None or number == -1
    if autoport_text is not None:
        autoport = autoport_text == "yes"
    port = number if number is not None and number > 0 and not autoport else None
    if autoport and number is not None and number > 0:
        port = number  # a running domain's live XML: the port libvirt picked
    return VncConfig(port, autoport, listen, ws)


def _vnc_from_element(tag: str, body: str) -> VncConfig:
    """The VNC config of a ``<graphics type='vnc'>`` start tag and what it encloses."""
    attrs = {m.group(1): m.group(3) for m in _ATTR.finditer(tag)}
    listen = "socket" if "socket" in attrs else "address"
    first = _LISTEN.search(body)
    if first is not None:
        listen = first.group(2)
    return _vnc(attrs.get("port"), attrs.get("autoport"), listen, attrs.get("websocket"))


def _element_body(text: str, m: re.Match[str]) -> str:
    """What the ``<graphics>`` element matched by ``m`` encloses ("" when self-closing)."""
    if m.group(0).endswith("/>"):
        return ""
    end = text.find("</graphics>", m.end())
    return text[m.end() : end] if end >= 0 else ""


def parse_domain_xml(text: str) -> DomainXmlInfo:
    """Memory (KiB, the ``<memory>`` maximum), vCPUs (the ``<vcpu>`` maximum) and the VNC
    graphics of a domain XML. Fast path for libvirt's own output; ElementTree otherwise.

    Raises ValueError on XML that is not a domain, or a memory unit libvirt does not know.
    """
    if "<!--" in text or "<metadata" in text:  # may hold look-alike elements: parse it
        return parse_definition(text)
    mem = _CANON_MEM.search(text)
    if mem is not None:
        vcpu = _CANON_VCPU.search(text, mem.end())
        if vcpu is not None:
            unit, number = mem.group(1, 2)
            kib = int(number) if unit == "KiB" else to_kib(_count(number, "<memory>"), unit)
            return DomainXmlInfo(
                kib, _count(vcpu.group(1), "<vcpu>"), _vnc_config(text, vcpu.end())
            )
    mem = _MEMORY.search(text)
    vcpu = _VCPU.search(text)
    if mem is not None and vcpu is not None and "<numa" not in text:
        return DomainXmlInfo(
            to_kib(_count(mem.group(2), "<memory>"), mem.group(1)),
            _count(vcpu.group(1), "<vcpu>"),
            _vnc_config(text),
        )
    return parse_definition(text)


def _vnc_config(text: str, pos: int = 0) -> VncConfig | None:
    """The VNC graphics of domain XML at or after ``pos`` (libvirt allows one). libvirt
    writes ``port``/``autoport`` only for a TCP listener: that canonical tag is read
    directly; anything else (a socket, ``listen type='none'``, a websocket) in full."""
    c = _CANON_VNC.search(text, pos)
    if c is not None:
        close = text.find(">", c.end())
        if "websocket" not in text[c.end() : close]:
            # libvirt writes port/autoport only for a TCP listener: address or network.
            end = text.find("</graphics>", close)
            first = _LISTEN.search(text, close, end) if text[close - 1] != "/" else None
            listen = first.group(2) if first is not None else "address"
            return _vnc(c.group(1), c.group(2), listen)
    g = _GRAPHICS_VNC.search(text, pos)
    return _vnc_from_element(g.group(0), _element_body(text, g)) if g else None


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
    also returning ``<name>`` and ``<uuid>``. Memory as libvirt computes it: ``<memory>`` in
    its unit rounded up to KiB, replaced by the sum of the NUMA cells when there are any
    (libvirt does the same; a definition may have cells and no ``<memory>``).

    Raises ValueError when it is not a domain, declares a DOCTYPE or entities (libvirt's
    own XML never does; an entity could name a host file), or has a memory unit or count
    libvirt would refuse.
    """
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError("a DOCTYPE or entity declaration is not allowed in a domain definition")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"malformed XML: {e}") from e
    if root.tag != "domain":
        raise ValueError(f"expected a libvirt <domain>, got <{root.tag}>")
    mem_el = root.find("memory")
    mem = 0
    if mem_el is not None:
        mem = to_kib(_count(mem_el.text, "<memory>"), mem_el.get("unit"))
    cells = [c for c in root.iterfind("cpu/numa/cell") if c.get("memory") is not None]
    if cells:
        mem = sum(to_kib(_count(c.get("memory"), "a NUMA cell's memory"), c.get("unit"))
                  for c in cells)  # fmt: skip
    vcpu_el = root.find("vcpu")
    vcpus = _count(vcpu_el.text, "<vcpu>") if vcpu_el is not None else 1
    vnc: VncConfig | None = None
    for g in root.iterfind("devices/graphics"):
        if g.get("type") == "vnc":
            first = g.find("listen")
            listen = "socket" if g.get("socket") else "address"
            if first is not None and first.get("type"):
                listen = first.get("type") or listen
            vnc = _vnc(g.get("port"), g.get("autoport"), listen, g.get("websocket"))
            break
    name = root.findtext("name")
    uuid = root.findtext("uuid")
    return DomainXmlInfo(
        mem, vcpus, vnc, name.strip() if name else None, uuid.strip() if uuid else None
    )


def with_vnc_port(text: str, port: int) -> str:
    """``text`` with its VNC graphics set to ``port='<port>' autoport='no'`` on TCP.

    Only that element changes: its ``port``, ``autoport`` and ``socket`` attributes, and a
    ``<listen type='socket'>`` or ``<listen type='none'>`` inside it (a console on a socket
    or with no listener becomes a TCP one, which is what a fixed port asks for). Raises
    ValueError when the domain has no VNC graphics.
    """
    m = _GRAPHICS_VNC.search(text)
    if m is None:
        raise ValueError("the domain has no <graphics type='vnc'>")
    tag = m.group(0)
    body = _element_body(text, m)
    closing = "/>" if tag.endswith("/>") else ">"
    start = tag[: -len(closing)]
    start = re.sub(r"\s+(port|autoport|socket)=(['\"])[^'\"]*\2", "", start).rstrip()
    new_body = re.sub(r"\s*<listen\b[^>]*\btype=(['\"])(socket|none)\1[^>]*/>", "", body)
    new_tag = f"{start} port='{port}' autoport='no'{closing}"
    return text[: m.start()] + new_tag + new_body + text[m.end() + len(body) :]



