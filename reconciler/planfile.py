"""Saved plans: ``reconcile --dry-run --out FILE`` and ``reconcile --plan FILE``.

As Terraform's ``plan -out`` / ``apply PLAN``: a reviewed plan is applied exactly, or not at
all. The file is the JSON plan document (the same as ``--output json``) plus
``made_against``, what it was made against::

    {"format_version": 1, "host": "www", "commit": "3f2c…", "changes": [...], ...,
     "made_against": {"format_version": 1, "host": "www", "commit": "3f2c…",
                      "digest": null, "kinds": ["ipset", "nic"], "targets": [],
                      "force": false, "allow_empty": false, "repo": "/srv/desired-state",
                      "path": "", "created": "2026-11-28T10:00:00+00:00",
                      "tool_version": "0.1.0"}}

``digest`` (:func:`reconciler.desired.content_digest`) is recorded when the commit does not
say what the content was: a plain directory (no commit) or a dirty work tree
(``<hash>+dirty``). Applying re-plans the same kinds and targets with the same options and
compares (:func:`stale_reasons`): the commit, the digest, and every change must be
identical, with no change or error the saved plan does not have; anything else makes the
plan stale, and nothing is applied.

Pure apart from reading and writing the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import __version__, atomicfile
from reconciler.errors import PlanFileError
from reconciler.plan import FORMAT_VERSION
from reconciler.render.text import op_line

#: A saved plan larger than this is not read (a 65,536-member load is ~5 MB).
MAX_BYTES = 256 * 1024 * 1024
MADE_AGAINST = "made_against"


@dataclass(frozen=True)
class SavedPlan:
    """A saved plan as read back: the plan document and what it was made against."""

    path: Path
    doc: dict[str, Any]
    host: str
    commit: str | None
    digest: str | None
    kinds: tuple[str, ...]
    targets: tuple[str, ...]
    force: bool
    allow_empty: bool


def made_against(
    *,
    host: str,
    commit: str | None,
    digest: str | None,
    kinds: Sequence[str],
    targets: Sequence[str],
    force: bool,
    allow_empty: bool,
    repo: str,
    path: str,
) -> dict[str, Any]:
    """The ``made_against`` object of a saved plan (see the module docstring)."""
    return {
        "format_version": FORMAT_VERSION,
        "host": host,
        "commit": commit,
        "digest": digest,
        "kinds": list(kinds),
        "targets": list(targets),
        "force": force,
        "allow_empty": allow_empty,
        "repo": repo,
        "path": path,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool_version": __version__,
    }


def write(path: Path, plan: dict[str, Any], against: dict[str, Any]) -> None:
    """Write the plan document with ``against`` as ``made_against`` to ``path``,
    atomically and readable by its owner only (0600: a plan names the host's resources).
    PlanFileError when it cannot be written."""
    doc = {**plan, MADE_AGAINST: against}
    try:
        atomicfile.write_atomic(path, json.dumps(doc, indent=2) + "\n", mode=0o600)
    except OSError as e:
        raise PlanFileError(f"cannot write the plan to {path}: {e.strerror or e}") from e


def read(path: Path) -> SavedPlan:
    """The saved plan in ``path``; PlanFileError when it cannot be read or is not a plan
    file ``--out`` wrote (of this format)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise PlanFileError(f"cannot read the plan {path}: {e.strerror or e}") from e
    if len(data) > MAX_BYTES:
        raise PlanFileError(f"{path}: larger than {MAX_BYTES} bytes: not a saved plan")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanFileError(f"{path}: not a saved plan (not JSON: {e})") from e
    made = doc.get(MADE_AGAINST) if isinstance(doc, dict) else None
    if not isinstance(made, dict) or not isinstance(doc.get("changes"), list):
        raise PlanFileError(
            f"{path}: not a saved plan (no {MADE_AGAINST}: write one with "
            "reconcile --dry-run --out FILE)"
        )
    if made.get("format_version") != FORMAT_VERSION or doc.get("format_version") != FORMAT_VERSION:
        raise PlanFileError(
            f"{path}: a saved plan of format {made.get('format_version')!r}; this version "
            f"({__version__}) reads format {FORMAT_VERSION}"
        )
    try:
        return SavedPlan(
            path=path,
            doc=doc,
            host=_str(made, "host"),
            commit=_opt_str(made, "commit"),
            digest=_opt_str(made, "digest"),
            kinds=tuple(_str_list(made, "kinds")),
            targets=tuple(_str_list(made, "targets")),
            force=made.get("force") is True,
            allow_empty=made.get("allow_empty") is True,
        )
    except ValueError as e:
        raise PlanFileError(f"{path}: not a saved plan ({MADE_AGAINST}: {e})") from e


def _str(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise ValueError(f"{key} is not a string")
    return v


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{key} is not a string or null")
    return v


def _str_list(d: dict[str, Any], key: str) -> list[str]:
    v = d.get(key)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{key} is not a list of strings")
    return list(v)


def stale_reasons(
    saved: SavedPlan, fresh: dict[str, Any], *, commit: str | None, digest: str | None
) -> list[str]:
    """Why ``saved`` is not what a fresh plan (the dict ``fresh``, made now with the same
    kinds, targets and options, at ``commit``, whose content digest is ``digest``) would
    do: the commit or the content moved, a resource's change is not identical, a change
    or error the saved plan does not have. [] when the saved plan is exactly what would
    be done now."""
    if saved.commit != commit:
        return [
            f"it was made at commit {_short(saved.commit)}, and the desired state is now at "
            f"{_short(commit)}"
        ]
    if saved.digest is not None and saved.digest != digest:
        return ["the desired state's files changed since it was made (their digest differs)"]
    out: list[str] = []
    before = {c["address"]: c for c in saved.doc["changes"] if isinstance(c, dict)}
    now = {c["address"]: c for c in fresh["changes"]}
    for address, old in before.items():
        new = now.get(address)
        if new is None:
            out.append(
                f"{address}: the saved plan has a change ({old.get('action')}), and a "
                "fresh plan has none"
            )
        elif new != old:
            out.append(f"{address}: a fresh plan differs from the saved one ({_diff(old, new)})")
    for address, new in now.items():
        if address not in before:
            out.append(
                f"{address}: a fresh plan has a change ({new['action']}) that the "
                "saved plan does not"
            )
    if not out and list(before) != list(now):
        out.append("a fresh plan orders the changes differently")
    out += [f"{e['address']}: {e['message']}" for e in fresh["errors"]]
    return out


def _short(commit: str | None) -> str:
    if commit is None:
        return "no commit (a plain directory)"
    head, plus, rest = commit.partition("+")
    return head[:12] + plus + rest


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two change dicts, in a few words: the ops each alone has, else
    the keys that differ."""
    old_ops = [json.dumps(o, sort_keys=True) for o in old.get("ops", [])]
    new_ops = [json.dumps(o, sort_keys=True) for o in new.get("ops", [])]
    parts: list[str] = []
    if old.get("action") != new.get("action"):
        parts.append(f"action {old.get('action')} -> {new.get('action')}")
    gone = [o for o in old_ops if o not in new_ops]
    added = [o for o in new_ops if o not in old_ops]
    for label, ops in (("now also", added), ("no longer", gone)):
        if ops:
            more = f" and {len(ops) - 3} more" if len(ops) > 3 else ""
            parts.append(f"{label}: {', '.join(_op_text(o) for o in ops[:3])}{more}")
    if not parts:
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        parts.append(f"differs in {', '.join(keys)}")
    return "; ".join(parts)


def _op_text(op_json: str) -> str:
    return op_line(json.loads(op_json))
