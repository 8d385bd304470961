"""Idle kinds (``Kind.idle``, docs/kinds.md): a kind with nothing desired and nothing of its
own recorded is planned by an IdleProvider, which reads and imports nothing; it stays in the
run (the journal lists it), and a kind with something to clean up is never idle."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler import kinds as registry
from reconciler.kinds.base import Context
from reconciler.model import HostDesired
from reconciler.state import StateDir
from tests.clirun import run_backup_only


def test_backup_is_idle_only_with_no_set_and_no_check_record(tmp_path: Path) -> None:
    backup = registry.get("backup")
    assert backup.idle is not None
    state = StateDir(tmp_path / "state")
    nothing = HostDesired(host="h1")
    assert backup.idle(nothing, Context(state=state))
    one_set = HostDesired(host="h1", raw={"backups": {"etc": {"backend": "restic"}}})
    assert not backup.idle(one_set, Context(state=state))
    state.path.mkdir(mode=0o700, exist_ok=True)
    (state.path / "backup-checks.json").write_text("{}\n")
    assert not backup.idle(nothing, Context(state=state))


def test_nic_is_idle_with_no_nic_and_ipset_never_is() -> None:
    nothing = HostDesired(host="h1")
    nic, ipset = registry.get("nic"), registry.get("ipset")
    assert nic.idle is not None and nic.idle(nothing, Context())
    assert ipset.idle is None  # ownership records, pruning, the SSH guard: always read


def test_an_idle_kind_stays_in_the_journal_and_stale_check_records_still_go(
    tmp_path: Path,
) -> None:
    first = run_backup_only(tmp_path)
    assert first.returncode == 0, first.stderr
    journal = (tmp_path / "state" / "runs.jsonl").read_text().splitlines()
    assert json.loads(journal[-1])["kinds"] == ["backup"]  # idle, yet converged
    # A check record of a set no longer in git: the kind is not idle, the record goes.
    record = {"at": "2026-01-01T00:00:00+00:00", "ok": True, "every": "30d"}
    checks = tmp_path / "state" / "backup-checks.json"
    checks.write_text(json.dumps({"etc": record}))
    checks.chmod(0o600)
    second = run_backup_only(tmp_path)
    assert second.returncode == 0, second.stderr
    assert json.loads(checks.read_text()) == {}
