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

With ``--against REV`` and a committed head, a host whose inputs are the same at ``REV``
(:func:`reconciler.against.changed_hosts`: only host files changed, and not its own) and
that has no snapshot is reported ``"status": "unchanged"`` without being planned: its plan
against ``REV`` is empty by construction. Every file is still validated.

``--shard K/N`` keeps the hosts whose stable hash falls in shard K of N (:func:`in_shard`),
for a CI matrix: a shard validates the shared files and its own hosts' files, so the N
shards together validate every file and plan every host, each exactly once.

Nothing here reads from or writes to a host: no netlink, no libvirt, no backup tool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import against
from reconciler import desired as desired_mod
from reconciler import kinds as registry
from reconciler.errors import Problem, SnapshotError, ValidationError
from reconciler.fielddiff import Memo
from reconciler.hostconfig import HostConfig, paths_resolved_once
from reconciler.kinds import base
from reconciler.kinds.base import Context
from reconciler.model import HostDesired
from reconciler.plan import Change, Plan, PlanError, PlanWarning

if TYPE_CHECKING:
    from reconciler.cache import DesiredCache

#: A snapshot older than this gets a warning on its host's plan.
STALE_AFTER_SECONDS = 7 * 24 * 3600
#: The ``status`` of a host's CI plan: planned, or unchanged since ``--against REV``.
PLANNED, UNCHANGED = "planned", "unchanged"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based) of a CI matrix (``--shard K/N``)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def to_dict(self) -> dict[str, int]:
        """``{"index": K, "count": N}`` for the JSON output."""
        return {"index": self.index, "count": self.count}


def parse_shard(text: str) -> Shard:
    """The shard ``K/N`` names; ValueError saying what is wrong unless K and N are
    integers with 1 <= K <= N."""
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 1/4")
    shard = Shard(int(k), int(n))
    if not 1 <= shard.index <= shard.count:
        raise ValueError(f"--shard {text}: K must be between 1 and N ({shard.count})")
    return shard


def in_shard(host: str, shard: Shard | None) -> bool:
    """Whether ``host`` belongs to ``shard`` (always, without one): by the first 8 bytes of
    the SHA-256 of its name modulo N, so that a host keeps its shard whatever other hosts
    are added or removed, and every host is in exactly one shard."""
    if shard is None:
        return True
    digest = hashlib.sha256(host.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shard.count == shard.index - 1


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
    shard: Shard | None = None
    #: hosts of the repository (before sharding), for the output's "shard K/N: n of m hosts".
    total_hosts: int = 0

    @property
    def changes(self) -> int:
        """Changes across all hosts."""
        return sum(len(p["changes"]) for p in self.plans)

    @property
    def unchanged(self) -> int:
        """Hosts reported unchanged since ``--against REV`` (not planned)."""
        return sum(1 for p in self.plans if p.get("status") == UNCHANGED)

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
    changed: Collection[str] | None = None,
    shard: Shard | None = None,
    disk_cache: DesiredCache | None = None,
    workers: int | None = None,
) -> CiResult:
    """Validate ``repo`` and plan every host in ``hosts`` (see the module docstring); with
    ``hosts=None`` every ``hosts/*.yaml`` and the VM controller named in ``vms.yaml`` (when
    a cluster-wide kind is planned). A planned host without ``hosts/<host>.yaml`` gets one
    error ``host``: its own run refuses to plan without the file, and CI says so before it
    is merged. The controller is the exception, as in its own run: without a file it is
    planned for the cluster-wide kinds only, with a warning naming the kinds skipped.

    ``base`` is the desired-state directory at ``base_rev`` (exported by the caller).
    ``changed`` (with ``base``) names the hosts whose inputs changed since ``base_rev``
    (:func:`reconciler.against.changed_hosts`); any other host without a snapshot gets an
    empty plan with ``"status": "unchanged"`` instead of being planned (None: every host
    is planned). ``shard`` keeps only the hosts :func:`in_shard` puts in it, and validates
    only their host files beside the shared ones. Every plan has ``status`` (``planned``
    or ``unchanged``) and ``basis``. ``disk_cache`` (``--cache-dir``) keeps validated files
    between runs, keyed by content (:mod:`reconciler.cache`); it never changes the result.
    ``workers`` processes share the hosts (None: one per CPU this process may use, with at
    least :data:`HOSTS_PER_WORKER` hosts each); the result is the same with any number.
    ``config`` is the host configuration what the repository asks of hosts is checked
    against (None: the defaults); nothing from the repository runs. Pure apart from
    reading those directories and the snapshot files.
    """
    kw: dict[str, Any] = {
        "repo": repo, "hosts": hosts, "kinds": kinds, "commit": commit, "base": base,
        "base_rev": base_rev, "snapshots": snapshots, "now": now or datetime.now(UTC),
        "config": config, "changed": changed, "shard": shard, "disk_cache": disk_cache,
    }  # fmt: skip
    n = workers if workers is not None else _default_workers(repo)
    with paths_resolved_once():  # the same host paths for every host: resolved once
        parts = [_plan_part(**kw)] if n <= 1 else _in_workers(kw, n)
    problems = set().union(*(p.problems for p in parts))
    total = parts[0].total
    if problems:
        return CiResult(problems=sorted(problems), shard=shard, total_hosts=total)
    plans = {h: d for p in parts for h, d in p.plans.items()}
    return CiResult(plans=[plans[h] for h in parts[0].hosts], shard=shard, total_hosts=total)


