"""``reconcile [--dry-run]``: converge this host to the desired state in git.

Parse the options, accept the source (rewind rule, signatures), take the run lock, plan,
and unless ``--dry-run`` apply, verify and record the run. The CI dry-run options hand
over to :mod:`reconciler.cli.ci_dryrun`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from reconciler import __version__, engine, gitsource, journal, log, metrics, trust
from reconciler.cli import ci_dryrun, common
from reconciler.cli.codes import EXIT_CHANGES, EXIT_ERROR, EXIT_OK
from reconciler.errors import (
    PlanFileError,
    ReconcilerError,
    StateError,
    TargetError,
    ValidationError,
    VerifyError,
)
from reconciler.hostconfig import HostConfig
from reconciler.kinds.base import Context, Provider
from reconciler.lock import RunLock
from reconciler.model import HostDesired
from reconciler.plan import Plan, PlanError, PlanWarning
from reconciler.render import json as render_json
from reconciler.render import text as render_text
from reconciler.state import StateDir

if TYPE_CHECKING:
    from reconciler.cache import DesiredCache
    from reconciler.gitrepo import GitRepo
    from reconciler.planfile import SavedPlan


USAGE = """reconcile [--dry-run] [--repo PATH|URL] [--host NAME] [--only KINDS] [options]
       reconcile --dry-run [--target ADDRESS ...] --out FILE [options]   (save a plan)
       reconcile --plan FILE [options]                       (apply exactly a saved plan)
       reconcile --dry-run --all-hosts [--snapshots DIR] [--against REV] [--shard K/N]
                 [--output text|json|markdown] [--repo PATH]                        (CI)
       reconcile validate [--repo PATH] [--host NAME]
       reconcile snapshot [--repo PATH] [--host NAME] [--only KINDS] [-o FILE] [options]
       reconcile status [--state-dir DIR] [--last N] [--output text|json]
       reconcile import [--nic NAME ...] [--node NAME=URI ...] [--ipset-save FILE]
                 [--ifup-local FILE] [-o DIR]                 (adopt an existing host)
       reconcile --version"""


class Scope(NamedTuple):
    """What one host's run plans and how: the host, the kinds, the targets (``--target``),
    the guards' options, and the saved plan it applies (``--plan``), if any."""

    host: str
    kinds: list[str]
    targets: tuple[str, ...] = ()
    force: bool = False
    allow_empty: bool = False
    saved: SavedPlan | None = None


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile [options]``, the CI dry-run's options included."""
    p = common.Parser(
        prog="reconcile",
        usage=USAGE,
        description="Converge this host to the desired state in git: plan, apply, verify. "
        "Subcommands: 'reconcile validate' checks the desired state only, 'reconcile "
        "snapshot' writes this host's live state for the CI dry-run, 'reconcile status' "
        "shows the last runs and drift, 'reconcile import' writes desired state from a "
        "host's live state (each has --help).",
    )
    p.add_argument("--version", action="version", version=f"reconcile {__version__}")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read live state and print the plan; never write to the host",
    )
    _add_source_options(p)
    _add_trust_options(p)
    common.add_host(p)
    common.add_only(p)
    _add_plan_options(p)
    p.add_argument(
        "--output",
        choices=("text", "json", "markdown"),
        default="text",
        help="text, json, or (the CI dry-run only) markdown for a review comment",
    )
    ci_dryrun.add_options(p)
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="with --dry-run: exit 2 when changes are pending",
    )
    common.add_lock_file(p)
    common.add_wait(p, 0.0)
    common.add_state_dir(p)
    common.add_cache(p)
    common.add_config(p)
    _add_run_options(p)
    common.add_log_format(p)
    return p


def parse_target(value: str) -> str:
    """A ``--target`` value: ``<kind>/<name>`` with a kind of the registry;
    ``argparse.ArgumentTypeError`` otherwise."""
    kind, slash, name = value.partition("/")
    if not slash or not name or kind not in common.KINDS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a resource address: <kind>/<name> with a kind of "
            f"{', '.join(common.KINDS)} (e.g. ipset/mgmt, nic/eth1)"
        )
    return value


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    """``--target``, ``--out``, ``--plan``: part of a plan, saved plans."""
    p.add_argument(
        "--target",
        action="append",
        type=parse_target,
        default=[],
        metavar="ADDRESS",
        help="plan and apply only this resource (kind/name, e.g. ipset/mgmt; repeatable); "
        "never prunes",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="with --dry-run: save the plan (JSON, 0600) to FILE, for reconcile --plan FILE",
    )
    p.add_argument(
        "--plan",
        metavar="FILE",
        help="apply exactly the plan saved in FILE: refused as stale unless a fresh plan "
        "is identical (same commit, same changes)",
    )


