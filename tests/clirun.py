"""Run the real ``reconcile`` command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reconcile(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``python -m reconciler ARGS`` with text output captured; never raises on exit codes."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, cwd=cwd, check=False, env=env,
    )  # fmt: skip


def run_backup_only(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A run for host h1 of an empty desired state, limited to the backup kind (so nothing
    touches the kernel), with its state dir and lock file in ``tmp_path``. Metrics are off
    (``RECONCILER_METRICS_FILE=''``) unless ``env`` says otherwise."""
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "fleet.yaml").write_text("{}\n")
    (repo / "hosts").mkdir(exist_ok=True)
    (repo / "hosts" / "h1.yaml").write_text("{}\n")
    return reconcile(
        "--repo", str(repo), "--host", "h1", "--only", "backup",
        "--state-dir", str(tmp_path / "state"), "--lock-file", str(tmp_path / "lock"),
        "--log-format", "json", *extra,
        env=env if env is not None else {**os.environ, "RECONCILER_METRICS_FILE": ""},
    )  # fmt: skip
