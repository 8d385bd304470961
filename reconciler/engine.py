"""Run the providers: read → diff → plan; then apply → re-read → verify.

The engine owns sequencing and error containment, nothing kind-specific: a failure reading
or applying one resource becomes an error for that resource's address, and every other
resource still converges. After apply it re-reads live state and re-plans; a resource that
was applied but still shows a change "did not converge" (which is how normalisation bugs are
caught instead of being re-applied forever).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler import log
from reconciler.errors import ReconcilerError
from reconciler.model import HostDesired
from reconciler.plan import Change, Plan, PlanError
from reconciler.providers.base import Provider
from reconciler.state import StateDir


@dataclass
class RunResult:
    """What a run did: the plan it made, what was applied, and every error by address."""

    plan: Plan
    applied: list[str] = field(default_factory=list)
    errors: list[PlanError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed, nothing was refused and (after apply) all converged."""
        return (
            not self.errors
            and not self.plan.errors
            and not any(c.refused for c in self.plan.changes)
        )


def make_plan(
    desired: HostDesired, providers: Sequence[Provider], commit: str | None = None
) -> tuple[Plan, dict[str, Any]]:
    """Read every provider's live state and diff it. Never writes anything.

    Returns the plan and the live state per kind (for apply-time hooks).
    """
    plan = Plan(host=desired.host, commit=commit)
    lives: dict[str, Any] = {}
    for p in providers:
        try:
            live = p.read(desired)
        except ReconcilerError as e:
            plan.errors.append(PlanError(e.address or p.kind, f"reading live state: {e.message}"))
            continue
        lives[p.kind] = live
        changes, errors = p.diff(desired, live)
        plan.changes.extend(changes)
        plan.errors.extend(errors)
    return plan, lives


def apply_plan(
    desired: HostDesired,
    providers: Sequence[Provider],
    plan: Plan,
    state: StateDir | None,
) -> RunResult:
    """Apply every non-refused change of ``plan``, then re-read and verify convergence."""
    logger = log.get()
    result = RunResult(plan=plan)
    by_kind = {p.kind: p for p in providers}
    started = datetime.now(UTC).isoformat(timespec="seconds")
    attempted: set[str] = set()
    for change in plan.changes:
        if change.refused:
            logger.warning("refused", address=change.address, reason=change.refused)
            continue
        provider = by_kind[change.kind]
        attempted.add(change.address)
        try:
            done = provider.apply(change)
        except ReconcilerError as e:
            logger.error("apply_failed", address=change.address, error=e.message)
            result.errors.append(PlanError(change.address, e.message))
            continue
        for op in done:
            logger.info("applied", address=change.address, **_loggable(op.to_dict()))
        result.applied.append(change.address)

    # Re-read and re-plan: anything applied that still differs did not converge.
    replan, lives = make_plan(desired, providers, plan.commit)
    failed = {e.address for e in result.errors}
    for ch in replan.changes:
        if ch.address in attempted and ch.address not in failed:
            msg = f"did not converge: a re-read still shows {ch.action} ({len(ch.ops)} op(s))"
            logger.error("not_converged", address=ch.address, ops=[o.to_dict() for o in ch.ops][:5])
            result.errors.append(PlanError(ch.address, msg))
    for err in replan.errors:
        if err.address in attempted and err.address not in failed:
            result.errors.append(err)
    for kind, live in lives.items():
        hook = getattr(by_kind[kind], "forget_vanished", None)
        if hook is not None:
            hook(live)
    if state is not None:
        state.append_run(
            {
                "host": plan.host,
                "commit": plan.commit,
                "started": started,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "changes": [
                    {"address": c.address, "action": c.action, "ops": len(c.ops)}
                    for c in plan.changes
                    if c.address in result.applied
                ],
                "errors": [e.to_dict() for e in (plan.errors + result.errors)],
            }
        )
    return result


def _loggable(op: dict[str, Any]) -> dict[str, Any]:
    """Keep log events small: a bulk op's member list is summarised by its count."""
    out = dict(op)
    members = out.get("members")
    if isinstance(members, list) and len(members) > 5:
        out["members"] = [*members[:5], f"... {len(members) - 5} more"]
    return out


def changes_for(plan: Plan, kind: str) -> list[Change]:
    """The changes of one kind, in plan order."""
    return [c for c in plan.changes if c.kind == kind]