def _add_source_options(p: argparse.ArgumentParser) -> None:
    """``--repo``, ``--ref``, ``--path``, ``--allow-dirty``: where the desired state is."""
    common.add_repo(p)
    p.add_argument(
        "--ref",
        help="branch, tag or commit to use (default: a URL's default branch; a local work "
        "tree as it is)",
    )
    common.add_path(p)
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="apply a local work tree with uncommitted changes (recorded as <commit>+dirty)",
    )


def _add_trust_options(p: argparse.ArgumentParser) -> None:
    """``--allow-rewind``, ``--require-signed``, ``--signer-pins``: which targets to accept."""
    p.add_argument(
        "--allow-rewind",
        action="store_true",
        help="accept a target that is not a descendant of the last applied commit",
    )
    p.add_argument(
        "--require-signed",
        action="store_true",
        default=os.environ.get("RECONCILER_REQUIRE_SIGNED", "") not in ("", "0", "no"),
        help="verify commit signatures even if fleet.yaml has no verify: block "
        "(default: $RECONCILER_REQUIRE_SIGNED)",
    )
    p.add_argument(
        "--signer-pins",
        default=os.environ.get("RECONCILER_SIGNER_PINS", trust.DEFAULT_PINS),
        metavar="FILE",
        help="fingerprints of the signers this host trusts, one per line; when this file "
        "exists, signed commits are required on every run "
        f"(default: $RECONCILER_SIGNER_PINS or {trust.DEFAULT_PINS})",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """``--metrics-file``, ``--force`` and ``--allow-empty``."""
    p.add_argument(
        "--metrics-file",
        default=os.environ.get("RECONCILER_METRICS_FILE"),
        metavar="PATH",
        help="Prometheus textfile written after every applied run (default: "
        "$RECONCILER_METRICS_FILE, else reconciler.prom in node_exporter's textfile "
        f"directory if one exists: {', '.join(str(d) for d in metrics.TEXTFILE_DIRS)}; "
        "'' disables)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="apply changes the safety guards refuse (emptying a set, "
        "dropping the current SSH client)",
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="let a plan delete every resource reconciler owns of a kind while git declares "
        "none of that kind (refused without it: a wrong --repo looks like that)",
    )


def run(argv: Sequence[str]) -> int:
    """``reconcile [options]``: plan, and unless --dry-run apply and verify. Returns the exit
    code: 0 done (or nothing to do), 1 on any error, refusal or usage error, 2 for pending
    changes with ``--dry-run --detailed-exitcode``. The CI dry-run options hand over to
    :func:`reconciler.cli.ci_dryrun.run`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    common.configure_log(args.log_format)
    _check_combinations(parser, args)
    if ci_dryrun.requested(args):
        config = common.host_config_or_report(args, "reconcile")
        if config is None:
            return EXIT_ERROR
        return ci_dryrun.run(args, config)
    try:
        scope = _scope(args)
    except PlanFileError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    why = common.needs_root(scope.kinds, writes=[Path(args.state_dir), Path(args.lock_file)])
    if why is not None:
        print(f"reconcile: {why}", file=sys.stderr)
        return EXIT_ERROR
    # The host decides what runs and which host files may be named: read once, first.
    config = common.host_config_or_report(args, "reconcile")
    if config is None:
        return EXIT_ERROR
    try:
        return _reconcile(args, scope, config)
    except ReconcilerError as e:
        # StateError (corrupt ours.json ...), LockHeldError, SourceError, RepositoryError,
        # TargetError, PlanFileError ...: the message says it all.
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 1) for options that do not go together."""
    if ci_dryrun.requested(args):
        if not args.dry_run:
            parser.error("--all-hosts, --snapshots, --against and --shard plan only: add --dry-run")
        if args.out or args.plan or args.target:
            parser.error("--out, --plan and --target are for one host's run, not the CI dry-run")
    elif args.output == "markdown":
        parser.error("--output markdown is for the CI dry-run (--all-hosts, --against ...)")
    if args.out and not args.dry_run:
        parser.error("--out saves the plan of a dry-run: add --dry-run")
    if args.plan is not None:
        if args.dry_run:
            parser.error("--plan applies a saved plan: drop --dry-run")
        given = [
            opt
            for opt, value in (
                ("--only", args.only),
                ("--target", args.target),
                ("--force", args.force),
                ("--allow-empty", args.allow_empty),
            )
            if value
        ]
        if given:
            parser.error(
                f"--plan applies the plan with the kinds, targets and options it was made "
                f"with: drop {', '.join(given)}"
            )
    if args.target and args.only:
        outside = [t for t in args.target if t.split("/", 1)[0] not in args.only]
        if outside:
            parser.error(
                f"--target {', '.join(outside)}: not a kind of --only {','.join(args.only)}"
            )


def _scope(args: argparse.Namespace) -> Scope:
    """The run's scope from the command line, or (``--plan``) from the saved plan;
    PlanFileError when the saved plan cannot be read or was made for another host."""
    host = args.host or common.short_hostname()
    if args.plan is None:
        targets = tuple(dict.fromkeys(args.target))
        kinds = args.only or list(common.KINDS)
        if targets:
            # Only the targets' kinds are read.
            kinds = [k for k in kinds if any(t.split("/", 1)[0] == k for t in targets)]
        return Scope(host, kinds, targets, args.force, args.allow_empty)
    from reconciler import planfile

    saved = planfile.read(Path(args.plan))
    if saved.host != host:
        raise PlanFileError(
            f"{args.plan} is a plan for host {saved.host}, and this run is for {host} "
            "(--host): nothing was applied"
        )
    unknown = [k for k in saved.kinds if k not in common.KINDS]
    if unknown or not saved.kinds:
        raise PlanFileError(f"{args.plan}: not a saved plan of this version (kinds {unknown})")
    return Scope(host, list(saved.kinds), saved.targets, saved.force, saved.allow_empty, saved)


def _reconcile(args: argparse.Namespace, scope: Scope, config: HostConfig) -> int:
    """Open the source, take the lock, accept the target, then plan (and apply) it, with
    the host configuration ``config``."""
    host, kinds = scope.host, scope.kinds
    loaded = None
    with contextlib.ExitStack() as stack:
        remote = gitsource.is_url(args.repo)
        if not remote:
            source = stack.enter_context(gitsource.open_local(Path(args.repo), args.ref, args.path))
            # A local desired state is validated before anything is read from, or
            # written to, the host: not even the state dir or lock file is created.
            try:
                loaded = common.load_desired(
                    source.path,
                    host,
                    kinds,
                    config,
                    shown=common.shown_repo(args),
                    disk_cache=common.disk_cache(args, Path(args.state_dir)),
                )
            except ValidationError as e:
                return common.invalid(e)
        # The lock covers the source too: a fetch and checkout update the clone in the
        # state dir, which two runs must not do at once.
        stack.enter_context(RunLock(Path(args.lock_file), wait=args.wait))
        state = StateDir(Path(args.state_dir))
        if remote:
            source = stack.enter_context(
                gitsource.open_remote(args.repo, args.ref, state.path, args.path)
            )
        refusal = _accept_source(args, source, state, stack)
        if refusal is not None:
            return _refuse(args, host, kinds, state, refusal)
        return _run(args, scope, source, state, loaded, config)


def _accept_source(
    args: argparse.Namespace,
    source: gitsource.Source,
    state: StateDir,
    stack: contextlib.ExitStack[Any],
) -> VerifyError | None:
    """Check the rewind rule and signatures of the source's target; check out a clone's
    target once accepted (not in a dry-run), and point a clone's source at the accepted
    commit read from git objects. Returns the refusal (nothing is checked out then), else
    None."""
    target = source.target or source.clean_commit
    required = args.require_signed or trust.host_requires_signatures(Path(args.signer_pins))
    if source.repo is None or target is None:
        if required:
            return VerifyError(
                f"signed commits are required on this host but {args.repo} is not a git "
                "repository with a commit: nothing can be verified"
            )
        return None
    if source.dirty and required and not args.dry_run:
        return VerifyError(
            f"{args.repo} has uncommitted changes, and signed commits are required on this "
            "host: only committed, signed states are applied (--allow-dirty does not change "
            "that)",
            commit=target,
        )
    if source.fetch_error is None:
        written = _written(source) if source.commit == target else None
        refusal = _verify(args, source.repo, source.subdir, state, target, written)
        if refusal is not None:
            return refusal
        if source.url is not None and source.commit != target:
            if not args.dry_run:
                # The clone's checkout records the last accepted commit (a dry-run leaves it).
                gitsource.checkout(source, target)
            source.commit = target
    # else: the last good checkout was accepted when it was checked out.
    if source.url is not None and source.commit is not None:
        # What is verified is what is loaded: the accepted commit's own objects.
        source.path = gitsource.materialized(source.repo, source.commit, source.subdir, stack)
    return None


def _written(source: gitsource.Source) -> Path | None:
    """The directory a local committed source was written out to from its commit's objects
    (a private temporary directory, never the work tree), else None."""
    if source.url is not None or source.dirty or source.repo is None or source.commit is None:
        return None
    top = Path(source.repo.working_tree_dir).resolve()
    return None if source.path.resolve().is_relative_to(top) else source.path


def _verify(
    args: argparse.Namespace,
    repo: GitRepo,
    subdir: str,
    state: StateDir,
    target: str,
    written: Path | None = None,
) -> VerifyError | None:
    """Apply the rewind rule and the signature policy to ``target`` (:func:`trust.decide`);
    returns the refusal, else None (the verified commits are logged). ``written``: the
    target's desired state written out from its objects, where its fleet.yaml is read."""
    try:
        decision = trust.decide(
            repo,
            subdir,
            state.applied_commit(),
            target,
            pins_path=Path(args.signer_pins),
            require_signed=args.require_signed,
            allow_rewind=args.allow_rewind,
            cached=_cached_fleet(common.disk_cache(args, state.path)),
            target_tree=written,
        )
    except VerifyError as e:
        return e
    if decision.verification:
        log.get().info(
            "commits_verified",
            target=target,
            commits=len(decision.verified),
            signers=list(decision.signers),
        )
    return None


def _cached_fleet(cache: DesiredCache | None) -> trust.FleetReader:
    """A reader of fleet.yaml data that knows the files already validated: this run's
    desired-state load, then the desired-state cache (a hit only); None otherwise."""
    from reconciler.cache import FLEET_ROLE
    from reconciler.desired import validated_fleet

    def read(raw: bytes, rel: str) -> dict[str, Any] | None:
        data = validated_fleet(raw)
        if data is not None or cache is None:
            return data
        # The verdict keeps ``verify:`` and leaves out the members: nothing big is decoded.
        doc = cache.get_verdict(FLEET_ROLE, raw, rel, None)
        return doc.data if doc is not None else None

    return read


def _refuse(
    args: argparse.Namespace, host: str, kinds: list[str], state: StateDir, e: VerifyError
) -> int:
    """A refused target: nothing is applied, the last applied state stays; the refusal is
    recorded in the journal (not for a dry-run) and the run exits 1."""
    print(f"reconcile: refused: {e.message}", file=sys.stderr)
    if not args.dry_run:
        try:
            state.append_run(journal.refusal_record(host, kinds, e.commit, e.message))
        except StateError as err:
            print(f"reconcile: {err}", file=sys.stderr)
    return EXIT_ERROR


def _run(
    args: argparse.Namespace,
    scope: Scope,
    source: gitsource.Source,
    state: StateDir,
    loaded: common.Loaded | None,
    config: HostConfig,
) -> int:
    """Plan, and unless --dry-run apply. ``loaded`` is the desired state when it was
    validated before the lock (a local source); a fetched one is loaded here. ``config``
    is the host configuration: the checks of the desired state and the providers use it.
    With targets the plan is cut down to them (:func:`reconciler.engine.select`); with a
    saved plan it is compared with it first, and applied only when identical."""
    problem = _source_problem(args, source)
    if problem is not None:
        print(f"reconcile: {problem}", file=sys.stderr)
        return EXIT_ERROR
    host = scope.host
    try:
        # Validate before anything is read from the host (a fetched commit is checked here).
        if loaded is None:
            loaded = common.load_desired(
                source.path,
                host,
                scope.kinds,
                config,
                shown=common.shown_repo(args),
                disk_cache=common.disk_cache(args, state.path),
            )
    except ValidationError as e:
        return common.invalid(e)
    desired = loaded.desired
    ctx = Context(
        state=state,
        force=scope.force,
        allow_empty=scope.allow_empty,
        vms=_controller_only(loaded.vms, host),
        repo=source.path,
        host=config,
    )
    providers = common.providers(loaded.kinds, ctx, desired)
    plan = _plan(desired, providers, source)
    if loaded.note is not None:
        plan.warnings.insert(0, PlanWarning("host", loaded.note))
    stale: list[str] = []
    if scope.targets:
        try:
            plan = engine.select(plan, scope.targets, engine.desired_addresses(desired, ctx.vms))
        except TargetError as e:
            if scope.saved is None:
                raise
            stale.append(e.message)
    plan_dict = plan.to_dict()
    paint = common.colour(sys.stdout)
    if scope.saved is not None:
        from reconciler import planfile

        stale += planfile.stale_reasons(
            scope.saved, plan_dict, commit=source.commit, digest=_digest(source)
        )
        if stale:
            return _stale(args.plan, stale)
    if args.dry_run:
        code = _report_dry_run(args, plan, plan_dict, paint)
        if args.out:
            return _save(args, scope, plan, plan_dict, source) or code
        return code
    # Nothing is applied whose ownership could not be recorded (StateError).
    state.check_writable()
    if args.output == "text":
        if scope.saved is not None:
            print(f"Saved plan {args.plan}: a fresh plan is identical; applying it.\n")
        # The plan first, then what is applied (the applied log lines follow it).
        _emit(plan_dict, "text", dry_run=False, colour=paint)
    result = _apply(args, desired, providers, plan, source, state)
    return _report_applied(args, plan_dict, result, paint)


def _digest(source: gitsource.Source) -> str | None:
    """The content digest a saved plan records when the commit does not pin the content
    (a plain directory, a dirty work tree), else None."""
    from reconciler import desired as desired_mod

    if source.commit is None or source.dirty:
        return desired_mod.content_digest(source.path)
    return None


def _save(
    args: argparse.Namespace,
    scope: Scope,
    plan: Plan,
    plan_dict: dict[str, Any],
    source: gitsource.Source,
) -> int:
    """Write the dry-run's plan to ``--out`` (:mod:`reconciler.planfile`); returns 0, or 1
    when it is not saved: a plan with errors or refused changes is never saved (a saved
    plan is applied whole)."""
    refused = sum(1 for c in plan.changes if c.refused)
    if plan.errors or refused:
        print(
            f"reconcile: the plan was not saved to {args.out}: it has {len(plan.errors)} "
            f"error(s) and {refused} refused change(s), and a saved plan is applied whole "
            "(fix them, or narrow the plan with --target or --only)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    from reconciler import planfile

    against = planfile.made_against(
        host=scope.host,
        commit=source.commit,
        digest=_digest(source),
        kinds=scope.kinds,
        targets=scope.targets,
        force=scope.force,
        allow_empty=scope.allow_empty,
        repo=args.repo,
        path=args.path,
    )
    planfile.write(Path(args.out), plan_dict, against)
    if args.output == "text":
        print(f"\nSaved the plan to {args.out}. Apply exactly it with: reconcile --plan {args.out}")
    return EXIT_OK


def _stale(path: str, reasons: Sequence[str]) -> int:
    """Refuse a stale saved plan: say what differs; nothing was applied. Returns 1."""
    print(f"reconcile: stale plan {path}: {reasons[0]}", file=sys.stderr)
    for reason in reasons[1:]:
        print(f"reconcile: stale plan {path}: {reason}", file=sys.stderr)
    print(
        "reconcile: nothing was applied; review a new plan: reconcile --dry-run --out FILE",
        file=sys.stderr,
    )
    return EXIT_ERROR


def _source_problem(args: argparse.Namespace, source: gitsource.Source) -> str | None:
    """Why the checked-out source cannot be used (not a directory; uncommitted changes
    without --allow-dirty, unless a dry-run), else None."""
    if not source.path.is_dir():
        return f"{source.path}: not a directory"
    if source.dirty and not args.dry_run and not args.allow_dirty:
        return (
            f"{args.repo} has uncommitted changes: commit them, or pass "
            "--allow-dirty to apply the work tree as it is; nothing was applied"
        )
    return None


def _controller_only(vms: dict[str, Any] | None, host: str) -> dict[str, Any] | None:
    """``vms`` if this host is the controller vms.yaml names, else None (logged)."""
    if vms is not None and vms["controller"] != host:
        # VM placement is cluster-wide: only the controller applies it.
        log.get().info(
            "vm_skipped",
            reason=f"this host ({host}) is not the controller ({vms['controller']}) "
            "named in vms.yaml",
        )
        return None
    return vms


def _plan(desired: HostDesired, providers: list[Provider], source: gitsource.Source) -> Plan:
    """Read live state and diff it; a failed fetch is the plan's first error."""
    source_errors = []
    if source.fetch_error is not None:
        source_errors.append(
            PlanError(
                "source",
                f"{source.fetch_error}; using the last good checkout {(source.commit or '?')[:12]}",
            )
        )
    plan, _ = engine.make_plan(desired, providers, source.commit)
    plan.errors[:0] = source_errors
    return plan


def _report_dry_run(
    args: argparse.Namespace, plan: Plan, plan_dict: dict[str, Any], colour: bool
) -> int:
    """Print the plan; exit 1 on errors or refused changes, 2 for pending changes with
    --detailed-exitcode, else 0."""
    _emit(plan_dict, args.output, dry_run=True, colour=colour)
    if plan.errors or any(c.refused for c in plan.changes):
        return EXIT_ERROR
    if plan.changes and args.detailed_exitcode:
        return EXIT_CHANGES
    return EXIT_OK


def _apply(
    args: argparse.Namespace,
    desired: HostDesired,
    providers: list[Provider],
    plan: Plan,
    source: gitsource.Source,
    state: StateDir,
) -> engine.RunResult:
    """Apply and verify the plan, record the applied commit and write the metrics. A state
    dir that cannot be written stops the run first (StateError): nothing is applied whose
    ownership could not be recorded (checked by the caller before the plan is shown)."""
    result = engine.apply_plan(desired, providers, plan, state)
    if source.repo is not None and source.commit is not None and not source.dirty:
        # The base of the next run's rewind check and verification: this commit was
        # accepted and applied (in part if some resources failed: they are retried).
        state.set_applied_commit(source.commit, args.repo)
    _write_metrics(args.metrics_file, state, result)
    return result


def _report_applied(
    args: argparse.Namespace, plan_dict: dict[str, Any], result: engine.RunResult, colour: bool
) -> int:
    """After the apply: the JSON document (the plan with what was applied and the errors),
    or in text (the plan was printed before) what was applied and the outcome. Exit 0 if
    all went well."""
    plan_dict["applied"] = result.applied
    plan_dict["apply_errors"] = [e.to_dict() for e in result.errors]
    if args.output == "json":
        _emit(plan_dict, "json", dry_run=False)
    else:
        _print_outcome(plan_dict, result, colour)
    return EXIT_OK if result.ok else EXIT_ERROR


def _write_metrics(option: str | None, state: StateDir, result: engine.RunResult) -> None:
    """Write the textfile metrics for this run; a failure is logged, never fails the run."""
    path = metrics.default_path() if option is None else (Path(option) if option else None)
    if path is None:
        return
    try:
        contents = state.runs()
        records = contents.records
        if result.record is not None and (not records or records[-1] != result.record):
            records.append(result.record)  # the journal write failed: still report this run
        checks = metrics.read_backup_checks(state.path)
        text = metrics.render(records, skipped_lines=len(contents.problems), backup_checks=checks)
        metrics.write_atomic(path, text)
    except Exception as e:  # any failure here must not turn an applied run into an error
        log.get().warning("metrics_not_written", path=str(path), error=str(e))


def _emit(plan: dict[str, object], output: str, *, dry_run: bool, colour: bool = False) -> None:
    """Print the plan dict to stdout, as text (in colour when ``colour``) or
    (``--output json``) JSON."""
    if output == "json":
        sys.stdout.write(render_json.render(plan))
    else:
        sys.stdout.write(render_text.render(plan, dry_run=dry_run, colour=colour))
    sys.stdout.flush()


def _print_outcome(plan: dict[str, Any], result: engine.RunResult, colour: bool) -> None:
    """The text output after an apply: what was applied, the apply errors, the outcome."""
    paint = render_text.paint
    actions = {c["address"]: c for c in plan["changes"]}
    if result.applied:
        print("\n" + paint("Applied:", render_text.BOLD, colour))
        for address in result.applied:
            action = actions.get(address, {}).get("action", "?")
            line = f"  {render_text.SYMBOL.get(action, '*')} {address}  {action}"
            print(render_text.by_symbol(line, colour))
    if result.errors:
        print("\n" + paint("Apply errors:", render_text.BOLD + render_text.RED, colour))
        for e in result.errors:
            print(paint(f"  {e.address}: {e.message}", render_text.RED, colour))
    if result.ok:
        n = len(result.applied)
        print(
            "\n"
            + paint(
                f"Applied {n} change(s); re-read and verified: live state matches git."
                if n
                else "Nothing to apply.",
                render_text.BOLD,
                colour,
            )
        )
    else:
        print(
            "\n"
            + paint(
                "Run finished with errors; the next run retries what is left.",
                render_text.BOLD + render_text.RED,
                colour,
            )
        )
    sys.stdout.flush()
