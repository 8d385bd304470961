"""The run journal: ``runs.jsonl`` in the state dir, one JSON object per applied run.

Format (one line each, ``format_version`` 1)::

    {"format_version": 1, "host": "www", "commit": "3f2c…" | null, "dry_run": false,
     "started": "2024-05-01T10:00:00+00:00", "finished": "2024-05-01T10:00:03+00:00",
     "kinds": ["ipset", "nic"], "ok": true,
     "changes": [{"address": "ipset/mgmt", "kind": "ipset", "action": "update", "ops": 2,
                  "drift": true}],
     "refused": ["ipset/old"],
     "errors": [{"address": "nic/eth0", "message": "..."}]}

Only applied runs are recorded: a ``--dry-run`` never writes to the host, the journal
included. ``kinds`` are the kinds the run reconciled (``--only``); ``ok`` is the run's
verdict (nothing failed, nothing refused, everything converged). A run limited to some
resources (``--target``) also has ``"targets": ["ipset/mgmt"]``: it converged no kind as a
whole, so it is never a drift baseline.

**Drift** is a change the desired state does not explain: someone changed the host by hand
and the run put it back. A change is flagged ``"drift": true`` when the run's commit equals
the commit of the last run that *converged that kind* (covered it, with no error or refusal
for it). Comparing per kind keeps a ``--only backup`` run at a commit from turning the next
full run's ipset changes into "drift", and a failed run's leftovers, retried at the same
commit, are not drift either. Without a commit (a plain directory, not git) nothing can be
called drift. Backup changes are never drift: new archives and expiry are driven by the
clock, not by the commit (``SCHEDULED_KINDS``).

Durability: a record is appended with one ``write`` of one line, then ``fsync``; the file is
never rewritten or truncated. A crash mid-write can leave a truncated last line: reading
skips it with a warning and keeps every other record, and the next append first ends that
line so the new record starts on a fresh one (the fragment then reads as a corrupt line,
reported by its line number and skipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from reconciler import atomicfile
from reconciler import kinds as registry
from reconciler.errors import StateError
from reconciler.safefs import open_state_file, read_state_file

FORMAT_VERSION = 1
JOURNAL_NAME = "runs.jsonl"
#: Kinds whose changes follow the clock (archive schedule, retention), never drift.
SCHEDULED_KINDS = frozenset(k.name for k in registry.KINDS if k.scheduled)
#: Kinds assumed for old records that did not list theirs (runs then reconciled every kind).
ALL_KINDS = registry.NAMES
#: The kind of an error address's head: a kind's own name, or a head it claims (``node``).
_ERROR_KIND = {h: k.name for k in registry.KINDS for h in (k.name, *k.error_heads)}


class JournalProblem(NamedTuple):
    """A journal line that was skipped: its 1-based line number and why."""

    line: int
    message: str
    truncated: bool = False  # the unterminated last line of the file (a crash mid-write)

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class JournalContents:
    """Every readable record, oldest first, and every line that had to be skipped."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[JournalProblem] = field(default_factory=list)


