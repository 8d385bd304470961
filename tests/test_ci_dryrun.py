"""The CI dry-run: every host planned from a checkout, against snapshots or a base revision.

Real git repositories in temporary directories, the real CLI; the snapshot cases take a real
snapshot with ``reconcile snapshot`` of an ipset in a throw-away network namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import hostcfg
from tests.clirun import ROOT, reconcile
from tests.netns import Netns, netns  # noqa: F401  (fixture)
from tests.test_gitsource import GIT_ENV, git

FLEET = """\
ipsets:
  mgmt:
    type: hash:net
    family: inet
    members: [{members}]
"""
HOST_A = """\
nics:
  eth0:
    rings: {{rx: {rx}, tx: 4096}}
    offloads: {{gso: off}}
"""
HOST_B = """\
backups:
  etc:
    backend: restic
    repository: /srv/restic
    password_file: /root/restic.pass
    paths: [/etc]
    every: 1d
    keep: {{last: {last}}}
"""
VMS = """\
controller: ctl
storage: shared
nodes:
  kvm1: {{uri: "test:///default"}}
  kvm2: {{uri: "test:///default"}}
vms:
  vm1: {{node: {node}, vnc_port: auto, state: running}}
"""


class Repo:
    """A desired-state repository with a base and a head commit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ds = root / "desired-state"
        (self.ds / "hosts").mkdir(parents=True)
        git(root, "init", "-q")
        # The hosts' configuration, outside the repository: it allows the restic paths of
        # host b and the test:/// nodes of vms.yaml.
        self.config = hostcfg.write(
            root.parent, allowed_dirs=["/srv/restic", "/root/restic.pass"], allow_test_driver=True
        )

    def write(
        self,
        members: str = "192.0.2.0/24, 198.51.100.0/24",
        rx: int = 4096,
        last: int = 3,
        node: str = "kvm1",
    ) -> str:
        (self.ds / "fleet.yaml").write_text(FLEET.format(members=members))
        (self.ds / "hosts" / "a.yaml").write_text(HOST_A.format(rx=rx))
        (self.ds / "hosts" / "b.yaml").write_text(HOST_B.format(last=last))
        (self.ds / "vms.yaml").write_text(VMS.format(node=node))
        (self.ds / "hosts" / "ctl.yaml").write_text("{}\n")  # the controller's own file
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", "change")
        return git(self.root, "rev-parse", "HEAD")

    def plan(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return reconcile(
            "--dry-run", "--all-hosts", "--repo", str(self.ds), "--log-format", "json", *extra,
            env=hostcfg.env_with(self.config, {**GIT_ENV, "RECONCILER_METRICS_FILE": ""}),
        )  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def by_host(out: str) -> dict[str, dict[str, Any]]:
    return {p["host"]: p for p in json.loads(out)["hosts"]}


def ops(plan: dict[str, Any], address: str) -> list[dict[str, Any]]:
    (change,) = [c for c in plan["changes"] if c["address"] == address]
    return list(change["ops"])


def test_against_shows_what_the_commit_changes_for_every_host(repo: Repo) -> None:
    base = repo.write()
    head = repo.write(members="192.0.2.0/24, 203.0.113.0/24", rx=8192, last=5, node="kvm2")
    r = repo.plan("--against", base, "--output", "json", "--detailed-exitcode")
    assert r.returncode == 2, r.stderr  # changes pending
    doc = json.loads(r.stdout)
    assert doc["commit"] == head and doc["against"] == base
    plans = by_host(r.stdout)
    assert sorted(plans) == ["a", "b", "ctl"]  # the VM controller is planned too
    for host in ("a", "b", "ctl"):
        assert plans[host]["basis"] == {"kind": "against", "rev": base}
        assert ops(plans[host], "ipset/mgmt") == [
            {"op": "add_member", "member": "203.0.113.0/24"},
            {"op": "delete_member", "member": "198.51.100.0/24"},
        ]
    assert ops(plans["a"], "nic/eth0") == [
        {"op": "set_field", "nic": "eth0", "field": "rings.rx", "from": 4096, "to": 8192}
    ]
    assert ops(plans["b"], "backup/etc") == [
        {"op": "set_field", "set": "etc", "field": "keep.last", "from": 3, "to": 5}
    ]
    (move,) = [c for c in plans["ctl"]["changes"] if c["kind"] == "vm"]
    assert move["action"] == "move"
    assert move["ops"][0] == {"op": "move", "vm": "vm1", "from_node": "kvm1", "to_node": "kvm2"}
    text = repo.plan("--against", base)
    assert text.returncode == 0
    assert f"=== host a: against the desired state at {base}" in text.stdout
    assert "~ rings.rx: 4096 -> 8192" in text.stdout
    assert "> move vm1 kvm1 -> kvm2" in text.stdout


def test_no_change_exits_0_even_with_detailed_exitcode(repo: Repo) -> None:
    base = repo.write()
    (repo.ds / "README").write_text("docs only\n")
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", "docs")
    r = repo.plan("--against", base, "--detailed-exitcode", "--output", "json")
    assert r.returncode == 0, r.stderr
    assert all(not p["changes"] for p in json.loads(r.stdout)["hosts"])


def test_invalid_head_fails_with_file_line_and_nothing_planned(repo: Repo) -> None:
    base = repo.write()
    repo.write(members="192.0.2.0/33")
    r = repo.plan("--against", base)
    assert r.returncode == 1
    assert "fleet.yaml:5:" in r.stderr and "192.0.2.0/33" in r.stderr
    assert "=== host" not in r.stdout


def test_new_host_and_host_invalid_at_base_are_planned_as_new(repo: Repo) -> None:
    base = repo.write()
    (repo.ds / "hosts" / "c.yaml").write_text(HOST_A.format(rx=1024))
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", "new host c")
    plans = by_host(repo.plan("--against", base, "--output", "json").stdout)
    (nic,) = [c for c in plans["c"]["changes"] if c["kind"] == "nic"]
    assert nic["action"] == "create"


def test_unknown_base_revision_is_a_clear_error(repo: Repo) -> None:
    repo.write()
    r = repo.plan("--against", "no-such-rev")
    assert r.returncode == 1
    assert "unknown revision 'no-such-rev'" in r.stderr
    assert "Traceback" not in r.stderr


def test_ci_flags_need_dry_run(repo: Repo) -> None:
    repo.write()
    r = reconcile("--all-hosts", "--repo", str(repo.ds))
    assert r.returncode == 1  # a usage error (issue 13: 2 means "changes pending")
    assert "add --dry-run" in r.stderr


def test_host_without_snapshot_or_base_is_an_error_for_that_host(
    repo: Repo, tmp_path: Path
) -> None:
    repo.write()
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    r = repo.plan("--snapshots", str(snaps), "--output", "json")
    assert r.returncode == 1
    errors = by_host(r.stdout)["a"]["errors"]
    assert "no snapshot" in errors[0]["message"] and "--against" in errors[0]["message"]


# --- snapshots ----------------------------------------------------------------------------


def take_snapshot(ns: Netns, repo: Repo, tmp: Path, host: str, only: str = "ipset") -> Path:
    out = tmp / "snaps" / f"{host}.json"
    out.parent.mkdir(exist_ok=True)
    env = hostcfg.env_with(repo.config, {**GIT_ENV, "PYTHONPATH": str(ROOT)})
    r = ns.run(
        [sys.executable, "-m", "reconciler", "snapshot", "--repo", str(repo.ds), "--host", host,
         "--only", only, "--state-dir", str(tmp / "state"), "--lock-file", str(tmp / "lock"),
         "--log-format", "json", "-o", str(out)],
        check=False, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def test_snapshot_plan_uses_the_hosts_live_state(
    repo: Repo,
    netns: Netns,  # noqa: F811
    tmp_path: Path,
) -> None:
    base = repo.write()
    # The host as it really is: converged at base, then a member added by hand (drift).
    netns.run(["ipset", "create", "mgmt", "hash:net", "family", "inet"])
    for m in ("192.0.2.0/24", "198.51.100.0/24", "10.9.9.0/24"):
        netns.run(["ipset", "add", "mgmt", m])
    snap = take_snapshot(netns, repo, tmp_path, "a")
    assert json.loads(snap.read_text())["host"] == "a"
    repo.write(members="192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24")
    r = repo.plan(
        "--snapshots", str(snap.parent), "--against", base, "--only", "ipset", "--output", "json"
    )
    assert r.returncode == 0, r.stderr
    plans = by_host(r.stdout)
    basis = plans["a"]["basis"]
    assert basis["kind"] == "snapshot" and basis["file"] == str(snap)
    assert basis["age_seconds"] < 600 and basis["age"].endswith("min")
    # Against the snapshot: the commit's new member, and the drift removed.
    assert ops(plans["a"], "ipset/mgmt") == [
        {"op": "add_member", "member": "203.0.113.0/24"},
        {"op": "delete_member", "member": "10.9.9.0/24"},
    ]
    # Host b has no snapshot: planned against the base revision.
    assert plans["b"]["basis"]["kind"] == "against"
    assert ops(plans["b"], "ipset/mgmt") == [{"op": "add_member", "member": "203.0.113.0/24"}]
    text = repo.plan("--snapshots", str(snap.parent), "--against", base, "--only", "ipset")
    assert f"=== host a: against snapshot {snap} taken " in text.stdout


def rewrite(snap: Path, **fields: Any) -> None:
    data = json.loads(snap.read_text())
    data.update(fields)
    snap.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"host": "b"}, "is of host b, not a"),
        ({"format_version": 99}, "newer reconciler (format 99)"),
    ],
)
def test_bad_snapshots_are_clear_errors(
    repo: Repo,
    netns: Netns,  # noqa: F811
    tmp_path: Path,
    fields: dict[str, Any],
    message: str,
) -> None:
    base = repo.write()
    snap = take_snapshot(netns, repo, tmp_path, "a")
    rewrite(snap, **fields)
    r = repo.plan("--snapshots", str(snap.parent), "--against", base, "--output", "json")
    assert r.returncode == 1
    errors = by_host(r.stdout)["a"]["errors"]
    assert errors[0]["address"] == "snapshot" and message in errors[0]["message"]
    assert "Traceback" not in r.stderr


