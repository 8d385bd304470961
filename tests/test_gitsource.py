"""Git sources end to end: a real bare "remote", clones, and the real CLI applying an ipset
inside a throw-away network namespace.

Each test commits a ``fleet.yaml`` whose ``mgmt`` set holds different members, runs
``reconcile`` and reads the set back with ``ipset save``: what the kernel holds says which
commit was applied.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clirun import ROOT
from tests.netns import Netns, netns  # noqa: F401  (fixture)

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def fleet(members: list[str]) -> str:
    lines = "".join(f"      - {m}\n" for m in members)
    return f"ipsets:\n  mgmt:\n    type: hash:net\n    family: inet\n    members:\n{lines}"


class Remote:
    """A bare repository (the "remote") and a work tree that pushes to it."""

    def __init__(self, tmp: Path) -> None:
        self.bare = tmp / "remote.git"
        self.work = tmp / "work"
        git(tmp, "init", "-q", "--bare", str(self.bare))
        git(tmp, "clone", "-q", str(self.bare), str(self.work))
        git(self.work, "checkout", "-q", "-b", "main")

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, members: list[str], message: str, *, subdir: str = "") -> str:
        d = self.work / subdir
        d.mkdir(parents=True, exist_ok=True)
        (d / "fleet.yaml").write_text(fleet(members))
        (d / "hosts").mkdir(exist_ok=True)
        (d / "hosts" / "h1.yaml").write_text("{}\n")  # every host has its file
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        return git(self.work, "rev-parse", "HEAD")

    def push(self, *extra: str) -> None:
        git(self.work, "push", "-q", *extra, "origin", "HEAD:main")


class Host:
    """The real CLI for host h1 inside ``ns``, with its own state dir and lock."""

    def __init__(self, ns: Netns, tmp: Path) -> None:
        self.ns = ns
        self.state = tmp / "state"
        self.lock = tmp / "lock"

    def run(self, repo: str, *extra: str) -> subprocess.CompletedProcess[str]:
        env = {**GIT_ENV, "RECONCILER_METRICS_FILE": "", "PYTHONPATH": str(ROOT)}
        return self.ns.run(
            [sys.executable, "-m", "reconciler", "--repo", repo, "--host", "h1",
             "--only", "ipset", "--state-dir", str(self.state), "--lock-file", str(self.lock),
             "--log-format", "json", "--output", "json", *extra],
            check=False, env=env,
        )  # fmt: skip

    def applied(self) -> str | None:
        f = self.state / "source.json"
        return json.loads(f.read_text())["commit"] if f.exists() else None

    def journal(self) -> list[dict[str, object]]:
        lines = (self.state / "runs.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


@pytest.fixture
def host(netns: Netns, tmp_path: Path) -> Host:  # noqa: F811
    return Host(netns, tmp_path)


A = ["192.0.2.0/24"]
B = ["198.51.100.0/24"]
C = ["203.0.113.0/24"]


def test_url_is_cloned_then_fetched_and_each_commit_applied(remote: Remote, host: Host) -> None:
    a = remote.commit(A, "first")
    remote.push()
    r = host.run(remote.url)
    assert r.returncode == 0, r.stderr
    assert host.ns.ipset_members("mgmt") == set(A)
    assert host.applied() == a
    assert json.loads(r.stdout)["commit"] == a
    assert (host.state / "source" / "fleet.yaml").exists()

    b = remote.commit(B, "second")
    remote.push()
    r = host.run(remote.url)
    assert r.returncode == 0, r.stderr
    assert host.ns.ipset_members("mgmt") == set(B)
    assert host.applied() == b
    assert [rec["commit"] for rec in host.journal()] == [a, b]


def test_ref_selects_a_branch_or_tag(remote: Remote, host: Host) -> None:
    remote.commit(A, "main")
    remote.push()
    git(remote.work, "checkout", "-q", "-b", "staging")
    staging = remote.commit(C, "staging only")
    git(remote.work, "tag", "v1")
    git(remote.work, "push", "-q", "origin", "staging", "v1")
    r = host.run(remote.url, "--ref", "staging")
    assert r.returncode == 0, r.stderr
    assert host.ns.ipset_members("mgmt") == set(C)
    assert host.applied() == staging
    r = host.run(remote.url, "--ref", "no-such-branch", "--dry-run")
    assert r.returncode == 1
    assert "no-such-branch: no such branch, tag or commit" in r.stderr


def test_unreachable_remote_uses_the_last_good_checkout_and_reports(
    remote: Remote, host: Host, tmp_path: Path
) -> None:
    a = remote.commit(A, "first")
    remote.push()
    assert host.run(remote.url).returncode == 0
    host.ns.run(["ipset", "del", "mgmt", A[0]])  # drift, by hand
    shutil.move(remote.bare, tmp_path / "gone.git")
    r = host.run(remote.url)
    assert r.returncode == 1
    plan = json.loads(r.stdout)
    assert any(e["address"] == "source" and "cannot fetch" in e["message"] for e in plan["errors"])
    assert f"using the last good checkout {a[:12]}" in r.stdout
    # The host still converged to what it last accepted.
    assert host.ns.ipset_members("mgmt") == set(A)
    last = host.journal()[-1]
    assert last["commit"] == a and last["ok"] is False
    assert any(e["address"] == "source" for e in last["errors"])  # type: ignore[attr-defined]


def test_unreachable_remote_without_a_checkout_is_a_clear_error(host: Host, tmp_path: Path) -> None:
    r = host.run(f"file://{tmp_path}/nothing.git")
    assert r.returncode == 1
    assert "cannot clone" in r.stderr and "no earlier checkout" in r.stderr
    assert "Traceback" not in r.stderr


def test_force_push_is_refused_unless_allow_rewind(remote: Remote, host: Host) -> None:
    remote.commit(A, "first")
    b = remote.commit(B, "second")
    remote.push()
    assert host.run(remote.url).returncode == 0
    git(remote.work, "reset", "-q", "--hard", "HEAD~1")
    c = remote.commit(C, "rewritten history")
    remote.push("--force")
    r = host.run(remote.url)
    assert r.returncode == 1
    assert (
        f"target commit {c[:12]} (rewritten history) is not a descendant of the last applied "
        f"commit {b[:12]}"
    ) in r.stderr
    assert host.ns.ipset_members("mgmt") == set(B)  # the last applied state is kept
    assert host.applied() == b
    assert host.journal()[-1]["errors"] == [
        {"address": "source", "message": host.journal()[-1]["errors"][0]["message"]}  # type: ignore[index]
    ]
    r = host.run(remote.url, "--allow-rewind")
    assert r.returncode == 0, r.stderr
    assert host.ns.ipset_members("mgmt") == set(C)
    assert host.applied() == c


def test_dirty_local_tree_is_refused_unless_allow_dirty(remote: Remote, host: Host) -> None:
    a = remote.commit(A, "first")
    (remote.work / "fleet.yaml").write_text(fleet(B))  # uncommitted
    r = host.run(str(remote.work))
    assert r.returncode == 1
    assert "uncommitted changes" in r.stderr and "--allow-dirty" in r.stderr
    assert "mgmt" not in host.ns.run(["ipset", "list", "-n"]).stdout  # nothing applied
    r = host.run(str(remote.work), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["commit"] == f"{a}+dirty"
    r = host.run(str(remote.work), "--allow-dirty")
    assert r.returncode == 0, r.stderr
    assert host.ns.ipset_members("mgmt") == set(B)
    assert host.journal()[-1]["commit"] == f"{a}+dirty"
    assert host.applied() is None  # a dirty tree is no base for the rewind check


def test_local_ref_is_exported_and_the_work_tree_left_alone(remote: Remote, host: Host) -> None:
    a = remote.commit(A, "first")
    b = remote.commit(B, "second")
    r = host.run(str(remote.work), "--ref", a, "--allow-rewind")
    assert r.returncode == 0, r.stderr
    assert host.ns.ipset_members("mgmt") == set(A)
    assert git(remote.work, "rev-parse", "HEAD") == b
    assert git(remote.work, "status", "--porcelain") == ""


def test_subdirectory_with_path(remote: Remote, host: Host) -> None:
    remote.commit(C, "in a subdirectory", subdir="desired-state")
    remote.push()
    r = host.run(remote.url, "--path", "desired-state")
    assert r.returncode == 0, r.stderr
    assert host.ns.ipset_members("mgmt") == set(C)


def test_broken_clone_in_state_dir_is_moved_aside(remote: Remote, host: Host) -> None:
    remote.commit(A, "first")
    remote.push()
    clone = host.state / "source"
    clone.mkdir(parents=True)
    (clone / "junk").write_text("not a repository")
    r = host.run(remote.url)
    assert r.returncode == 0, r.stderr
    assert host.ns.ipset_members("mgmt") == set(A)
    assert [p.name for p in host.state.glob("source.broken-*")]


def test_corrupt_applied_commit_record_is_a_clear_error(remote: Remote, host: Host) -> None:
    remote.commit(A, "first")
    remote.push()
    assert host.run(remote.url).returncode == 0
    (host.state / "source.json").write_text('{"commit": ')
    r = host.run(remote.url)
    assert r.returncode == 1
    assert "source.json is corrupt" in r.stderr and "Remove it" in r.stderr
    assert "Traceback" not in r.stderr


def test_dry_run_on_a_url_plans_the_new_commit_and_moves_nothing(
    remote: Remote, host: Host
) -> None:
    a = remote.commit(A, "first")
    remote.push()
    assert host.run(remote.url).returncode == 0
    b = remote.commit(B, "second", subdir="")
    remote.push()
    r = host.run(remote.url, "--dry-run", "--detailed-exitcode")
    assert r.returncode == 2, r.stderr
    plan = json.loads(r.stdout)
    assert plan["commit"] == b
    ops = plan["changes"][0]["ops"]
    assert {"op": "add_member", "member": B[0]} in ops
    assert host.ns.ipset_members("mgmt") == set(A)  # the host is untouched
    assert git(host.state / "source", "rev-parse", "HEAD") == a  # and so is the checkout
    assert host.applied() == a
