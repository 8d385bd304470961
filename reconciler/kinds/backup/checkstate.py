"""When each backup set was last checked: ``backup-checks.json`` in the state dir.

Neither restic nor tarsnap records that a check ran, so reconciler does, one record per set
whose desired state has ``check:``::

    {"etc": {"at": "2024-05-01T03:00:00+00:00", "ok": true, "every": "30d",
             "what": "restic check --read-data-subset=5%", "message": "no errors were found"}}

``at`` is the moment the run planned (the same "now" its archive names carry), so the
verification read after apply sees the check as done. The file is replaced atomically
(:mod:`reconciler.atomicfile`) and read without following a symlink, as a plain file of
ours (:mod:`reconciler.safefs`), like every state file. A dry-run never writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import atomicfile
from reconciler.errors import StateError
from reconciler.kinds.backup import CHECKS_FILE
from reconciler.safefs import read_state_file

FILE_NAME = CHECKS_FILE
#: The largest check record file read (a few hundred bytes per set).
MAX_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class CheckRecord:
    """The last check of one set: when (aware UTC), whether it passed, what ran, what it
    said, and the set's ``check.every`` at the time."""

    at: datetime
    ok: bool
    what: str = ""
    message: str = ""
    every: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "at": self.at.isoformat(),
            "ok": self.ok,
            "what": self.what,
            "message": self.message,
            "every": self.every,
        }

    @classmethod
    def from_dict(cls, data: Any) -> CheckRecord:
        """Parse one record; ``ValueError`` when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("a record is an object")
        at = datetime.fromisoformat(str(data.get("at")))
        if at.tzinfo is None:
            raise ValueError("'at' has no time zone")
        at = at.astimezone(UTC)
        ok = data.get("ok")
        if not isinstance(ok, bool):
            raise ValueError("'ok' is not a boolean")
        texts = {k: data.get(k, "") for k in ("what", "message", "every")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise ValueError("'what', 'message' and 'every' are strings")
        return cls(at=at, ok=ok, **texts)


def path_in(state_dir: Path) -> Path:
    """The check record file of ``state_dir``."""
    return state_dir / FILE_NAME


def load(state_dir: Path) -> dict[str, CheckRecord]:
    """Every set's last check; {} when no check was ever recorded.

    Raises StateError when the file is a symlink, not ours, too large or corrupt (the
    message says how to start over).
    """
    path = path_in(state_dir)
    raw = read_state_file(path, MAX_SIZE)
    if raw is None:
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return {str(name): CheckRecord.from_dict(rec) for name, rec in data.items()}
    except (UnicodeDecodeError, ValueError) as e:
        raise StateError(
            f"{path} is corrupt ({e}); it records when each backup set was last checked. "
            "Remove it: every set with check: is then checked on the next run."
        ) from None


def save(state_dir: Path, records: Mapping[str, CheckRecord]) -> None:
    """Replace the file with ``records``, atomically (StateError if it cannot be written)."""
    path = path_in(state_dir)
    text = json.dumps({n: records[n].to_dict() for n in sorted(records)}, indent=2) + "\n"
    try:
        atomicfile.write_atomic(path, text)
    except OSError as e:
        raise StateError(f"cannot write {path}: {e.strerror}") from e
