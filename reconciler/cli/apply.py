"""Command line: argument parsing and exit codes; nothing else.

Exit codes (DESIGN.md section 2): 0 success (nothing to do, or everything applied and
verified); 1 error (invalid desired state, a failed or refused operation, a lock held by
another run); 2 changes pending, only with ``--detailed-exitcode`` and ``--dry-run``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import __version__, engine, gitsource, journal, log, metrics, trust
from reconciler import desired as desired_mod
from reconciler import kinds as registry
from reconciler.errors import (
    ReconcilerError,
    SourceError,
    StateError,
    ValidationError,
    VerifyError,
)
from reconciler.kinds import base
from reconciler.kinds.base import Context, Provider
from reconciler.lock import RunLock
from reconciler.model import HostDesired
from reconciler.plan import PlanError
from reconciler.render import json as render_json
from reconciler.render import status as render_status
from reconciler.render import text as render_text
from reconciler.state import StateDir

KINDS = registry.NAMES
EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
DEFAULT_STATE_DIR = "/var/lib/reconciler"
DEFAULT_LOCK_FILE = "/run/reconciler.lock"


def _kinds(value: str) -> list[str]:
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind {', '.join(bad) or repr(value)} (choose from {', '.join(KINDS)})"
        )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile [options]``."""
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
    p.add_argument(
        "--repo",
        default=os.environ.get("RECONCILER_REPO", "."),
        help="desired-state directory or git URL (default: $RECONCILER_REPO or .); a URL is "
        "cloned into the state dir and fetched on every run",
    )
    p.add_argument(
        "--ref",
        help="branch, tag or commit to use (default: a URL's default branch; a local work "
        "tree as it is)",
    )
    p.add_argument(
        "--path",
        default=os.environ.get("RECONCILER_PATH", ""),
        metavar="SUBDIR",
        help="the desired state's directory inside the repository (default: its top)",
    )
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="apply a local work tree with uncommitted changes (recorded as <commit>+dirty)",
    )
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
        help="fingerprints of the signers this host trusts, one per line "
        f"(default: $RECONCILER_SIGNER_PINS or {trust.DEFAULT_PINS})",
    )
    p.add_argument(
        "--host",
        default=os.environ.get("RECONCILER_HOST"),
        help="host name (default: $RECONCILER_HOST or the short hostname)",
    )
    p.add_argument("--only", type=_kinds, help=f"comma-separated kinds: {','.join(KINDS)}")
    p.add_argument("--output", choices=("text", "json"), default="text")
    ci = p.add_argument_group(
        "CI dry-run (no host is contacted; needs --dry-run)",
        "Plan hosts from a CI checkout: against each host's snapshot (reconcile snapshot), "
        "else against the desired state at --against REV.",
    )
    ci.add_argument("--all-hosts", action="store_true", help="plan every hosts/*.yaml")
    ci.add_argument(
        "--snapshots",
        metavar="DIR",
        help="directory of <host>.json live-state snapshots written by 'reconcile snapshot'",
    )
    ci.add_argument(
        "--against",
        metavar="REV",
        help="plan hosts without a snapshot against the desired state at git revision REV",
    )
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="with --dry-run: exit 2 when changes are pending",
    )
    p.add_argument(
        "--lock-file",
        default=os.environ.get("RECONCILER_LOCK_FILE", DEFAULT_LOCK_FILE),
        help=f"default: $RECONCILER_LOCK_FILE or {DEFAULT_LOCK_FILE}",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for another run to release the lock (default 0)",
    )
    p.add_argument(
        "--state-dir",
        default=os.environ.get("RECONCILER_STATE_DIR", DEFAULT_STATE_DIR),
        help=f"default: $RECONCILER_STATE_DIR or {DEFAULT_STATE_DIR}",
    )
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
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="log format on stderr (default: console on a terminal, else JSON lines)",
    )
    return p


def build_validate_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile validate``."""
    p = argparse.ArgumentParser(
        prog="reconcile validate", description="Validate the whole desired-state repository."
    )
    p.add_argument("--repo", default=os.environ.get("RECONCILER_REPO", "."))
    return p


def build_status_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile status``."""
    p = argparse.ArgumentParser(
        prog="reconcile status",
        description="Show the last runs, the applied commit and the drift seen, "
        "from the run journal in the state dir.",
    )
    p.add_argument(
        "--state-dir",
        default=os.environ.get("RECONCILER_STATE_DIR", DEFAULT_STATE_DIR),
        help=f"default: $RECONCILER_STATE_DIR or {DEFAULT_STATE_DIR}",
    )
    p.add_argument(
        "--last", type=_positive_int, default=10, metavar="N", help="runs to show (default 10)"
    )
    p.add_argument("--output", choices=("text", "json"), default="text")
    return p


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _providers(kinds: Sequence[str], ctx: Context) -> list[Provider]:
    """The providers of ``kinds``, in registry order; a kind with nothing to do here (vm
    off the controller) has none. Each kind imports its provider's modules only now, so a
    run limited to one kind pays only for that kind's imports."""
    out: list[Provider] = []
    for kind in registry.KINDS:
        if kind.name in kinds:
            provider = kind.provider(ctx)
            if provider is not None:
                out.append(provider)
    return out


