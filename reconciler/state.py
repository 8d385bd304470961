"""The state directory: what this tool owns on the host, and a record of every run.

Layout (all JSON, written atomically with write-to-temp + fsync + rename, so a crash never
leaves a half-written file):

``ours.json``
    ``{"ipset": {"mgmt": {"created": "...", "rules": [[binary, chain, arg, ...], ...]}}}``:
    resources this tool created (and rules it inserted). Only these may be pruned when they
    leave git; anything else on the host is never touched. A record is written *before* the
    write that creates what it records, with an ``"intent"`` saying what is being done
    ("creating set mgmt"), and the intent is dropped once that write is done
    (:meth:`StateDir.intend`, :meth:`StateDir.confirm`): a run killed in between leaves a
    record of something that may not exist (the next run forgets it when it does not),
    never something of ours without a record. A temporary set (a rebuild's) is recorded
    with ``"temporary_for": "<set>"``. The same records say what is in flight for the other
    kinds: ``"backup": {"<archive>": {"set": "<set>", "intent": "creating archive ..."}}``
    while an archive is being created, and while its truncated ``<archive>.part`` is ours
    (:mod:`reconciler.kinds.backup.provider`); ``"vm": {"<vm>": {"uuid", "from", "to",
    "how", "intent": "moving VM ..."}}`` while a VM is being moved
    (:mod:`reconciler.kinds.vm.moving`).
``source.json``
    ``{"commit": "<hash>", "source": "<path or URL>", "applied": "<time>"}``: the commit the
    last applied run used; the base of the rewind check and of commit verification.
``source/``
    the clone of a ``--repo`` URL (a cache: removing it costs one clone).
``runs.jsonl``
    the run journal, one JSON object per applied run: commit, start/end, the changes
    applied (drift flagged), errors. Append-only; see :mod:`reconciler.journal`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import atomicfile
from reconciler.errors import StateError
from reconciler.journal import JOURNAL_NAME, Journal, JournalContents
from reconciler.safefs import check_private_dir, read_state_file

INTENT = "intent"
"""The key of an ownership record that says what is being created, until it is done."""


class StateDir:
    """Access to one state directory. Creating the object creates the directory (mode 0700)."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        """Open ``path``; with ``create=False`` it must already exist (else StateError)."""
        self.path = path
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as e:
                raise StateError(f"cannot create state directory {path}: {e.strerror}") from e
        elif not path.is_dir():
            what = "is not a directory" if path.exists() else "does not exist"
            raise StateError(
                f"state directory {path} {what}: no run has been recorded there "
                "(check --state-dir or $RECONCILER_STATE_DIR)"
            )
        check_private_dir(path)
        self._ours: dict[str, dict[str, dict[str, Any]]] | None = None
        self.journal = Journal(path / JOURNAL_NAME)

    @property
    def ours_file(self) -> Path:
        """Path of the ownership record."""
        return self.path / "ours.json"

    def ours(self, kind: str) -> dict[str, dict[str, Any]]:
        """The resources of ``kind`` this tool owns, name -> record (a copy)."""
        return {k: dict(v) for k, v in self._load().get(kind, {}).items()}

    def check_writable(self) -> None:
        """StateError unless a file can be created in the state dir now (a read-only or
        full filesystem): checked before anything is applied."""
        probe = self.path / f".write-probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as e:
            raise StateError(
                f"state directory {self.path} cannot be written ({e.strerror}): nothing was "
                "applied, because what this run creates could not be recorded as ours"
            ) from e

    def _write(self, path: Path, text: str) -> None:
        try:
            atomicfile.write_atomic(path, text)
        except OSError as e:
            raise StateError(f"cannot write {path}: {e.strerror}") from e

    def set_ours(self, kind: str, records: dict[str, dict[str, Any]]) -> None:
        """Replace the ownership records of ``kind`` and write the file atomically
        (StateError if it cannot be written)."""
        data = self._load()
        data[kind] = records
        self._write(self.ours_file, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def intend(
        self, kind: str, name: str, intent: str | None, record: Mapping[str, Any]
    ) -> None:
        """Record ``record`` as the ownership record of ``name`` (replacing any), with
        ``intent`` (what is about to be done: "creating set mgmt"; None: no intent), written
        and fsynced before this returns: call it before the write that creates what it
        records. StateError if it cannot be written (then do not make that write)."""
        records = self.ours(kind)
        new = {k: v for k, v in record.items() if k != INTENT}
        if intent is not None:
            new[INTENT] = intent
        records[name] = new
        self.set_ours(kind, records)

    def confirm(self, kind: str, name: str) -> None:
        """The write announced by :meth:`intend` for ``name`` is done: drop the intent."""
        records = self.ours(kind)
        record = records.get(name)
        if record is not None and INTENT in record:
            del record[INTENT]
            self.set_ours(kind, records)

    def forget(self, kind: str, name: str) -> None:
        """Drop the ownership record of ``name`` (it was destroyed, or the write announced
        for it was refused); nothing when there is none."""
        records = self.ours(kind)
        if records.pop(name, None) is not None:
            self.set_ours(kind, records)

    @property
    def source_file(self) -> Path:
        """Path of the record of the last applied commit (the base for verification)."""
        return self.path / "source.json"

    def applied_commit(self) -> str | None:
        """The commit the last applied run used (git sources), None before the first one.

        Raises StateError when ``source.json`` is corrupt: silently forgetting it would turn
        off the rewind check.
        """
        raw = read_state_file(self.source_file)
        if raw is None:
            return None
        try:
            data = json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as e:
            data = None
            detail = f"line {e.lineno}: {e.msg}"
        else:
            detail = "expected an object with a 40-hex 'commit'"
        commit = data.get("commit") if isinstance(data, dict) else None
        if not (isinstance(commit, str) and len(commit) == 40):
            raise StateError(
                f"{self.source_file} is corrupt ({detail}); it records the last applied "
                "commit, the base of the rewind check and of signature verification. Remove "
                "it to accept the next target as a first run."
            )
        return commit

    def set_applied_commit(self, commit: str, source: str) -> None:
        """Record ``commit`` (from ``source``: a path or URL) as applied, atomically."""
        record = {
            "commit": commit,
            "source": source,
            "applied": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._write(self.source_file, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def append_run(self, record: dict[str, Any]) -> None:
        """Append one run record to ``runs.jsonl`` (one line, fsynced); StateError if not."""
        self.journal.append(record)

    def runs(self) -> JournalContents:
        """Every readable run record, oldest first, and the journal lines that were skipped."""
        return self.journal.read()

    def ours_all(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every ownership record, kind -> name -> record (a copy); StateError if corrupt."""
        return {k: self.ours(k) for k in self._load()}

    def _load(self) -> dict[str, dict[str, dict[str, Any]]]:
        if self._ours is None:
            raw = read_state_file(self.ours_file)
            if raw is None:
                self._ours = {}
                return self._ours
            try:
                data = json.loads(raw.decode("utf-8", errors="replace"))
            except json.JSONDecodeError as e:
                raise StateError(
                    f"{self.ours_file} is corrupt (line {e.lineno}: {e.msg}); it records which "
                    "resources reconciler created. Restore it from backup, or remove it to "
                    "forget ownership (nothing will then be pruned)."
                ) from e
            if not isinstance(data, dict):
                raise StateError(f"{self.ours_file} is corrupt: expected a JSON object")
            for kind, records in data.items():
                # Checked here so a hand-edited file is a clear error, not an AttributeError.
                if not isinstance(records, dict) or not all(
                    isinstance(r, dict) for r in records.values()
                ):
                    raise StateError(
                        f"{self.ours_file} is corrupt: {kind!r} must map names to objects"
                    )
            self._ours = data
        return self._ours
