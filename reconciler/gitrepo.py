"""A git repository, worked with through the ``git`` command (:mod:`reconciler.runner`).

The few git operations reconciler needs (find the repository a path is in, resolve a
revision, tell whether a work tree is dirty, read one file or a raw commit from the objects,
clone, fetch, check out) are each one ``git`` command: no git library is imported, so a run
pays for git only in the commands it starts. Every command runs with ``git -C <top>``, so
path arguments are relative to the repository's top, and with stdin at ``/dev/null``.

:class:`GitError` is a failed command (its exit status and stderr); the callers word it
(:mod:`reconciler.gitsource`, :mod:`reconciler.gitverify`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from reconciler import runner

#: Bounds a local command (a status, a listing, one object).
LOCAL_TIMEOUT = 300.0
#: Bounds a command that talks to a remote (clone, fetch): a stuck network is an error, not
#: a timer run that never ends.
REMOTE_TIMEOUT = 1800.0


class GitError(Exception):
    """A git command exited non-zero: ``status`` and ``stderr`` (text) say why."""

    def __init__(self, args: tuple[str, ...], status: int, stderr: str) -> None:
        self.command = args
        self.status = status
        self.stderr = stderr
        lines = stderr.strip().splitlines()
        super().__init__(f"git {args[0] if args else ''} exited {status}: "
                         f"{lines[-1] if lines else 'no message'}")  # fmt: skip


class TreeEntry(NamedTuple):
    """What a commit's tree holds at a path: git's ``mode`` (octal text, ``100644``), the
    object ``type`` (``blob``, ``tree``, ``commit`` for a submodule), its id and size."""

    mode: str
    type: str
    sha: str
    size: int | None


def find_top(path: Path) -> Path | None:
    """The work tree ``path`` is in (the nearest directory upward holding ``.git``, a
    directory or a ``gitdir:`` file), or None when it is in no git repository. Only the
    file system is looked at: whether git accepts the repository is :meth:`GitRepo.open`'s
    question, so a repository git refuses is never mistaken for a plain directory."""
    p = path.absolute()
    while True:
        if os.path.lexists(p / ".git"):
            return p
        if p.parent == p:
            return None
        p = p.parent


class GitRepo:
    """A repository with a work tree at ``working_tree_dir`` and its ``git_dir``; ``head``
    is the commit HEAD named when it was opened (None before the first commit)."""

    def __init__(self, top: Path, git_dir: str, head: str | None = None) -> None:
        self.working_tree_dir: str = str(top)
        self.git_dir: str = git_dir
        self.head = head
        # Answers about immutable objects, asked again within a run (a full commit hash
        # always names the same commit and tree): each is one git process less.
        self._commits: dict[str, str | None] = {} if head is None else {head: head}
        self._entries: dict[tuple[str, str], TreeEntry | None] = {}

    @classmethod
    def open(cls, top: Path) -> GitRepo:
        """The repository whose work tree is ``top``; GitError when git refuses it or it is
        not one (``git rev-parse`` fails: ``safe.directory`` ownership, a broken ``.git``)."""
        top = top.absolute()
        # One command for both: exit 1 (git dir printed, no commit) is an unborn HEAD.
        args = ("rev-parse", "--absolute-git-dir", "--verify", "--quiet", "HEAD^{commit}")
        proc = runner.run(["git", "-C", str(top), *args], timeout=LOCAL_TIMEOUT)
        lines = proc.stdout.decode(errors="replace").splitlines()
        if proc.returncode not in (0, 1) or not lines:
            raise GitError(args, proc.returncode, proc.stderr.decode(errors="replace"))
        head = lines[1] if proc.returncode == 0 and len(lines) > 1 else None
        return cls(top, lines[0], head)

    @classmethod
    def clone(cls, url: str, dest: Path) -> GitRepo:
        """Clone ``url`` into the new directory ``dest`` without checking anything out."""
        dest = dest.absolute()
        _git(dest.parent, ("clone", "--no-checkout", "--quiet", "--", url, str(dest)),
             REMOTE_TIMEOUT)  # fmt: skip
        return cls.open(dest)

    def close(self) -> None:
        """Nothing to release (no process is kept); kept for the callers' ``with`` blocks."""

    def git(self, *args: str, remote: bool = False) -> str:
        """Run ``git ARGS`` in the work tree and return its stdout as text; GitError when
        it exits non-zero. ``remote``: it talks to a remote (a longer time bound)."""
        return _git(Path(self.working_tree_dir), args,
                    REMOTE_TIMEOUT if remote else LOCAL_TIMEOUT)  # fmt: skip

    def git_bytes(self, *args: str) -> bytes:
        """:meth:`git` with stdout as bytes, byte for byte (a raw object)."""
        return _git_raw(Path(self.working_tree_dir), args, LOCAL_TIMEOUT)

    def commit_hash(self, rev: str) -> str | None:
        """The full hash of the commit ``rev`` names (peeled to its commit), or None when
        there is no such commit. A revision that looks like an option is never passed."""
        if not rev or rev.startswith("-"):
            return None
        if rev in self._commits:
            return self._commits[rev]
        try:
            out = self.git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        except GitError:
            return None
        sha = out.strip() or None
        if sha is not None and _is_full_hash(rev) and sha == rev.lower():
            self._commits[rev] = sha  # a branch or tag may move; a commit's hash does not
        return sha

    def is_dirty(self, path: str | None = None) -> bool:
        """Whether the work tree (below ``path``, relative to its top) differs from HEAD:
        staged or unstaged changes, or untracked files that are not ignored."""
        args = ["status", "--porcelain", "--untracked-files=normal"]
        if path:
            args += ["--", path]
        return bool(self.git(*args).strip())

    def entry(self, commit: str, path: str) -> TreeEntry | None:
        """What the tree of ``commit`` holds at ``path`` (``/``-separated, from the top),
        without following a symlink on the way; None when nothing is there."""
        path = path.strip("/")
        if not path:
            return None
        if (commit, path) in self._entries:
            return self._entries[(commit, path)]
        out = self.git_bytes("ls-tree", "-z", "-l", commit, "--", path)
        found = None
        for record in out.split(b"\0"):
            meta, _, name = record.partition(b"\t")
            if name.decode(errors="replace") == path:
                mode, kind, sha, size = meta.decode().split()
                found = TreeEntry(mode, kind, sha, None if size == "-" else int(size))
                break
        if _is_full_hash(commit):
            self._entries[(commit, path)] = found
        return found

    def blob(self, sha: str) -> bytes:
        """The content of the blob ``sha``."""
        return self.git_bytes("cat-file", "blob", sha)

    def raw_commit(self, sha: str) -> bytes:
        """The commit object ``sha`` byte for byte, as it was hashed and signed."""
        return self.git_bytes("cat-file", "commit", sha)

    def remote_url(self, name: str = "origin") -> str | None:
        """The URL of remote ``name``, None when there is no such remote."""
        try:
            return self.git("config", "--get", f"remote.{name}.url").strip() or None
        except GitError:
            return None


def _is_full_hash(rev: str) -> bool:
    """Whether ``rev`` is a full object id (SHA-1 or SHA-256 hex), which never moves."""
    return len(rev) in (40, 64) and all(c in "0123456789abcdefABCDEF" for c in rev)


def _git_raw(where: Path, args: tuple[str, ...], timeout: float) -> bytes:
    proc = runner.run(["git", "-C", str(where), *args], timeout=timeout)
    if proc.returncode != 0:
        raise GitError(args, proc.returncode, proc.stderr.decode(errors="replace"))
    out: bytes = proc.stdout
    return out


def _git(where: Path, args: tuple[str, ...], timeout: float) -> str:
    return _git_raw(where, args, timeout).decode(errors="replace")
