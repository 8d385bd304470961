"""The shipped CI examples run: the plan step of ``examples/github-actions/reconcile-plan.yml``
and the script of ``examples/gitlab-ci/.gitlab-ci.yml``, taken from the files themselves and
run with bash in a real repository, the way the CI runners run them (``bash -e``).

Only the install steps are not run (they install this very package, which the test venv
already has on PATH). The GitLab note is posted with real curl to an emulation of GitLab's
notes API on 127.0.0.1 (:class:`NotesApi`); the GitHub comment step needs GitHub's own API
(``gh api``) and is checked for what makes it safe, and parsed by bash.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        # The runner's cache directory (the examples' cache steps keep it between runs).
        "RECONCILER_CACHE_DIR": str(cwd.parent / "ci-cache"),
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
    assert any((tmp_path / "ci-cache").iterdir())  # validated files kept for the next run
    # The review comment's Markdown (and, on GitHub, the job summary).
    md = (repo.root / "plan.md").read_text()
    assert md.startswith("<!-- reconcile-plan -->\n")
    assert "| a | 0 | 1 | 0 | 0 | 0 |" in md and "+ member 203.0.113.0/24" in md
    if ci == "github":
        assert summary.read_text() == md


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


# --- the review comment ------------------------------------------------------------------


def github_post_step(workflow: str) -> dict[str, Any]:
    wf = yaml.safe_load((EXAMPLES / "github-actions" / workflow).read_text())
    (step,) = [s for s in wf["jobs"]["plan"]["steps"] if s.get("name", "").startswith("Post ")]
    assert wf["jobs"]["plan"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert wf["permissions"] == {"contents": "read"}
    assert "pull_request_target" not in wf[True]  # YAML reads the key 'on' as True
    return dict(step)


@pytest.mark.parametrize("workflow", ["reconcile-plan.yml", "reconcile-plan-sharded.yml"])
def test_github_comment_step_skips_forks_and_updates_its_own_comment(workflow: str) -> None:
    """The step itself needs GitHub's API (gh api): checked here for what makes it safe and
    single, and parsed by bash."""
    step = github_post_step(workflow)
    cond = " ".join(step["if"].split())
    assert "github.event.pull_request.head.repo.full_name == github.repository" in cond
    assert "github.event_name == 'pull_request'" in cond
    run = step["run"]
    assert 'select(.user.login == "github-actions[bot]" and (.body | startswith($m)))' in run
    assert "gh api --paginate" in run and "-X PATCH" in run and "--input comment.json" in run
    assert step["env"]["GH_TOKEN"] == "${{ github.token }}"
    r = subprocess.run(["bash", "-n", "-c", run], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


class NotesApi:
    """GitLab's merge-request notes API as the example uses it (``GET /user``; ``GET``,
    ``POST`` and ``PUT`` on ``/projects/:id/merge_requests/:iid/notes``), over real HTTP on
    127.0.0.1, with GitLab's pagination (``X-Next-Page``), two notes a page."""

    PAGE = 2

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens  # token -> username
        self.notes: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.fail_writes = False
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def user(self) -> str | None:
                return api.tokens.get(self.headers.get("PRIVATE-TOKEN", ""))

            def route(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                api.requests.append((method, url.path))
                me = self.user()
                if me is None:
                    return self.reply(401, {"message": "401 Unauthorized"})
                if url.path == "/api/v4/user" and method == "GET":
                    return self.reply(200, {"username": me})
                m = re.fullmatch(r"/api/v4/projects/7/merge_requests/3/notes(?:/(\d+))?", url.path)
                if m is None:
                    return self.reply(404, {"message": "404 Not Found"})
                if method == "GET" and m.group(1) is None:
                    page = int(urllib.parse.parse_qs(url.query).get("page", ["1"])[0])
                    chunk = api.notes[(page - 1) * api.PAGE : page * api.PAGE]
                    more = page * api.PAGE < len(api.notes)
                    return self.reply(200, chunk, {"X-Next-Page": str(page + 1) if more else ""})
                if api.fail_writes:
                    return self.reply(500, {"message": "500 Internal Server Error"})
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))["body"]
                if method == "POST" and m.group(1) is None:
                    note = {"id": 100 + len(api.notes), "body": body, "author": {"username": me}}
                    api.notes.append(note)
                    return self.reply(201, note)
                if method == "PUT" and m.group(1) is not None:
                    (note,) = [n for n in api.notes if n["id"] == int(m.group(1))]
                    if note["author"]["username"] != me:
                        return self.reply(403, {"message": "403 Forbidden"})
                    note["body"] = body
                    return self.reply(200, note)
                return self.reply(405, {"message": "405 Method Not Allowed"})

            def do_GET(self) -> None:
                self.route("GET")

            def do_POST(self) -> None:
                self.route("POST")

            def do_PUT(self) -> None:
                self.route("PUT")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v4"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def notes_api() -> Iterator[NotesApi]:
    api = NotesApi({"tok": "plan-bot", "other": "alice"})
    yield api
    api.close()


