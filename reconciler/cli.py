"""Command line: argument parsing and exit codes; nothing else.

Exit codes (DESIGN.md section 2): 0 success (nothing to do, or everything applied and
verified); 1 error (invalid desired state, a failed or refused operation, a lock held by
another run); 2 changes pending, only with ``--detailed-exitcode`` and ``--dry-run``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler import desired as desired_mod
from reconciler import engine, log
from reconciler.errors import ReconcilerError, ValidationError
from reconciler.lock import RunLock
from reconciler.providers.base import Provider
from reconciler.render import json as render_json
from reconciler.render import text as render_text
from reconciler.state import StateDir

KINDS = ("ipset", "nic", "backup", "vm")
IMPLEMENTED = ("ipset", "nic", "backup", "vm")
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
        "Use 'reconcile validate' to check the desired state only.",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read live state and print the plan; never write to the host",
    )
    p.add_argument(
        "--repo",
        default=os.environ.get("RECONCILER_REPO", "."),
        help="desired-state directory (default: $RECONCILER_REPO or .)",
    )
    p.add_argument("--ref", help="git revision to use (git sources: not implemented yet)")
    p.add_argument(
        "--host",
        default=os.environ.get("RECONCILER_HOST"),
        help="host name (default: $RECONCILER_HOST or the short hostname)",
    )
    p.add_argument("--only", type=_kinds, help=f"comma-separated kinds: {','.join(KINDS)}")
    p.add_argument("--output", choices=("text", "json"), default="text")
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


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _commit_of(repo: Path) -> str | None:
    if not (repo / ".git").exists():
        return None
    proc = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _providers(
    kinds: Sequence[str],
    state: StateDir,
    force: bool,
    vms: dict[str, Any] | None = None,
    repo: Path | None = None,
) -> list[Provider]:
    # Imported here so a run limited to one kind pays only for that kind's imports.
    out: list[Provider] = []
    if "ipset" in kinds:
        from reconciler.providers.ipset import IpsetProvider

        out.append(IpsetProvider(state, force=force))
    if "nic" in kinds:
        from reconciler.providers.nic import NicProvider

        out.append(NicProvider())
    if "backup" in kinds:
        from reconciler.providers.backup.provider import BackupProvider

        out.append(BackupProvider())
    if "vm" in kinds and vms is not None and repo is not None:
        from reconciler.providers.vm import VmProvider

        out.append(VmProvider(vms, repo))
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
    args = build_parser().parse_args(argv)
    log.configure(json_lines=None if args.log_format == "auto" else args.log_format == "json")
    logger = log.get()
    repo = Path(args.repo)
    if args.ref or "://" in args.repo:
        print(
            "reconcile: git sources (--ref, URLs) are not implemented yet; "
            "pass a local directory with --repo",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if not repo.is_dir():
        print(f"reconcile: {repo}: not a directory", file=sys.stderr)
        return EXIT_ERROR
    host = args.host or _short_hostname()
    kinds = args.only or list(KINDS)
    try:
        # Validate before anything is read from, or written to, the host.
        desired = desired_mod.load_host(repo, host)
    except ValidationError as e:
        return _invalid(e)
    vms = None
    if "vm" in kinds:
        try:
            vms = desired_mod.load_vms(repo)
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
    for kind in kinds:
        if kind not in IMPLEMENTED and desired.raw.get(f"{kind}s"):
            logger.warning(
                "kind_not_implemented",
                kind=kind,
                note="desired state validated but not reconciled by this version",
            )
    commit = _commit_of(repo)
    try:
        with RunLock(Path(args.lock_file), wait=args.wait):
            state = StateDir(Path(args.state_dir))
            providers = _providers(kinds, state, args.force, vms, repo)
            plan, _ = engine.make_plan(desired, providers, commit)
            plan_dict = plan.to_dict()
            if args.dry_run:
                _emit(plan_dict, args.output, dry_run=True)
                if plan.errors or any(c.refused for c in plan.changes):
                    return EXIT_ERROR
                if plan.changes and args.detailed_exitcode:
                    return EXIT_CHANGES
                return EXIT_OK
            result = engine.apply_plan(desired, providers, plan, state)
    except ReconcilerError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    plan_dict["applied"] = result.applied
    plan_dict["apply_errors"] = [e.to_dict() for e in result.errors]
    _emit(plan_dict, args.output, dry_run=False)
    if args.output == "text":
        _print_outcome(result)
    return EXIT_OK if result.ok else EXIT_ERROR


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
        return cmd_reconcile(argv)
    except KeyboardInterrupt:
        print("reconcile: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
