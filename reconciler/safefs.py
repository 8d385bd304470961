"""State files opened as root without being fooled: no symlink is followed, no file is
truncated or appended to unless it is a plain file of ours, and the state directory must
be writable by its owner (the user running reconcile) only, as sshd's StrictModes asks of
``~/.ssh`` (``docs/security.md``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from reconciler.errors import StateError

#: The largest state file read whole (ours.json, source.json, the journal).
MAX_STATE_FILE = 64 * 1024 * 1024


def _fix(path: Path, st: os.stat_result) -> str | None:
    """Why ``path`` may not be trusted, with the command that fixes it; None if it may."""
    me = os.geteuid()
    if st.st_uid != me:
        return f"it is owned by uid {st.st_uid}, not {me}: chown {me} {path}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(st.st_mode)
        return f"it is writable by group or others (mode {mode:04o}): chmod go-w {path}"
    return None


def check_private_dir(path: Path) -> None:
    """Raise StateError unless ``path`` is a directory owned by us and writable by us only:
    anyone else who can write there can plant a symlink or rewrite what we own."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise StateError(f"cannot use state directory {path}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"state directory {path} is not a directory")
    why = _fix(path, st)
    if why is not None:
        raise StateError(f"refusing state directory {path}: {why}")


def open_state_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a symlink and accepts only a plain file of ours with
    one name (a hard link could be another file's): StateError naming the file otherwise.
    ``flags`` may include ``O_CREAT``; ``O_TRUNC`` is refused (truncate what you checked)."""
    if flags & os.O_TRUNC:
        raise ValueError("open_state_file: truncate after checking, not on open")
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StateError(f"{path} is a symbolic link: refusing to follow it") from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{path} is not a regular file: refusing to use it")
        if st.st_nlink > 1:
            raise StateError(f"{path} has {st.st_nlink} hard links: refusing to use it")
        why = _fix(path, st)
        if why is not None:
            raise StateError(f"refusing {path}: {why}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_state_file(path: Path, limit: int = MAX_STATE_FILE) -> bytes | None:
    """The bytes of state file ``path``, None when it does not exist; StateError when it is
    a symlink, not ours, larger than ``limit`` or unreadable."""
    try:
        fd = open_state_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from e
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise StateError(f"{path} is {size} bytes, more than the {limit} a state file may be")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            if sum(map(len, chunks)) > limit:
                raise StateError(f"{path} grew past {limit} bytes while being read")
        return b"".join(chunks)
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from e
    finally:
        os.close(fd)
