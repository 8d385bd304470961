"""Semantic checks of ``backups:`` beyond the schema."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from reconciler.errors import Problem
from reconciler.kinds.backup.duration import DURATION, parse_duration
from reconciler.yamlsrc import YamlDoc, YPath

_KEEP_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def check(doc: YamlDoc, name: str, spec: dict[str, Any]) -> list[Problem]:
    """Durations longer than zero, a keep policy that keeps something, no restic-only
    keys on a tarsnap set."""
    base: YPath = ("backups", name)
    out: list[Problem] = []
    for key in ("every",):
        val = spec.get(key)
        if isinstance(val, str) and DURATION.match(val) and parse_duration(val) <= timedelta(0):
            out.append(doc.problem((*base, key), f"must be longer than zero, got {val!r}"))
    keep = spec.get("keep")
    if isinstance(keep, dict):
        counts = [keep.get(k, 0) for k in _KEEP_COUNTS]
        within = keep.get("within")
        keeps_within = (
            isinstance(within, str)
            and bool(DURATION.match(within))
            and parse_duration(within) > timedelta(0)
        )
        if all(isinstance(c, int) and c == 0 for c in counts) and not keeps_within:
            out.append(
                doc.problem(
                    (*base, "keep"),
                    "refusing a policy that keeps nothing: set last, hourly, daily, weekly, "
                    "monthly, yearly or within",
                    key=True,
                )
            )
    if spec.get("backend") == "tarsnap":
        for key in ("repository", "password_file", "prune"):
            if key in spec:
                out.append(
                    doc.problem((*base, key), f"{key!r} only applies to backend restic", key=True)
                )
    return out