class Journal:
    """Append-only access to one ``runs.jsonl`` file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, fsynced; raises StateError if it cannot be written.

        If the file does not end with a newline (a crash cut the previous write short), a
        newline is written first, in the same ``write``, so the new record is never glued to
        the fragment. The existing content is never modified.
        """
        data = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            # Never through a symlink: appending to whatever it points at would be ours.
            fd = open_state_file(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise StateError(f"cannot open the run journal {self.path}: {e.strerror}") from e
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            while view:  # O_APPEND: a short write's remainder still lands at the end
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except OSError as e:
            raise StateError(f"cannot write the run journal {self.path}: {e.strerror}") from e
        finally:
            os.close(fd)
        if size == 0:
            # The new file's directory entry must survive too.
            atomicfile.fsync_dir(self.path.parent)

    def read(self) -> JournalContents:
        """Every record, skipping (and reporting) unreadable lines; a missing file is empty.

        Raises StateError only when the file exists but cannot be read at all.
        """
        try:
            data = read_state_file(self.path)
        except StateError as e:
            raise StateError(f"cannot read the run journal: {e.message}") from e
        return JournalContents() if data is None else parse(data)


def parse(data: bytes) -> JournalContents:
    """Parse journal bytes; see :meth:`Journal.read`."""
    out = JournalContents()
    lines = data.split(b"\n")
    terminated = lines[-1] == b""
    if terminated:
        lines.pop()
    for i, raw in enumerate(lines, start=1):
        last_unterminated = not terminated and i == len(lines)
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if last_unterminated:
                out.problems.append(
                    JournalProblem(
                        i,
                        "incomplete last record (a run was interrupted while writing it); skipped",
                        truncated=True,
                    )
                )
            else:
                reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                out.problems.append(JournalProblem(i, f"not a valid record ({reason}); skipped"))
            continue
        if not isinstance(record, dict):
            out.problems.append(JournalProblem(i, "not a JSON object; skipped"))
            continue
        out.records.append(record)
    return out


def change_kind(change: dict[str, Any]) -> str:
    """The kind of a recorded change (older records only have the address)."""
    kind = change.get("kind")
    if isinstance(kind, str):
        return kind
    return str(change.get("address", "")).split("/", 1)[0]


def error_kind(error: dict[str, Any]) -> str:
    """The kind an error is about, from its address (``node/kvm1`` is vm's); ``run`` for
    run-wide errors."""
    head = str(error.get("address") or "").split("/", 1)[0]
    return _ERROR_KIND.get(head, "run")


def run_kinds(record: dict[str, Any]) -> list[str]:
    """The kinds a recorded run reconciled."""
    kinds = record.get("kinds")
    if isinstance(kinds, list):
        return [str(k) for k in kinds]
    return list(ALL_KINDS)


def run_ok(record: dict[str, Any]) -> bool:
    """The recorded verdict of a run (older records: no errors means ok)."""
    ok = record.get("ok")
    if isinstance(ok, bool):
        return ok
    return not record.get("errors")


def _list_of_dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def changes_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The recorded changes of a run, ignoring malformed entries."""
    return _list_of_dicts(record.get("changes"))


def errors_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The recorded errors of a run, ignoring malformed entries."""
    return _list_of_dicts(record.get("errors"))


def converged_kinds(record: dict[str, Any]) -> set[str]:
    """The kinds a run left in the desired state: covered, with no error and no refusal.
    A run limited to some resources (``targets``) converged no kind as a whole."""
    if record.get("targets"):
        return set()
    bad = {error_kind(e) for e in errors_of(record)}
    refused = record.get("refused")
    if isinstance(refused, list):
        bad |= {str(a).split("/", 1)[0] for a in refused}
    if "run" in bad:  # a run-wide error: nothing can be trusted as converged
        return set()
    return set(run_kinds(record)) - bad


def baselines(records: Iterable[dict[str, Any]]) -> dict[str, str | None]:
    """Per kind, the commit of the last run that converged it (the drift baseline)."""
    out: dict[str, str | None] = {}
    for rec in records:
        if rec.get("dry_run"):
            continue
        commit = rec.get("commit")
        for kind in converged_kinds(rec):
            out[kind] = commit if isinstance(commit, str) else None
    return out


def is_drift(kind: str, commit: str | None, baseline: dict[str, str | None]) -> bool:
    """Whether a change of ``kind`` applied at ``commit`` is drift (see the module doc)."""
    if commit is None or kind in SCHEDULED_KINDS:
        return False
    return baseline.get(kind) == commit


def last_success(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The record of the last run that succeeded: its commit is the applied commit."""
    for i in range(len(records) - 1, -1, -1):
        rec: dict[str, Any] = records[i]
        if not rec.get("dry_run") and run_ok(rec):
            return rec
    return None


class DriftEvent(NamedTuple):
    """One change flagged as drift: when, at which commit, which resource and how."""

    finished: str
    commit: str | None
    address: str
    action: str
    ops: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "finished": self.finished,
            "commit": self.commit,
            "address": self.address,
            "action": self.action,
            "ops": self.ops,
        }


def drift_events(records: Iterable[dict[str, Any]]) -> list[DriftEvent]:
    """Every change flagged as drift in ``records``, oldest first."""
    out = []
    for rec in records:
        for ch in changes_of(rec):
            if ch.get("drift") is True:
                ops = ch.get("ops")
                out.append(
                    DriftEvent(
                        finished=str(rec.get("finished", "")),
                        commit=rec.get("commit") if isinstance(rec.get("commit"), str) else None,
                        address=str(ch.get("address", "?")),
                        action=str(ch.get("action", "?")),
                        ops=ops if isinstance(ops, int) else 0,
                    )
                )
    return out


def run_record(
    *,
    host: str,
    commit: str | None,
    started: str,
    finished: str,
    kinds: Sequence[str],
    ok: bool,
    changes: list[dict[str, Any]],
    refused: list[str],
    errors: list[dict[str, Any]],
    targets: Sequence[str] = (),
) -> dict[str, Any]:
    """One journal line (the format in the module docstring) for an applying run;
    ``targets`` only for a run limited to some resources (``--target``)."""
    record: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "host": host,
        "commit": commit,
        "dry_run": False,
        "started": started,
        "finished": finished,
        "kinds": list(kinds),
        "ok": ok,
        "changes": changes,
        "refused": refused,
        "errors": errors,
    }
    if targets:
        record["targets"] = list(targets)
    return record


def refusal_record(
    host: str, kinds: Sequence[str], commit: str | None, message: str
) -> dict[str, Any]:
    """The record of a run that refused its target (a rewind, a bad signature): nothing was
    applied; ``commit`` is the refused one, the error's address ``source``."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    return run_record(
        host=host,
        commit=commit,
        started=now,
        finished=now,
        kinds=kinds,
        ok=False,
        changes=[],
        refused=[],
        errors=[{"address": "source", "message": message}],
    )


def parse_time(value: Any) -> datetime | None:
    """A recorded ISO timestamp as an aware datetime, or None if missing or malformed."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
