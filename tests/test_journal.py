"""The run journal: append-only records, crash tolerance, drift, and ``reconcile status``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reconciler import engine, journal
from reconciler.errors import ProviderError
from reconciler.model import HostDesired
from reconciler.plan import Change, Op, PlanError
from reconciler.state import StateDir
from tests.clirun import reconcile, run_backup_only


class FakeProvider:
    """A provider over a dict: desired values come from ``want``, live from ``live``."""

    def __init__(self, kind: str, want: dict[str, int], live: dict[str, int]) -> None:
        self.kind = kind
        self.want = want
        self.live = live
        self.fail: set[str] = set()

    def read(self, desired: HostDesired) -> dict[str, int]:
        return dict(self.live)

    def diff(self, desired: HostDesired, live: Any) -> tuple[list[Change], list[PlanError]]:
        changes = [
            Change(self.kind, name, "update", (Op("set", {"field": "value", "to": v}),))
            for name, v in sorted(self.want.items())
            if live.get(name) != v
        ]
        return changes, []

    def apply(self, change: Change) -> list[Op]:
        if change.name in self.fail:
            raise ProviderError("boom", address=change.address)
        self.live[change.name] = self.want[change.name]
        return list(change.ops)


def run(state: StateDir, providers: list[FakeProvider], commit: str | None) -> dict[str, Any]:
    desired = HostDesired(host="h1")
    plan, _ = engine.make_plan(desired, providers, commit)
    result = engine.apply_plan(desired, providers, plan, state)
    assert result.record is not None
    return result.record


def drift_flags(record: dict[str, Any]) -> dict[str, bool]:
    return {c["address"]: c["drift"] for c in record["changes"]}


# --- the file ---------------------------------------------------------------------------


def test_append_and_read_round_trip(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path / "runs.jsonl")
    assert j.read().records == []  # a missing journal is empty, not an error
    j.append({"commit": "a", "n": 1})
    j.append({"commit": "b", "n": 2})
    got = j.read()
    assert [r["n"] for r in got.records] == [1, 2] and got.problems == []
    assert (tmp_path / "runs.jsonl").read_text().count("\n") == 2


def test_truncated_last_line_is_skipped_and_the_next_append_starts_a_fresh_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.jsonl"
    j = journal.Journal(path)
    j.append({"n": 1})
    with open(path, "ab") as f:  # a crash mid-write: half a record, no newline
        f.write(b'{"n": 2, "chang')
    before = path.read_bytes()

    got = j.read()
    assert [r["n"] for r in got.records] == [1]
    assert len(got.problems) == 1 and got.problems[0].truncated
    assert got.problems[0].line == 2 and "interrupted" in got.problems[0].message

    j.append({"n": 3})
    assert path.read_bytes().startswith(before)  # never rewritten, never truncated
    got = j.read()
    assert [r["n"] for r in got.records] == [1, 3]
    assert [(p.line, p.truncated) for p in got.problems] == [(2, False)]


def test_corrupt_lines_in_the_middle_are_reported_by_line_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b'{"n": 1}\nnot json\n\n[1, 2]\n\xff\xfe\n{"n": 2}\n')
    got = journal.Journal(path).read()
    assert [r["n"] for r in got.records] == [1, 2]
    assert [p.line for p in got.problems] == [2, 4, 5]
    assert "not a JSON object" in got.problems[1].message
    assert "not UTF-8" in got.problems[2].message


def test_unterminated_but_complete_last_record_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b'{"n": 1}\n{"n": 2}')
    got = journal.Journal(path).read()
    assert [r["n"] for r in got.records] == [1, 2] and got.problems == []


# --- drift ------------------------------------------------------------------------------


def test_a_change_at_the_last_applied_commit_is_drift(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    p = FakeProvider("ipset", {"a": 1, "b": 1}, {})
    first = run(state, [p], "c1")
    assert drift_flags(first) == {"ipset/a": False, "ipset/b": False}  # no baseline yet
    assert first["ok"] is True and first["kinds"] == ["ipset"]

    p.live["a"] = 0  # someone edits the host by hand
    second = run(state, [p], "c1")
    assert drift_flags(second) == {"ipset/a": True}
    assert second["changes"][0] == {
        "address": "ipset/a",
        "kind": "ipset",
        "action": "update",
        "ops": 1,
        "drift": True,
    }

    p.want["a"] = 2  # a new commit changes it: that is not drift
    assert drift_flags(run(state, [p], "c2")) == {"ipset/a": False}

    records = state.runs().records
    assert len(records) == 3
    assert [(d.address, d.commit) for d in journal.drift_events(records)] == [("ipset/a", "c1")]


def test_retrying_a_failed_change_at_the_same_commit_is_not_drift(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    p = FakeProvider("ipset", {"a": 1}, {})
    p.fail.add("a")
    failed = run(state, [p], "c1")
    assert failed["ok"] is False and failed["changes"] == []
    assert failed["errors"] == [{"address": "ipset/a", "message": "boom"}]
    p.fail.clear()
    assert drift_flags(run(state, [p], "c1")) == {"ipset/a": False}


def test_drift_is_judged_per_kind_and_backups_are_never_drift(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    backup = FakeProvider("backup", {"etc": 1}, {})
    nic = FakeProvider("nic", {"eth0": 1}, {})
    run(state, [backup], "c1")  # --only backup at c1: nic never converged at c1
    assert drift_flags(run(state, [backup, nic], "c1")) == {"nic/eth0": False}
    backup.live["etc"] = 0  # the schedule asks for a new archive: time, not drift
    nic.live["eth0"] = 0  # a hand edit
    assert drift_flags(run(state, [backup, nic], "c1")) == {"backup/etc": False, "nic/eth0": True}


def test_without_a_commit_nothing_is_called_drift(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    p = FakeProvider("ipset", {"a": 1}, {})
    run(state, [p], None)
    p.live["a"] = 0
    assert drift_flags(run(state, [p], None)) == {"ipset/a": False}


def test_a_journal_that_cannot_be_written_is_a_run_error(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    (state.path / "runs.jsonl").mkdir()  # open() fails with EISDIR
    desired = HostDesired(host="h1")
    p = FakeProvider("ipset", {"a": 1}, {})
    plan, _ = engine.make_plan(desired, [p], "c1")
    result = engine.apply_plan(desired, [p], plan, state)
    assert result.applied == ["ipset/a"]
    assert not result.ok and result.errors[0].address == "journal"
    assert "cannot open the run journal" in result.errors[0].message


# --- reconcile status -------------------------------------------------------------------


def test_status_shows_good_runs_around_a_truncated_line_and_warns(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    p = FakeProvider("ipset", {"a": 1}, {})
    run(state, [p], "1111111111111111aaaa")
    with open(state.journal.path, "ab") as f:
        f.write(b'{"commit": "2222')  # a crash mid-write
    p.live["a"] = 0
    run(state, [p], "1111111111111111aaaa")  # drift

    proc = reconcile("status", "--state-dir", str(state.path))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "runs.jsonl: line 2: not a valid record" in proc.stderr
    out = proc.stdout
    assert "Applied commit: 111111111111" in out
    assert "Last 2 of 2 run(s)" in out
    assert out.count("111111111111  ok") == 2
    assert "Drift (changes applied without a new commit)" in out
    assert "ipset/a  update (1 op(s))" in out

    proc = reconcile("status", "--state-dir", str(state.path), "--output", "json", "--last", "1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["total_runs"] == 2 and len(doc["runs"]) == 1
    assert doc["applied"]["commit"] == "1111111111111111aaaa"
    assert [d["address"] for d in doc["drift"]] == ["ipset/a"]
    assert doc["journal_problems"][0]["line"] == 2


def test_status_shows_failed_runs_and_their_errors(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    p = FakeProvider("nic", {"eth0": 1}, {})
    p.fail.add("eth0")
    run(state, [p], "c1")
    proc = reconcile("status", "--state-dir", str(state.path))
    assert proc.returncode == 0
    assert "Applied commit: none" in proc.stdout and "Last run FAILED" in proc.stdout
    assert "! nic/eth0: boom" in proc.stdout


def test_status_on_a_missing_state_dir_is_a_clear_error_and_creates_nothing(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nope"
    proc = reconcile("status", "--state-dir", str(missing))
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not missing.exists()
    (tmp_path / "file").write_text("x")
    proc = reconcile("status", "--state-dir", str(tmp_path / "file"))
    assert proc.returncode == 1 and "is not a directory" in proc.stderr


def test_status_on_an_empty_state_dir_says_no_runs_yet(tmp_path: Path) -> None:
    proc = reconcile("status", "--state-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "No runs recorded yet." in proc.stdout


def test_status_on_a_corrupt_ours_json_exits_1_with_its_message(tmp_path: Path) -> None:
    (tmp_path / "ours.json").write_text('{"ipset": {"mgmt"')
    proc = reconcile("status", "--state-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "ours.json is corrupt" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "ours.json").write_text('{"ipset": ["mgmt"]}')  # valid JSON, wrong shape
    proc = reconcile("status", "--state-dir", str(tmp_path))
    assert proc.returncode == 1 and "must map names to objects" in proc.stderr


def test_status_lists_what_is_owned(tmp_path: Path) -> None:
    StateDir(tmp_path).set_ours("ipset", {"mgmt": {"created": "x", "rules": []}})
    proc = reconcile("status", "--state-dir", str(tmp_path))
    assert proc.returncode == 0 and "ipset: mgmt" in proc.stdout


def test_status_rejects_a_bad_last(tmp_path: Path) -> None:
    proc = reconcile("status", "--state-dir", str(tmp_path), "--last", "0")
    assert proc.returncode == 1 and "positive integer" in proc.stderr  # usage (issue 13)


def test_an_unreadable_journal_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        (tmp_path / "runs.jsonl").mkdir()  # root reads any file: use EISDIR instead
    else:
        (tmp_path / "runs.jsonl").write_text("{}\n")
        (tmp_path / "runs.jsonl").chmod(0)
    proc = reconcile("status", "--state-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "cannot read the run journal" in proc.stderr and "Traceback" not in proc.stderr


def test_a_real_run_through_the_cli_is_journaled(tmp_path: Path) -> None:
    """--only backup with no backups: nothing touches the host, yet the run is recorded."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "fleet.yaml").write_text("{}\n")
    (repo / "hosts").mkdir()
    (repo / "hosts" / "h1.yaml").write_text("{}\n")
    args = ["--repo", str(repo), "--host", "h1", "--only", "backup"]
    args += ["--state-dir", str(tmp_path / "state"), "--lock-file", str(tmp_path / "lock")]
    args += ["--metrics-file", ""]
    assert reconcile("--dry-run", *args).returncode == 0
    assert not (tmp_path / "state" / "runs.jsonl").exists()  # dry-runs are not recorded
    proc = reconcile(*args)
    assert proc.returncode == 0, proc.stderr
    (rec,) = StateDir(tmp_path / "state").runs().records
    assert rec["ok"] is True and rec["kinds"] == ["backup"] and rec["dry_run"] is False
    assert rec["commit"] is None and rec["host"] == "h1"


def test_run_with_a_state_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    proc = run_backup_only(tmp_path)
    assert proc.returncode == 1
    assert "cannot create state directory" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "state").read_text() == "not a directory"  # left as it was


def test_run_with_a_missing_state_dir_creates_it(tmp_path: Path) -> None:
    proc = run_backup_only(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "state").is_dir()
    assert (tmp_path / "state" / "runs.jsonl").exists()


def test_an_unreachable_node_counts_against_vm_only() -> None:
    """A node error (address ``node/kvm1``) belongs to the vm kind: the ipset kind of the
    same run still converged, so its drift is still judged (issue 13)."""
    record: dict[str, Any] = {
        "commit": "c" * 40,
        "kinds": ["ipset", "vm"],
        "ok": False,
        "changes": [],
        "errors": [{"address": "node/kvm1", "message": "cannot connect"}],
    }
    assert journal.error_kind({"address": "node/kvm1"}) == "vm"
    assert journal.converged_kinds(record) == {"ipset"}
    assert journal.baselines([record]) == {"ipset": "c" * 40}
    assert journal.error_kind({"address": "source"}) == "run"
