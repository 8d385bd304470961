"""Another restic holding a repository's lock, for the tests of what a locked repository
does to a run (a busy set, never a failed one)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path


@contextlib.contextmanager
def held_by_another_restic(env: Mapping[str, str], repo: Path) -> Iterator[None]:
    """A live ``restic backup --stdin`` of host ``other`` on the repository at ``repo``
    (``env`` says how to open it) holds its lock for the block: entered once the lock file
    is there (``-tmp-`` files are restic's writes in progress, not locks; at most 30 s),
    released when restic's input is closed on exit."""
    holder = subprocess.Popen(
        ["restic", "backup", "--stdin", "--stdin-filename", "x", "--host", "other"],
        env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        locks = repo / "locks"
        deadline = time.monotonic() + 30
        while not [p for p in locks.iterdir() if "-tmp-" not in p.name]:
            assert time.monotonic() < deadline, f"restic took no lock in {repo}"
            time.sleep(0.01)
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
