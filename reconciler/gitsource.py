"""Where the desired state comes from: a plain directory, a local git work tree, or a remote.

``--repo`` takes a path or a URL (gitpython does the git work):

* a **plain directory** is read as it is (no commit recorded, nothing can be verified);
* a **local work tree** is read as it is, at ``HEAD`` (or exported at ``--ref`` into a
  temporary directory, leaving the user's checkout alone). Uncommitted changes under the
  desired-state path make it *dirty*: the commit recorded is then ``<hash>+dirty`` (what was
  applied is not that commit), and apply refuses unless ``--allow-dirty``;
* a **URL** is cloned once into ``<state-dir>/source/`` and fetched on every run; ``--ref``
  (a branch, tag or commit; default: the remote's default branch) is resolved after the
  fetch. The new commit is checked out only after it has been verified (see
  :mod:`reconciler.gitverify`), so the clone's checkout is always the last good one. When
  the remote cannot be reached, that last good checkout is used and the failure is reported
  (``fetch_error``): the host keeps converging to what it last accepted.

Everything here reads or updates the clone in the state dir; nothing touches the host's
managed state, so a ``--dry-run`` may fetch.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import git

from reconciler import log, runner
from reconciler.errors import CommandError, CommandNotFound, CommandTimeout, SourceError

SOURCE_DIR = "source"
EXPORT_TIMEOUT = 300.0
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
    repo: git.Repo | None = None
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
    if isinstance(e, git.GitCommandError):
        stderr = (e.stderr or "").strip().replace("stderr: ", "").strip("'\n ")
        return stderr.splitlines()[-1] if stderr else f"git exited {e.status}"
    return str(e)


def commit_hash(repo: git.Repo, rev: str) -> str | None:
    """The full hash of the commit ``rev`` names (a branch, tag or hash, peeled to its
    commit), or None when there is no such commit."""
    if not rev or rev.startswith("-"):  # never let a revision be read as an option
        return None
    try:
        out = repo.git.rev_parse("--verify", "--quiet", f"{rev}^{{commit}}")
    except git.GitCommandError:
        return None
    return str(out).strip() or None


def resolve(repo: git.Repo, rev: str) -> str:
    """The full hash of the commit ``rev`` names; SourceError when there is none."""
    sha = commit_hash(repo, rev)
    if sha is None:
        raise SourceError(f"unknown revision {rev!r} in {repo.git_dir}: no such commit")
    return sha


@contextlib.contextmanager
def open_local(path: Path, ref: str | None, subdir: str = "") -> Iterator[Source]:
    """The desired state at a local path: plain directory, or git work tree at HEAD / ``ref``.

    With ``ref``, the tree at that commit is exported into a temporary directory (removed on
    exit): the user's checkout is never touched. Raises SourceError for a missing path, a
    ``ref`` outside a git repository, or an unknown ``ref``.
    """
    if not path.is_dir():
        raise SourceError(f"{path}: not a directory")
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        if ref is not None:
            raise SourceError(f"--ref {ref}: {path} is not in a git repository") from None
        yield Source(path / subdir, None)
        return
    try:
        repo.git.rev_parse("--git-dir")
    except git.GitCommandError as e:
        # e.g. "detected dubious ownership" (a checkout owned by another user): git itself
        # refuses this repository, so nothing can be recorded or verified about it.
        repo.close()
        if ref is not None:
            raise SourceError(f"--ref {ref}: git refuses {path}: {_git_error(e)}") from e
        log.get().warning(
            "source_not_git", path=str(path), error=_git_error(e), effect="no commit recorded"
        )
        yield Source(path / subdir, None)
        return
    top = Path(repo.working_tree_dir or path).resolve()
    rel = str(path.resolve().relative_to(top)) if path.resolve() != top else ""
    rel = "/".join(p for p in (rel, subdir) if p and p != ".")
    try:
        if ref is not None:
            commit = resolve(repo, ref)
            with tempfile.TemporaryDirectory(prefix="reconciler-tree-") as tmp:
                export_tree(repo, commit, rel, Path(tmp))
                yield Source(Path(tmp), commit, repo, subdir=rel)
            return
        if not repo.head.is_valid():
            yield Source(path / subdir, None, repo, subdir=rel)  # no commit yet
            return
        commit = str(repo.head.commit.hexsha)
        dirty = repo.is_dirty(untracked_files=True, path=rel or None)
        yield Source(
            path / subdir, f"{commit}+dirty" if dirty else commit, repo, dirty=dirty, subdir=rel
        )
    finally:
        repo.close()


def export_tree(repo: git.Repo, commit: str, subdir: str, dest: Path) -> None:
    """Write the files of ``subdir`` (the whole tree when empty) at ``commit`` into ``dest``.

    ``git archive`` piped into ``tar -x`` (one process each, no Python per file: 1,000 host
    files in well under a second; Python's tarfile took 1.3 s), both killed when the pipe
    has not finished within EXPORT_TIMEOUT seconds. Raises SourceError when ``subdir`` is
    not there, either tool fails, or the export runs out of time.
    """
    args = ["git", "-C", str(repo.working_tree_dir or repo.git_dir), "archive", "--format=tar"]
    args += [commit] + ([subdir] if subdir else [])
    strip = [f"--strip-components={len(Path(subdir).parts)}"] if subdir else []
    where = f"{subdir or 'the tree'} at {commit[:12]}"
    deadline = time.monotonic() + EXPORT_TIMEOUT
    # git's stderr goes to a file, not a pipe: a pipe nobody reads until tar is done could
    # fill up and stall git archive.
    with tempfile.TemporaryFile() as archive_err:
        try:
            archive = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=archive_err
            )
        except FileNotFoundError as e:
            raise SourceError(f"cannot export {commit[:12]}: {e.filename} is not installed") from e
        assert archive.stdout is not None
        try:
            untar = runner.run(
                ["tar", "-x", "-C", str(dest), *strip], stdin=archive.stdout, text=True,
                timeout=EXPORT_TIMEOUT,
            )  # fmt: skip
            archive.stdout.close()  # git archive gets EPIPE if tar stopped reading early
            rc = archive.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except CommandNotFound as e:
            raise SourceError(f"cannot export {commit[:12]}: {e.program} is not installed") from e
        except (CommandTimeout, subprocess.TimeoutExpired) as e:
            raise SourceError(
                f"cannot export {where}: git archive | tar -x did not finish within "
                f"{EXPORT_TIMEOUT:g} s"
            ) from e
        except CommandError as e:
            raise SourceError(f"cannot export {where}: {e.message}") from e
        finally:
            archive.stdout.close()
            if archive.poll() is None:
                archive.kill()
                archive.wait()
        archive_err.seek(0)
        err = archive_err.read().decode(errors="replace")
    if rc != 0 or untar.returncode != 0:
        why = (err.strip() or untar.stderr.strip() or "failed").splitlines()[-1]
        raise SourceError(f"cannot export {where}: {why}")


def _clone_dir(state_dir: Path) -> Path:
    return state_dir / SOURCE_DIR


def _open_clone(dest: Path, url: str) -> git.Repo | None:
    """The existing clone of ``url`` at ``dest``; None when there is none. A directory that
    is not a usable clone is moved aside (kept for inspection) so a fresh clone can start."""
    if not dest.exists():
        return None
    try:
        repo = git.Repo(dest)
        have = repo.remotes.origin.url if "origin" in [r.name for r in repo.remotes] else None
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError) as e:
        aside = dest.with_name(f"{dest.name}.broken-{int(time.time())}")
        dest.rename(aside)
        log.get().warning("source_clone_broken", path=str(dest), moved_to=str(aside), error=str(e))
        return None
    if have != url:
        repo.close()
        raise SourceError(
            f"{dest} is a clone of {have}, not of {url}: remove it (it is only a cache) or "
            "use another --state-dir"
        )
    return repo


def _remote_target(repo: git.Repo, ref: str | None) -> str:
    """The commit ``ref`` names after a fetch: a branch of origin, a tag, or a commit; the
    remote's default branch when ``ref`` is None."""
    if ref is None:
        sha = commit_hash(repo, "refs/remotes/origin/HEAD")
        if sha is None:
            raise SourceError(
                f"cannot tell the default branch of {repo.remotes.origin.url}: pass --ref"
            )
        return sha
    for candidate in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        sha = commit_hash(repo, candidate)
        if sha is not None:
            return sha
    raise SourceError(f"--ref {ref}: no such branch, tag or commit in {repo.remotes.origin.url}")


@contextlib.contextmanager
def open_remote(url: str, ref: str | None, state_dir: Path, subdir: str = "") -> Iterator[Source]:
    """Clone or fetch ``url`` into the state dir and resolve ``ref``.

    The returned source's ``path`` is the clone's work tree, still at the last good checkout;
    ``target`` is the fetched commit to move to (call :func:`checkout` once it is verified).
    A failed fetch with an earlier checkout yields that checkout with ``fetch_error`` set;
    without one it raises SourceError.
    """
    dest = _clone_dir(state_dir)
    repo = _open_clone(dest, url)
    fetch_error = None
    if repo is None:
        tmp = dest.with_name(f"{dest.name}.new")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            # Cloned beside, then renamed: an interrupted clone never looks like a clone.
            repo = git.Repo.clone_from(url, tmp, no_checkout=True)
        except git.GitCommandError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SourceError(
                f"cannot clone {url}: {_git_error(e)} (no earlier checkout to fall back to)"
            ) from e
        repo.close()
        tmp.rename(dest)
        repo = git.Repo(dest)
    else:
        try:
            repo.remotes.origin.fetch(prune=True, tags=True, force=True)
            with contextlib.suppress(git.GitCommandError):  # follow a changed default branch
                repo.git.remote("set-head", "origin", "--auto")
        except git.GitCommandError as e:
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


def _accepted(repo: git.Repo) -> str | None:
    """The commit the work tree holds if it was checked out by :func:`checkout` (accepted),
    else None: a fresh clone's HEAD, or a tree changed since, is nothing to fall back to."""
    mark = Path(repo.git_dir) / ACCEPTED_MARK
    try:
        commit = mark.read_text().strip()
    except OSError:
        return None
    try:
        head = str(repo.head.commit.hexsha)
    except (ValueError, git.BadName, git.GitCommandError):
        return None
    return commit if commit == head else None


def checkout(source: Source, commit: str) -> None:
    """Move a clone's work tree to ``commit`` (detached, forced, untracked files removed):
    it then holds exactly that commit's files. Updates ``source.commit``."""
    assert source.repo is not None and source.url is not None
    try:
        source.repo.git.checkout("--detach", "--force", commit)
        source.repo.git.clean("-ffdx")
    except git.GitCommandError as e:
        raise SourceError(f"cannot check out {commit[:12]}: {_git_error(e)}") from e
    (Path(source.repo.git_dir) / ACCEPTED_MARK).write_text(commit + "\n")
    source.commit = commit


def read_file_at(repo: git.Repo, commit: str, path: str) -> str | None:
    """The text of ``path`` at ``commit`` without checking it out; None when absent."""
    try:
        blob = repo.commit(commit).tree / path
    except KeyError:
        return None
    data: bytes = blob.data_stream.read()
    return data.decode("utf-8", errors="replace")
