"""What the kernel's dump of each set was last found to hold: ``ipset-dumps.json`` in the
state dir (``docs/cli.md``, the state dir's entries).

Turning the dump of a 65,536-member set into strings is most of a no-op run's own work
(the README's Performance section has the figures). A run that writes records, per set,
the digest of the dump's entry bytes (:attr:`LiveSet.dump_digest`) and the digest of the
desired members (:attr:`IpsetSpec.members_digest`) they were found equal to, after its
verify re-read. A later read whose dump has the same digest, for a desired state with the
same members digest, takes the desired members as the live ones without decoding: the
decoding is a pure function of those bytes (and of this reconciler's version, which the
members digest includes), so it would give them again. Anything else is decoded.

    {"version": 1, "reconciler": "<reconciler version>",
     "sets": {"mgmt": {"dump": "<sha-256 hex>", "members": "<sha-256 hex>"}}}

A memo written by another reconciler version (:func:`reconciler.cache.reconciler_version`,
which changes with any change to the code: the decoder, the list parser) is ignored.

A dry-run only reads it. It is read without following a symlink and replaced atomically,
like every state file; a memo that cannot be read or is not of this shape is ignored (it
only saves time) and rewritten by the next run that writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from reconciler import atomicfile
from reconciler.errors import StateError
from reconciler.safefs import read_state_file

FILE_NAME = "ipset-dumps.json"
#: The largest memo read: ~150 bytes a set.
MAX_SIZE = 1024 * 1024
_DIGEST = re.compile(r"[0-9a-f]{64}")

#: A set's memo: (the dump's digest, the desired members' digest).
Memo = Mapping[str, tuple[str, str]]


def _version() -> str:
    from reconciler.cache import reconciler_version

    return reconciler_version()


def load(state_dir: Path) -> dict[str, tuple[str, str]]:
    """The memo of every set; {} when there is none, or it cannot be read or trusted, or
    another reconciler version wrote it."""
    try:
        raw = read_state_file(state_dir / FILE_NAME, MAX_SIZE)
    except StateError:
        return {}
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    ours = isinstance(data, dict) and data.get("version") == 1
    sets = data.get("sets") if ours and data.get("reconciler") == _version() else None
    if not isinstance(sets, dict):
        return {}
    out: dict[str, tuple[str, str]] = {}
    for name, entry in sets.items():
        if not isinstance(entry, dict):
            continue
        dump, members = entry.get("dump"), entry.get("members")
        if all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in (dump, members)):
            out[name] = (str(dump), str(members))
    return out


def save(state_dir: Path, memo: Memo) -> None:
    """Replace the memo with ``memo``, atomically (StateError if it cannot be written)."""
    path = state_dir / FILE_NAME
    sets = {n: {"dump": memo[n][0], "members": memo[n][1]} for n in sorted(memo)}
    try:
        text = json.dumps({"version": 1, "reconciler": _version(), "sets": sets})
        atomicfile.write_atomic(path, text + "\n")
    except OSError as e:
        raise StateError(f"cannot write {path}: {e.strerror}") from e
