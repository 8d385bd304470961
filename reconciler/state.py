"""The state directory: what this tool owns on the host, and a record of every run.

Layout (all JSON, written atomically with write-to-temp + fsync + rename, so a crash never
leaves a half-written file):

``ours.json``
    ``{"ipset": {"mgmt": {"created": "...", "rules": [[binary, chain, arg, ...], ...]}}}``:
    resources this tool created (and rules it inserted). Only these may be pruned when they
    leave git; anything else on the host is never touched.
``runs.jsonl``
    one JSON object per applied run: commit, start/end, the changes applied, errors.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from reconciler.errors import StateError


class StateDir:
    """Access to one state directory. Creating the object creates the directory (mode 0700)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(f"cannot create state directory {path}: {e.strerror}") from e
        self._ours: dict[str, dict[str, dict[str, Any]]] | None = None

    @property
    def ours_file(self) -> Path:
        """Path of the ownership record."""
        return self.path / "ours.json"

    def ours(self, kind: str) -> dict[str, dict[str, Any]]:
        """The resources of ``kind`` this tool owns, name -> record (a copy)."""
        return {k: dict(v) for k, v in self._load().get(kind, {}).items()}

    def set_ours(self, kind: str, records: dict[str, dict[str, Any]]) -> None:
        """Replace the ownership records of ``kind`` and write the file atomically."""
        data = self._load()
        data[kind] = records
        _atomic_write(self.ours_file, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def append_run(self, record: dict[str, Any]) -> None:
        """Append one run record to ``runs.jsonl`` (one line, flushed and fsynced)."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path / "runs.jsonl", "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _load(self) -> dict[str, dict[str, dict[str, Any]]]:
        if self._ours is None:
            try:
                text = self.ours_file.read_text(encoding="utf-8")
            except FileNotFoundError:
                self._ours = {}
                return self._ours
            except OSError as e:
                raise StateError(f"cannot read {self.ours_file}: {e.strerror}") from e
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise StateError(
                    f"{self.ours_file} is corrupt (line {e.lineno}: {e.msg}); it records which "
                    "resources reconciler created. Restore it from backup, or remove it to "
                    "forget ownership (nothing will then be pruned)."
                ) from e
            if not isinstance(data, dict):
                raise StateError(f"{self.ours_file} is corrupt: expected a JSON object")
            self._ours = data
        return self._ours


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
