"""Ring-size tests on real e1000 NICs, run INSIDE a throw-away VM (one boot for the group).

veth has no rings, so these run where real drivers are: ``reconciler/testvm.py`` boots the machine's
own filesystem under qemu with ``-device e1000`` NICs and runs pytest on this file there, with
``RECONCILER_IN_VM=1`` and ``RECONCILER_VM_NICS="eth0,eth1"``-style names. Outside the VM the
whole module is skipped. The e1000 driver supports ``ethtool -G`` up to 4096 (its preset
maximum), which is what ``max`` must resolve to.

Results are checked with the ``ethtool -g`` command, not our reader; "no needless writes" with
the I/O layer's write counter and the link's ``carrier_changes`` counter in sysfs (an e1000
ring change resets the link, so a needless write would show there).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

if os.environ.get("RECONCILER_IN_VM") != "1":
    pytest.skip("runs only inside the test VM (reconciler/testvm.py)", allow_module_level=True)

from reconciler import engine
from reconciler.desired import load_host
from reconciler.engine import RunResult
from reconciler.kinds.nic.provider import NicProvider
from reconciler.plan import Plan

NICS = [n for n in os.environ.get("RECONCILER_VM_NICS", "").split(",") if n]
E1000_MAX = 4096


@pytest.fixture(scope="module")
def nics() -> list[str]:
    if len(NICS) < 2:
        pytest.fail(f"the VM must have two e1000 NICs (RECONCILER_VM_NICS={NICS!r})")
    for n in NICS:
        subprocess.run(["ip", "link", "set", n, "up"], check=True)
    return NICS


def ethtool_g(ifname: str) -> dict[str, dict[str, int | None]]:
    """``ethtool -g`` as {"max": {"rx": .., "tx": ..}, "current": {...}} (n/a -> None)."""
    out = subprocess.run(["ethtool", "-g", ifname], check=True, capture_output=True, text=True)
    result: dict[str, dict[str, int | None]] = {"max": {}, "current": {}}
    section = None
    for line in out.stdout.splitlines():
        if line.startswith("Pre-set maximums"):
            section = "max"
        elif line.startswith("Current hardware settings"):
            section = "current"
        elif section and ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower().replace(" ", "-")
            if key in ("rx", "tx", "rx-mini", "rx-jumbo"):
                v = value.strip()
                result[section][key] = int(v) if v.isdigit() else None
    return result


def set_with_ethtool(ifname: str, rx: int, tx: int) -> None:
    """Put a NIC into a known state with the standard tool (test set-up)."""
    cur = ethtool_g(ifname)["current"]
    if (cur["rx"], cur["tx"]) != (rx, tx):
        subprocess.run(["ethtool", "-G", ifname, "rx", str(rx), "tx", str(tx)], check=True)


def carrier_changes(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/carrier_changes").read_text())


def run(
    tmp_path: Path, fleet: str, *, dry_run: bool = False
) -> tuple[Plan, RunResult | None, NicProvider]:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "fleet.yaml").write_text(textwrap.dedent(fleet))
    desired = load_host(repo, "vm")
    p = NicProvider(retry_initial=0.05, retry_total=5.0)
    plan, _ = engine.make_plan(desired, [p])
    result = None if dry_run else engine.apply_plan(desired, [p], plan, None)
    return plan, result, p


def test_rings_set_to_a_number(nics: list[str], tmp_path: Path) -> None:
    eth = nics[0]
    set_with_ethtool(eth, 256, 256)
    plan, result, p = run(tmp_path, f"nics:\n  {eth}:\n    rings: {{rx: 512, tx: 256}}\n")
    assert [op.to_dict() for op in plan.changes[0].ops] == [
        {"op": "set_rings", "nic": eth, "rx": 512, "bounces_link": True}
    ]
    assert plan.changes[0].warnings  # the plan says the link will bounce
    assert result is not None
    assert result.ok, result.errors
    assert p.io.writes == 1
    assert ethtool_g(eth)["current"]["rx"] == 512
    assert ethtool_g(eth)["current"]["tx"] == 256


def test_rings_max_is_the_driver_maximum(nics: list[str], tmp_path: Path) -> None:
    eth = nics[0]
    set_with_ethtool(eth, 256, 256)
    assert ethtool_g(eth)["max"]["rx"] == E1000_MAX
    _, result, _ = run(tmp_path, f"nics:\n  {eth}:\n    rings: {{rx: max, tx: max}}\n")
    assert result is not None
    assert result.ok, result.errors
    cur = ethtool_g(eth)["current"]
    assert (cur["rx"], cur["tx"]) == (E1000_MAX, E1000_MAX)


def test_noop_apply_writes_nothing_and_keeps_the_link(nics: list[str], tmp_path: Path) -> None:
    eth = nics[0]
    fleet = f"nics:\n  {eth}:\n    rings: {{rx: 1024, tx: 1024}}\n    offloads: {{gso: off}}\n"
    _, result, _ = run(tmp_path, fleet)
    assert result is not None
    assert result.ok, result.errors
    carrier = carrier_changes(eth)
    plan, result, p = run(tmp_path, fleet)
    assert plan.changes == [] and plan.errors == []
    assert result is not None and result.ok
    assert p.io.writes == 0
    assert carrier_changes(eth) == carrier
    assert ethtool_g(eth)["current"]["rx"] == 1024


def test_above_max_is_a_plan_error_showing_the_maximum(nics: list[str], tmp_path: Path) -> None:
    eth, other = nics[0], nics[1]
    set_with_ethtool(eth, 256, 256)
    set_with_ethtool(other, 256, 256)
    plan, _, _ = run(
        tmp_path,
        f"nics:\n  {eth}:\n    rings: {{rx: 8192}}\n  {other}:\n    rings: {{rx: 2048}}\n",
    )
    assert [e.address for e in plan.errors] == [f"nic/{eth}"]
    assert "maximum of 4096" in plan.errors[0].message
    assert ethtool_g(eth)["current"]["rx"] == 256  # nothing written to it
    assert ethtool_g(other)["current"]["rx"] == 2048  # the other NIC converged


def test_bridge_port_is_resized(nics: list[str], tmp_path: Path) -> None:
    """ports: on a bridge resizes the rings of its physical port (what ifup hooks skip)."""
    port = nics[1]
    set_with_ethtool(port, 256, 256)
    subprocess.run(["ip", "link", "add", "rbr0", "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", port, "master", "rbr0"], check=True)
        plan, result, _ = run(
            tmp_path, "nics:\n  rbr0:\n    ports:\n      rings: {rx: 2048, tx: max}\n"
        )
        assert [c.address for c in plan.changes] == [f"nic/{port}"]
        assert plan.changes[0].after is not None and plan.changes[0].after["bridge"] == "rbr0"
        assert result is not None
        assert result.ok, result.errors
        cur = ethtool_g(port)["current"]
        assert (cur["rx"], cur["tx"]) == (2048, E1000_MAX)
    finally:
        subprocess.run(["ip", "link", "del", "rbr0"], check=False)
