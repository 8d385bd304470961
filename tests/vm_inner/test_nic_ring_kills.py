"""The kill suite's ring-write points (issue 14), run INSIDE the test VM on a real e1000 NIC.

No virtual device in a network namespace has rings (veth, dummy, bridge and tap answer
EOPNOTSUPP), so ``tests/test_kill_suite.py`` covers only offload writes there; the test VM's
e1000 NICs have real rings. The harness is the same (:mod:`tests.killsuite`): the real
``reconcile`` runs through its ``python -c`` wrapper, which SIGKILLs the process at a chosen
boundary call, and the next plain run must converge.

The plan: ``eth0`` from 256/256 descriptors with GSO on to rx 1024, tx 512 with GSO off: one
offload write, then one ring write (the provider's order). Four points, as on veth: before the
offload write (nothing written), after it and before the ring write (the offloads written, the
rings not: between the two writes, once in each process position), and after the ring write
(everything written, the re-read and verification not done). Each point costs three runs of
``reconcile`` (the killed run, the next run, a no-op check), 7-10 s each under software
emulation, so the points run one at a time on one NIC, and there are no more of them.

Checked with the ``ethtool`` command, not our reader: right after a kill the rings are the old
sizes or the new ones (one ioctl sets both), and ``eth1``, which git does not name, keeps its
rings and features throughout; after the next run ``ethtool -g`` shows the sizes git asks for
and ``ethtool -k`` GSO off; then a run through the wrapper makes no write at all (nothing
left half-done, the lock free, the state dir readable).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

if os.environ.get("RECONCILER_IN_VM") != "1":
    pytest.skip(
        "runs only inside the test VM (lab/testvm.py; tests/lab/test_lab_vm.py boots it)",
        allow_module_level=True,
    )

from tests import killsuite
from tests.vm_inner.test_nic_rings import ethtool_g, set_with_ethtool

NICS = [n for n in os.environ.get("RECONCILER_VM_NICS", "").split(",") if n]
START = (256, 256)
WANT = (1024, 512)
GSO = "generic-segmentation-offload"
POINTS = 4


@pytest.fixture(scope="module")
def nics() -> Iterator[list[str]]:
    """The VM's two e1000 NICs, up; put back to the driver's defaults afterwards."""
    if len(NICS) < 2:
        pytest.fail(f"the VM must have two e1000 NICs (RECONCILER_VM_NICS={NICS!r})")
    for n in NICS:
        subprocess.run(["ip", "link", "set", n, "up"], check=True)
    set_with_ethtool(NICS[1], 512, 512)
    yield NICS
    for n in NICS:
        set_with_ethtool(n, *START)
        subprocess.run(["ethtool", "-K", n, "gso", "on"], check=True)


def features(ifname: str) -> dict[str, str]:
    out = subprocess.run(["ethtool", "-k", ifname], check=True, capture_output=True, text=True)
    return killsuite.ethtool_features(out.stdout)


def rings(ifname: str) -> tuple[int | None, int | None]:
    cur = ethtool_g(ifname)["current"]
    return cur["rx"], cur["tx"]


class RingScenario:
    """``nic`` from START with GSO on, git asking WANT with GSO off; ``foreign`` not in git."""

    kind = "nic"

    def __init__(self, root: Path, nic: str, foreign: str) -> None:
        self.root, self.nic, self.foreign = root, nic, foreign
        set_with_ethtool(nic, *START)
        subprocess.run(["ethtool", "-K", nic, "gso", "on"], check=True)
        self.repo = root / "repo"
        (self.repo / "hosts").mkdir(parents=True)
        (self.repo / "hosts" / "h1.yaml").write_text("{}\n")
        rx, tx = WANT
        (self.repo / "fleet.yaml").write_text(
            textwrap.dedent(f"""\
                nics:
                  {nic}:
                    offloads: {{gso: off}}
                    rings: {{rx: {rx}, tx: {tx}}}
                """)
        )
        self.foreign_before = (rings(foreign), features(foreign))

    def run(self, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [*killsuite.python_argv(env), *killsuite.cli_args(self.repo, self.root, "nic")]
        return subprocess.run(argv, cwd=killsuite.PROJECT_ROOT, env=killsuite.base_env(env),
                              capture_output=True, text=True, check=False, timeout=300)  # fmt: skip

    def check_killed(self) -> list[str]:
        problems = []
        if (rings(self.foreign), features(self.foreign)) != self.foreign_before:
            problems.append(f"{self.foreign}, a NIC git does not name, changed")
        if rings(self.nic) not in (START, WANT):
            problems.append(f"{self.nic}: rings {rings(self.nic)}, neither {START} nor {WANT}")
        return problems

    def check_converged(self) -> list[str]:
        problems = self.check_killed()
        if rings(self.nic) != WANT:
            problems.append(f"{self.nic}: ethtool -g shows {rings(self.nic)}, git says {WANT}")
        if features(self.nic).get(GSO) != "off":
            problems.append(f"{self.nic}: {GSO} is {features(self.nic).get(GSO)}, git says off")
        return problems

    def check_ours_kept(self) -> list[str]:
        return killsuite.no_writes(self, self.root / "noop.log")


def test_ring_writes_killed_at_their_boundaries(nics: list[str], tmp_path: Path) -> None:
    """Killed before and after the offload write and before and after the ring write, on
    a real e1000: the next run converges, nothing foreign changes."""

    @contextmanager
    def fresh(root: Path) -> Iterator[killsuite.Scenario]:
        yield RingScenario(root, nics[0], nics[1])

    # One point at a time: the points share the VM's NICs.
    outcome = killsuite.exercise(fresh, tmp_path, after=lambda label: True, workers=1)
    assert outcome.problems == [], "\n".join(outcome.problems)
    assert [label.split()[0] for label in outcome.labels] == [
        "nic:set_features",
        "nic:set_rings",
    ], outcome.labels
    assert [str(p) for p in outcome.points] == [
        f"#1 before nic:set_features {nics[0]}",
        f"#1 after nic:set_features {nics[0]}",
        f"#2 before nic:set_rings {nics[0]}",
        f"#2 after nic:set_rings {nics[0]}",
    ]
    assert len(outcome.points) == POINTS
