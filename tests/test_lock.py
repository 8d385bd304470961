"""Lock hygiene: live holders in another process, ``--wait``, and pids left by dead runs."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler import log
from reconciler.errors import LockHeldError
from reconciler.lock import RunLock
from tests.clirun import run_backup_only

ROOT = Path(__file__).resolve().parent.parent

# Takes the lock, says so, then holds it until stdin closes (or it is killed).
HOLDER = """
import sys
from pathlib import Path
from reconciler.lock import RunLock
with RunLock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@contextmanager
def holder(lock: Path) -> Iterator[subprocess.Popen[str]]:
    """A second process holding ``lock`` until the block ends (or the test kills it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(timeout=10)


def release_after(proc: subprocess.Popen[str], seconds: float) -> threading.Timer:
    assert proc.stdin is not None
    t = threading.Timer(seconds, proc.stdin.close)
    t.start()
    return t


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    log.configure(json_lines=True, file=buf)
    yield buf
    log.configure(json_lines=True)


def events(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_a_live_holder_in_another_process_is_named(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with holder(lock) as proc, pytest.raises(LockHeldError, match=f"run \\(pid {proc.pid}\\)"):
        RunLock(lock).__enter__()


def test_wait_gets_the_lock_when_the_live_holder_finishes(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with holder(lock) as proc:
        release_after(proc, 0.5)
        t0 = time.monotonic()
        with RunLock(lock, wait=20):
            assert time.monotonic() - t0 >= 0.4
            assert lock.read_text() == f"{os.getpid()}\n"
    assert lock.read_text() == ""  # a clean exit leaves no pid behind


def test_wait_gives_up_on_a_holder_that_stays(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with holder(lock) as proc:
        t0 = time.monotonic()
        with pytest.raises(LockHeldError, match=rf"pid {proc.pid}\).*waited 0\.5 s"):
            RunLock(lock, wait=0.5).__enter__()
        assert time.monotonic() - t0 < 5


def test_a_killed_holder_is_taken_over_with_a_log_line(tmp_path: Path, logs: io.StringIO) -> None:
    lock = tmp_path / "lock"
    with holder(lock) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert lock.read_text() == f"{proc.pid}\n"  # the dead run's pid is left behind
    with RunLock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"  # rewritten with ours
    (ev,) = [e for e in events(logs) if e["event"] == "lock_taken_over"]
    assert ev["stale_pid"] == proc.pid and ev["level"] == "warning"
    assert "no longer running" in str(ev["reason"])


def test_a_stale_pid_file_that_is_not_locked_is_taken_over(
    tmp_path: Path, logs: io.StringIO
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    lock = tmp_path / "lock"
    lock.write_text(dead.stdout)
    with RunLock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
    assert [e["stale_pid"] for e in events(logs) if e["event"] == "lock_taken_over"] == [
        int(dead.stdout)
    ]


def test_an_empty_or_own_lock_file_is_taken_silently(tmp_path: Path, logs: io.StringIO) -> None:
    lock = tmp_path / "lock"
    lock.write_text("")
    with RunLock(lock):
        pass
    with RunLock(lock):
        pass
    lock.write_text("garbage\n")
    with RunLock(lock):
        pass
    assert [e for e in events(logs) if e["event"] == "lock_taken_over"] == []


# --- through the CLI -------------------------------------------------------------------


def test_cli_exits_1_naming_the_live_holder(tmp_path: Path) -> None:
    with holder(tmp_path / "lock") as proc:
        result = run_backup_only(tmp_path)
    assert result.returncode == 1
    assert f"another reconcile run (pid {proc.pid}) holds the lock" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "runs.jsonl").exists()


def test_cli_wait_runs_once_the_holder_is_done(tmp_path: Path) -> None:
    with holder(tmp_path / "lock") as proc:
        release_after(proc, 1.0)
        result = run_backup_only(tmp_path, "--wait", "30")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "state" / "runs.jsonl").read_text().count("\n") == 1
