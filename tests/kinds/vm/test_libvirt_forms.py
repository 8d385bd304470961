"""Domain XML read as libvirt has it (issue 14): every memory unit of libvirt's domain XML
documentation rounded up to KiB, NUMA cells summed, VNC on a unix socket or with no
listener (no TCP port), websocket ports; and against libvirt's test driver, a console on a
socket left alone with ``vnc_port: auto`` and converted to TCP by an explicit port."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import engine
from reconciler.kinds.vm.domainxml import parse_definition, parse_domain_xml, to_kib
from reconciler.kinds.vm.provider import VmProvider
from tests.kinds.vm.test_testdriver import DESIRED, NS, U1, U2, Nodes, nodes  # noqa: F401


def _domain(memory: str, *, extra: str = "", devices: str = "") -> str:
    return (
        f"<domain type='kvm'><name>v</name>{memory}<vcpu>1</vcpu>{extra}"
        f"<os><type>hvm</type></os><devices>{devices}</devices></domain>"
    )


@pytest.mark.parametrize(
    ("value", "unit", "kib"),
    [
        (1000, "b", 1), (1000, "bytes", 1), (2048, "byte", 2), (1024, "b", 1), (1025, "b", 2),
        (1000, "KB", 977), (1, "k", 1), (1, "KiB", 1), (1, "K", 1),
        (3, "MB", 2930), (1, "M", 1024), (1, "MiB", 1024),
        (3, "GB", 2929688), (1, "G", 1048576), (1, "GiB", 1048576),
        (1, "TB", 976562500), (1, "T", 1024**3), (1, "TiB", 1024**3),
        (1, "PB", 976562500000), (1, "P", 1024**4), (1, "PiB", 1024**4),
        (1, "EB", 976562500000000), (1, "E", 1024**5), (1, "EiB", 1024**5),
        (5, None, 5),
    ],
)  # fmt: skip
def test_every_unit_of_libvirts_documentation_rounds_up_to_kib(
    value: int, unit: str | None, kib: int
) -> None:
    assert to_kib(value, unit) == kib
    attr = f" unit='{unit}'" if unit else ""
    assert parse_definition(_domain(f"<memory{attr}>{value}</memory>")).memory_kib == kib


@pytest.mark.parametrize("unit", ["lb", "KiBi", "x", "kbit"])
def test_an_unknown_unit_is_an_error_naming_it(unit: str) -> None:
    with pytest.raises(ValueError, match=f"unknown memory unit '{unit}'"):
        parse_definition(_domain(f"<memory unit='{unit}'>1</memory>"))


def test_numa_cells_are_summed_when_memory_is_absent_or_different() -> None:
    numa = (
        "<cpu><numa><cell id='0' cpus='0' memory='1' unit='GiB'/>"
        "<cell id='1' cpus='1' memory='512' unit='MiB'/></numa></cpu>"
    )
    assert parse_definition(_domain("", extra=numa)).memory_kib == 1572864
    assert parse_definition(_domain("<memory>8</memory>", extra=numa)).memory_kib == 1572864


def test_counts_that_libvirt_refuses_are_errors_not_crashes() -> None:
    with pytest.raises(ValueError, match="<vcpu> is not a whole number"):
        parse_definition(_domain("<memory>1</memory>").replace("<vcpu>1<", f"<vcpu>{'9' * 5000}<"))
    with pytest.raises(ValueError, match="DOCTYPE or entity"):
        parse_definition("<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/shadow'>]>" + _domain(""))


@pytest.mark.parametrize(
    ("graphics", "port", "autoport", "listen", "websocket"),
    [
        ("<graphics type='vnc' port='5901' autoport='no'/>", 5901, False, "address", None),
        ("<graphics type='vnc' autoport='yes'/>", None, True, "address", None),
        ("<graphics type='vnc' port='-1'/>", None, True, "address", None),
        ("<graphics type='vnc' port='0'/>", None, False, "address", None),
        ("<graphics type='vnc' socket='/run/v.sock'/>", None, False, "socket", None),
        ("<graphics type='vnc'><listen type='socket' socket='/run/v.sock'/></graphics>",
         None, False, "socket", None),
        ("<graphics type='vnc'><listen type='none'/></graphics>", None, False, "none", None),
        ("<graphics type='vnc' port='5902' autoport='no' websocket='5702'>"
         "<listen type='address' address='0.0.0.0'/></graphics>", 5902, False, "address", 5702),
        ("<graphics type='vnc' port='5903' autoport='no'>"
         "<listen type='network' network='mgmt'/></graphics>", 5903, False, "network", None),
        ("<graphics type='spice' port='5904' autoport='no'/>"
         "<graphics type='vnc' port='5905' autoport='no'/>", 5905, False, "address", None),
    ],
)  # fmt: skip
def test_vnc_forms_read_as_libvirt_does(
    graphics: str, port: int | None, autoport: bool, listen: str, websocket: int | None
) -> None:
    for parse in (parse_definition, parse_domain_xml):
        vnc = parse(_domain("<memory>1</memory>", devices=graphics)).vnc
        assert vnc is not None
        assert (vnc.port, vnc.autoport, vnc.listen, vnc.websocket) == (
            port, autoport, listen, websocket,
        )  # fmt: skip
        assert vnc.tcp == (listen in ("address", "network"))


def _socket_domain(name: str, uuid: str) -> str:
    return (
        f"<domain type='test' xmlns:test='{NS}'><name>{name}</name><uuid>{uuid}</uuid>"
        "<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        "<devices><graphics type='vnc' socket='/run/reconciler-test/vnc.sock'>"
        "<listen type='socket' socket='/run/reconciler-test/vnc.sock'/></graphics></devices>"
        "</domain>"
    )


def test_a_socket_console_is_left_alone_with_auto_and_converges_with_a_port(
    nodes: Nodes,  # noqa: F811
    tmp_path: Path,
) -> None:
    nodes.add("kvm1", [_socket_domain("vm1", U1), _socket_domain("vm2", U2)])
    config = nodes.config({"vm1": {"node": "kvm1"}, "vm2": {"node": "kvm1", "vnc_port": 5910}})
    p = VmProvider(config, tmp_path, connect=nodes.connect)
    plan, _ = engine.make_plan(DESIRED, [p])
    assert plan.errors == []
    assert [c.address for c in plan.changes] == ["vm/vm2"]  # vm1 (auto) has nothing to do
    assert [op.op for op in plan.changes[0].ops] == ["set_vnc_port"]
    result = engine.apply_plan(DESIRED, [p], plan, None)
    assert result.ok, result.errors
    doms = nodes.domains("kvm1")
    assert doms["vm2"][2].port == 5910 and doms["vm2"][2].tcp and not doms["vm2"][2].autoport
    assert doms["vm1"][2].listen == "socket"  # untouched
    again, _ = engine.make_plan(DESIRED, [p])
    assert again.changes == [] and again.errors == []  # converged: the next run is quiet


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ("<memory unit='lb'>1</memory>", "unknown memory unit 'lb'"),
        (f"<memory>{'9' * 5000}</memory>", "<memory> is not a whole number"),
    ],
)
def test_validate_refuses_what_the_run_would(tmp_path: Path, memory: str, message: str) -> None:
    from tests.clirun import reconcile

    (tmp_path / "vms").mkdir()
    (tmp_path / "vms" / "v.xml").write_text(_domain(memory))
    (tmp_path / "fleet.yaml").write_text("{}\n")
    (tmp_path / "vms.yaml").write_text(
        "controller: master\nstorage: shared\nnodes: {kvm1: {uri: 'qemu:///system'}}\n"
        "vms: {v: {node: kvm1, definition: vms/v.xml}}\n"
    )
    r = reconcile("validate", "--repo", str(tmp_path))
    assert r.returncode == 1 and "vms/v.xml:1:1" in r.stderr and message in r.stderr
    assert "Traceback" not in r.stderr
