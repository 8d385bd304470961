"""End-to-end tests of the ``nic`` kind against real veth, bridge, bond, VLAN and tap devices.

Every test builds its devices in a network namespace it creates, runs the real engine
(read -> diff -> apply -> re-read -> verify) with the real provider in a thread switched into
that namespace, and checks the outcome with the ``ethtool`` command run in the namespace, not
with our own reader. "No needless writes" is shown twice: by the write counter of the I/O
layer and by the kernel's ``carrier_changes`` counter in sysfs (read inside the namespace).

Ring sizes cannot be tested here: veth has none (it answers EOPNOTSUPP, which is tested).
They are tested on e1000 NICs inside a VM: tests/vm_inner/test_nic_rings.py.
"""

from __future__ import annotations

import errno
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import engine
from reconciler.desired import load_host
from reconciler.engine import RunResult
from reconciler.errors import ProviderError
from reconciler.kinds.nic.ethtool import EthtoolIO
from reconciler.kinds.nic.provider import NicProvider
from reconciler.model import HostDesired
from reconciler.plan import Change, Op, Plan
from tests.netns import Netns, require_kernel_lab

pytestmark = pytest.mark.kernel

TOOLS = ("ip", "ethtool")


class Host:
    """A desired-state repo and a namespace with devices: one host under test."""

    def __init__(self, ns: Netns, root: Path) -> None:
        self.ns = ns
        self.repo = root / "repo"
        self.repo.mkdir()

    def sh(self, *cmds: str) -> None:
        for cmd in cmds:
            self.ns.run(cmd.split())

    def veth(self, *names: str) -> None:
        """Create veth pairs ``<name>`` / ``<name>p``, both up."""
        for n in names:
            self.sh(
                f"ip link add {n} type veth peer name {n}p",
                f"ip link set {n} up",
                f"ip link set {n}p up",
            )

    def desired(self, fleet: str) -> HostDesired:
        (self.repo / "fleet.yaml").write_text(textwrap.dedent(fleet))
        return load_host(self.repo, "h1")

    def run(
        self, fleet: str, provider: NicProvider | None = None, *, dry_run: bool = False
    ) -> tuple[Plan, RunResult | None, NicProvider]:
        """Plan (and unless ``dry_run`` apply and verify) inside the namespace."""
        desired = self.desired(fleet)
        with self.ns.entered():
            p = provider or NicProvider(retry_initial=0.001, retry_total=1.0)
            plan, _ = engine.make_plan(desired, [p])
            result = None if dry_run else engine.apply_plan(desired, [p], plan, None)
        return plan, result, p

    def features(self, ifname: str) -> dict[str, str]:
        """``ethtool -k`` as {feature: "on"/"off"} (``[fixed]`` dropped)."""
        out = self.ns.run(["ethtool", "-k", ifname]).stdout
        feats: dict[str, str] = {}
        for line in out.splitlines()[1:]:
            name, _, value = line.strip().partition(": ")
            feats[name] = value.split()[0] if value else ""
        return feats

    def carrier_changes(self, ifname: str) -> int:
        # sysfs follows the mount namespace `ip netns exec` sets up, so read it in there.
        return int(self.ns.run(["cat", f"/sys/class/net/{ifname}/carrier_changes"]).stdout)


@pytest.fixture
def host(netns: Netns, tmp_path: Path) -> Host:
    require_kernel_lab(TOOLS)
    return Host(netns, tmp_path)


OFFLOADS = """\
nics:
  v0:
    offloads: {gso: off, tso: off, gro: on, tx-checksum-sctp: off}
"""


