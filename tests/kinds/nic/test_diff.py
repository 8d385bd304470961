"""Golden cases for the NIC provider's pure diff, and the NIC checks of the loader.

Each file in tests/kinds/nic/golden/ holds the desired YAML (loaded through the real loader, so
name resolution is covered end to end), live state as plain data, and the expected changes
and errors. No root needed: diff is pure.

Live state notation (``live:``): ``links`` maps a device name to ``{kind, master, parent}``
(no kind: a physical NIC); ``nics`` maps a NIC to ``rings`` (``{rx, tx, max: {rx, tx}}`` or
``unsupported``) and ``features`` (``on``/``off`` or ``fixed on``/``fixed off``). Unlisted
features exist, off and changeable; unlisted rings are rx/tx 256 of 4096 (``absent`` lists
features this kernel does not have); ``errors`` maps a NIC to a read error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import desired as desired_mod
from reconciler.desired import validate_repo
from reconciler.errors import ValidationError
from reconciler.kinds.nic.ethtool import FeatureLive, LinkLive, RingsLive
from reconciler.kinds.nic.offloads import KERNEL_FEATURES
from reconciler.kinds.nic.provider import NicLive, NicProvider, NicState, bridge_ports
from reconciler.model import HostDesired, NicSpec, RingSpec
from tests import golden

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(GOLDEN.glob("*.yaml"))


def _rings(data: Any) -> RingsLive | None:
    if data == "unsupported":
        return None
    data = data or {}
    mx = {"rx": 4096, "tx": 4096, "rx-mini": 0, "rx-jumbo": 0, **(data.get("max") or {})}
    cur = {"rx": 256, "tx": 256, "rx-mini": 0, "rx-jumbo": 0}
    cur.update({k: v for k, v in data.items() if k != "max"})
    return RingsLive(current=cur, maximum=mx)


def _feature(v: Any) -> FeatureLive:
    if isinstance(v, bool):
        return FeatureLive(active=v)
    fixed, _, value = str(v).partition(" ")
    assert fixed == "fixed" and value in ("on", "off"), v
    return FeatureLive(active=value == "on", fixed=True)


def _state(data: dict[str, Any]) -> NicState:
    features = {f: FeatureLive(active=False) for f in KERNEL_FEATURES}
    for f in data.get("absent") or []:
        del features[f]
    features.update({k: _feature(v) for k, v in (data.get("features") or {}).items()})
    rings = _rings(data.get("rings"))
    return NicState(rings, features, None if rings else "Operation not supported")


def _live(data: dict[str, Any]) -> NicLive:
    links = {
        name: LinkLive(
            name, (s or {}).get("kind"), (s or {}).get("master"), (s or {}).get("parent")
        )
        for name, s in (data.get("links") or {}).items()
    }
    errors = data.get("errors") or {}
    nics_data = data.get("nics") or {}
    nics = {n: _state(nics_data.get(n) or {}) for n in links if n not in errors}
    return NicLive(links=links, nics=nics, errors=errors)


def _load(tmp_path: Path, text: str) -> HostDesired:
    (tmp_path / "fleet.yaml").write_text(text)
    return desired_mod.load_host(tmp_path, "h1")


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden(case: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(case.read_text())
    desired = _load(tmp_path, data["desired"])
    live = _live(data["live"])
    provider = NicProvider()
    changes, errors = provider.diff(desired, live)
    if "warnings" in data["expected"]:
        notes = provider.notices(desired, live)
        want_notes = data["expected"]["warnings"]
        assert [w.address for w in notes] == [w["address"] for w in want_notes]
        for want_w, have_w in zip(want_notes, notes, strict=True):
            assert want_w["contains"] in have_w.message

    for want, have in golden.check(data["expected"], changes, errors):
        ring_op = any(o["op"] == "set_rings" for o in have["ops"])
        assert bool(have.get("warnings")) == ring_op  # a bounce warning exactly with rings
        if want.get("warning"):
            assert any(want["warning"] in w for w in have["warnings"])
        if "bridge" in want:
            assert have["after"]["bridge"] == want["bridge"]
        if "path" in want:
            assert have["after"]["path"] == want["path"]


def test_diff_is_pure(tmp_path: Path) -> None:
    """Diff leaves its inputs unchanged and gives the same answer twice."""
    data = yaml.safe_load((GOLDEN / "bridge_ports.yaml").read_text())
    desired = _load(tmp_path, data["desired"])
    live = _live(data["live"])
    before = (repr(desired), repr(live))
    p = NicProvider()
    first = p.diff(desired, live)
    assert p.diff(desired, live) == first
    assert (repr(desired), repr(live)) == before


def test_bridge_ports_resolution() -> None:
    """Bond -> slaves, VLAN -> parent (also a VLAN on a bond), VM ports skipped, loops end."""
    links = {
        "br0": LinkLive("br0", "bridge"),
        "bond0": LinkLive("bond0", "bond", master="br0"),
        "a": LinkLive("a", None, master="bond0"),
        "b": LinkLive("b", "veth", master="bond0"),
        "bond1": LinkLive("bond1", "bond"),
        "c": LinkLive("c", None, master="bond1"),
        "bond1.5": LinkLive("bond1.5", "vlan", master="br0", parent="bond1"),
        "vnet0": LinkLive("vnet0", "tun", master="br0"),
        "macvtap0": LinkLive("macvtap0", "macvtap", master="br0"),
        "loop.1": LinkLive("loop.1", "vlan", master="br0", parent="loop.1"),
    }
    ports, skipped = bridge_ports("br0", links)
    assert ports == [
        ("a", ("br0", "bond0", "a")),
        ("b", ("br0", "bond0", "b")),
        ("c", ("br0", "bond1.5", "bond1", "c")),
    ]
    assert skipped == ["macvtap0", "vnet0"]


def test_load_host_builds_typed_nics(tmp_path: Path) -> None:
    (tmp_path / "hosts").mkdir()
    (tmp_path / "fleet.yaml").write_text("nics:\n  eth0: {offloads: {gso: off}}\n")
    (tmp_path / "hosts" / "h1.yaml").write_text(
        "nics:\n"
        "  eth0:\n"
        "    rings: {rx: max, tx: 512, rx-jumbo: 64}\n"
        "    offloads: {gso: on, tx-tcp6-segmentation: 'off'}\n"
        "  br0:\n"
        "    offloads: {gro: off}\n"
        "    ports:\n"
        "      rings: {rx: 4096}\n"
    )
    d = desired_mod.load_host(tmp_path, "h1")
    eth0 = d.nics["eth0"]  # the host file replaces the fleet's eth0 as a whole
    assert eth0.rings == RingSpec(rx="max", tx=512, rx_jumbo=64)
    assert eth0.rings.items() == [("rx", "max"), ("tx", 512), ("rx-jumbo", 64)]
    assert eth0.offloads == {"gso": True, "tx-tcp6-segmentation": False}
    assert str(eth0.source) == "hosts/h1.yaml:2:3"
    assert d.nics["br0"].ports == NicSpec("br0", rings=RingSpec(rx=4096))
    assert str(d.nics["br0"].ports.source) == "hosts/h1.yaml:7:5"
    assert d.raw["nics"]["eth0"]["offloads"] == {"gso": True, "tx-tcp6-segmentation": False}


def _problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "hosts").mkdir(exist_ok=True)
    (tmp_path / "hosts" / "h1.yaml").write_text(text)
    return [str(p) for p in validate_repo(tmp_path)]


def test_alias_and_kernel_name_contradicting_in_one_block(tmp_path: Path) -> None:
    probs = _problems(
        tmp_path, "nics:\n  eth0:\n    offloads: {tso: off, gso: off, tx-tcp6-segmentation: on}\n"
    )
    assert probs == [
        "hosts/h1.yaml:3:36: nics.eth0.offloads.tx-tcp6-segmentation: tx-tcp6-segmentation on "
        "contradicts tso off on line 3: both switch tx-tcp6-segmentation"
    ]
    # Agreeing names are fine.
    assert (
        _problems(tmp_path, "nics:\n  eth0:\n    offloads: {tso: off, tx-tcp-segmentation: off}\n")
        == []
    )


def test_same_nic_twice_in_one_file_through_merge_key(tmp_path: Path) -> None:
    # Anchors must live in an allowed place (unknown top-level keys are errors).
    text = (
        "nics:\n"
        "  eth9: &common {offloads: {gso: off}, rings: {rx: 512}}\n"
        "  <<: {eth0: *common}\n"
        "  eth0:\n"
        "    offloads: {generic-segmentation-offload: on}\n"
        "    rings: {rx: 512}\n"
    )
    probs = _problems(tmp_path, text)
    assert len(probs) == 1, probs
    assert probs[0].startswith(
        "hosts/h1.yaml:4:3: nics.eth0: NIC eth0 is defined through a merge key"
    )
    assert "(offloads.tx-generic-segmentation)" in probs[0]
    with pytest.raises(ValidationError):
        desired_mod.load_host(tmp_path, "h1")
    # The same definition merged twice with equal values is no conflict, and merge keys
    # inside a NIC (defaults, then overrides) are the idiom they exist for.
    ok = (
        "nics:\n"
        "  eth9: &common {offloads: {gso: off}, rings: {rx: 512}}\n"
        "  <<: {eth0: *common}\n"
        "  eth0: {offloads: {gso: off}}\n"
        "  eth1:\n"
        "    <<: *common\n"
        "    offloads: {gso: on}\n"
    )
    assert _problems(tmp_path, ok) == []


def test_fleet_and_host_file_for_same_nic_is_an_override(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text("nics:\n  eth0: {offloads: {gso: off}}\n")
    assert _problems(tmp_path, "nics:\n  eth0: {offloads: {gso: on}}\n") == []
    assert desired_mod.load_host(tmp_path, "h1").nics["eth0"].offloads == {"gso": True}