def gitlab_mr_env(repo: Repo, base: str, api: NotesApi, token: str = "tok") -> dict[str, str]:
    return {
        "CI_MERGE_REQUEST_DIFF_BASE_SHA": base,
        "CI_MERGE_REQUEST_IID": "3",
        "CI_PROJECT_ID": "7",
        "CI_API_V4_URL": api.url,
        "RECONCILER_NOTE_TOKEN": token,
        ENV_VAR: str(repo.config),
    }


def test_gitlab_example_posts_one_note_and_updates_it(notes_api: NotesApi, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.write()
    # Others' notes before ours, over several pages; one of them copies our marker.
    notes_api.notes += [
        {"id": i, "body": f"note {i}", "author": {"username": "alice"}} for i in range(1, 5)
    ]
    notes_api.notes.append(
        {"id": 5, "body": "<!-- reconcile-plan -->\nfake", "author": {"username": "alice"}}
    )
    repo.write(members="192.0.2.0/24, 203.0.113.0/24")
    r = run_ci(gitlab_script(), repo.root, gitlab_mr_env(repo, base, notes_api))
    assert r.returncode == 0, r.stdout + r.stderr
    ours = [n for n in notes_api.notes if n["author"]["username"] == "plan-bot"]
    assert len(ours) == 1 and ours[0]["body"] == (repo.root / "plan.md").read_text()
    assert "+ member 203.0.113.0/24" in ours[0]["body"]
    # The next push: the same note is updated, no other is touched or added.
    repo.write(members="192.0.2.0/24, 203.0.113.0/24", rx=2048)
    r = run_ci(gitlab_script(), repo.root, gitlab_mr_env(repo, base, notes_api))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [n["id"] for n in notes_api.notes] == [1, 2, 3, 4, 5, ours[0]["id"]]
    assert "~ rings.rx: 4096 -> 2048" in notes_api.notes[-1]["body"]
    assert notes_api.notes[4]["body"] == "<!-- reconcile-plan -->\nfake"
    assert ("PUT", f"/api/v4/projects/7/merge_requests/3/notes/{ours[0]['id']}") in (
        notes_api.requests
    )


def test_gitlab_example_posts_the_errors_of_a_failing_plan(
    notes_api: NotesApi, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.write()
    repo.write(members="192.0.2.0/33")
    r = run_ci(gitlab_script(), repo.root, gitlab_mr_env(repo, base, notes_api))
    assert r.returncode != 0  # the job fails, and the note says why
    (note,) = notes_api.notes
    assert "fleet.yaml:5:" in note["body"] and "nothing was planned" in note["body"]


def test_gitlab_example_without_token_or_with_a_failing_api(
    notes_api: NotesApi, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.write()
    repo.write(rx=2048)
    env = gitlab_mr_env(repo, base, notes_api)
    del env["RECONCILER_NOTE_TOKEN"]
    r = run_ci(gitlab_script(), repo.root, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert notes_api.requests == []  # no token: nothing posted, nothing asked
    notes_api.fail_writes = True
    r = run_ci(gitlab_script(), repo.root, gitlab_mr_env(repo, base, notes_api))
    assert r.returncode == 0, r.stdout + r.stderr  # the plan decides the job, not the note
    assert "the plan note could not be posted" in r.stderr
    r = run_ci(gitlab_script(), repo.root, gitlab_mr_env(repo, base, notes_api, "bad"))
    assert r.returncode == 0 and "the plan note could not be posted" in r.stderr


# --- the sharded GitHub example ---------------------------------------------------------------


def sharded_script() -> tuple[str, list[int]]:
    wf = yaml.safe_load((EXAMPLES / "github-actions" / "reconcile-plan-sharded.yml").read_text())
    job = wf["jobs"]["plan"]
    (step,) = [s for s in job["steps"] if s.get("name") == "Plan this shard's hosts"]
    assert step["env"]["SHARD"] == "${{ matrix.shard }}/${{ strategy.job-total }}"
    return str(step["run"]), list(job["strategy"]["matrix"]["shard"])


def test_sharded_example_plans_every_host_once(tmp_path: Path) -> None:
    script, shards = sharded_script()
    assert shards == list(range(1, len(shards) + 1))
    repo = Repo(tmp_path / "repo")
    base = repo.write()
    for i in range(8):
        (repo.ds / "hosts" / f"h{i}.yaml").write_text("{}\n")
    repo.write(members="192.0.2.0/24, 203.0.113.0/24")
    seen: list[str] = []
    markers = set()
    for k in shards:
        env = {"BASE": base, "SHARD": f"{k}/{len(shards)}", ENV_VAR: str(repo.config)}
        r = run_ci(script, repo.root, env)
        assert r.returncode == 0, r.stdout + r.stderr
        doc = json.loads((repo.root / "plan.json").read_text())
        seen += [p["host"] for p in doc["hosts"]]
        markers.add((repo.root / "plan.md").read_text().splitlines()[0])
    assert sorted(seen) == sorted(["a", "b", "ctl", *(f"h{i}" for i in range(8))])
    assert len(markers) == len(shards)  # each shard its own comment
