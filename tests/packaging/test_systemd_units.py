"""The shipped boot-time integration: systemd units, the udev rule and the ifupdown hook.

Units are checked with ``systemd-analyze verify`` (ExecStart pointed at this checkout's
``reconcile``), their ordering is checked as data, and the commands they run are run for real
inside network namespaces, the way systemd and ifupdown would run them.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.netns import Netns

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "packaging"
UNITS = sorted([*(DIST / "systemd").glob("*.service"), *(DIST / "systemd").glob("*.timer")])
INSTALLED_BIN = "/opt/reconciler/bin/reconcile"
RECONCILE = Path(sys.executable).parent / "reconcile"


def _unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment, method-assign]
    cp.read_string(path.read_text())
    return cp


def _exec_start(path: Path) -> list[str]:
    argv = shlex.split(_unit(path)["Service"]["ExecStart"])
    assert argv[0] == INSTALLED_BIN
    return [str(RECONCILE), *argv[1:]]


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (Debian package systemd, installed by scripts/setup)")
    assert RECONCILE.exists(), "the reconcile console script is not installed in this venv"
    name = unit.name.replace("@.service", "@eth1.service")
    (tmp_path / name).write_text(unit.read_text().replace(INSTALLED_BIN, str(RECONCILE)))
    if unit.suffix == ".timer":  # verify checks that the unit a timer starts exists
        service = DIST / "systemd" / unit.name.replace(".timer", ".service")
        (tmp_path / service.name).write_text(
            service.read_text().replace(INSTALLED_BIN, str(RECONCILE))
        )
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_boot_unit_runs_before_the_network_is_configured() -> None:
    u = _unit(DIST / "systemd" / "reconciler-nic.service")
    assert u["Unit"]["DefaultDependencies"] == "no"
    assert "network-pre.target" in u["Unit"]["Before"].split()
    assert "network-pre.target" in u["Unit"]["Wants"].split()
    assert u["Install"]["WantedBy"] == "sysinit.target"
    assert _exec_start(DIST / "systemd" / "reconciler-nic.service")[1:3] == ["--only", "nic"]


def test_udev_rule_starts_the_template_for_new_nics() -> None:
    rules = [
        ln
        for ln in (DIST / "udev" / "90-reconciler-nic.rules").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    assert len(rules) == 1
    rule = rules[0]
    assert 'ACTION=="add"' in rule and 'SUBSYSTEM=="net"' in rule
    assert 'ENV{SYSTEMD_WANTS}+="reconciler-nic@%k.service"' in rule
    assert (DIST / "systemd" / "reconciler-nic@.service").exists()
    assert "tap*" in rule and "vnet*" in rule  # VM ports are never touched from here


def test_install_host_stages_every_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "install-host"), "--units-only"],
        env={**os.environ, "DESTDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for rel in (
        "etc/systemd/system/reconciler.service",
        "etc/systemd/system/reconciler.timer",
        "etc/systemd/system/reconciler-nic.service",
        "etc/systemd/system/reconciler-nic@.service",
        "etc/udev/rules.d/90-reconciler-nic.rules",
        "etc/network/if-pre-up.d/zz-reconciler",
        "etc/default/reconciler",
    ):
        assert (tmp_path / rel).is_file(), rel
    assert os.access(tmp_path / "etc/network/if-pre-up.d/zz-reconciler", os.X_OK)


HOST_NICS = """\
nics:
  eth0:
    offloads: {gso: off, tso: off}
  br0:
    ports:
      offloads: {gso: off}
"""


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "hosts").mkdir(parents=True)
    (repo / "hosts" / "h1.yaml").write_text(textwrap.dedent(HOST_NICS))
    return repo


def _features(ns: Netns, nic: str) -> dict[str, str]:
    out = ns.run(["ethtool", "-k", nic]).stdout
    feats = {}
    for line in out.splitlines()[1:]:
        name, _, rest = line.strip().partition(": ")
        feats[name] = rest.split()[0] if rest else ""
    return feats


def _lab(ns: Netns) -> None:
    ns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
    ns.run(["ip", "link", "add", "br0", "type", "bridge"])
    ns.run(["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "peer1"])
    ns.run(["ip", "link", "set", "eth1", "master", "br0"])


def test_boot_unit_execstart_converges_nics(netns: Netns, tmp_path: Path) -> None:
    _lab(netns)
    argv = _exec_start(DIST / "systemd" / "reconciler-nic.service")
    env = {
        **os.environ,
        "RECONCILER_REPO": str(_repo(tmp_path)),
        "RECONCILER_STATE_DIR": str(tmp_path / "state"),
        "RECONCILER_LOCK_FILE": str(tmp_path / "lock"),
    }
    assert _features(netns, "eth0")["generic-segmentation-offload"] == "on"  # veth default
    proc = netns.run([*argv, "--host", "h1"], env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _features(netns, "eth0")["generic-segmentation-offload"] == "off"
    assert _features(netns, "eth0")["tcp-segmentation-offload"] == "off"
    assert _features(netns, "eth1")["generic-segmentation-offload"] == "off"


def test_ifupdown_hook_applies_bridge_ports(netns: Netns, tmp_path: Path) -> None:
    _lab(netns)
    hook = DIST / "ifupdown" / "zz-reconciler"
    env = {
        **os.environ,
        "IFACE": "br0",
        "MODE": "start",
        "RECONCILER_BIN": str(RECONCILE),
        "RECONCILER_REPO": str(_repo(tmp_path)),
        "RECONCILER_STATE_DIR": str(tmp_path / "state"),
        "RECONCILER_LOCK_FILE": str(tmp_path / "lock"),
        "RECONCILER_HOST": "h1",
    }  # the hook serves the machine's hostname; pin it
    assert _features(netns, "eth1")["generic-segmentation-offload"] == "on"  # veth default
    proc = netns.run(["sh", str(hook)], env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _features(netns, "eth1")["generic-segmentation-offload"] == "off"
    # Not a bridge or bond, or not "start": the hook does nothing.
    proc = netns.run(["sh", str(hook)], env={**env, "IFACE": "eth0"}, check=False)
    assert proc.returncode == 0 and proc.stdout == ""


def test_timer_is_persistent_and_spread_over_the_fleet() -> None:
    t = _unit(DIST / "systemd" / "reconciler.timer")
    assert t["Timer"]["Persistent"] == "true"
    assert int(t["Timer"]["RandomizedDelaySec"]) > 0
    assert t["Install"]["WantedBy"] == "timers.target"
    svc = _unit(DIST / "systemd" / "reconciler.service")
    assert svc["Service"]["Type"] == "oneshot"
    assert "--wait" in _exec_start(DIST / "systemd" / "reconciler.service")


def test_timer_service_execstart_converges(netns: Netns, tmp_path: Path) -> None:
    """The periodic unit's ExecStart line, run the way systemd would (settings from the
    environment file's variables), converges the host: here a NIC's offloads."""
    _lab(netns)
    argv = _exec_start(DIST / "systemd" / "reconciler.service")
    env = {
        **os.environ,
        "RECONCILER_REPO": str(_repo(tmp_path)),
        "RECONCILER_HOST": "h1",
        "RECONCILER_STATE_DIR": str(tmp_path / "state"),
        "RECONCILER_LOCK_FILE": str(tmp_path / "lock"),
        "RECONCILER_METRICS_FILE": "",
    }
    proc = netns.run(argv, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _features(netns, "eth0")["generic-segmentation-offload"] == "off"
    assert (tmp_path / "state" / "runs.jsonl").exists()  # the run was recorded
