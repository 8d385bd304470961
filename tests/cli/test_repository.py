"""The repository must say it is one (issue 13), through the real command line: a directory
with neither ``fleet.yaml`` nor ``hosts/``, a host without its file, and a git repository git
refuses are errors with the fix, in every subcommand that reads the desired state. None of
these reaches the host: ``--only backup`` with nothing declared, state in ``tmp_path``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.clirun import reconcile
from tests.test_gitsource import GIT_ENV, git

ENV = {**GIT_ENV, "RECONCILER_METRICS_FILE": ""}


def _runs(repo: Path, tmp_path: Path, host: str = "h1") -> dict[str, list[str]]:
    """Every way the desired state is read, for ``host``, touching nothing on this host."""
    state = ["--state-dir", str(tmp_path / "state"), "--lock-file", str(tmp_path / "lock")]
    one = ["--repo", str(repo), "--host", host, "--only", "backup", *state]
    return {
        "run": one,
        "dry-run": ["--dry-run", *one],
        "ci dry-run": ["--dry-run", "--all-hosts", "--repo", str(repo), "--against", "HEAD"],
        "validate": ["validate", "--repo", str(repo)],
        "snapshot": ["snapshot", *one, "-o", str(tmp_path / "snap.json")],
    }


def _git_repo(path: Path, files: dict[str, str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "--allow-empty", "-m", "state")


@pytest.mark.parametrize("layout", ["empty", "other files"])
def test_a_directory_that_is_no_repository_is_refused_everywhere(
    tmp_path: Path, layout: str
) -> None:
    repo = tmp_path / "repo"
    files = {} if layout == "empty" else {"README.md": "# notes\n", "host.yaml": "{}\n"}
    _git_repo(repo, files)
    for what, args in _runs(repo, tmp_path).items():
        proc = reconcile(*args, env=ENV)
        assert proc.returncode == 1, (what, proc.stdout, proc.stderr)
        assert (
            f"{repo}: not a desired-state repository: no fleet.yaml and no hosts/ "
            "(check --repo / --path)"
        ) in proc.stderr, (what, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "snap.json").exists()


def test_the_message_names_the_path_given(tmp_path: Path) -> None:
    _git_repo(tmp_path / "repo", {"fleet.yaml": "{}\n", "hosts/h1.yaml": "{}\n"})
    proc = reconcile(
        "--dry-run", "--repo", str(tmp_path / "repo"), "--path", "desired-state", "--host", "h1",
        "--only", "backup", "--state-dir", str(tmp_path / "s"), "--lock-file", str(tmp_path / "l"),
        env=ENV,
    )  # fmt: skip
    assert proc.returncode == 1
    # git's export of a missing subdirectory says so first; a present but empty one is
    # "not a desired-state repository"
    assert "desired-state" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "plain" / "desired-state").mkdir(parents=True)
    proc = reconcile(
        "--dry-run", "--repo", str(tmp_path / "plain"), "--path", "desired-state",
        "--host", "h1", "--only", "backup", "--state-dir", str(tmp_path / "s"),
        "--lock-file", str(tmp_path / "l"), env=ENV,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"{tmp_path / 'plain'}/desired-state: not a desired-state repository" in proc.stderr


@pytest.mark.parametrize("present", ["fleet.yaml", "hosts/"])
def test_either_file_makes_a_repository(tmp_path: Path, present: str) -> None:
    repo = tmp_path / "repo"
    files = {"fleet.yaml": "{}\n"} if present == "fleet.yaml" else {"hosts/h2.yaml": "{}\n"}
    _git_repo(repo, files)
    proc = reconcile("validate", "--repo", str(repo), env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_a_host_without_its_file_is_an_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _git_repo(repo, {"fleet.yaml": "{}\n", "hosts/kvm-1.yaml": "{}\n"})
    message = (
        "no hosts/kvm3.yaml: every host needs its file; an empty file {} means fleet defaults only"
    )
    runs = _runs(repo, tmp_path, host="kvm3")
    for what in ("run", "dry-run", "snapshot"):
        proc = reconcile(*runs[what], env=ENV)
        assert proc.returncode == 1, (what, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (what, proc.stderr)
    # The CI dry-run for that one host: an error for the host, exit 1.
    proc = reconcile(
        "--dry-run", "--repo", str(repo), "--host", "kvm3", "--against", "HEAD",
        "--output", "json", env=ENV,
    )  # fmt: skip
    assert proc.returncode == 1
    (plan,) = json.loads(proc.stdout)["hosts"]
    assert plan["errors"] == [{"address": "host", "message": message}]
    # validate --host NAME requires it too; the repository as a whole is valid.
    proc = reconcile("validate", "--repo", str(repo), "--host", "kvm3", env=ENV)
    assert proc.returncode == 1 and message in proc.stderr
    assert reconcile("validate", "--repo", str(repo), env=ENV).returncode == 0
    proc = reconcile("validate", "--repo", str(repo), "--host", "kvm-1", env=ENV)
    assert proc.returncode == 0, proc.stderr


def test_an_empty_host_file_means_fleet_defaults_only(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _git_repo(repo, {"fleet.yaml": "{}\n", "hosts/kvm3.yaml": "{}\n"})
    for what, args in _runs(repo, tmp_path, host="kvm3").items():
        if what == "snapshot":
            continue  # reads the host: covered by tests/test_snapshot.py
        proc = reconcile(*args, env=ENV)
        assert proc.returncode == 0, (what, proc.stdout, proc.stderr)


VMS = """\
controller: ctl
storage: shared
nodes:
  kvm1: {uri: "test:///default"}
