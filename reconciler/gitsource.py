"""Where the desired state comes from: a plain directory, a local git work tree, or a remote.

``--repo`` takes a path or a URL (the ``git`` command does the git work,
:mod:`reconciler.gitrepo`):

* a **plain directory** (in no git repository at all) is read as it is (no commit recorded,
  nothing can be verified); a repository git refuses (its ``safe.directory`` ownership
  check) or fails on is an error naming the fix, never read as a plain directory;
* a **local work tree** is read at ``HEAD`` (or ``--ref``) from git objects into a temporary
  directory (:mod:`reconciler.gittree`), leaving the user's checkout alone. Uncommitted
  changes under the desired-state path make it *dirty*: the work tree is then read as it is
  (no symlink leaving it), the commit recorded is ``<hash>+dirty`` (what was applied is not
  that commit), and apply refuses unless ``--allow-dirty``;
* a **URL** is cloned once into ``<state-dir>/source/`` and fetched on every run; ``--ref``
  (a branch, tag or commit; default: the remote's default branch) is resolved after the
  fetch. The new commit is checked out only after it has been verified (see
  :mod:`reconciler.gitverify`), so the clone's checkout is always the last good one; the
  desired state itself is read from the accepted commit's objects, never the checkout. When
  the remote cannot be reached, that last good checkout is used and the failure is reported
  (``fetch_error``): the host keeps converging to what it last accepted.

Everything here reads or updates the clone in the state dir; nothing touches the host's
managed state, so a ``--dry-run`` may fetch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import gittree, log
from reconciler.errors import SourceError
from reconciler.gitrepo import GitError, GitRepo, find_top

SOURCE_DIR = "source"
"""Seconds ``git archive | tar -x`` may take to export a tree: a desired state of 1,000
host files takes well under a second, so five minutes means a stuck disk or lock, not
a big repository."""


def is_url(repo: str) -> bool:
    """Whether ``--repo`` names a remote (``scheme://...`` or scp-like ``host:path``) rather
    than a local path. An existing local path always wins."""
    if "://" in repo:
        return True
    if Path(repo).exists():
        return False
    head, sep, _ = repo.partition(":")
    return bool(sep) and "/" not in head and len(head) > 1  # not a Windows drive letter


#: Transports a --repo URL may use: none of them runs a program named in the URL (git's
#: "ext::" and other "<helper>::" remote helpers do).
URL_SCHEMES = frozenset({"https", "http", "ssh", "git", "file", "git+ssh", "ssh+git"})


def check_url(url: str) -> None:
    """SourceError unless ``url`` is a plain git URL: ``scheme://`` with a scheme of
    URL_SCHEMES, or scp-like ``[user@]host:path``; never a ``helper::`` transport."""
    head = url.split("/", 1)[0]
    if "::" in head:
        raise SourceError(
            f"--repo {url.split('::', 1)[0]}::...: git remote helpers run programs; use "
            f"one of {', '.join(sorted(URL_SCHEMES))}, or [user@]host:path"
        )
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise SourceError(
                f"--repo {scheme}://...: not a transport reconciler fetches from (use one of "
                f"{', '.join(sorted(URL_SCHEMES))})"
            )
    elif url.startswith("-"):
        raise SourceError(f"--repo {url}: not a repository")


@dataclass
class Source:
    """The desired state of this run.

    ``path`` is the directory to read (inside the repository: ``--path`` applied); ``commit``
    the full hash (``+dirty`` appended for a dirty local tree), None for a plain directory;
    ``repo`` the git repository (None for a plain directory); ``url`` the remote for a clone;
    ``target`` the commit to check out once verified (clones only); ``fetch_error`` why the
    remote could not be fetched (the last good checkout is used).
    """

    path: Path
    commit: str | None
    repo: GitRepo | None = None
    url: str | None = None
    dirty: bool = False
    subdir: str = ""
    target: str | None = None
    fetch_error: str | None = None

    @property
    def clean_commit(self) -> str | None:
        """The commit hash without the ``+dirty`` mark."""
        return self.commit.split("+", 1)[0] if self.commit else None


def _git_error(e: Exception) -> str:
    if isinstance(e, GitError):
        stderr = e.stderr.strip()
        return stderr.splitlines()[-1] if stderr else f"git exited {e.status}"
    return str(e)


def commit_hash(repo: GitRepo, rev: str) -> str | None:
    """The full hash of the commit ``rev`` names (a branch, tag or hash, peeled to its
    commit), or None when there is no such commit."""
    return repo.commit_hash(rev)  # never lets a revision be read as an option


def resolve(repo: GitRepo, rev: str) -> str:
    """The full hash of the commit ``rev`` names; SourceError when there is none."""
    sha = commit_hash(repo, rev)
    if sha is None:
        raise SourceError(f"unknown revision {rev!r} in {repo.git_dir}: no such commit")
    return sha


@contextlib.contextmanager
def open_local(path: Path, ref: str | None, subdir: str = "") -> Iterator[Source]:
    """The desired state at a local path: plain directory, or git work tree at HEAD / ``ref``.

    A committed state (HEAD of a clean tree, or ``ref``) is read from git objects into a
    temporary directory (removed on exit, :mod:`reconciler.gittree`): the user's checkout is
    never touched, and what is loaded is what verification checks. A dirty tree is read as
    it is, refusing symlinks that leave the desired-state root. Raises SourceError for a
    missing path, a ``ref`` outside a git repository, an unknown ``ref``, a symlink, or a
    repository git refuses or fails on (``safe.directory``: the message names the fix);
    only a directory that is in no git repository at all is read as a plain directory.
    """
    if not path.is_dir():
        raise SourceError(f"{path}: not a directory")
    top = find_top(path)
    if top is None:
        if ref is not None:
            raise SourceError(f"--ref {ref}: {path} is not in a git repository") from None
        check_links(path / subdir)
        yield Source(path / subdir, None)
        return
    try:
        repo = GitRepo.open(top)
    except GitError as e:
        # e.g. "detected dubious ownership" (a checkout owned by another user): git itself
        # refuses this repository. Never read its files as a plain directory instead: the
        # dirty-tree refusal, the recorded commit and drift tracking would all be lost.
        raise SourceError(git_refusal(path, top, e)) from e
    with contextlib.ExitStack() as stack:
        try:
            source = _open_git(repo, path, ref, subdir, stack)
        except GitError as e:
            raise SourceError(git_refusal(path, Path(repo.working_tree_dir), e)) from e
        yield source


def git_refusal(path: Path, top: Path, e: Exception) -> str:
    """What to tell the user when git fails on the local repository at ``path`` (its top
    ``top``): git's own words, and for git's ownership check the command that trusts it."""
    why = _git_error(e)
    if "dubious ownership" in str(getattr(e, "stderr", "") or why) or "safe.directory" in why:
        return (
            f"{path}: git refuses this repository (detected dubious ownership: it is owned "
            "by another user than the one running reconcile); nothing was read from it. If "
            f"you trust it, run: git config --global --add safe.directory {top}"
        )
    return f"{path}: git cannot read this repository: {why}; nothing was read from it"


def _open_git(
    repo: GitRepo, path: Path, ref: str | None, subdir: str, stack: contextlib.ExitStack[Any]
) -> Source:
    """The source of :func:`open_local` for a repository git accepts; a committed state's
    temporary directory lives as long as ``stack``."""
    top = Path(repo.working_tree_dir).resolve()
    rel = str(path.resolve().relative_to(top)) if path.resolve() != top else ""
    rel = "/".join(p for p in (rel, subdir) if p and p != ".")
    head = repo.head if ref is None else None
    if ref is None and head is None:
        check_links(path / subdir)
        return Source(path / subdir, None, repo, subdir=rel)  # no commit yet
    commit = resolve(repo, ref) if ref is not None else str(head)
    dirty = ref is None and repo.is_dirty(rel or None)
    if dirty:
        # Uncommitted: only the work tree has it (apply needs --allow-dirty).
        check_links(path / subdir)
        return Source(path / subdir, f"{commit}+dirty", repo, dirty=True, subdir=rel)
    # Committed: read from the commit's own objects, exactly what verification checks.
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reconciler-tree-")))
    gittree.materialize(top, commit, rel, tmp)
    return Source(tmp, commit, repo, subdir=rel)


def check_links(root: Path) -> None:
    """SourceError naming the first symlink below ``root`` (``root`` itself included) that
    resolves outside ``root``: the desired state of a work tree reads no file beyond it."""
    top = root.resolve()
    if root.is_symlink() and not (
        top == root.parent.resolve() or top.is_relative_to(root.parent.resolve())
    ):
        raise SourceError(f"{root} is a symbolic link leaving the repository: refused")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink() and not Path(os.path.realpath(p)).is_relative_to(top):
                rel = p.relative_to(root)
                raise SourceError(
                    f"{rel} is a symbolic link leaving the desired state ({root}): refused"
                )


def materialized(repo: GitRepo, commit: str, subdir: str, stack: contextlib.ExitStack[Any]) -> Path:
    """A temporary directory (removed when ``stack`` closes) holding ``subdir`` at
    ``commit``, written from git objects (:func:`reconciler.gittree.materialize`)."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reconciler-tree-")))
    gittree.materialize(Path(repo.working_tree_dir), commit, subdir, tmp)
    return tmp


