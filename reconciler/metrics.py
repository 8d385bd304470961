"""Prometheus textfile metrics for node_exporter's textfile collector.

Everything is derived from the run journal (:mod:`reconciler.journal`), so the metrics and
``reconcile status`` can never disagree. Written after every applied run (dry-runs write
nothing), atomically: a temp file in the same directory (named without ``.prom``, which the
collector ignores), fsynced, made world-readable (node_exporter runs as its own user), then
renamed over the target. A scrape therefore sees the old file or the new one, never half.

Semantics (``kind`` is ``ipset``, ``nic``, ``backup``, ``vm``; ``run`` for run-wide errors):

* ``reconciler_last_run_timestamp_seconds`` (gauge): when the last run finished.
* ``reconciler_last_run_success`` (gauge): 1 if the last run applied and verified
  everything, else 0.
* ``reconciler_last_run_duration_seconds`` (gauge).
* ``reconciler_last_success_timestamp_seconds`` (gauge): when the last run that succeeded
  finished; absent until one succeeded.
* ``reconciler_applied_commit_info{commit}`` (gauge, always 1): the commit of the last
  successful run; absent until one succeeded or when the source is not git.
* ``reconciler_last_run_changes{kind}``, ``reconciler_last_run_drift_changes{kind}``,
  ``reconciler_last_run_errors{kind}`` (gauges): counts in the last run only.
* ``reconciler_changes_total{kind}``, ``reconciler_drift_changes_total{kind}``,
  ``reconciler_errors_total{kind}`` (counters): sums over every run in the journal. The
  journal is append-only, so they only go up; a wiped state dir is a counter reset, which
  ``rate()``/``increase()`` handle.
* ``reconciler_last_run_not_converged{kind}`` (gauge): resources of the last run that were
  applied and still differed on the re-read ("did not converge"), per kind; and
  ``reconciler_resource_not_converged{kind,address}`` (gauge, always 1): one series per such
  resource, absent when there is none.
* ``reconciler_journal_skipped_lines`` (gauge): unreadable journal lines (see status).
* With the state dir's backup check records (``backup_checks``):
  ``reconciler_backup_check_ok{set}`` (gauge: 1 if the set's last check passed, else 0),
  ``reconciler_backup_last_check_timestamp_seconds{set}`` and
  ``reconciler_backup_check_interval_seconds{set}`` (its ``check.every``), one series per
  set with ``check:``.

Every kind is always present (0 when nothing happened), so ``increase()`` works from the
first scrape and alerts need no ``absent()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import atomicfile, journal
from reconciler import kinds as registry
from reconciler.errors import StateError

if TYPE_CHECKING:
    from reconciler.kinds.backup.checkstate import CheckRecord

#: node_exporter's textfile directories: the Debian/Ubuntu package's, then upstream's docs.
TEXTFILE_DIRS = (
    Path("/var/lib/prometheus/node-exporter"),
    Path("/var/lib/node_exporter/textfile_collector"),
)
METRICS_NAME = "reconciler.prom"
KINDS = registry.NAMES
#: How the engine's error for a resource that was applied and still differs begins.
NOT_CONVERGED = "did not converge"


def default_path() -> Path | None:
    """``reconciler.prom`` in the first node_exporter textfile directory that exists, if any.

    Only an existing directory is used: a host without node_exporter gets no stray file.
    """
    for d in TEXTFILE_DIRS:
        if d.is_dir():
            return d / METRICS_NAME
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self,
        name: str,
        mtype: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {mtype}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            series = f"{name}{{{label_text}}}" if label_text else name
            self.lines.append(f"{series} {_fmt(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _per_kind(counter: Counter[str], kinds: Sequence[str]) -> list[tuple[dict[str, str], float]]:
    names = list(kinds) + sorted(k for k in counter if k not in kinds)
    return [({"kind": k}, counter[k]) for k in names]


def _tally(records: Iterable[dict[str, Any]]) -> tuple[Counter[str], Counter[str], Counter[str]]:
    changes: Counter[str] = Counter()
    drift: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for rec in records:
        for ch in journal.changes_of(rec):
            changes[journal.change_kind(ch)] += 1
            if ch.get("drift") is True:
                drift[journal.change_kind(ch)] += 1
        for err in journal.errors_of(rec):
            errors[journal.error_kind(err)] += 1
    return changes, drift, errors


def _not_converged(record: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(kind, address) of each resource the run applied that did not converge."""
    if record is None:
        return []
    out = {
        (journal.error_kind(e), str(e.get("address") or ""))
        for e in journal.errors_of(record)
        if str(e.get("message") or "").startswith(NOT_CONVERGED)
    }
    return sorted(out)


def _seconds(every: str) -> float:
    from reconciler.kinds.backup.duration import parse_duration  # the backup kind's

    return parse_duration(every).total_seconds()