def cmd_validate(argv: Sequence[str]) -> int:
    """``reconcile validate``: print every problem as file:line:column: path: message."""
    args = build_validate_parser().parse_args(argv)
    repo = Path(args.repo)
    if not repo.is_dir():
        print(f"reconcile: {repo}: not a directory", file=sys.stderr)
        return EXIT_ERROR
    problems = desired_mod.validate_repo(repo)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found; nothing was applied.", file=sys.stderr)
        return EXIT_ERROR
    print(f"{repo}: valid ({len(desired_mod.list_hosts(repo))} host file(s))")
    return EXIT_OK


def cmd_reconcile(argv: Sequence[str]) -> int:
    """``reconcile [options]``: plan, and unless --dry-run apply and verify."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(json_lines=None if args.log_format == "auto" else args.log_format == "json")
    if args.all_hosts or args.against or args.snapshots:
        if not args.dry_run:
            parser.error("--all-hosts, --snapshots and --against plan only: add --dry-run")
        return cmd_ci(args)
    host = args.host or _short_hostname()
    kinds = args.only or list(KINDS)
    loaded = None
    try:
        with contextlib.ExitStack() as stack:
            remote = gitsource.is_url(args.repo)
            if not remote:
                source = stack.enter_context(
                    gitsource.open_local(Path(args.repo), args.ref, args.path)
                )
                # A local desired state is validated before anything is read from, or
                # written to, the host: not even the state dir or lock file is created.
                try:
                    loaded = _load(source.path, host, kinds)
                except ValidationError as e:
                    return _invalid(e)
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
            return _run(args, host, kinds, source, state, loaded)
    except ReconcilerError as e:
        # StateError (corrupt ours.json ...), LockHeldError, SourceError ...: the message
        # says it all.
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR


def _load(repo: Path, host: str, kinds: Sequence[str]) -> tuple[HostDesired, dict[str, Any] | None]:
    """The host's desired state and (with the vm kind) vms.yaml; ValidationError if bad."""
    desired = desired_mod.load_host(repo, host)
    vms = desired_mod.load_vms(repo) if "vm" in kinds else None
    return desired, vms


