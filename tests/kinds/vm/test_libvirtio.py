"""The fast domain-XML reader agrees with a full XML parse on libvirt's own output.

:func:`reconciler.kinds.vm.libvirtio.parse_domain_xml` reads libvirt-formatted XML with anchored
regular expressions (a full parse per domain cost more than fetching it); these tests feed it
XML that libvirt itself formatted (the ``test:///`` driver, after a define) in every VNC shape
and compare it with :func:`parse_definition`, and check the look-alike cases that must fall
back to the full parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from reconciler.kinds.vm.domainxml import (
    VncConfig,
    live_vnc_port,
    parse_definition,
    parse_domain_xml,
)
from reconciler.kinds.vm.libvirtio import open_node

GRAPHICS = {
    "fixed": "<graphics type='vnc' port='5901' autoport='no'/>",
    "auto": "<graphics type='vnc' autoport='yes'/>",
    "minus-one": "<graphics type='vnc' port='-1'/>",
    "listen": "<graphics type='vnc' port='5977' autoport='no' listen='0.0.0.0' passwd='x'/>",
    "spice-first": "<graphics type='spice' port='5930' autoport='no'/>"
    "<graphics type='vnc' port='5931' autoport='no'/>",
    "none": "",
}
MEMORY = {"KiB": "<memory unit='KiB'>262144</memory>", "GiB": "<memory unit='GiB'>2</memory>"}


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[object]:
    path = tmp_path / "node.xml"
    path.write_text("<node><memory>1048576</memory></node>")
    io = open_node("n", f"test://{path}")
    yield io.conn
    io.conn.close()


@pytest.mark.parametrize("memory", sorted(MEMORY))
@pytest.mark.parametrize("graphics", sorted(GRAPHICS))
def test_fast_path_agrees_with_full_parse(conn: object, graphics: str, memory: str) -> None:
    xml = (
        f"<domain type='test'><name>vm-{graphics}</name>{MEMORY[memory]}"
        "<vcpu placement='static'>3</vcpu><os><type>hvm</type></os>"
        f"<devices>{GRAPHICS[graphics]}</devices></domain>"
    )
    dom = conn.defineXML(xml)  # type: ignore[attr-defined]
    formatted = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    full = parse_definition(formatted)
    fast = parse_domain_xml(formatted)
    assert (fast.memory_kib, fast.vcpus, fast.vnc) == (full.memory_kib, full.vcpus, full.vnc)
    assert fast.vcpus == 3
    assert fast.memory_kib == (262144 if memory == "KiB" else 2 * 1024 * 1024)
    dom.create()
    live = dom.XMLDesc(0)
    assert live_vnc_port(live) == (full.vnc.port if full.vnc is not None else None)


def test_look_alike_elements_in_metadata_fall_back_to_a_full_parse() -> None:
    xml = (
        "<domain type='kvm'><name>a</name><metadata><x:app xmlns:x='urn:x'>"
        "<memory unit='KiB'>1</memory><vcpu>99</vcpu>"
        "<graphics type='vnc' port='6000' autoport='no'/></x:app></metadata>"
        "<memory unit='KiB'>2048</memory><vcpu placement='static'>2</vcpu>"
        "<devices><graphics type='vnc' port='5905' autoport='no'/></devices></domain>"
    )
    info = parse_domain_xml(xml)
    assert (info.memory_kib, info.vcpus, info.vnc) == (2048, 2, VncConfig(5905, False))


def test_commented_out_graphics_are_not_read() -> None:
    xml = (
        "<domain type='kvm'><name>a</name><memory unit='KiB'>2048</memory><vcpu>1</vcpu>"
        "<devices><!-- <graphics type='vnc' port='5999' autoport='no'/> --></devices></domain>"
    )
    assert parse_domain_xml(xml).vnc is None