def _clone_dir(state_dir: Path) -> Path:
    return state_dir / SOURCE_DIR


def _open_clone(dest: Path, url: str) -> GitRepo | None:
    """The existing clone of ``url`` at ``dest``; None when there is none. A directory that
    is not a usable clone is moved aside (kept for inspection) so a fresh clone can start."""
    if not dest.exists():
        return None
    try:
        if not os.path.lexists(dest / ".git"):
            raise GitError(("rev-parse",), 128, f"{dest} is not a git repository")
        repo = GitRepo.open(dest)
        if Path(repo.git("rev-parse", "--show-toplevel").strip()) != dest.resolve():
            raise GitError(("rev-parse",), 128, f"{dest} is not the top of a git repository")
        have = repo.remote_url("origin")
    except GitError as e:
        if "dubious ownership" in e.stderr:  # git refuses it: say so, move nothing
            raise SourceError(git_refusal(dest, dest, e)) from e
        aside = dest.with_name(f"{dest.name}.broken-{int(time.time())}")
        dest.rename(aside)
        log.get().warning("source_clone_broken", path=str(dest), moved_to=str(aside), error=str(e))
        return None
    if have != url:
        raise SourceError(
            f"{dest} is a clone of {have}, not of {url}: remove it (it is only a cache) or "
            "use another --state-dir"
        )
    return repo


