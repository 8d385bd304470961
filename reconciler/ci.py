"""The CI dry-run: every host's plan for a commit, without reaching any host.

``reconcile --dry-run --all-hosts [--snapshots DIR] [--against REV]`` validates the whole
repository, then plans each host against the best basis it has:

1. ``DIR/<host>.json``, a live-state snapshot written on the host by ``reconcile snapshot``
   (kept in git or as a CI artifact): the providers' own diff runs on it, exactly as on the
   host, and the plan says how old the snapshot is;
2. else the desired state at ``REV`` (:mod:`reconciler.against`): the change the commit asks
   for, assuming the host had converged at ``REV``;
3. else an error for that host (nothing to compare with).

A host without ``hosts/<host>.yaml`` is an error for that host: its own run would refuse to
plan from ``fleet.yaml`` alone. The VM controller ``vms.yaml`` names is the exception, as on
the host: without a file it is planned for VM placement only.

Nothing here reads from or writes to a host: no netlink, no libvirt, no backup tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import against
from reconciler import desired as desired_mod
from reconciler import kinds as registry
from reconciler.errors import Problem, SnapshotError, ValidationError
from reconciler.fielddiff import Memo
from reconciler.hostconfig import HostConfig
from reconciler.kinds import base
from reconciler.kinds.base import Context
from reconciler.model import HostDesired
from reconciler.plan import Change, Plan, PlanError, PlanWarning

#: A snapshot older than this gets a warning on its host's plan.
STALE_AFTER_SECONDS = 7 * 24 * 3600


@dataclass
class Basis:
    """What one host's plan was computed against (shown with the plan)."""

    source: str  # "snapshot" | "against" | "none" (the JSON key is "kind")
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **detail}`` for the JSON output."""
        return {"kind": self.source, **self.detail}


@dataclass
class CiResult:
    """Every host's plan (as plan dicts with a ``basis``), or the repository's problems."""

    plans: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def changes(self) -> int:
        """Changes across all hosts."""
        return sum(len(p["changes"]) for p in self.plans)

    @property
    def errors(self) -> int:
        """Errors across all hosts."""
        return sum(len(p["errors"]) for p in self.plans)

    @property
    def failed(self) -> bool:
        """True when the repository is invalid or any host has errors or refusals."""
        return bool(self.problems) or any(
            p["errors"] or any(c.get("refused") for c in p["changes"]) for p in self.plans
        )


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _snapshot_plan(
    path: Path,
    desired: HostDesired,
    kinds: set[str],
    vms: dict[str, Any] | None,
    repo: Path,
    now: datetime,
) -> tuple[list[Change], list[PlanError], list[PlanWarning], Basis]:
    """Plan ``kinds`` for one host against the snapshot file at ``path``, reaching no host.

    Each kind's provider runs only its pure ``diff`` on the live state read from the file;
    a kind missing from the snapshot, or recorded there as unreadable, is a plan error, and
    an unreadable snapshot is one error for the whole host. Returns the changes (each warned
    when the snapshot is older than STALE_AFTER_SECONDS), errors, notices and the basis.
    """
    from reconciler import snapshot

    try:
        snap = snapshot.read_snapshot(path, host=desired.host)
    except SnapshotError as err:
        return [], [PlanError("snapshot", err.message)], [], Basis("snapshot", {"file": str(path)})
    seconds = max(0.0, snap.age(now).total_seconds())
    basis = Basis(
        "snapshot",
        {
            "file": str(path),
            "taken": snap.created.isoformat(timespec="seconds"),
            "age_seconds": int(seconds),
            "age": _age(seconds),
            "host_commit": snap.commit,
        },
    )
    changes: list[Change] = []
    errors: list[PlanError] = []
    notes: list[PlanWarning] = []
    ctx = Context(vms=vms, repo=repo, now=now)
    for kind in sorted(kinds):
        if kind in snap.errors:
            errors.append(PlanError(kind, f"not in the snapshot: {snap.errors[kind]}"))
            continue
        # Used for its pure diff only: no state dir, no connection.
        provider = registry.get(kind).provider(ctx)
        if provider is None:
            continue
        live = snap.lives.get(kind)
        if live is None:
            errors.append(PlanError(kind, f"the snapshot {path} has no {kind} state"))
            continue
        want, live, planned = base.from_snapshot(provider, desired, live)
        c, e = provider.diff(want, live)
        changes += planned + c
        errors += e
        notes += base.notices(provider, want, live, c)
    if seconds > STALE_AFTER_SECONDS:
        stale = f"snapshot is {_age(seconds)} old: the host may have changed since"
        changes = [c.with_warnings(stale) for c in changes]
    return changes, errors, notes, basis


def plan_all(
    repo: Path,
    hosts: Sequence[str] | None,
    kinds: Sequence[str],
    *,
    commit: str | None,
    base: Path | None = None,
    base_rev: str | None = None,
    snapshots: Path | None = None,
    now: datetime | None = None,
    config: HostConfig | None = None,
) -> CiResult:
    """Validate ``repo`` and plan every host in ``hosts`` (see the module docstring); with
    ``hosts=None`` every ``hosts/*.yaml`` and the VM controller named in ``vms.yaml`` (when
    a cluster-wide kind is planned). A planned host without ``hosts/<host>.yaml`` gets one
    error ``host``: its own run refuses to plan without the file, and CI says so before it
    is merged. The controller is the exception, as in its own run: without a file it is
    planned for the cluster-wide kinds only, with a warning naming the kinds skipped.

    ``base`` is the desired-state directory at ``base_rev`` (exported by the caller).
    ``config`` is the host configuration what the repository asks of hosts is checked
    against (None: the defaults); nothing from the repository runs. Pure apart from
    reading those directories and the snapshot files.
    """
    now = now or datetime.now(UTC)
    # fleet.yaml is kept, host files only while their host is planned (a file unchanged
    # since the base is parsed once): memory holds one host at a time, plus the plans.
    cache = desired_mod.LoadCache(max_host_files=2)
    problems: set[Problem] = set()
    if (repo / desired_mod.FLEET_FILE).exists():
        problems.update(cache.load(repo, desired_mod.FLEET_FILE).problems)
    problems.update(desired_mod.stray_host_files(repo))
    wanted = set(kinds)
    vms: dict[str, Any] | None = None
    try:
        vms = desired_mod.load_vms(repo, config=config)
    except ValidationError as e:
        problems.update(e.problems)
    host_files = desired_mod.list_hosts(repo)
    cluster = sorted(k for k in wanted if registry.get(k).cluster)
    if not cluster:
        vms = None
    if hosts is None:
        hosts = list(host_files)
        if vms is not None and vms["controller"] not in hosts:
            hosts.append(vms["controller"])  # planned for its cluster-wide kinds
    vms_before: dict[str, Any] | None = None
    base_vms_problem = None
    if base is not None and vms is not None:
        try:
            vms_before = desired_mod.load_vms(base, config=config)
        except ValidationError as e:
            base_vms_problem = f"vms.yaml is invalid at {base_rev} ({len(e.problems)} problem(s))"
    plans: dict[str, dict[str, Any]] = {}
    memo = Memo()
    planned = set(hosts)
    # Every host file is validated, also those not planned: CI checks the whole commit.
    for host in sorted(planned | set(host_files)):
        kinds_here, note = wanted, None
        if host not in host_files and desired_mod.valid_host_name(host):
            if not _controls(vms, host):
                # Its own run refuses to plan without its file (an empty {} is enough),
                # so its CI plan says so instead of planning from fleet.yaml alone.
                plans[host] = _missing_host_file(host, commit)
                continue
            # The VM controller without a file: its cluster-wide kinds only, as its run.
            kinds_here = set(cluster)
            skipped = sorted(wanted - kinds_here, key=registry.NAMES.index)
            note = desired_mod.controller_without_file(host, skipped) if skipped else None
        try:
            desired = desired_mod.load_host(repo, host, cache, config=config)
        except ValidationError as e:
            problems.update(e.problems)
            continue
        if problems or host not in planned:
            continue  # once anything is invalid nothing is planned; keep collecting problems
        plans[host] = _plan_host(
            host, desired, kinds_here, vms, vms_before, base_vms_problem, repo, cache, memo,
            base=base, base_rev=base_rev, snapshots=snapshots, commit=commit, now=now,
            config=config, note=note,
        )  # fmt: skip
    if problems:
        return CiResult(problems=sorted(problems))
    return CiResult(plans=[plans[h] for h in hosts])


def _controls(vms: dict[str, Any] | None, host: str) -> bool:
    return vms is not None and vms.get("controller") == host


def _missing_host_file(host: str, commit: str | None) -> dict[str, Any]:
    """The plan of a host that has no ``hosts/<host>.yaml`` (and is not the VM controller):
    one error ``host``, as its own run refuses (:func:`reconciler.desired.check_host_file`)."""
    errors = [PlanError("host", desired_mod.missing_host_file(host))]
    plan = Plan(host=host, commit=commit, errors=errors).to_dict()
    plan["basis"] = Basis("none").to_dict()
    return plan


def _plan_host(
    host: str,
    desired: HostDesired,
    wanted: set[str],
    vms: dict[str, Any] | None,
    vms_before: dict[str, Any] | None,
    base_vms_problem: str | None,
    repo: Path,
    cache: desired_mod.LoadCache,
    memo: Memo,
    *,
    base: Path | None,
    base_rev: str | None,
    snapshots: Path | None,
    commit: str | None,
    now: datetime,
    config: HostConfig | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One host's plan dict, with its ``basis`` (and ``warnings``: ``note`` about the host,
    about the basis, and the providers' notices when planned against a snapshot)."""
    controller = vms is not None and vms["controller"] == host
    host_vms = vms if controller else None
    snap = snapshots / f"{host}.json" if snapshots is not None else None
    warnings: list[PlanWarning] = []
    if snap is not None and (snap.exists() or snap.is_symlink()):
        kinds = {k for k in wanted if controller or not registry.get(k).cluster}
        changes, errors, warnings, basis = _snapshot_plan(snap, desired, kinds, host_vms, repo, now)
    elif base is not None:
        before = None
        try:
            before = desired_mod.load_host(base, host, cache, config=config)
        except ValidationError as e:
            warnings.append(
                PlanWarning(
                    "host",
                    f"the desired state of {host} is invalid at {base_rev} "
                    f"({len(e.problems)} problem(s)): planned as a new host",
                )
            )
        changes = against.host_changes(before, desired, wanted, memo)
        if controller and host_vms is not None:
            changes += against.cluster_changes(vms_before, host_vms, wanted)
            if base_vms_problem:
                cluster = next(k.name for k in registry.KINDS if k.cluster)
                warnings.append(PlanWarning(cluster, base_vms_problem))
        errors = []
        basis = Basis("against", {"rev": base_rev})
    else:
        where = f"no snapshot {snap}" if snap is not None else "no snapshot"
        changes, basis = [], Basis("none")
        errors = [PlanError("host", f"{where} and no --against REV: nothing to compare with")]
    if note is not None:
        warnings.insert(0, PlanWarning("host", note))
    d = Plan(host=host, commit=commit, changes=changes, errors=errors, warnings=warnings)
    out = d.to_dict()
    out["basis"] = basis.to_dict()
    return out


def render_text(result: CiResult, commit: str | None, *, colour: bool = False) -> str:
    """The human output: one section per host, each rendered from its plan dict, and a
    last line counting the hosts, the changes and the errors (with ANSI colours when
    ``colour``)."""
    from reconciler.render import text as render_text_mod

    out = []
    for d in result.plans:
        b = d["basis"]
        if b["kind"] == "snapshot" and "taken" in b:
            how = f"against snapshot {b['file']} taken {b['taken']} ({b['age']} ago)"
        elif b["kind"] == "snapshot":
            how = f"against snapshot {b['file']}"
        elif b["kind"] == "against":
            how = f"against the desired state at {b['rev']}"
        else:
            how = "with nothing to compare against"
        out.append(
            render_text_mod.paint(f"=== host {d['host']}: {how}", render_text_mod.BOLD, colour)
        )
        out.append(render_text_mod.render(d, dry_run=True, colour=colour).rstrip("\n"))
        out.append("")
    n_hosts = sum(1 for d in result.plans if d["changes"])
    e_hosts = sum(1 for d in result.plans if d["errors"])
    line = (
        f"{len(result.plans)} host(s) planned at "
        f"{render_text_mod.commit_text(commit) if commit else 'the work tree'}: "
        f"{result.changes} change(s) on {n_hosts} host(s), {result.errors} error(s)"
        + (f" on {e_hosts} host(s)" if result.errors else "")
    )
    out.append(render_text_mod.paint(line, render_text_mod.BOLD, colour))
    return "\n".join(out) + "\n"
