"""How backup ops read in the text plan."""

from __future__ import annotations

from typing import Any

from reconciler.kinds.base import OpLine


def _create_archive(a: dict[str, Any]) -> str:
    excl = f" excluding {', '.join(a['exclude'])}" if a.get("exclude") else ""
    return f"+ archive {a['archive']} ({', '.join(a['paths'])}){excl}"


def _check_repository(a: dict[str, Any]) -> str:
    subset = f" --read-data-subset={a['read_data_subset']}" if a.get("read_data_subset") else ""
    return f"= check repository (restic check{subset}): {a['reason']}"


def _check_archive(a: dict[str, Any]) -> str:
    return f"= check archive {a['archive']} (tarsnap -t, read back): {a['reason']}"


OP_LINES: dict[str, OpLine] = {
    "create_archive": _create_archive,
    "check_repository": _check_repository,
    "check_archive": _check_archive,
    "prune_repository": lambda a: (
        f"- prune {a['repository']} (frees the expired snapshots' data)"
    ),
    "delete_archive": lambda a: f"- archive {a['archive']}: {a['reason']}",
}
