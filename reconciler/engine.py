"""Run the providers: read → diff → plan; then apply → re-read → verify.

The engine owns sequencing and error containment, nothing kind-specific: a failure reading
or applying one resource becomes an error for that resource's address, and every other
resource still converges. After apply it re-reads live state and re-plans; a resource that
was applied but still shows a change "did not converge" (which is how normalisation bugs are
caught instead of being re-applied forever).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from reconciler import journal, log
from reconciler import kinds as registry
from reconciler.errors import ReconcilerError, StateError, TargetError
from reconciler.kinds import base
from reconciler.kinds.base import Provider
from reconciler.model import HostDesired
from reconciler.plan import Change, Op, Plan, PlanError
from reconciler.state import StateDir


@dataclass
class RunResult:
    """What a run did: the plan it made, what was applied, and every error by address."""

    plan: Plan
    applied: list[str] = field(default_factory=list)
    errors: list[PlanError] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: "apply", "verify"
    record: dict[str, Any] | None = None  # the journal record written for this run

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
        plan.warnings.extend(base.notices(p, desired, live, changes))
    return plan, lives


def desired_addresses(desired: HostDesired, vms: Mapping[str, Any] | None = None) -> set[str]:
    """The address of every resource the desired state names (tombstones included): each
    kind's section of the host's files, and with ``vms`` (this host is the controller) the
    VMs of ``vms.yaml``."""
    out: set[str] = set()
    for kind in registry.KINDS:
        if kind.section is not None:
            out |= {f"{kind.name}/{n}" for n in desired.resource_names(kind.section)}
        elif kind.cluster and vms is not None:
            out |= {f"{kind.name}/{n}" for n in vms.get("vms") or {}}
    return out


def select(plan: Plan, targets: Collection[str], known: Collection[str]) -> Plan:
    """The part of ``plan`` about the resources ``targets`` names (``--target``).

    Kept: the targets' changes, warnings and errors, and the errors that may hide one of
    them (a kind that could not be read at all, a ``node/...`` head its kind claims, the
    source). ``known`` is every address the desired state names
    (:func:`desired_addresses`). Two things a partial plan must not do are refused, as
    data on the change: a delete of a resource the desired state no longer names
    (pruning: run the whole plan, or mark it absent), and a change whose op ``needs``
    another change applied in the same run (the ipset guard's ``require_applied``) that
    is not targeted. TargetError for a target that names nothing: neither in the desired
    state nor in the plan."""
    planned = {c.address for c in plan.changes} | {e.address for e in plan.errors}
    unknown = sorted(t for t in targets if t not in known and t not in planned)
    if unknown:
        raise TargetError(
            f"--target {', '.join(unknown)}: no such resource in the desired state of "
            f"{plan.host}, and nothing planned for it"
        )
    wanted = set(targets)
    kinds = {t.split("/", 1)[0] for t in wanted}
    claimed = {h for k in kinds for h in registry.get(k).error_heads}

    def kept(address: str) -> bool:
        head, slash, _ = address.partition("/")
        if address in wanted or address == "source":
            return True
        return (not slash and head in kinds) or (bool(slash) and head in claimed)

    changes: list[Change] = []
    for c in plan.changes:
        if c.address not in wanted:
            continue
        why: list[str] = []
        if c.action == "delete" and c.address not in known:
            why.append(
                f"--target does not prune: {c.address} is no longer in git and this plan "
                "deletes it; run without --target to review and apply the whole plan (or "
                "mark it absent: true in git)"
            )
        for op in c.ops:
            needs = op.args.get("needs")
            if isinstance(needs, str) and needs not in wanted:
                reason = op.args.get("reason")
                why.append(
                    f"it must be applied together with {needs}"
                    + (f" ({reason})" if reason else "")
                    + f": add --target {needs}"
                )
        if why:
            c = replace(c, refused="; ".join([*([c.refused] if c.refused else []), *why]))
        changes.append(c)
    return Plan(
        host=plan.host,
        commit=plan.commit,
        changes=changes,
        errors=[e for e in plan.errors if kept(e.address)],
        warnings=[w for w in plan.warnings if w.address in wanted],
        targets=tuple(sorted(wanted)),
    )


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
    started = datetime.now(UTC).isoformat(timespec="milliseconds")
    attempted: set[str] = set()
    t_apply = time.perf_counter()
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
        for event in log_events(change.kind, done):
            logger.info("applied", address=change.address, **event)
        result.applied.append(change.address)

    # Re-read and re-plan: anything applied that still differs did not converge.
    t_verify = time.perf_counter()
    result.timings["apply"] = t_verify - t_apply
    replan, lives = make_plan(desired, providers, plan.commit)
    result.timings["verify"] = time.perf_counter() - t_verify
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
        try:
            base.forget_vanished(by_kind[kind], live)
        except ReconcilerError as e:
            result.errors.append(PlanError(e.address or kind, e.message))
    if state is not None:
        result.record = _record_run(state, plan, result, providers, started)
    return result


def _record_run(
    state: StateDir,
    plan: Plan,
    result: RunResult,
    providers: Sequence[Provider],
    started: str,
) -> dict[str, Any]:
    """Append this run to the journal, flagging drift, and return the record.

    A journal that cannot be read only loses the drift flags (logged); one that cannot be
    written becomes an error of the run (exit 1), because the changes are then unrecorded.
    """
    logger = log.get()
    try:
        previous = state.runs()
    except StateError as e:
        logger.warning("journal_unreadable", error=e.message, effect="drift not detected")
        previous = journal.JournalContents()
    for problem in previous.problems:
        logger.warning("journal_line_skipped", file=str(state.journal.path), problem=str(problem))
    baseline = journal.baselines(previous.records)
    changes = []
    for c in plan.changes:
        if c.address not in result.applied:
            continue
        drift = journal.is_drift(c.kind, plan.commit, baseline)
        if drift:
            # The commit did not change since this kind last converged: someone changed
            # the host by hand and this run put it back.
            logger.warning("drift", address=c.address, action=c.action, commit=plan.commit)
        changes.append(
            {
                "address": c.address,
                "kind": c.kind,
                "action": c.action,
                "ops": len(c.ops),
                "drift": drift,
            }
        )
    record = journal.run_record(
        host=plan.host,
        commit=plan.commit,
        started=started,
        finished=datetime.now(UTC).isoformat(timespec="milliseconds"),
        kinds=[p.kind for p in providers],
        ok=result.ok,
        changes=changes,
        refused=[c.address for c in plan.changes if c.refused],
        errors=[e.to_dict() for e in (plan.errors + result.errors)],
        targets=plan.targets,
    )
    try:
        state.append_run(record)
    except StateError as e:
        logger.error("journal_write_failed", error=e.message)
        result.errors.append(PlanError("journal", e.message))
    return record


def log_events(kind: str, ops: Sequence[Op]) -> Iterator[dict[str, Any]]:
    """The log events for ops of ``kind`` that were executed: the kind's own grouping
    (ipset members, a thousand to an event), else one event per op."""
    grouped = registry.get(kind).log_events
    if grouped is not None:
        return grouped(ops)
    return (op.to_dict() for op in ops)
