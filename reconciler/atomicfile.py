"""Files replaced whole or not at all: the state dir's records, metrics, snapshots.

A reader (node_exporter, the next run, a CI job) sees the old file or the new one, never a
partial one, and after a crash the rename is on disk: the data is fsynced before it, the
directory entry after it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s directory entries to disk (after a create or a rename in it).

    Best effort: some filesystems refuse fsync on a directory; the files themselves are
    synced by their writers.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically: a temp file in the same directory,
    fsync, rename, then the directory synced. ``mode``: the new file's permissions (None
    keeps mkstemp's 0600, for files only we read).

    Raises OSError; the temp file never outlives a failure, and an existing file is then
    untouched.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
