"""The rewind rule: a target must descend from the last applied commit (docs/security.md).

Apart from :mod:`reconciler.gitverify` because every run with a last applied commit asks it,
signatures or not, and the verification machinery (keys, gpg, ssh-keygen) is needed only by
runs that verify.
"""

from __future__ import annotations

from reconciler.errors import VerifyError
from reconciler.gitrepo import GitError, GitRepo
from reconciler.gitsource import commit_hash

__all__ = ["check_rewind", "check_rewind_resolved", "describe_commit", "raw_commit_bytes"]


def _is_ancestor(repo: GitRepo, ancestor: str, descendant: str) -> bool:
    """Whether commit ``ancestor`` is an ancestor of ``descendant`` (git merge-base)."""
    try:
        repo.git("merge-base", "--is-ancestor", ancestor, descendant)
    except GitError as exc:
        if exc.status == 1:  # the documented "no" answer; anything else is a real failure
            return False
        raise VerifyError(f"git merge-base failed: {exc.stderr.strip()}") from None
    return True


def check_rewind(repo: GitRepo, base: str, target: str, *, allow_rewind: bool) -> bool:
    """The rewind rule, for verifying and non-verifying runs alike: whether ``target``
    descends from ``base``, the last applied commit (True also when they are the same).
    When it does not (a force-push, an older branch, or ``base`` gone from the
    repository), False if ``allow_rewind``, else VerifyError naming both commits."""
    target_sha = commit_hash(repo, target)
    if target_sha is None:
        raise VerifyError(f"{target!r} is not a commit in the repository")
    return check_rewind_resolved(repo, base, commit_hash(repo, base), target_sha, allow_rewind)


def check_rewind_resolved(
    repo: GitRepo, base: str, base_sha: str | None, target_sha: str, allow_rewind: bool
) -> bool:
    """:func:`check_rewind` for revisions already resolved (``base_sha`` None: ``base`` is
    not in the repository)."""
    if base_sha is not None and (
        base_sha == target_sha or _is_ancestor(repo, base_sha, target_sha)
    ):
        return True
    if allow_rewind:
        return False
    gone = "" if base_sha is not None else " (it is no longer in the repository)"
    target_text = describe_commit(raw_commit_bytes(repo, target_sha), target_sha)
    raise VerifyError(
        f"target {target_text} is not a descendant of the "
        f"last applied commit {base[:12]}{gone}: the branch was rewound (force-pushed) or an "
        "older branch was named; refusing a rewind; pass --allow-rewind to accept it",
        commit=target_sha,
    )


def raw_commit_bytes(repo: GitRepo, sha: str) -> bytes:
    """The commit object ``sha`` of ``repo``, byte for byte (a parsed and re-encoded commit,
    or text with trailing newlines stripped, would change the signed payload)."""
    return repo.raw_commit(sha)


def describe_commit(raw: bytes, sha: str) -> str:
    """'commit <short hash> (<subject>)' for messages."""
    end = raw.find(b"\n\n")
    message = raw[end + 2 :] if end >= 0 else b""
    subject = message.decode("utf-8", errors="replace").strip().split("\n", 1)[0].strip()
    if len(subject) > 72:
        subject = subject[:69] + "..."
    return f"commit {sha[:12]} ({subject or 'no subject'})"
