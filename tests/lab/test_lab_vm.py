"""Boot ONE VM with e1000 NICs (lab/testvm.py) and run every test in tests/vm_inner/.

Ring sizes need real NIC drivers (veth has none), and bond/VLAN port resolution needs kernel
support the host kernel lacks; the VM has both. One boot serves the whole group because
booting under software emulation costs 10-20 s and every process started in the guest a few
seconds more (the ring kill points, tests/vm_inner/test_nic_ring_kills.py, start 14
``reconcile`` runs). Skips only when no VM can be booted here, saying what is missing;
scripts/setup installs everything needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.testvm import run_pytest_in_vm, vm_unavailable_reason

INNER = Path(__file__).resolve().parents[1] / "vm_inner"


def _expected_tests() -> set[str]:
    """Every ``def test_...`` in the inner modules, by module (parametrized ids aside)."""
    found = set()
    for path in INNER.glob("test_*.py"):
        text = path.read_text()
        names = re.findall(r"^def (test_\w+)", text, re.M)
        names += re.findall(r"import .*\b(test_\w+)", text)
        found |= {f"{path.name}::{n}" for n in names}
    return found


def test_inner_tests_pass_inside_one_vm() -> None:
    reason = vm_unavailable_reason()
    if reason is not None:
        pytest.skip(f"cannot boot the test VM: {reason}")
    result = run_pytest_in_vm(["tests/vm_inner"], nics=2, extra_args=["-rA"], timeout=900)
    output = f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    assert result.returncode == 0, f"in-VM pytest exited {result.returncode}\n{output}"
    # Exit 0 would also cover a module that skipped itself: insist every test really passed.
    passed = {
        re.sub(r"\[.*\]$", "", m.split("/")[-1])
        for m in re.findall(r"^PASSED (\S+)", result.stdout, re.M)
    }
    missing = _expected_tests() - passed
    assert not missing, f"did not pass inside the VM: {sorted(missing)}\n{output}"
    assert not re.search(r"^(SKIPPED|FAILED|ERROR)", result.stdout, re.M), output