def test_truncated_snapshot_is_a_clear_error(
    repo: Repo,
    netns: Netns,  # noqa: F811
    tmp_path: Path,
) -> None:
    base = repo.write()
    snap = take_snapshot(netns, repo, tmp_path, "a")
    snap.write_text(snap.read_text()[:40])
    r = repo.plan("--snapshots", str(snap.parent), "--against", base, "--output", "json")
    assert r.returncode == 1
    assert "not valid JSON" in by_host(r.stdout)["a"]["errors"][0]["message"]


def test_stale_snapshot_is_warned_about(
    repo: Repo,
    netns: Netns,  # noqa: F811
    tmp_path: Path,
) -> None:
    base = repo.write()
    snap = take_snapshot(netns, repo, tmp_path, "a")
    old = datetime.now(UTC) - timedelta(days=10)
    rewrite(snap, created=old.isoformat())
    repo.write(members="192.0.2.0/24")
    r = repo.plan(
        "--snapshots", str(snap.parent), "--against", base, "--only", "ipset", "--output", "json"
    )
    plan = by_host(r.stdout)["a"]
    assert plan["basis"]["age"] == "10.0 days"
    (change,) = plan["changes"]
    assert any("10.0 days old" in w for w in change["warnings"])


def test_snapshot_writes_nothing_to_the_host(
    repo: Repo,
    netns: Netns,  # noqa: F811
    tmp_path: Path,
) -> None:
    repo.write()
    before = netns.ipset_save()
    take_snapshot(netns, repo, tmp_path, "a")
    assert netns.ipset_save() == before == ""
    assert not (tmp_path / "state").exists()  # not even a state dir
    assert os.path.exists(tmp_path / "snaps" / "a.json")


