"""The desired state read from git objects: the tree of one commit, blob by blob.

What is verified is exactly what is loaded: a commit accepted by :mod:`reconciler.trust` is
written out from its own tree and blobs (``git ls-tree`` and ``git cat-file --batch``) into
a fresh private directory, and the loader reads that copy. No checkout, no ``git archive``
(which honours ``.gitattributes export-ignore`` and would leave out files the commit holds),
no symlink: a symlink or submodule anywhere in the desired-state tree, ``--path`` included,
is an error naming it, and so is a file over :data:`MAX_FILE` bytes (``docs/security.md``).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from reconciler import runner
from reconciler.errors import CommandError, SourceError

#: The largest file of the desired state (a 200,000-network list is ~4 MiB).
MAX_FILE = 32 * 1024 * 1024
#: Bounds one git command (a listing, or every blob of the tree in one stream).
GIT_TIMEOUT = 300.0

_TREE, _LINK, _GITLINK = "040000", "120000", "160000"


class Entry(NamedTuple):
    """One file of the tree: its path below the desired-state root, blob id and size."""

    path: str
    blob: str
    size: int


def _git(repo_dir: Path, *args: str) -> bytes:
    try:
        proc = runner.run(["git", "-C", str(repo_dir), *args], timeout=GIT_TIMEOUT)
    except CommandError as e:
        raise SourceError(f"cannot read the repository: {e.message}") from e
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SourceError(f"git {args[0]} failed: {err[-1] if err else 'no message'}")
    out: bytes = proc.stdout
    return out


def _subtree(repo_dir: Path, commit: str, subdir: str) -> str:
    """The tree id of ``subdir`` at ``commit``, walked one name at a time so that a symlink
    on the way is named, never followed."""
    tree = f"{commit}^{{tree}}"
    walked: list[str] = []
    for part in [p for p in subdir.split("/") if p and p != "."]:
        walked.append(part)
        where = "/".join(walked)
        found = None
        for record in _git(repo_dir, "ls-tree", "-z", tree, "--", part).split(b"\0"):
            meta, _, name = record.partition(b"\t")
            if name.decode(errors="replace") == part:
                found = meta.decode().split()
        if found is None:
            raise SourceError(f"{where} is not in commit {commit[:12]}")
        mode, kind, obj = found
        if mode == _LINK:
            raise SourceError(
                f"{where} is a symbolic link in commit {commit[:12]}: refused (the desired "
                "state is read from git objects; name the real directory with --path)"
            )
        if kind != "tree":
            raise SourceError(f"{where} is not a directory in commit {commit[:12]}")
        tree = obj
    return tree


def _safe_name(path: str) -> bool:
    parts = path.split("/")
    return all(p not in ("", ".", "..", ".git") for p in parts) and "\\" not in path


def list_tree(repo_dir: Path, commit: str, subdir: str) -> list[Entry]:
    """Every file of ``subdir`` at ``commit``; SourceError naming every symlink, submodule,
    unsafe name and file over MAX_FILE bytes (all of them, not only the first)."""
    tree = _subtree(repo_dir, commit, subdir)
    prefix = f"{subdir.strip('/')}/" if subdir.strip("/.") else ""
    entries: list[Entry] = []
    problems: list[str] = []
    for record in _git(repo_dir, "ls-tree", "-r", "-z", "-l", tree).split(b"\0"):
        if not record:
            continue
        meta, _, raw_name = record.partition(b"\t")
        mode, _kind, obj, size = meta.decode().split()
        name = raw_name.decode("utf-8", errors="replace")
        shown = prefix + name
        if mode == _LINK:
            problems.append(f"{shown} is a symbolic link")
        elif mode == _GITLINK:
            problems.append(f"{shown} is a submodule (its content is not in this commit)")
        elif not _safe_name(name):
            problems.append(f"{shown!r} is not a safe file name")
        elif int(size) > MAX_FILE:
            problems.append(f"{shown} is {int(size)} bytes (at most {MAX_FILE} are read)")
        else:
            entries.append(Entry(name, obj, int(size)))
    if problems:
        raise SourceError(
            f"commit {commit[:12]} cannot be used: " + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        )
    return entries


def materialize(
    repo_dir: Path,
    commit: str,
    subdir: str,
    dest: Path,
    only: Callable[[str], bool] | None = None,
) -> None:
    """Write the files of ``subdir`` at ``commit`` into the empty directory ``dest``, each
    from its blob (directories 0700, files 0600, created exclusively, no link followed);
    with ``only``, just the files whose path (below ``subdir``) it accepts.

    Raises SourceError as :func:`list_tree` does (for the whole tree, ``only`` or not), or
    when git fails or runs out of time.
    """
    entries = list_tree(repo_dir, commit, subdir)
    if only is not None:
        entries = [e for e in entries if only(e.path)]
    if not entries:
        return
    proc = subprocess.Popen(
        ["git", "-C", str(repo_dir), "cat-file", "--batch"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    timer = threading.Timer(GIT_TIMEOUT, proc.kill)
    timer.start()

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(b"".join(e.blob.encode() + b"\n" for e in entries))
            proc.stdin.close()
        except OSError:
            pass  # git died: the reader reports it

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    made: set[Path] = set()  # directories created so far (1,000 host files share one)
    try:
        for e in entries:
            header = proc.stdout.readline().split()
            if len(header) != 3 or header[1] != b"blob" or int(header[2]) != e.size:
                raise SourceError(f"cannot read {e.path} at {commit[:12]} from git")
            data = proc.stdout.read(e.size)
            proc.stdout.read(1)  # the newline after each object
            if len(data) != e.size:
                raise SourceError(f"cannot read {e.path} at {commit[:12]}: git stopped")
            _write(dest, e.path, data, made)
    finally:
        timer.cancel()
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        writer.join(timeout=5)


def _write(dest: Path, rel: str, data: bytes, made: set[Path]) -> None:
    path = dest / rel
    if path.parent not in made:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        made.add(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
