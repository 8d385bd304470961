"""Smoke test of the VM harness (reconciler/testvm.py), meant to run INSIDE its VM only.

On the host these tests skip: ``tests/test_vm_harness.py`` boots one VM and runs this
directory in it with ``RECONCILER_IN_VM=1`` and ``RECONCILER_VM_NICS=eth0,eth1``. They check,
with the ``ethtool`` command and sysfs rather than any reader of ours, that the guest's NICs
are what ring tests need: driven by the real e1000 driver, preset maximum 4096 RX/TX,
resizable with ``ethtool -G``.

Observed on e1000 (Debian 6.1 kernel, QEMU 7.2): a ring change on a link that is up resets
the link: carrier drops at once and is back within about a second, so
``/sys/class/net/<nic>/carrier_changes`` rises by 2 (one down, one up). Setting the rings to
the values they already have changes nothing (ethtool and the kernel skip the write), and a
ring change on a link that is administratively down does not move the counter.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

if os.environ.get("RECONCILER_IN_VM") != "1":
    pytest.skip(
        "runs only inside the test VM (tests/lab/test_lab_vm.py boots it; RECONCILER_IN_VM=1)",
        allow_module_level=True,
    )

NICS = [n for n in os.environ.get("RECONCILER_VM_NICS", "").split(",") if n]


def ethtool(*args: str) -> str:
    """Run ``ethtool`` and return its stdout; fail the test with its stderr if it fails."""
    proc = subprocess.run(["ethtool", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"ethtool {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def rings(nic: str) -> dict[str, dict[str, int]]:
    """Parse ``ethtool -g``: {"max": {"RX": .., "TX": ..}, "current": {...}}."""
    out = ethtool("-g", nic)
    result: dict[str, dict[str, int]] = {"max": {}, "current": {}}
    section = ""
    for line in out.splitlines():
        if line.startswith("Pre-set maximums"):
            section = "max"
        elif line.startswith("Current hardware settings"):
            section = "current"
        elif section and (m := re.match(r"(RX|TX):\s+(\d+)$", line.strip())):
            result[section][m.group(1)] = int(m.group(2))
    return result


def sysfs(nic: str, attr: str) -> str:
    return (Path("/sys/class/net") / nic / attr).read_text().strip()


def wait_carrier(nic: str, timeout: float = 10.0) -> None:
    """Wait until the link reports carrier (e1000's watchdog notices within ~2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sysfs(nic, "carrier") == "1":
                return
        except OSError:  # EINVAL while the link is down
            pass
        time.sleep(0.1)
    pytest.fail(f"{nic}: no carrier within {timeout} s")


def test_nics_are_exported() -> None:
    assert NICS, "RECONCILER_VM_NICS is empty: the VM has no e1000 NICs"


@pytest.mark.parametrize("nic", NICS)
def test_driver_is_e1000(nic: str) -> None:
    assert re.search(r"^driver: e1000$", ethtool("-i", nic), re.M)


@pytest.mark.parametrize("nic", NICS)
def test_ring_maximums_are_4096(nic: str) -> None:
    assert rings(nic)["max"] == {"RX": 4096, "TX": 4096}


@pytest.mark.parametrize("nic", NICS)
def test_ring_change_applies_and_bounces_link(nic: str) -> None:
    before = rings(nic)["current"]
    subprocess.run(["ip", "link", "set", "dev", nic, "up"], check=True)
    try:
        wait_carrier(nic)
        changes = int(sysfs(nic, "carrier_changes"))

        ethtool("-G", nic, "rx", "512", "tx", "512")
        assert rings(nic)["current"] == {"RX": 512, "TX": 512}
        wait_carrier(nic)
        bounced = int(sysfs(nic, "carrier_changes"))
        assert bounced - changes == 2, f"carrier_changes {changes} -> {bounced}: expected a bounce"

        # The same values again: no write reaches the driver, the link does not bounce.
        ethtool("-G", nic, "rx", "512", "tx", "512")
        time.sleep(2.5)  # longer than e1000's 2 s watchdog period
        assert int(sysfs(nic, "carrier_changes")) == bounced
    finally:
        ethtool("-G", nic, "rx", str(before["RX"]), "tx", str(before["TX"]))
        subprocess.run(["ip", "link", "set", "dev", nic, "down"], check=True)
