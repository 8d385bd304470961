"""What a commit changes in a host's backup sets, without the host: ``set_field`` ops."""

from __future__ import annotations

from typing import Any

from reconciler.fielddiff import Memo, settings_changes
from reconciler.model import HostDesired
from reconciler.plan import Change


def _backup_sets(desired: HostDesired) -> dict[str, Any]:
    """Backup sets with the fleet's ``tarsnap:`` defaults folded into the sets that use them
    (a changed key file changes those sets)."""
    tarsnap = desired.raw.get("tarsnap") or {}
    out = {}
    for name, spec in (desired.raw.get("backups") or {}).items():
        merged = dict(spec)
        if spec.get("backend") == "tarsnap":
            merged["tarsnap"] = {**tarsnap, **(spec.get("tarsnap") or {})}
        out[name] = merged
    return out


def changes(before: HostDesired, after: HostDesired, memo: Memo | None = None) -> list[Change]:
    """Each backup set's settings, from ``before`` to ``after``."""
    return settings_changes("backup", "set", _backup_sets(before), _backup_sets(after))
