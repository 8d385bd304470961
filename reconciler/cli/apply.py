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
from typing import TYPE_CHECKING, Any

from reconciler import engine, gitsource, journal, log, metrics, trust
from reconciler.cli import ci_dryrun, common
from reconciler.cli.common import EXIT_CHANGES, EXIT_ERROR, EXIT_OK
from reconciler.errors import (
    HostConfigError,
    ReconcilerError,
    StateError,
    ValidationError,
    VerifyError,
)
from reconciler.hostconfig import HostConfig
from reconciler.kinds.base import Context, Provider
from reconciler.lock import RunLock
from reconciler.model import HostDesired
from reconciler.plan import Plan, PlanError
from reconciler.render import json as render_json
from reconciler.render import text as render_text
from reconciler.state import StateDir

if TYPE_CHECKING:
    import git

Loaded = tuple[HostDesired, dict[str, Any] | None]


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile [options]``, the CI dry-run's options included."""
    p = argparse.ArgumentParser(
        prog="reconcile",
        description="Converge this host to the desired state in git. "
        "Use 'reconcile validate' to check the desired state only, "
        "'reconcile status' to see the last runs and drift.",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read live state and print the plan; never write to the host",
    )
    _add_source_options(p)
    _add_trust_options(p)
    common.add_host(p)
    common.add_only(p)
    p.add_argument("--output", choices=("text", "json"), default="text")
    ci_dryrun.add_options(p)
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="with --dry-run: exit 2 when changes are pending",
    )
    common.add_lock_file(p)
    common.add_wait(p, 0.0)
    common.add_state_dir(p)
    common.add_config(p)
    _add_run_options(p)
    common.add_log_format(p)
    return p


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
    """``--metrics-file`` and ``--force``."""
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


def run(argv: Sequence[str]) -> int:
    """``reconcile [options]``: plan, and unless --dry-run apply and verify. Returns the exit
    code: 0 done (or nothing to do), 1 on any error or refusal, 2 for pending changes with
    ``--dry-run --detailed-exitcode``. The CI dry-run options hand over to
    :func:`reconciler.cli.ci_dryrun.run` (a usage error without ``--dry-run``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    common.configure_log(args.log_format)
    if ci_dryrun.requested(args) and not args.dry_run:
        parser.error("--all-hosts, --snapshots and --against plan only: add --dry-run")
    try:
        # The host decides what runs and which host files may be named: read once, first.
        config = common.host_config(args)
    except HostConfigError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    if ci_dryrun.requested(args):
        return ci_dryrun.run(args, config)
    host = args.host or common.short_hostname()
    kinds = args.only or list(common.KINDS)
    try:
        return _reconcile(args, host, kinds, config)
    except ReconcilerError as e:
        # StateError (corrupt ours.json ...), LockHeldError, SourceError ...: the message
        # says it all.
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR


def _reconcile(args: argparse.Namespace, host: str, kinds: list[str], config: HostConfig) -> int:
    """Open the source, take the lock, accept the target, then plan (and apply) it, with
    the host configuration ``config``."""
    loaded = None
    with contextlib.ExitStack() as stack:
        remote = gitsource.is_url(args.repo)
        if not remote:
            source = stack.enter_context(gitsource.open_local(Path(args.repo), args.ref, args.path))
            # A local desired state is validated before anything is read from, or
            # written to, the host: not even the state dir or lock file is created.
            try:
                loaded = common.load_desired(source.path, host, kinds, config)
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
        return _run(args, host, kinds, source, state, loaded, config)


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
        refusal = _verify(args, source.repo, source.subdir, state, target)
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


def _verify(
    args: argparse.Namespace, repo: git.Repo, subdir: str, state: StateDir, target: str
) -> VerifyError | None:
    """Apply the rewind rule and the signature policy to ``target`` (:func:`trust.decide`);
    returns the refusal, else None (the verified commits are logged)."""
    try:
        decision = trust.decide(
            repo,
            subdir,
            state.applied_commit(),
            target,
            pins_path=Path(args.signer_pins),
            require_signed=args.require_signed,
            allow_rewind=args.allow_rewind,
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
    host: str,
    kinds: list[str],
    source: gitsource.Source,
    state: StateDir,
    loaded: Loaded | None,
    config: HostConfig,
) -> int:
    """Plan, and unless --dry-run apply. ``loaded`` is the desired state when it was
    validated before the lock (a local source); a fetched one is loaded here. ``config``
    is the host configuration: the checks of the desired state and the providers use it."""
    problem = _source_problem(args, source)
    if problem is not None:
        print(f"reconcile: {problem}", file=sys.stderr)
        return EXIT_ERROR
    try:
        # Validate before anything is read from the host (a fetched commit is checked here).
        desired, vms = (
            loaded if loaded is not None else common.load_desired(source.path, host, kinds, config)
        )
    except ValidationError as e:
        return common.invalid(e)
    ctx = Context(
        state=state,
        force=args.force,
        vms=_controller_only(vms, host),
        repo=source.path,
        host=config,
    )
    providers = common.providers(kinds, ctx)
    plan = _plan(desired, providers, source)
    plan_dict = plan.to_dict()
    if args.dry_run:
        return _report_dry_run(args, plan, plan_dict)
    result = _apply(args, desired, providers, plan, source, state)
    return _report_applied(args, plan_dict, result)


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


def _report_dry_run(args: argparse.Namespace, plan: Plan, plan_dict: dict[str, Any]) -> int:
    """Print the plan; exit 1 on errors or refused changes, 2 for pending changes with
    --detailed-exitcode, else 0."""
    _emit(plan_dict, args.output, dry_run=True)
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
    ownership could not be recorded."""
    state.check_writable()
    result = engine.apply_plan(desired, providers, plan, state)
    if source.repo is not None and source.commit is not None and not source.dirty:
        # The base of the next run's rewind check and verification: this commit was
        # accepted and applied (in part if some resources failed: they are retried).
        state.set_applied_commit(source.commit, args.repo)
    _write_metrics(args.metrics_file, state, result)
    return result


def _report_applied(
    args: argparse.Namespace, plan_dict: dict[str, Any], result: engine.RunResult
) -> int:
    """Print the plan with what was applied and the errors; exit 0 if all went well."""
    plan_dict["applied"] = result.applied
    plan_dict["apply_errors"] = [e.to_dict() for e in result.errors]
    _emit(plan_dict, args.output, dry_run=False)
    if args.output == "text":
        _print_outcome(result)
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
        metrics.write_atomic(path, metrics.render(records, skipped_lines=len(contents.problems)))
    except Exception as e:  # any failure here must not turn an applied run into an error
        log.get().warning("metrics_not_written", path=str(path), error=str(e))


def _emit(plan: dict[str, object], output: str, *, dry_run: bool) -> None:
    """Print the plan dict to stdout, as text or (``--output json``) JSON."""
    if output == "json":
        sys.stdout.write(render_json.render(plan))
    else:
        sys.stdout.write(render_text.render(plan, dry_run=dry_run))
    sys.stdout.flush()


def _print_outcome(result: engine.RunResult) -> None:
    """The text output's closing lines: the apply errors, then what was applied."""
    if result.errors:
        print("\nApply errors:")
        for e in result.errors:
            print(f"  {e.address}: {e.message}")
    if result.ok:
        n = len(result.applied)
        print(
            f"\nApplied {n} change(s); re-read and verified: live state matches git."
            if n
            else "\nNothing to apply."
        )
    else:
        print("\nRun finished with errors; the next run retries what is left.")
