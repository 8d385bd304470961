"""The round trip every ``reconcile import`` test makes, through the real command line:
import into a desired-state directory, validate it with our own loader, then dry-run it
(``--detailed-exitcode``: 0 means the plan is empty), optionally inside a namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.netns import Netns

HOST = "h1"


def run(
    *args: str, ns: Netns | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m reconciler ARGS`` (in ``ns`` when given); never raises on exit codes."""
    full = {k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}
    full.update({"RECONCILER_METRICS_FILE": "", **(env or {})})
    argv = [sys.executable, "-m", "reconciler", *args]
    if ns is not None:
        return ns.run(argv, check=False, env=full)
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=full)


def new_repo(root: Path) -> Path:
    """An empty desired-state directory (a fleet.yaml of ``{}``) under ``root``."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    (repo / "fleet.yaml").write_text("{}\n")
    return repo


def import_to(
    repo: Path, *args: str, ns: Netns | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``reconcile import --host h1 -o REPO ARGS``."""
    return run("import", "--host", HOST, "-o", str(repo), *args, ns=ns, env=env)


def validate(repo: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``reconcile validate --repo REPO --host h1``."""
    return run("validate", "--repo", str(repo), "--host", HOST, env=env)


def dry_run(
    repo: Path,
    root: Path,
    *args: str,
    ns: Netns | None = None,
    env: Mapping[str, str] | None = None,
    host: str = HOST,
) -> subprocess.CompletedProcess[str]:
    """``reconcile --dry-run --detailed-exitcode`` of ``repo`` for ``host``, with a state
    dir and lock file under ``root``."""
    return run(
        "--dry-run", "--detailed-exitcode", "--repo", str(repo), "--host", host,
        "--state-dir", str(root / "state"), "--lock-file", str(root / "lock"),
        "--log-format", "json", *args, ns=ns, env=env,
    )  # fmt: skip


def round_trip(
    repo: Path,
    root: Path,
    *import_args: str,
    ns: Netns | None = None,
    env: Mapping[str, str] | None = None,
    only: str | None = None,
) -> str:
    """Import, validate, dry-run; asserts each step (import exit 0, valid, an empty plan:
    exit 0) and returns the host file written."""
    imp = import_to(repo, *import_args, ns=ns, env=env)
    assert imp.returncode == 0, imp.stdout + imp.stderr
    val = validate(repo, env=env)
    assert val.returncode == 0, val.stdout + val.stderr
    extra = ["--only", only] if only else []
    plan = dry_run(repo, root, *extra, ns=ns, env=env)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "No changes" in plan.stdout, plan.stdout
    host_file = repo / "hosts" / f"{HOST}.yaml"
    return host_file.read_text() if host_file.exists() else ""
