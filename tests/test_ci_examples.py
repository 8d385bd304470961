"""The shipped CI examples run: the plan step of ``examples/github-actions/reconcile-plan.yml``
and the script of ``examples/gitlab-ci/.gitlab-ci.yml``, taken from the files themselves and
run with bash in a real repository, the way the CI runners run them (``bash -e``).

Only the install steps are not run (they install this very package, which the test venv
already has on PATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reconciler.hostconfig import ENV_VAR
from tests.clirun import ROOT
from tests.test_ci_dryrun import Repo
from tests.test_gitsource import GIT_ENV, git

EXAMPLES = ROOT / "examples"


def github_script() -> str:
    wf = yaml.safe_load((EXAMPLES / "github-actions" / "reconcile-plan.yml").read_text())
    (step,) = [s for s in wf["jobs"]["plan"]["steps"] if s.get("name") == "Plan every host"]
    return str(step["run"])


def gitlab_script() -> str:
    ci = yaml.safe_load((EXAMPLES / "gitlab-ci" / ".gitlab-ci.yml").read_text())
    return "\n".join(ci["reconcile-plan"]["script"])


def run_ci(script: str, cwd: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        **GIT_ENV,
        **extra_env,
        "RECONCILER_METRICS_FILE": "",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip


CASES = {
    "github": (github_script, "BASE"),
    "gitlab": (gitlab_script, "CI_MERGE_REQUEST_DIFF_BASE_SHA"),
}


@pytest.mark.parametrize("ci", sorted(CASES))
def test_example_passes_with_changes_and_writes_the_plan(ci: str, tmp_path: Path) -> None:
    script, base_var = CASES[ci]
    repo = Repo(tmp_path / "repo")
    base = repo.write()
    repo.write(members="192.0.2.0/24, 203.0.113.0/24")
    summary = tmp_path / "summary.md"
    # The runner holds the fleet's host configuration (outside the repository).
    env = {base_var: base, "GITHUB_STEP_SUMMARY": str(summary), ENV_VAR: str(repo.config)}
    r = run_ci(script(), repo.root, env)
    assert r.returncode == 0, r.stdout + r.stderr  # changes pending do not fail the check
    assert f"=== host a: against the desired state at {base}" in r.stdout
    assert "+ member 203.0.113.0/24" in r.stdout
    assert (repo.root / "plan.json").exists()
    if ci == "github":
        assert "+ member 203.0.113.0/24" in summary.read_text()


@pytest.mark.parametrize("ci", sorted(CASES))
def test_example_fails_on_invalid_desired_state(ci: str, tmp_path: Path) -> None:
    script, base_var = CASES[ci]
    repo = Repo(tmp_path / "repo")
    base = repo.write()
    repo.write(members="192.0.2.0/33")
    r = run_ci(script(), repo.root, {base_var: base, ENV_VAR: str(repo.config)})
    assert r.returncode != 0
    assert "fleet.yaml:5:" in r.stderr


@pytest.mark.parametrize("ci", sorted(CASES))
def test_example_without_a_base_uses_the_previous_commit(ci: str, tmp_path: Path) -> None:
    script, _ = CASES[ci]
    repo = Repo(tmp_path / "repo")
    repo.write()
    repo.write(rx=2048)
    r = run_ci(script(), repo.root, {ENV_VAR: str(repo.config)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "~ rings.rx: 4096 -> 2048" in r.stdout
    assert git(repo.root, "status", "--porcelain", "desired-state") == ""