def _accept_source(
    args: argparse.Namespace,
    source: gitsource.Source,
    state: StateDir,
    stack: contextlib.ExitStack[Any],
) -> VerifyError | None:
    """Check the rewind rule and signatures of the source's target; check out a clone's
    target once accepted. Returns the refusal (nothing is checked out then), else None."""
    target = source.target or source.clean_commit
    if source.repo is None or target is None:
        if args.require_signed:
            return VerifyError(
                f"signed commits are required but {args.repo} is not a git repository with "
                "a commit: nothing can be verified"
            )
        return None
    if source.fetch_error is not None:
        return None  # the last good checkout was accepted when it was checked out
    try:
        decision = trust.decide(
            source.repo,
            source.subdir,
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
    if source.url is not None and source.commit != target:
        if args.dry_run:
            # A dry-run plans the target from an export: the clone's checkout stays the last
            # one a real run accepted.
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reconciler-")))
            gitsource.export_tree(source.repo, target, source.subdir, tmp)
            source.path, source.commit = tmp, target
        else:
            gitsource.checkout(source, target)
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
    loaded: tuple[HostDesired, dict[str, Any] | None] | None,
) -> int:
    """Plan, and unless --dry-run apply. ``loaded`` is the desired state when it was
    validated before the lock (a local source); a fetched one is loaded here."""
    logger = log.get()
    repo = source.path
    if not repo.is_dir():
        print(f"reconcile: {repo}: not a directory", file=sys.stderr)
        return EXIT_ERROR
    if source.dirty and not args.dry_run and not args.allow_dirty:
        print(
            f"reconcile: {args.repo} has uncommitted changes: commit them, or pass "
            "--allow-dirty to apply the work tree as it is; nothing was applied",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        # Validate before anything is read from the host (a fetched commit is checked here).
        desired, vms = loaded if loaded is not None else _load(repo, host, kinds)
    except ValidationError as e:
        return _invalid(e)
    if vms is not None and vms["controller"] != host:
        # VM placement is cluster-wide: only the controller applies it.
        logger.info(
            "vm_skipped",
            reason=f"this host ({host}) is not the controller ({vms['controller']}) "
            "named in vms.yaml",
        )
        vms = None
    source_errors = []
    if source.fetch_error is not None:
        source_errors.append(
            PlanError(
                "source",
                f"{source.fetch_error}; using the last good checkout {(source.commit or '?')[:12]}",
            )
        )
    providers = _providers(kinds, Context(state=state, force=args.force, vms=vms, repo=repo))
    plan, _ = engine.make_plan(desired, providers, source.commit)
    plan.errors[:0] = source_errors
    plan_dict = plan.to_dict()
    if args.dry_run:
        _emit(plan_dict, args.output, dry_run=True)
        if plan.errors or any(c.refused for c in plan.changes):
            return EXIT_ERROR
        if plan.changes and args.detailed_exitcode:
            return EXIT_CHANGES
        return EXIT_OK
    result = engine.apply_plan(desired, providers, plan, state)
    if source.repo is not None and source.commit is not None and not source.dirty:
        # The base of the next run's rewind check and verification: this commit was
        # accepted and applied (in part if some resources failed: they are retried).
        state.set_applied_commit(source.commit, args.repo)
    _write_metrics(args.metrics_file, state, result)
    plan_dict["applied"] = result.applied
    plan_dict["apply_errors"] = [e.to_dict() for e in result.errors]
    _emit(plan_dict, args.output, dry_run=False)
    if args.output == "text":
        _print_outcome(result)
    return EXIT_OK if result.ok else EXIT_ERROR


def cmd_ci(args: argparse.Namespace) -> int:
    """The CI dry-run (:mod:`reconciler.ci`): exit 1 on an invalid repository or any host's
    errors, 2 with --detailed-exitcode when something would change, else 0."""
    from reconciler import ci

    if gitsource.is_url(args.repo):
        print(
            "reconcile: the CI dry-run reads a checkout: pass its path as --repo", file=sys.stderr
        )
        return EXIT_ERROR
    kinds = args.only or list(KINDS)
    try:
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(gitsource.open_local(Path(args.repo), args.ref, args.path))
            base = None
            if args.against:
                if source.repo is None:
                    raise SourceError(
                        f"--against {args.against}: {args.repo} is not in a git repository"
                    )
                rev = gitsource.resolve(source.repo, args.against)
                tmp = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="reconciler-base-"))
                )
                gitsource.export_tree(source.repo, rev, source.subdir, tmp)
                base = tmp
            hosts = None if args.all_hosts else [args.host or _short_hostname()]
            result = ci.plan_all(
                source.path,
                hosts,
                kinds,
                commit=source.commit,
                base=base,
                base_rev=args.against,
                snapshots=Path(args.snapshots) if args.snapshots else None,
            )
    except ReconcilerError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    if result.problems:
        return _invalid(ValidationError(result.problems))
    if args.output == "json":
        doc = {
            "format_version": 1,
            "commit": source.commit,
            "against": args.against,
            "hosts": result.plans,
            "summary": {"hosts": len(result.plans), "changes": result.changes},
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(ci.render_text(result, source.commit))
    sys.stdout.flush()
    if result.failed:
        return EXIT_ERROR
    if result.changes and args.detailed_exitcode:
        return EXIT_CHANGES
    return EXIT_OK


def build_snapshot_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile snapshot``."""
    p = argparse.ArgumentParser(
        prog="reconcile snapshot",
        description="Write this host's live state (read only, nothing changed) to a JSON file "
        "that 'reconcile --dry-run --snapshots DIR' plans against in CI.",
    )
    p.add_argument("--repo", default=os.environ.get("RECONCILER_REPO", "."))
    p.add_argument("--path", default=os.environ.get("RECONCILER_PATH", ""), metavar="SUBDIR")
    p.add_argument("--host", default=os.environ.get("RECONCILER_HOST"))
    p.add_argument("--only", type=_kinds)
    p.add_argument(
        "--state-dir",
        default=os.environ.get("RECONCILER_STATE_DIR", DEFAULT_STATE_DIR),
    )
    p.add_argument(
        "--lock-file",
        default=os.environ.get("RECONCILER_LOCK_FILE", DEFAULT_LOCK_FILE),
    )
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS")
    p.add_argument(
        "--output", "-o", metavar="FILE", help="where to write it (default: ./<host>.json)"
    )
    p.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
    return p


def cmd_snapshot(argv: Sequence[str]) -> int:
    """``reconcile snapshot``: read every kind's live state and write it atomically.

    The desired state (a local path; the timer's clone is ``<state-dir>/source``) tells the
    providers what to read; NICs are read wide (every physical NIC) so a commit that adds a
    NIC can still be planned. A kind that cannot be read is recorded as an error in the
    snapshot (exit 1), the others are written.
    """
    from reconciler import snapshot

    args = build_snapshot_parser().parse_args(argv)
    log.configure(json_lines=None if args.log_format == "auto" else args.log_format == "json")
    host = args.host or _short_hostname()
    kinds = args.only or list(KINDS)
    out = Path(args.output or f"{host}.json")
    try:
        # Taken so the snapshot never shows a half-applied run.
        with RunLock(Path(args.lock_file), wait=args.wait), contextlib.ExitStack() as stack:
            source = stack.enter_context(gitsource.open_local(Path(args.repo), None, args.path))
            try:
                desired = desired_mod.load_host(source.path, host)
                vms = desired_mod.load_vms(source.path) if "vm" in kinds else None
            except ValidationError as e:
                return _invalid(e)
            if vms is not None and vms["controller"] != host:
                vms = None
            state = (
                StateDir(Path(args.state_dir), create=False)
                if Path(args.state_dir).is_dir()
                else None
            )
            scratch = StateDir(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            ctx = Context(state=state or scratch, vms=vms, repo=source.path)
            providers = _providers(kinds, ctx)
            lives: dict[str, Any] = {}
            errors: dict[str, str] = {}
            for p in providers:
                try:
                    lives[p.kind] = p.read(base.snapshot_scope(p, desired))
                except ReconcilerError as e:
                    errors[p.kind] = e.message
            commit = state.applied_commit() if state is not None else None
            snap = snapshot.Snapshot(
                host=host,
                created=datetime.now(UTC),
                commit=commit or source.clean_commit,
                tool_version=__version__,
                lives=lives,
                errors=errors,
            )
            snapshot.write_snapshot(out, snap)
    except ReconcilerError as e:
        print(f"reconcile snapshot: {e}", file=sys.stderr)
        return EXIT_ERROR
    for kind, message in errors.items():
        print(f"reconcile snapshot: {kind}: {message}", file=sys.stderr)
    print(f"{out}: snapshot of {host} ({', '.join(sorted(lives)) or 'nothing'})")
    return EXIT_ERROR if errors else EXIT_OK


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


def cmd_status(argv: Sequence[str]) -> int:
    """``reconcile status``: the last runs, the applied commit and the drift, from the journal.

    Exit 0 when the journal could be read (also when no run is recorded yet, or some lines
    had to be skipped: those are warned about on stderr); 1 when the state dir is missing or
    unreadable, or ``ours.json`` is corrupt.
    """
    args = build_status_parser().parse_args(argv)
    try:
        state = StateDir(Path(args.state_dir), create=False)
        contents = state.runs()
    except StateError as e:
        print(f"reconcile status: {e}", file=sys.stderr)
        return EXIT_ERROR
    for problem in contents.problems:
        print(f"reconcile status: warning: {state.journal.path}: {problem}", file=sys.stderr)
    runs = [r for r in contents.records if not r.get("dry_run")]
    shown = runs[-args.last :]
    success = journal.last_success(runs)
    drift = journal.drift_events(shown)
    try:
        owned = {k: sorted(v) for k, v in state.ours_all().items() if v}
        ours_error = None
    except StateError as e:
        owned, ours_error = {}, e.message
    if args.output == "json":
        doc = {
            "state_dir": str(state.path),
            "total_runs": len(runs),
            "applied": None
            if success is None
            else {"commit": success.get("commit"), "finished": success.get("finished")},
            "runs": shown,
            "drift": [d.to_dict() for d in drift],
            "owned": owned,
            "journal_problems": [{"line": p.line, "message": p.message} for p in contents.problems],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_status.render(state.path, runs, shown, success, drift, owned))
    sys.stdout.flush()
    if ours_error is not None:
        print(f"reconcile status: {ours_error}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _invalid(e: ValidationError) -> int:
    """Report every problem of an invalid desired state; nothing was applied."""
    for p in e.problems:
        print(p, file=sys.stderr)
    print(f"{len(e.problems)} problem(s) found; nothing was applied.", file=sys.stderr)
    return EXIT_ERROR


def _emit(plan: dict[str, object], output: str, *, dry_run: bool) -> None:
    if output == "json":
        sys.stdout.write(render_json.render(plan))
    else:
        sys.stdout.write(render_text.render(plan, dry_run=dry_run))
    sys.stdout.flush()


def _print_outcome(result: engine.RunResult) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reconcile`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["validate"]:
            return cmd_validate(argv[1:])
        if argv[:1] == ["status"]:
            return cmd_status(argv[1:])
        if argv[:1] == ["snapshot"]:
            return cmd_snapshot(argv[1:])
        return cmd_reconcile(argv)
    except KeyboardInterrupt:
        print("reconcile: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
