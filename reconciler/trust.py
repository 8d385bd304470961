"""Which commit a run may use: the rewind check and signature verification, before checkout.

The host decides: verification is mandatory on every run, the first included, when the host
has a pins file (``--signer-pins``, default /etc/reconciler/signers.pin) or asks for it
(``--require-signed``); nothing in a repository can turn it off. A repository can only ask
for more: verification is also on when ``fleet.yaml`` has ``verify:`` at the last applied
commit or at the target (so a commit cannot switch it off without itself being verified).
The signers' public keys come from the repository; only those whose fingerprints are pinned
on the host (``--signer-pins``) are trusted, so adding a key to the repository grants nothing.

Without verification the rewind check still runs for git sources: a target that is not a
descendant of the last applied commit (a force-push, an old branch) is refused unless
``--allow-rewind``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from reconciler.errors import SourceError, VerifyError
from reconciler.gitrepo import GitRepo
from reconciler.gitsource import commit_hash, read_file_at
from reconciler.rewind import check_rewind
from reconciler.yamlsrc import parse_fast, parse_yaml

if TYPE_CHECKING:
    from reconciler.gitverify import Signer

DEFAULT_PINS = "/etc/reconciler/signers.pin"


class Decision(NamedTuple):
    """The outcome for one target: ``verified`` lists the commits checked (oldest first)."""

    commit: str
    verified: tuple[str, ...] = ()
    signers: tuple[str, ...] = ()
    verification: bool = False


#: Reads a fleet.yaml's data from its bytes and name, or None when it cannot say quickly
#: (the desired-state cache, which knows files already validated).
FleetReader = Callable[[bytes, str], "dict[str, Any] | None"]


def _fleet_data(raw: bytes, rel: str, cached: FleetReader | None) -> Any:
    """The data of a fleet.yaml: from ``cached`` if it knows the content, else parsed with
    the loader's bounds (depth, alias expansion): this is unverified input."""
    if cached is not None and (data := cached(raw, rel)) is not None:
        return data
    doc = parse_fast(raw, rel) or parse_yaml(raw, rel)
    return doc.data


def _fleet_verify(
    repo: GitRepo,
    commit: str,
    subdir: str,
    cached: FleetReader | None = None,
    tree: Path | None = None,
) -> dict[str, Any] | None:
    rel = f"{subdir}/fleet.yaml" if subdir else "fleet.yaml"
    try:
        text = _read_written(tree) if tree is not None else read_file_at(repo, commit, rel)
    except SourceError as e:
        raise VerifyError(e.message, commit=commit) from e
    if text is None:
        return None
    data = _fleet_data(text.encode(), rel, cached)
    block = data.get("verify") if isinstance(data, dict) else None
    return block if isinstance(block, dict) else None


def _read_written(tree: Path) -> str | None:
    """The text of ``fleet.yaml`` in ``tree``, a commit's desired state already written out
    from its own objects (:mod:`reconciler.gittree`: regular files only, none over its size
    bound): the same text :func:`read_file_at` gives, without starting git again. None when
    there is no such regular file."""
    try:
        fd = os.open(tree / "fleet.yaml", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # absent (or, never written by gittree, a link or unreadable)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read().decode("utf-8", errors="replace")


def _signers(blocks: list[dict[str, Any]], subdir: str) -> list[Signer]:
    """The ``verify.signers`` of the given ``verify:`` blocks (the target's first), each key
    once, with key paths made relative to the repository root."""
    from reconciler.gitverify import Signer

    out: dict[tuple[str, str], Signer] = {}
    for block in blocks:
        for s in block.get("signers") or []:
            if not isinstance(s, dict) or not isinstance(s.get("name"), str):
                continue
            for kind in ("openpgp", "ssh"):
                if isinstance(s.get(kind), str):
                    path = f"{subdir}/{s[kind]}" if subdir else s[kind]
                    out.setdefault((kind, path), Signer(s["name"], kind, path))
    return list(out.values())


def host_requires_signatures(pins_path: Path) -> bool:
    """Whether this host's own configuration makes signatures mandatory: a pins file exists
    (even an empty one: it then trusts nobody, and every target is refused)."""
    return pins_path.exists() or pins_path.is_symlink()


def decide(
    repo: GitRepo,
    subdir: str,
    base: str | None,
    target: str,
    *,
    pins_path: Path,
    require_signed: bool = False,
    allow_rewind: bool = False,
    cached: FleetReader | None = None,
    target_tree: Path | None = None,
) -> Decision:
    """Accept ``target`` or raise :class:`VerifyError` naming the offending commit.

    ``base`` is the last applied commit (None on a first run). Signatures are required when
    ``require_signed`` or the host has a pins file at ``pins_path``. Reads git objects only; the
    work tree is not touched, so a refusal leaves the last applied checkout in place.
    ``cached`` may answer for a fleet.yaml already validated (the timer run on an unchanged
    commit then parses nothing). ``target_tree``: the target's desired state already written
    out from its git objects (:func:`reconciler.gittree.materialize`), where its fleet.yaml
    is read instead of from git again.
    """
    require_signed = require_signed or host_requires_signatures(pins_path)
    # Each commit's verify: block is read once: it says both whether to verify and who signs.
    base_known = base is not None and commit_hash(repo, base) is not None
    found = [_fleet_verify(repo, target, subdir, cached, target_tree)]
    if base_known and base != target:
        assert base is not None
        found.append(_fleet_verify(repo, base, subdir, cached))
    blocks = [b for b in found if b is not None]
    if not (blocks or require_signed):
        if base is not None:  # the same rule and message as a verifying run's
            check_rewind(repo, base, target, allow_rewind=allow_rewind)
        return Decision(target)
    signers = _signers(blocks, subdir)
    if not signers:
        where = f"{subdir}/fleet.yaml" if subdir else "fleet.yaml"
        raise VerifyError(
            "signed commits are required (--require-signed, or this host's pins file) but "
            f"{where} at {target[:12]} lists no verify.signers",
            commit=target,
        )
    from reconciler import gitverify  # only runs that verify need keys, gpg and ssh-keygen

    pins = gitverify.read_pins(pins_path)
    result = gitverify.verify_range(repo, base, target, signers, pins, allow_rewind=allow_rewind)
    return Decision(
        target,
        result.commits,
        tuple(sorted(set(result.signers.values()))),
        verification=True,
    )
