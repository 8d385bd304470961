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


