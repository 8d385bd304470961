"""The lab's adoption stage (:mod:`lab.importstage`) on the example fleet: a host set up by
hand in a namespace, imported, and its dry-run empty (the stage raises LabError otherwise)."""

from __future__ import annotations

import pytest

from lab import importstage, stages
from tests.netns import require_kernel_lab


@pytest.mark.kernel
def test_adopting_an_example_host_plans_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    require_kernel_lab(("ip", "ipset", "iptables", "ip6tables", "ethtool", "bash"))
    with stages.lab_host_config():
        importstage.run(stages.DEFAULT_REPO, ["db", "www"])
    out = capsys.readouterr().out
    assert "=== adopting host www" in out  # the one with a bridge
    assert "reconcile import --host www" in out
    assert "No changes: live state matches the desired state." in out
    assert "[www] exit code 0" in out
