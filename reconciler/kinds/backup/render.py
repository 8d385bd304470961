"""How backup ops read in the text plan."""

from __future__ import annotations

from typing import Any

from reconciler.kinds.base import OpLine


def _create_archive(a: dict[str, Any]) -> str:
    excl = f" excluding {', '.join(a['exclude'])}" if a.get("exclude") else ""
    return f"+ archive {a['archive']} ({', '.join(a['paths'])}){excl}"


OP_LINES: dict[str, OpLine] = {
    "create_archive": _create_archive,
    "prune_repository": lambda a: (
        f"- prune {a['repository']} (frees the expired snapshots' data)"
    ),
    "delete_archive": lambda a: f"- archive {a['archive']}: {a['reason']}",
}
