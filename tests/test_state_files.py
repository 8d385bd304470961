"""State files as root: no symlink is followed, nothing of another file is truncated or
appended to, and a state directory that others may write is refused (docs/security.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.lock import RunLock
from reconciler.state import StateDir
from tests.clirun import run_backup_only

PASSWD_COPY = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"


def _victim(tmp_path: Path) -> Path:
    """A file standing in for /etc/passwd (never the real one)."""
    victim = tmp_path / "passwd-copy"
    victim.write_text(PASSWD_COPY)
    return victim


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    (tmp_path / "lock").symlink_to(victim)
    proc = run_backup_only(tmp_path)
    assert proc.returncode == 1
    assert "is a symbolic link: refusing to follow it" in proc.stderr
    assert victim.read_text() == PASSWD_COPY
    assert not (tmp_path / "state" / "runs.jsonl").exists()  # nothing ran


def test_a_lock_file_holding_anything_but_a_pid_is_locked_never_written(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text(PASSWD_COPY)
    with RunLock(lock):
        assert lock.read_text() == PASSWD_COPY
    assert lock.read_text() == PASSWD_COPY


def test_a_hard_linked_lock_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "other"
    victim.write_text("")
    os.link(victim, tmp_path / "lock")
    with pytest.raises(StateError, match="hard links"):
        RunLock(tmp_path / "lock").__enter__()


def test_a_lock_file_with_a_stale_pid_is_still_taken_over(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("999999999\n")
    with RunLock(tmp_path / "lock"):
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
    assert (tmp_path / "lock").read_text() == ""


def test_a_symlinked_journal_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "runs.jsonl").symlink_to(victim)
    proc = run_backup_only(tmp_path)
    assert proc.returncode == 1
    assert "runs.jsonl is a symbolic link" in proc.stderr + proc.stdout
    assert victim.read_text() == PASSWD_COPY


@pytest.mark.parametrize("name", ["ours.json", "source.json"])
def test_symlinked_records_are_refused(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "elsewhere.json"
    victim.write_text(json.dumps({"commit": "a" * 40}))
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / name).symlink_to(victim)
    state = StateDir(tmp_path / "state")
    with pytest.raises(StateError, match="symbolic link"):
        state.ours_all() if name == "ours.json" else state.applied_commit()


def test_a_state_dir_others_may_write_is_refused_with_the_fix(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(StateError, match=f"chmod go-w {state}"):
        StateDir(state)
    proc = run_backup_only(tmp_path)
    assert proc.returncode == 1 and f"chmod go-w {state}" in proc.stderr
    assert list(state.iterdir()) == []


def test_a_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 4242, 4242)
    with pytest.raises(StateError, match=f"owned by uid 4242, not {os.geteuid()}: chown"):
        StateDir(state)


def test_a_new_state_dir_is_private(tmp_path: Path) -> None:
    StateDir(tmp_path / "new")
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700


def test_non_utf8_records_are_clear_errors(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "source.json").write_bytes(b'{"commit": "\xff\xfe"}')
    (state / "ours.json").write_bytes(b"\xff{")
    s = StateDir(state)
    with pytest.raises(StateError, match=r"source\.json is corrupt"):
        s.applied_commit()
    with pytest.raises(StateError, match=r"ours\.json is corrupt"):
        s.ours_all()