def test_snapshot_reads_every_nic_so_a_new_nic_can_be_planned(
    repo: Repo,
    netns: Netns,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The snapshot holds NICs git did not list yet (and a bridge's ports): a commit that
    adds settings for them is planned against their real state, not reported missing."""
    netns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
    netns.run(["ip", "link", "add", "br0", "type", "bridge"])
    netns.run(["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "peer1"])
    netns.run(["ip", "link", "set", "eth1", "master", "br0"])
    base = repo.write()
    snap = take_snapshot(netns, repo, tmp_path, "a", only="nic")
    nics = json.loads(snap.read_text())["lives"]["nic"]["nics"]
    assert {"eth0", "br0", "eth1"} <= set(nics)
    # The new commit tunes the bridge's port for the first time.
    (repo.ds / "hosts" / "a.yaml").write_text(
        HOST_A.format(rx=4096) + "  br0:\n    ports:\n      offloads: {gso: off}\n"
    )
    git(repo.root, "commit", "-q", "-am", "bridge ports")
    r = repo.plan("--snapshots", str(snap.parent), "--against", base, "--only", "nic",
                  "--output", "json")  # fmt: skip
    plan = by_host(r.stdout)["a"]
    assert plan["basis"]["kind"] == "snapshot"
    assert [c["address"] for c in plan["changes"] if c["address"] == "nic/eth1"] == ["nic/eth1"]
    assert not any("br0" in e["address"] or "eth1" in e["address"] for e in plan["errors"])


def test_snapshot_plan_shows_warnings_of_resources_without_a_change(
    repo: Repo, tmp_path: Path
) -> None:
    """Host b's snapshot holds a recent archive (nothing due) and one dated years ahead: no
    change, exit 0, and the future archive named in the host's plan-level warnings."""
    from reconciler.kinds.backup.provider import BackupLive, SetLive
    from reconciler.snapshot import Snapshot, write_snapshot

    base = repo.write()
    now = datetime.now(UTC)
    recent = f"etc-{(now - timedelta(hours=1)):%Y%m%d-%H%M%S}"
    live = BackupLive(now, {"etc": SetLive((recent, "etc-20991231-000000"))})
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    write_snapshot(snaps / "b.json", Snapshot("b", now, base, "test", {"backup": live}, {}))
    r = repo.plan(
        "--snapshots", str(snaps), "--against", base, "--only", "backup", "--output", "json",
        "--detailed-exitcode",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = by_host(r.stdout)["b"]
    assert plan["basis"]["kind"] == "snapshot"
    assert plan["changes"] == [] and plan["errors"] == []
    (warning,) = plan["warnings"]
    assert warning["address"] == "backup/etc"
    assert "etc-20991231-000000 is dated 2099-12-31" in warning["message"]
    text = repo.plan("--snapshots", str(snaps), "--against", base, "--only", "backup").stdout
    assert "Warnings:\n  backup/etc: backup set 'etc': archive etc-20991231-000000" in text


def test_host_invalid_at_base_is_planned_as_new_with_a_warning(repo: Repo) -> None:
    repo.write()
    (repo.ds / "hosts" / "b.yaml").write_text("backups: [not, a, mapping]\n")
    git(repo.root, "commit", "-qam", "break b")
    broken = git(repo.root, "rev-parse", "HEAD")
    repo.write()  # b fixed again
    r = repo.plan("--against", broken, "--only", "backup", "--output", "json")
    assert r.returncode == 0, r.stderr
    plan = by_host(r.stdout)["b"]
    (change,) = plan["changes"]
    assert change["action"] == "create"
    (warning,) = plan["warnings"]
    assert warning["address"] == "host"
    assert f"invalid at {broken}" in warning["message"]
    assert "planned as a new host" in warning["message"]