def _backup_checks(w: _Writer, checks: Mapping[str, CheckRecord]) -> None:
    """The backup check metrics, one series per set with a check record."""
    names = sorted(checks)
    w.metric(
        "reconciler_backup_check_ok",
        "gauge",
        "1 if the last check of the backup set passed, 0 if it failed.",
        [({"set": n}, 1 if checks[n].ok else 0) for n in names],
    )
    w.metric(
        "reconciler_backup_last_check_timestamp_seconds",
        "gauge",
        "Unix time of the last check of the backup set (the run's planned moment).",
        [({"set": n}, checks[n].at.timestamp()) for n in names],
    )
    intervals = []
    for n in names:
        try:
            intervals.append(({"set": n}, _seconds(checks[n].every)))
        except ValueError:
            continue  # a record written without its every: no interval to report
    w.metric(
        "reconciler_backup_check_interval_seconds",
        "gauge",
        "The backup set's check.every, in seconds.",
        intervals,
    )


def render(
    records: Sequence[dict[str, Any]],
    *,
    skipped_lines: int = 0,
    backup_checks: Mapping[str, CheckRecord] | None = None,
) -> str:
    """The exposition text for a journal's records (the last one is "the last run") and,
    when given, the state dir's backup check records
    (:func:`reconciler.kinds.backup.checkstate.load`)."""
    runs = [r for r in records if not r.get("dry_run")]
    w = _Writer()
    last = runs[-1] if runs else None
    if last is not None:
        finished = journal.parse_time(last.get("finished"))
        started = journal.parse_time(last.get("started"))
        if finished is not None:
            w.metric(
                "reconciler_last_run_timestamp_seconds",
                "gauge",
                "Unix time the last reconcile run finished.",
                [({}, finished.timestamp())],
            )
            if started is not None:
                w.metric(
                    "reconciler_last_run_duration_seconds",
                    "gauge",
                    "Duration of the last reconcile run, in seconds.",
                    [({}, (finished - started).total_seconds())],
                )
        w.metric(
            "reconciler_last_run_success",
            "gauge",
            "1 if the last reconcile run applied and verified everything, else 0.",
            [({}, 1 if journal.run_ok(last) else 0)],
        )
    success = journal.last_success(runs)
    succeeded = journal.parse_time(success.get("finished")) if success else None
    if succeeded is not None:
        w.metric(
            "reconciler_last_success_timestamp_seconds",
            "gauge",
            "Unix time the last successful reconcile run finished.",
            [({}, succeeded.timestamp())],
        )
    commit = success.get("commit") if success else None
    if isinstance(commit, str):
        w.metric(
            "reconciler_applied_commit_info",
            "gauge",
            "The desired-state commit of the last successful run (value always 1).",
            [({"commit": commit}, 1)],
        )
    kinds = list(KINDS)
    lc, ld, le = _tally([last] if last is not None else [])
    w.metric(
        "reconciler_last_run_changes",
        "gauge",
        "Changes applied by the last run, per kind.",
        _per_kind(lc, kinds),
    )
    w.metric(
        "reconciler_last_run_drift_changes",
        "gauge",
        "Changes applied by the last run without a new commit (manual changes undone), per kind.",
        _per_kind(ld, kinds),
    )
    w.metric(
        "reconciler_last_run_errors",
        "gauge",
        "Errors in the last run, per kind (run: not about one resource).",
        _per_kind(le, [*kinds, "run"]),
    )
    stuck = _not_converged(last)
    w.metric(
        "reconciler_last_run_not_converged",
        "gauge",
        "Resources the last run applied that still differed on the re-read, per kind.",
        _per_kind(Counter(k for k, _ in stuck), kinds),
    )
    if stuck:
        w.metric(
            "reconciler_resource_not_converged",
            "gauge",
            "A resource the last run applied that still differed on the re-read (always 1).",
            [({"kind": k, "address": a}, 1) for k, a in stuck],
        )
    tc, td, te = _tally(runs)
    w.metric(
        "reconciler_changes_total",
        "counter",
        "Changes applied by every run in the journal, per kind.",
        _per_kind(tc, kinds),
    )
    w.metric(
        "reconciler_drift_changes_total",
        "counter",
        "Drift changes (applied without a new commit) in every run in the journal, per kind.",
        _per_kind(td, kinds),
    )
    w.metric(
        "reconciler_errors_total",
        "counter",
        "Errors in every run in the journal, per kind (run: not about one resource).",
        _per_kind(te, [*kinds, "run"]),
    )
    w.metric(
        "reconciler_journal_skipped_lines",
        "gauge",
        "Unreadable lines skipped in the run journal (see reconcile status).",
        [({}, skipped_lines)],
    )
    if backup_checks:
        _backup_checks(w, backup_checks)
    return w.text()


def read_backup_checks(state_dir: Path) -> dict[str, CheckRecord]:
    """The backup check records of ``state_dir``, for :func:`render`; {} when there are none
    or they cannot be read (the backup sets' own plan errors report that)."""
    try:
        from reconciler.kinds.backup import checkstate  # imported when there are checks

        return checkstate.load(state_dir)
    except StateError:
        return {}


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (:func:`reconciler.atomicfile.write_atomic`),
    readable by all: node_exporter runs as another user.

    Raises OSError; the temp file never outlives a failure.
    """
    atomicfile.write_atomic(path, text, mode=0o644)
