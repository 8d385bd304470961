"""Saved plans, targets and ``--allow-empty`` (issue 13), through the real command line on
real ipsets in a throw-away network namespace: ``--dry-run --out FILE`` then ``--plan FILE``
applies exactly the reviewed plan or nothing; ``--target`` plans and applies one resource;
the text output shows the plan before anything is applied."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_conventions import on_a_terminal
from tests.clirun import ROOT
from tests.netns import Netns, netns  # noqa: F401  (fixture)
from tests.test_gitsource import GIT_ENV, git

FLEET = """\
ipsets:
  mgmt:
    type: hash:net
    members: [{mgmt}]
  other:
    type: hash:net
    members: [203.0.113.0/24]
"""


class Host:
    """Host h1 played by a namespace: the real CLI with its own state dir and lock, a
    desired-state directory (a plain one unless made a git repository)."""

    def __init__(self, ns: Netns, tmp: Path) -> None:
        self.ns = ns
        self.tmp = tmp
        self.repo = tmp / "repo"
        (self.repo / "hosts").mkdir(parents=True)
        (self.repo / "hosts" / "h1.yaml").write_text("{}\n")
        self.write()

    def write(self, mgmt: str = "192.0.2.0/24, 198.51.100.0/24", other: bool = True) -> None:
        text = FLEET.format(mgmt=mgmt)
        if not other:
            text = text[: text.index("  other:")]
        (self.repo / "fleet.yaml").write_text(text)

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "reconciler", "--repo", str(self.repo), "--host", "h1",
                "--only", "ipset", "--state-dir", str(self.tmp / "state"), "--lock-file",
                str(self.tmp / "lock"), "--log-format", "json", *extra]  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        return {**GIT_ENV, "RECONCILER_METRICS_FILE": "", "PYTHONPATH": str(ROOT)}

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*extra)
        if "--plan" in extra:  # the kinds come from the saved plan
            i = argv.index("--only")
            del argv[i : i + 2]
        return self.ns.run(argv, check=False, env=self.env)

    def members(self, name: str) -> set[str]:
        return self.ns.ipset_members(name)

    def journal(self) -> list[dict[str, object]]:
        lines = (self.tmp / "state" / "runs.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]


@pytest.fixture
def host(netns: Netns, tmp_path: Path) -> Host:  # noqa: F811
    return Host(netns, tmp_path)


def test_a_saved_plan_is_applied_exactly(host: Host, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    dry = host.run("--dry-run", "--out", str(plan))
    assert dry.returncode == 0, dry.stderr
    assert f"Saved the plan to {plan}. Apply exactly it with: reconcile --plan {plan}" in dry.stdout
    assert stat.S_IMODE(plan.stat().st_mode) == 0o600
    doc = json.loads(plan.read_text())
    made = doc["made_against"]
    assert made["host"] == "h1" and made["commit"] is None and made["kinds"] == ["ipset"]
    assert made["digest"].startswith("sha256:") and made["targets"] == []
    # The same document as --output json, plus made_against.
    shown = json.loads(host.run("--dry-run", "--output", "json").stdout)
    assert {k: v for k, v in doc.items() if k != "made_against"} == shown
    assert "mgmt" not in host.ns.run(["ipset", "list", "-n"]).stdout  # a dry-run: nothing yet

    r = host.run("--plan", str(plan))
    assert r.returncode == 0, r.stderr
    assert f"Saved plan {plan}: a fresh plan is identical; applying it." in r.stdout
    assert host.members("mgmt") == {"192.0.2.0/24", "198.51.100.0/24"}
    assert host.members("other") == {"203.0.113.0/24"}
    assert [rec["ok"] for rec in host.journal()] == [True]
    # Applied: the same plan again is stale now (nothing left to create).
    r = host.run("--plan", str(plan))
    assert r.returncode == 1
    assert "stale plan" in r.stderr and "ipset/mgmt: the saved plan has a change" in r.stderr


def test_a_saved_plan_is_refused_when_the_live_state_moved_under_it(
    host: Host, tmp_path: Path
) -> None:
    assert host.run().returncode == 0
    host.write(mgmt="192.0.2.0/24, 198.51.100.0/24, 203.0.113.7/32")
    plan = tmp_path / "plan.json"
    assert host.run("--dry-run", "--out", str(plan)).returncode == 0
    host.ns.run(["ipset", "add", "mgmt", "10.9.9.0/24"])  # by hand, after the review
    r = host.run("--plan", str(plan))
    assert r.returncode == 1, r.stdout
    assert f"reconcile: stale plan {plan}: ipset/mgmt: a fresh plan differs from the saved one" in (
        r.stderr
    )
    assert "now also: - member 10.9.9.0/24" in r.stderr
    assert "nothing was applied" in r.stderr and "Traceback" not in r.stderr
    # Nothing was applied: the reviewed member is not there, the hand-made one still is.
    assert host.members("mgmt") == {"192.0.2.0/24", "198.51.100.0/24", "10.9.9.0/24"}
    assert len(host.journal()) == 1
    # A new plan of the new state applies.
    assert host.run("--dry-run", "--out", str(plan)).returncode == 0
    assert host.run("--plan", str(plan)).returncode == 0
    assert host.members("mgmt") == {"192.0.2.0/24", "198.51.100.0/24", "203.0.113.7"}  # ipset save


def test_a_saved_plan_is_refused_when_the_desired_state_moved(host: Host, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    # A plain directory: its content digest.
    assert host.run("--dry-run", "--out", str(plan)).returncode == 0
    host.write(mgmt="192.0.2.0/24")
    r = host.run("--plan", str(plan))
    assert r.returncode == 1
    assert "stale plan" in r.stderr and "files changed since it was made" in r.stderr
    # A git repository: the commit.
    git(host.repo, "init", "-q")
    git(host.repo, "add", "-A")
    git(host.repo, "commit", "-q", "-m", "first")
    first = git(host.repo, "rev-parse", "HEAD")
    assert host.run("--dry-run", "--out", str(plan)).returncode == 0
    assert json.loads(plan.read_text())["made_against"]["commit"] == first
    assert json.loads(plan.read_text())["made_against"]["digest"] is None
    host.write(mgmt="198.51.100.0/24")
    git(host.repo, "commit", "-q", "-am", "second")
    second = git(host.repo, "rev-parse", "HEAD")
    r = host.run("--plan", str(plan))
    assert r.returncode == 1
    assert (
        f"stale plan {plan}: it was made at commit {first[:12]}, and the desired state is "
        f"now at {second[:12]}"
    ) in r.stderr
    assert "mgmt" not in host.ns.run(["ipset", "list", "-n"]).stdout


def test_a_plan_for_another_host_or_no_plan_at_all_is_refused(host: Host, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert host.run("--dry-run", "--out", str(plan)).returncode == 0
    r = host.ns.run([*host.argv("--plan", str(plan)), "--host", "h2"], check=False, env=host.env)
    # (--only from argv is a usage error with --plan: drop it)
    assert r.returncode == 1 and "drop --only" in r.stderr
    argv = [a for a in host.argv() if a not in ("--only", "ipset")]
    r = host.ns.run([*argv, "--host", "h2", "--plan", str(plan)], check=False, env=host.env)
    assert r.returncode == 1
    assert f"{plan} is a plan for host h1, and this run is for h2" in r.stderr
    (tmp_path / "junk.json").write_text('{"changes": []}')
    for bad, message in ((tmp_path / "junk.json", "not a saved plan"),
                         (tmp_path / "none.json", "cannot read the plan")):  # fmt: skip
        r = host.run("--plan", str(bad))
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert "mgmt" not in host.ns.run(["ipset", "list", "-n"]).stdout


def test_a_plan_with_a_refusal_is_not_saved(host: Host, tmp_path: Path) -> None:
    assert host.run().returncode == 0
    host.write(mgmt="192.0.2.0/24", other=False)  # other leaves git: pruned
    plan = tmp_path / "plan.json"
    r = host.run("--dry-run", "--target", "ipset/other", "--out", str(plan))
    assert r.returncode == 1
    assert f"the plan was not saved to {plan}" in r.stderr and not plan.exists()


def test_target_plans_and_applies_only_that_resource(host: Host) -> None:
    assert host.run().returncode == 0
    host.ns.run(["ipset", "add", "mgmt", "10.1.0.0/16"])
    host.ns.run(["ipset", "add", "other", "10.2.0.0/16"])
    r = host.run("--dry-run", "--target", "ipset/other", "--output", "json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["targets"] == ["ipset/other"]
    assert [c["address"] for c in plan["changes"]] == ["ipset/other"]
    r = host.run("--dry-run", "--target", "ipset/other")
    assert "Plan for host h1 (dry run; only ipset/other):" in r.stdout
    r = host.run("--target", "ipset/other")
    assert r.returncode == 0, r.stderr
    assert host.members("other") == {"203.0.113.0/24"}
    assert "10.1.0.0/16" in host.members("mgmt")  # not targeted: left as it is
    last = host.journal()[-1]
    assert last["targets"] == ["ipset/other"]
    assert [c["address"] for c in last["changes"]] == ["ipset/other"]  # type: ignore[attr-defined]
    # An address that names nothing is an error; nothing is applied.
    r = host.run("--target", "ipset/nope")
    assert r.returncode == 1
    assert "--target ipset/nope: no such resource in the desired state of h1" in r.stderr
    assert "10.1.0.0/16" in host.members("mgmt")


def test_target_never_prunes(host: Host) -> None:
    assert host.run().returncode == 0
    host.write(other=False)  # other left git: the whole plan prunes it
    r = host.run("--target", "ipset/other")
    assert r.returncode == 1
    assert "--target does not prune: ipset/other is no longer in git" in r.stdout
    assert host.members("other") == {"203.0.113.0/24"}  # kept
    r = host.run()  # the whole plan does prune it
    assert r.returncode == 0, r.stdout + r.stderr
    assert "other" not in host.ns.run(["ipset", "list", "-n"]).stdout


def test_a_saved_targeted_plan_applies_only_its_target(host: Host, tmp_path: Path) -> None:
    assert host.run().returncode == 0
    host.ns.run(["ipset", "add", "mgmt", "10.1.0.0/16"])
    host.ns.run(["ipset", "add", "other", "10.2.0.0/16"])
    plan = tmp_path / "plan.json"
    assert host.run("--dry-run", "--target", "ipset/other", "--out", str(plan)).returncode == 0
    assert json.loads(plan.read_text())["made_against"]["targets"] == ["ipset/other"]
    r = host.run("--plan", str(plan))
    assert r.returncode == 0, r.stderr
    assert host.members("other") == {"203.0.113.0/24"}
    assert "10.1.0.0/16" in host.members("mgmt")


def test_allow_empty_lets_a_plan_delete_everything_we_own(host: Host, tmp_path: Path) -> None:
    assert host.run().returncode == 0
    (host.repo / "fleet.yaml").write_text("{}\n")  # git declares no ipsets any more
    r = host.run()
    assert r.returncode == 1
    assert "--allow-empty" in r.stdout
    assert host.members("other") == {"203.0.113.0/24"}  # refused: kept
    r = host.run("--allow-empty")
    assert r.returncode == 0, r.stdout + r.stderr
    assert host.ns.run(["ipset", "list", "-n"]).stdout.strip() == ""


def test_the_plan_is_shown_before_anything_is_applied(host: Host) -> None:
    argv = [a for a in host.argv() if a not in ("--log-format", "json")]
    out = on_a_terminal(["ip", "netns", "exec", host.ns.name, *argv], host.env)
    plan_at = out.index("Plan for host h1")
    applied_log = out.index("applied")  # the console log lines of the ops
    applied_list = out.index("Applied:")
    assert plan_at < applied_log < applied_list, out
    assert "\x1b[32m+ member 192.0.2.0/24\x1b[0m" in out  # a terminal: in colour
    assert out.rstrip().endswith("live state matches git.\x1b[0m")
    assert host.members("mgmt") == {"192.0.2.0/24", "198.51.100.0/24"}
