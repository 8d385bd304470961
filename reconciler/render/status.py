"""The human text of ``reconcile status``, rendered from the journal's records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler import journal


def _short(commit: Any) -> str:
    return commit[:12] if isinstance(commit, str) else "(no git)"


def _when(value: Any) -> str:
    t = journal.parse_time(value)
    return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else "?"


def render(
    path: Path,
    runs: list[dict[str, Any]],
    shown: list[dict[str, Any]],
    success: dict[str, Any] | None,
    drift: list[journal.DriftEvent],
    owned: dict[str, list[str]],
) -> str:
    """The status page: applied commit, the ``shown`` runs, drift, and what is ours."""
    out = [f"State dir: {path}"]
    if runs:
        out += _runs(runs, shown, success, drift)
    else:
        out.append("No runs recorded yet.")
    if owned:
        out.append("")
        out.append("Owned by reconciler (ours.json):")
        for kind, names in owned.items():
            out.append(f"  {kind}: {', '.join(names)}")
    return "\n".join(out) + "\n"


def _runs(
    runs: list[dict[str, Any]],
    shown: list[dict[str, Any]],
    success: dict[str, Any] | None,
    drift: list[journal.DriftEvent],
) -> list[str]:
    out = []
    if success is None:
        out.append("Applied commit: none (no run has succeeded yet)")
    else:
        out.append(
            f"Applied commit: {_short(success.get('commit'))} "
            f"(last successful run {_when(success.get('finished'))} UTC)"
        )
    last = runs[-1]
    if not journal.run_ok(last):
        out.append(f"Last run FAILED at {_when(last.get('finished'))} UTC")
    out.append("")
    out.append(f"Last {len(shown)} of {len(runs)} run(s), times in UTC:")
    out.append(f"  {'FINISHED':<19}  {'COMMIT':<12}  {'RESULT':<6}  CHANGES  DRIFT  ERRORS")
    for rec in shown:
        changes = journal.changes_of(rec)
        n_drift = sum(1 for c in changes if c.get("drift") is True)
        errors = journal.errors_of(rec)
        result = "ok" if journal.run_ok(rec) else "FAILED"
        out.append(
            f"  {_when(rec.get('finished')):<19}  {_short(rec.get('commit')):<12}  {result:<6}  "
            f"{len(changes):>7}  {n_drift:>5}  {len(errors):>6}"
        )
        for err in errors[:5]:
            out.append(f"      ! {err.get('address') or 'run'}: {err.get('message', '')}")
        if len(errors) > 5:
            out.append(f"      ! ... and {len(errors) - 5} more error(s)")
    out.append("")
    if drift:
        out.append(f"Drift (changes applied without a new commit) in these {len(shown)} run(s):")
        for d in drift:
            out.append(
                f"  {_when(d.finished):<19}  {_short(d.commit):<12}  {d.address}  "
                f"{d.action} ({d.ops} op(s))"
            )
    else:
        out.append(f"No drift in these {len(shown)} run(s).")
    return out