vms:
  vm1: {node: kvm1}
"""


def test_the_vm_controller_without_a_file_is_planned_for_vm_placement_only(
    tmp_path: Path,
) -> None:
    """vms.yaml names the controller a host of this repository for VM placement: without a
    host file it is planned for that only (its run and the CI dry-run alike), with a
    warning naming the kinds it needs its file for; any other kind alone is an error."""
    from tests import hostcfg

    config = hostcfg.write(tmp_path, allow_test_driver=True)
    repo = tmp_path / "repo"
    fleet = "ipsets:\n  mgmt: {type: hash:net, members: [192.0.2.0/24]}\n"
    _git_repo(repo, {"fleet.yaml": fleet, "hosts/a.yaml": "{}\n", "vms.yaml": VMS})
    note = (
        "no hosts/ctl.yaml: ctl is planned as the VM controller vms.yaml names only; "
        "ipset, nic, backup need its file (an empty file {} means fleet defaults only)"
    )
    ci = ["--dry-run", "--all-hosts", "--repo", str(repo), "--against", "HEAD", "--output",
          "json", "--config", str(config)]  # fmt: skip
    proc = reconcile(*ci, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plans = {p["host"]: p for p in json.loads(proc.stdout)["hosts"]}
    assert sorted(plans) == ["a", "ctl"]
    assert plans["ctl"]["warnings"] == [{"address": "host", "message": note}]
    assert plans["ctl"]["errors"] == [] and plans["ctl"]["changes"] == []
    # Without the vm kind there is nothing to plan for it.
    proc = reconcile(*ci, "--only", "ipset", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert [p["host"] for p in json.loads(proc.stdout)["hosts"]] == ["a"]
    # Its own run: vm only (the test:/// node), the warning in the plan.
    state = ["--state-dir", str(tmp_path / "s"), "--lock-file", str(tmp_path / "l")]
    run = ["--dry-run", "--repo", str(repo), "--host", "ctl", "--config", str(config), *state]
    proc = reconcile(*run, "--output", "json", env=ENV)
    assert proc.returncode in (0, 1), proc.stderr  # the test:/// node may differ from vms.yaml
    plan = json.loads(proc.stdout)
    assert plan["warnings"][0] == {"address": "host", "message": note}
    assert all(c["kind"] == "vm" for c in plan["changes"])
    assert "kinds_skipped" in proc.stderr
    proc = reconcile(*run, "--only", "ipset", env=ENV)
    assert proc.returncode == 1 and "no hosts/ctl.yaml: every host needs its file" in proc.stderr
    proc = reconcile("validate", "--repo", str(repo), "--host", "ctl", "--config", str(config),
                     env=ENV)  # fmt: skip
    assert proc.returncode == 0 and f"warning: {note}" in proc.stderr
    # With its file it is a host like any other.
    (repo / "hosts" / "ctl.yaml").write_text("{}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the controller's file")
    proc = reconcile(*ci, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warnings" not in {p["host"]: p for p in json.loads(proc.stdout)["hosts"]}["ctl"]


# ------------------------------------------------------------------ git refusals
def _owned_by_nobody(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, 65534, 65534)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository away")
def test_a_repository_git_refuses_is_an_error_with_the_fix(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _git_repo(repo, {"fleet.yaml": "{}\n", "hosts/h1.yaml": "{}\n", "sub/fleet.yaml": "{}\n"})
    head = git(repo, "rev-parse", "HEAD")
    _owned_by_nobody(repo)
    env = {**ENV, "HOME": str(tmp_path)}  # no safe.directory of the real root user
    for what, args in _runs(repo, tmp_path).items():
        proc = reconcile(*args, env=env)
        assert proc.returncode == 1, (what, proc.stdout, proc.stderr)
        assert "detected dubious ownership" in proc.stderr, (what, proc.stderr)
        assert f"git config --global --add safe.directory {repo}" in proc.stderr
        assert "Traceback" not in proc.stderr and "source_not_git" not in proc.stderr
    assert not (tmp_path / "state").exists()
    # From a subdirectory the fix names the repository's top.
    proc = reconcile("validate", "--repo", str(repo / "sub"), env=env)
    assert proc.returncode == 1 and f"safe.directory {repo}\n" in proc.stderr
    # With the fix, it is read as the git repository it is (a commit is recorded).
    gitconfig = tmp_path / ".gitconfig"
    subprocess.run(
        ["git", "config", "--file", str(gitconfig), "--add", "safe.directory", str(repo)],
        check=True,
    )
    proc = reconcile(*_runs(repo, tmp_path)["dry-run"], "--output", "json",
                     env={k: v for k, v in env.items() if k != "GIT_CONFIG_GLOBAL"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["commit"] == head


def test_a_directory_in_no_git_repository_is_still_read_as_it_is(tmp_path: Path) -> None:
    repo = tmp_path / "plain"
    (repo / "hosts").mkdir(parents=True)
    (repo / "hosts" / "h1.yaml").write_text("{}\n")
    proc = reconcile(*_runs(repo, tmp_path)["dry-run"], "--output", "json", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["commit"] is None