def test_offloads_converge_and_second_run_writes_nothing(host: Host) -> None:
    host.veth("v0")
    before = host.features("v0")
    assert before["generic-segmentation-offload"] == "on"

    plan, _, p = host.run(OFFLOADS, dry_run=True)
    assert [c.address for c in plan.changes] == ["nic/v0"] and not plan.errors
    assert p.io.writes == 0 and host.features("v0") == before  # dry-run wrote nothing

    plan, result, p = host.run(OFFLOADS)
    assert result is not None
    assert result.ok, result.errors
    assert p.io.writes == 1  # one set_features for all four names
    after = host.features("v0")
    assert after["generic-segmentation-offload"] == "off"
    assert after["tcp-segmentation-offload"] == "off"
    for f in ("tx-tcp-segmentation", "tx-tcp-ecn-segmentation", "tx-tcp6-segmentation"):
        assert after[f] == "off"
    assert after["generic-receive-offload"] == "on"
    assert after["tx-checksum-sctp"] == "off"

    carrier = host.carrier_changes("v0")
    plan, result, p = host.run(OFFLOADS)
    assert plan.changes == [] and plan.errors == []
    assert result is not None and result.ok and result.applied == []
    assert p.io.writes == 0
    assert host.carrier_changes("v0") == carrier
    assert host.features("v0") == after


def test_veth_rings_unsupported_is_an_error_for_that_nic_only(host: Host) -> None:
    host.veth("v0", "v1")
    plan, result, _ = host.run("""\
        nics:
          v0:
            rings: {rx: 1024}
            offloads: {gso: off}
          v1:
            offloads: {gro: on}
        """)
    assert [(e.address, "not supported" in e.message) for e in plan.errors] == [("nic/v0", True)]
    assert result is not None and not result.ok
    # The re-read still shows the rings error for v0 (and nothing for v1).
    assert {e.address for e in result.errors} <= {"nic/v0"}
    # v0's offloads and v1 still converged.
    assert host.features("v0")["generic-segmentation-offload"] == "off"
    assert host.features("v1")["generic-receive-offload"] == "on"


def test_apply_time_eopnotsupp_fails_that_setting_only(host: Host) -> None:
    """A ring op reaching a driver without rings (a stale plan) is a ProviderError for that
    NIC and setting; the change's feature op still runs."""
    host.veth("v0")
    change = Change(
        "nic",
        "v0",
        "update",
        (
            Op("set_features", {"nic": "v0", "features": {"tx-generic-segmentation": False}}),
            Op("set_rings", {"nic": "v0", "rx": 1024, "bounces_link": True}),
        ),
    )
    with host.ns.entered():
        p = NicProvider()
        with pytest.raises(ProviderError) as exc:
            p.apply(change)
    assert exc.value.address == "nic/v0"
    assert "rings rx 1024" in exc.value.message and "EOPNOTSUPP" in exc.value.message
    assert host.features("v0")["generic-segmentation-offload"] == "off"


def test_bridge_ports_land_on_veths_and_skip_tap(host: Host) -> None:
    host.veth("v1", "v2")
    host.sh(
        "ip link add br0 type bridge",
        "ip link set v1 master br0",
        "ip link set v2 master br0",
        "ip tuntap add tap0 mode tap",
        "ip link set tap0 master br0",
    )
    tap_before = host.features("tap0")
    br_before = host.features("br0")
    plan, result, _ = host.run("""\
        nics:
          br0:
            ports:
              offloads: {gso: off, tx-scatter-gather: off}
        """)
    assert [c.address for c in plan.changes] == ["nic/v1", "nic/v2"]
    assert plan.changes[0].after is not None and plan.changes[0].after["bridge"] == "br0"
    assert result is not None
    assert result.ok, result.errors
    for port in ("v1", "v2"):
        f = host.features(port)
        assert f["generic-segmentation-offload"] == "off"
        assert f["tx-scatter-gather"] == "off"
    assert host.features("tap0") == tap_before  # a VM's port is never touched
    assert host.features("br0") == br_before  # ports: is for the ports, not the bridge


def _kernel_has(ns: Netns, kind: str) -> bool:
    if kind == "bond":
        probe = ns.run(["ip", "link", "add", "probe0", "type", "bond"], check=False)
    else:  # a VLAN needs a parent that can carry one (not lo)
        ns.run(["ip", "link", "add", "probe1", "type", "veth", "peer", "name", "probe2"])
        probe = ns.run(["ip", "link", "add", "link", "probe1", "name", "probe0", "type", "vlan",
                        "id", "9"], check=False)  # fmt: skip
        ns.run(["ip", "link", "del", "probe1"], check=False)
    ns.run(["ip", "link", "del", "probe0"], check=False)
    return probe.returncode == 0


