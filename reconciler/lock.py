"""One run at a time per host.

The lock is an ``flock`` on a file that also holds the holder's pid, so a second run can say
who holds it. ``flock`` is released by the kernel when the holder dies, so a crashed run never
leaves a stale lock behind: what it leaves is its pid in the file. The next run takes the lock
over, logs that it did (naming the dead pid) and writes its own pid. A clean exit empties the
file, so a leftover pid always means a run that did not finish.

The pid is only for messages, never for the decision: the kernel's lock is the truth (a pid
can be reused, and a pid file can be copied or restored).

The file is opened without following a symlink, and a hard-linked or foreign-owned file is
refused, so a lock path pointing at another file (``/etc/passwd``) is never written. Only a
file that is empty or holds a pid is written to; one holding anything else is locked as it
is, never truncated (its pid messages are lost, nothing else).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from reconciler import log
from reconciler.errors import LockHeldError, StateError
from reconciler.safefs import open_state_file


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _recorded_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """The lock file (created 0600 if missing) and whether it may hold our pid: only when
    it is empty or holds a pid. StateError for a symlink or a file that is not ours."""
    try:
        fd = open_state_file(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StateError(f"cannot open the lock file {path}: {e.strerror}") from e
    head = os.pread(fd, 65, 0).strip()
    return fd, len(head) <= 64 and (not head or head.isdigit())


class RunLock:
    """Context manager holding an exclusive lock on ``path``, for one run at a time.

    Entering takes the lock (waiting up to ``wait`` seconds for a live holder) or raises
    LockHeldError naming the holder's pid; a pid left by a dead run is taken over with a log
    line. Inside, the file holds our pid; leaving empties it and releases the lock.
    """

    def __init__(self, path: Path, *, wait: float = 0.0) -> None:
        """``wait``: seconds to wait for a live holder to finish (0: fail at once)."""
        self.path = path
        self.wait = wait
        self._fd: int | None = None
        self._writes_pid = False

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._writes_pid = _open_lock_file(self.path)
        deadline = time.monotonic() + self.wait
        delay = 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() + delay <= deadline:
                    # Several NICs appearing at boot each start a run: the later ones wait.
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                pid = _recorded_pid(fd)
                os.close(fd)
                waited = f" (waited {self.wait:g} s)" if self.wait else ""
                if pid is None:
                    who = "another reconcile run"
                elif pid_alive(pid):
                    who = f"another reconcile run (pid {pid})"
                else:
                    # The kernel lock is held, yet its recorded owner is gone: a process it
                    # forked still has the descriptor open.
                    who = f"a child of the dead reconcile run pid {pid}"
                raise LockHeldError(
                    f"{who} holds the lock {self.path}{waited}; try again when it has finished"
                ) from None
        previous = _recorded_pid(fd)
        if previous is not None and previous != os.getpid():
            # A run that did not finish (killed, crashed, power loss) left its pid behind;
            # the kernel released its lock, so taking over is safe.
            reason = (
                "its process is still running but does not hold the lock (the pid was reused)"
                if pid_alive(previous)
                else "its process is no longer running"
            )
            log.get().warning(
                "lock_taken_over",
                lock=str(self.path),
                stale_pid=previous,
                reason=f"run pid {previous} did not finish cleanly; {reason}",
            )
        if self._writes_pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            if self._writes_pid:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