def _remote_target(repo: GitRepo, ref: str | None) -> str:
    """The commit ``ref`` names after a fetch: a branch of origin, a tag, or a commit; the
    remote's default branch when ``ref`` is None."""
    if ref is None:
        sha = commit_hash(repo, "refs/remotes/origin/HEAD")
        if sha is None:
            raise SourceError(f"cannot tell the default branch of {repo.remote_url()}: pass --ref")
        return sha
    for candidate in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        sha = commit_hash(repo, candidate)
        if sha is not None:
            return sha
    raise SourceError(f"--ref {ref}: no such branch, tag or commit in {repo.remote_url()}")


@contextlib.contextmanager
def open_remote(url: str, ref: str | None, state_dir: Path, subdir: str = "") -> Iterator[Source]:
    """Clone or fetch ``url`` into the state dir and resolve ``ref``.

    The returned source's ``path`` is the clone's work tree, still at the last good checkout;
    ``target`` is the fetched commit to move to (call :func:`checkout` once it is verified).
    A failed fetch with an earlier checkout yields that checkout with ``fetch_error`` set;
    without one it raises SourceError.
    """
    check_url(url)
    dest = _clone_dir(state_dir)
    repo = _open_clone(dest, url)
    fetch_error = None
    if repo is None:
        tmp = dest.with_name(f"{dest.name}.new")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            # Cloned beside, then renamed: an interrupted clone never looks like a clone.
            GitRepo.clone(url, tmp)
        except GitError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SourceError(
                f"cannot clone {url}: {_git_error(e)} (no earlier checkout to fall back to)"
            ) from e
        tmp.rename(dest)
        repo = GitRepo.open(dest)
    else:
        try:
            repo.git("fetch", "--quiet", "--prune", "--tags", "--force", "origin", remote=True)
            with contextlib.suppress(GitError):  # follow a changed default branch
                repo.git("remote", "set-head", "origin", "--auto", remote=True)
        except GitError as e:
            fetch_error = f"cannot fetch {url}: {_git_error(e)}"
    try:
        current = _accepted(repo)
        if fetch_error is not None:
            if current is None:
                raise SourceError(f"{fetch_error} (no earlier checkout to fall back to)")
            target = current  # the last good checkout
        else:
            target = _remote_target(repo, ref)
        work = Path(repo.working_tree_dir or dest)
        yield Source(
            work / subdir,
            current,
            repo,
            url=url,
            subdir=subdir,
            target=target,
            fetch_error=fetch_error,
        )
    finally:
        repo.close()


ACCEPTED_MARK = "reconciler-accepted"


def _accepted(repo: GitRepo) -> str | None:
    """The commit the work tree holds if it was checked out by :func:`checkout` (accepted),
    else None: a fresh clone's HEAD, or a tree changed since, is nothing to fall back to."""
    mark = Path(repo.git_dir) / ACCEPTED_MARK
    try:
        commit = mark.read_text().strip()
    except OSError:
        return None
    head = repo.commit_hash("HEAD")
    return commit if head is not None and commit == head else None


def checkout(source: Source, commit: str) -> None:
    """Move a clone's work tree to ``commit`` (detached, forced, untracked files removed):
    it then holds exactly that commit's files. Updates ``source.commit``."""
    assert source.repo is not None and source.url is not None
    try:
        source.repo.git("checkout", "--quiet", "--detach", "--force", commit)
        source.repo.git("clean", "-ffdxq")
    except GitError as e:
        raise SourceError(f"cannot check out {commit[:12]}: {_git_error(e)}") from e
    (Path(source.repo.git_dir) / ACCEPTED_MARK).write_text(commit + "\n")
    source.commit = commit


def read_file_at(repo: GitRepo, commit: str, path: str) -> str | None:
    """The text of ``path`` at ``commit`` without checking it out; None when absent or not
    a plain file (a symlink or a directory is never followed). SourceError when it is
    larger than a desired-state file may be."""
    try:
        entry = repo.entry(commit, path)
    except GitError:
        return None
    if entry is None or entry.type != "blob" or int(entry.mode, 8) & 0o170000 != 0o100000:
        return None
    size = entry.size or 0
    if size > gittree.MAX_FILE:
        raise SourceError(
            f"{path} at {commit[:12]} is {size} bytes (at most {gittree.MAX_FILE} are read)"
        )
    try:
        data = repo.blob(entry.sha)
    except GitError:
        return None
    return data.decode("utf-8", errors="replace")
