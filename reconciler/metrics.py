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
* ``reconciler_applied_commit_info{commit}`` (gauge, always 1): the commit of the last
  successful run; absent until one succeeded or when the source is not git.
* ``reconciler_last_run_changes{kind}``, ``reconciler_last_run_drift_changes{kind}``,
  ``reconciler_last_run_errors{kind}`` (gauges): counts in the last run only.
* ``reconciler_changes_total{kind}``, ``reconciler_drift_changes_total{kind}``,
  ``reconciler_errors_total{kind}`` (counters): sums over every run in the journal. The
  journal is append-only, so they only go up; a wiped state dir is a counter reset, which
  ``rate()``/``increase()`` handle.
* ``reconciler_journal_skipped_lines`` (gauge): unreadable journal lines (see status).

Every kind is always present (0 when nothing happened), so ``increase()`` works from the
first scrape and alerts need no ``absent()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reconciler import atomicfile, journal
from reconciler import kinds as registry

#: node_exporter's textfile directories: the Debian/Ubuntu package's, then upstream's docs.
TEXTFILE_DIRS = (
    Path("/var/lib/prometheus/node-exporter"),
    Path("/var/lib/node_exporter/textfile_collector"),
)
METRICS_NAME = "reconciler.prom"
KINDS = registry.NAMES


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


def render(records: Sequence[dict[str, Any]], *, skipped_lines: int = 0) -> str:
    """The exposition text for a journal's records (the last one is "the last run")."""
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
    return w.text()


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (:func:`reconciler.atomicfile.write_atomic`),
    readable by all: node_exporter runs as another user.

    Raises OSError; the temp file never outlives a failure.
    """
    atomicfile.write_atomic(path, text, mode=0o644)