def test_bridge_ports_through_bond_and_vlan(host: Host) -> None:
    """A bond with a veth slave and a VLAN on a veth, both enslaved to the bridge: ports:
    lands on the physical veths (the bond's slave, the VLAN's parent)."""
    missing = [k for k in ("bond", "vlan") if not _kernel_has(host.ns, k)]
    if missing:
        pytest.skip(
            f"this kernel has no {' or '.join(missing)} support (CONFIG_BONDING / "
            "CONFIG_VLAN_8021Q); tests/lab/test_lab_vm.py runs this test in the VM, whose kernel "
            "has"
        )
    host.veth("v1", "v2", "v3")
    host.sh(
        "ip link add br0 type bridge",
        "ip link add bond0 type bond",
        "ip link set v1 down",
        "ip link set v1 master bond0",
        "ip link set bond0 master br0",
        "ip link add link v2 name v2.10 type vlan id 10",
        "ip link set v2.10 master br0",
        "ip link set v3 master br0",
    )
    plan, result, _ = host.run("""\
        nics:
          br0:
            ports:
              offloads: {gso: off}
        """)
    assert [c.address for c in plan.changes] == ["nic/v1", "nic/v2", "nic/v3"]
    assert result is not None
    assert result.ok, result.errors
    for port in ("v1", "v2", "v3"):
        assert host.features(port)["generic-segmentation-offload"] == "off"


def _inject(
    monkeypatch: pytest.MonkeyPatch, fail: Callable[[str, str, int], bool]
) -> list[tuple[str, str]]:
    """Wrap EthtoolIO._write, the function that issues the write syscall, so it raises
    OSError(ENOMEM) whenever ``fail(what, ifname, attempt)`` says so. Returns the call log."""
    calls: list[tuple[str, str]] = []
    real = EthtoolIO._write

    def fake(self: EthtoolIO, what: str, ifname: str, values: dict[str, Any]) -> None:
        calls.append((what, ifname))
        if fail(what, ifname, sum(1 for c in calls if c == (what, ifname))):
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        real(self, what, ifname, values)

    monkeypatch.setattr(EthtoolIO, "_write", fake)
    return calls


def test_enomem_is_retried_and_converges(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOMEM twice, then success: retried with backoff, converged.

    The fault is injected at the syscall boundary (EthtoolIO._write, which issues the ethtool
    ioctl): the one fake these tests allow. Everything else is the real kernel.
    """
    host.veth("v0")
    calls = _inject(monkeypatch, lambda what, nic, attempt: attempt <= 2)
    _, result, p = host.run(OFFLOADS)
    assert result is not None
    assert result.ok, result.errors
    assert calls == [("features", "v0")] * 3
    assert p.retries == 2
    assert host.features("v0")["generic-segmentation-offload"] == "off"


def test_enomem_forever_is_bounded_and_other_nics_converge(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOMEM on every write to v0 (injected at the syscall boundary, EthtoolIO._write: the
    one fake allowed): the retries stop within the bound, v0 is an error, v1 converges."""
    host.veth("v0", "v1")
    calls = _inject(monkeypatch, lambda what, nic, attempt: nic == "v0")
    p = NicProvider(retry_initial=0.01, retry_total=0.3)
    started = time.monotonic()
    _, result, _ = host.run(
        """\
        nics:
          v0: {offloads: {gso: off}}
          v1: {offloads: {gso: off}}
        """,
        provider=p,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert result is not None and not result.ok
    assert [e.address for e in result.errors] == ["nic/v0"]
    assert "Cannot allocate memory" in result.errors[0].message
    assert 3 <= calls.count(("features", "v0")) <= 6  # 0.01+0.02+0.04+0.08 <= 0.3 < +0.16
    assert host.features("v1")["generic-segmentation-offload"] == "off"
    assert host.features("v0")["generic-segmentation-offload"] == "on"