#: The CI dry-run uses a second process only for at least this many hosts per process.
HOSTS_PER_WORKER = 150
#: And never more processes than this.
MAX_WORKERS = 8


def _default_workers(repo: Path) -> int:
    """One process per CPU this one may run on, with at least HOSTS_PER_WORKER hosts each;
    one where ``fork`` is not available."""
    import multiprocessing
    import os

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    hosts = len(desired_mod.list_hosts(repo))
    return max(1, min(cpus or 1, hosts // HOSTS_PER_WORKER, MAX_WORKERS))


@dataclass
class _Part:
    """What one worker found: the planned hosts in order (all of them, the same in every
    worker), its share of the plans, the problems it saw, and the hosts before sharding."""

    hosts: list[str]
    plans: dict[str, dict[str, Any]]
    problems: set[Problem]
    total: int


#: The arguments of the run the forked workers share (set before they are forked).
_WORK: dict[str, Any] = {}


def _work(k: int, n: int) -> _Part:
    return _plan_part(**_WORK, part=(k, n))


def _in_workers(kw: dict[str, Any], n: int) -> list[_Part]:
    """``_plan_part`` in ``n`` forked processes, part k of n each. The arguments reach them
    by the fork, not pickled (the disk cache holds a directory descriptor)."""
    import multiprocessing

    _WORK.clear()
    _WORK.update(kw)
    try:
        with multiprocessing.get_context("fork").Pool(n) as pool:
            return pool.starmap(_work, [(k, n) for k in range(n)])
    finally:
        _WORK.clear()


def _plan_part(
    repo: Path,
    hosts: Sequence[str] | None,
    kinds: Sequence[str],
    *,
    commit: str | None,
    base: Path | None,
    base_rev: str | None,
    snapshots: Path | None,
    now: datetime,
    config: HostConfig | None,
    changed: Collection[str] | None,
    shard: Shard | None,
    disk_cache: DesiredCache | None,
    part: tuple[int, int] = (0, 1),
) -> _Part:
    """:func:`plan_all`'s work for part ``k`` of ``n`` (``part``): the shared files, and
    every k-th of the shard's hosts and host files in name order (each in exactly one
    part)."""
    # fleet.yaml is kept, host files only while their host is planned (a file unchanged
    # since the base is parsed once): memory holds one host at a time, plus the plans.
    # The desired states are only read (planned against each other): a document's
    # resources are made once and shared.
    cache = desired_mod.LoadCache(max_host_files=2, disk_cache=disk_cache, share_loaded=True)
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
    total = len(hosts)
    hosts = [h for h in hosts if in_shard(h, shard)]
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
    # Every host file (of the shard) is validated, also those not planned: CI checks the
    # whole commit.
    mine = sorted(planned | {h for h in host_files if in_shard(h, shard)})[part[0] :: part[1]]
    for host in mine:
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
        unchanged = (
            base is not None
            and changed is not None
            and host not in changed
            and _snapshot_file(snapshots, host) is None
        )
        if problems or host not in planned or unchanged:
            # Not planned (or nothing will be, once anything is invalid): its files are
            # only validated, the same problems without building its desired state.
            try:
                desired_mod.validate_host(repo, host, cache, config=config)
            except ValidationError as e:
                problems.update(e.problems)
                continue
            if unchanged and not problems and host in planned:
                # Same inputs at base_rev: the plan against it is empty by construction.
                plans[host] = _unchanged(host, commit, base_rev, note)
            continue
        try:
            desired = desired_mod.load_host(repo, host, cache, config=config)
        except ValidationError as e:
            problems.update(e.problems)
            continue
        plans[host] = _plan_host(
            host, desired, kinds_here, vms, vms_before, base_vms_problem, repo, cache, memo,
            base=base, base_rev=base_rev, snapshots=snapshots, commit=commit, now=now,
            config=config, note=note,
        )  # fmt: skip
    return _Part(list(hosts), plans, problems, total)


def _snapshot_file(snapshots: Path | None, host: str) -> Path | None:
    """``DIR/<host>.json`` when it is there (a symlink too: reading it is refused with a
    clear error), else None."""
    if snapshots is None:
        return None
    snap = snapshots / f"{host}.json"
    return snap if snap.exists() or snap.is_symlink() else None


def _unchanged(
    host: str, commit: str | None, base_rev: str | None, note: str | None
) -> dict[str, Any]:
    """The plan of a host not planned because its inputs are the same at ``base_rev``: no
    changes, ``"status": "unchanged"``, basis ``against`` ``base_rev``."""
    warnings = [PlanWarning("host", note)] if note is not None else []
    plan = Plan(host=host, commit=commit, warnings=warnings).to_dict()
    plan["status"] = UNCHANGED
    plan["basis"] = Basis("against", {"rev": base_rev}).to_dict()
    return plan


def _controls(vms: dict[str, Any] | None, host: str) -> bool:
    return vms is not None and vms.get("controller") == host


def _missing_host_file(host: str, commit: str | None) -> dict[str, Any]:
    """The plan of a host that has no ``hosts/<host>.yaml`` (and is not the VM controller):
    one error ``host``, as its own run refuses (:func:`reconciler.desired.check_host_file`)."""
    errors = [PlanError("host", desired_mod.missing_host_file(host))]
    plan = Plan(host=host, commit=commit, errors=errors).to_dict()
    plan["status"] = PLANNED
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
    snap = _snapshot_file(snapshots, host)
    warnings: list[PlanWarning] = []
    if snap is not None:
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
        where = "no snapshot"
        if snapshots is not None:
            where += f" {snapshots / f'{host}.json'}"
        changes, basis = [], Basis("none")
        errors = [PlanError("host", f"{where} and no --against REV: nothing to compare with")]
    if note is not None:
        warnings.insert(0, PlanWarning("host", note))
    d = Plan(host=host, commit=commit, changes=changes, errors=errors, warnings=warnings)
    out = d.to_dict()
    out["status"] = PLANNED
    out["basis"] = basis.to_dict()
    return out


def render_text(result: CiResult, commit: str | None, *, colour: bool = False) -> str:
    """The human output: one section per planned host, each rendered from its plan dict,
    one line per host unchanged since ``--against REV``, and a last line counting the
    hosts, the changes, the errors and the unchanged hosts (and naming the shard), with
    ANSI colours when ``colour``."""
    from reconciler.render import text as render_text_mod

    out = []
    for d in result.plans:
        b = d["basis"]
        if d.get("status") == UNCHANGED:
            line = f"=== host {d['host']}: unchanged since {b['rev']} (not planned)"
            out.append(render_text_mod.paint(line, render_text_mod.BOLD, colour))
            if d.get("warnings"):
                out.append(render_text_mod.render(d, dry_run=True, colour=colour).rstrip("\n"))
                out.append("")
            continue
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
    if result.unchanged and out and out[-1] != "":
        out.append("")
    n_hosts = sum(1 for d in result.plans if d["changes"])
    e_hosts = sum(1 for d in result.plans if d["errors"])
    planned = len(result.plans) - result.unchanged
    line = (
        f"{planned} host(s) planned at "
        f"{render_text_mod.commit_text(commit) if commit else 'the work tree'}: "
        f"{result.changes} change(s) on {n_hosts} host(s), {result.errors} error(s)"
        + (f" on {e_hosts} host(s)" if result.errors else "")
    )
    if result.unchanged:
        rev = next(p["basis"]["rev"] for p in result.plans if p.get("status") == UNCHANGED)
        line += f"; {result.unchanged} host(s) unchanged since {rev}"
    if result.shard is not None:
        line += f" (shard {result.shard}: {len(result.plans)} of {result.total_hosts} hosts)"
    out.append(render_text_mod.paint(line, render_text_mod.BOLD, colour))
    return "\n".join(out) + "\n"
