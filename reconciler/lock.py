"""One run at a time per host.

The lock is an ``flock`` on a file that also holds the holder's pid, so a second run can say
who holds it. ``flock`` is released by the kernel when the holder dies, so a crashed run never
leaves a stale lock behind; the pid in the file is only for the message.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from reconciler.errors import LockHeldError


class RunLock:
    """Context manager holding an exclusive, non-blocking lock on ``path``."""

    def __init__(self, path: Path, *, wait: float = 0.0) -> None:
        """``wait``: seconds to wait for a live holder to finish (0: fail at once)."""
        self.path = path
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                waited = f" (waited {self.wait:g} s)" if self.wait else ""
                raise LockHeldError(
                    f"another reconcile run (pid {holder}) holds the lock {self.path}{waited}; "
                    "try again when it has finished"
                ) from None
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
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
