"""The backup check records in the state dir (reconciler/kinds/backup/checkstate.py): the
state dir's rules (atomic replace, no symlink followed, a file of ours) and a corrupt file."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.kinds.backup import checkstate
from reconciler.kinds.backup.checkstate import CheckRecord
from reconciler.state import StateDir

AT = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)


def test_round_trip_and_missing_file(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    assert checkstate.load(state.path) == {}
    records = {
        "etc": CheckRecord(AT, True, "restic check", "no errors were found", "30d"),
        "www": CheckRecord(AT, False, "tarsnap -t -f www-20240501-030000", "corrupt", "7d"),
    }
    checkstate.save(state.path, records)
    assert checkstate.load(state.path) == records
    path = checkstate.path_in(state.path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in state.path.iterdir()) == [checkstate.FILE_NAME]  # no temp


def test_times_are_read_as_utc(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    plus2 = AT.astimezone(timezone(timedelta(hours=2)))
    checkstate.path_in(state.path).write_text(
        f'{{"etc": {{"at": "{plus2.isoformat()}", "ok": true}}}}'
    )
    (record,) = checkstate.load(state.path).values()
    assert record.at == AT and record.at.tzinfo == UTC and record.every == ""


@pytest.mark.parametrize(
    "text",
    ["{not json", "[]", '{"etc": {"at": "2024-05-01T03:00:00", "ok": true}}',
     '{"etc": {"at": "2024-05-01T03:00:00+00:00", "ok": "yes"}}', "\udcff"],
)  # fmt: skip
def test_a_corrupt_file_says_how_to_start_over(tmp_path: Path, text: str) -> None:
    state = StateDir(tmp_path / "state")
    checkstate.path_in(state.path).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(StateError, match=r"is corrupt .*Remove it"):
        checkstate.load(state.path)


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    os.symlink(target, checkstate.path_in(state.path))
    with pytest.raises(StateError, match="symbolic link"):
        checkstate.load(state.path)
    # Saving replaces the link itself (a rename), never writes through it.
    checkstate.save(state.path, {"etc": CheckRecord(AT, True)})
    assert target.read_text() == "{}"
    assert not checkstate.path_in(state.path).is_symlink()
    assert checkstate.load(state.path)["etc"].ok
