"""The CI dry-run, ``reconcile --dry-run --all-hosts/--snapshots/--against``: plan hosts
from a checkout (:mod:`reconciler.ci`); no host is contacted."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import desired as desired_mod
from reconciler import gitsource
from reconciler.cli import common
from reconciler.cli.common import EXIT_CHANGES, EXIT_ERROR, EXIT_OK
from reconciler.errors import ReconcilerError, SourceError, ValidationError

if TYPE_CHECKING:
    from reconciler.ci import CiResult
    from reconciler.hostconfig import HostConfig


def add_options(p: argparse.ArgumentParser) -> None:
    """Add the CI dry-run's options (``--all-hosts``, ``--snapshots``, ``--against``), as a
    group of the ``reconcile`` command's parser."""
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


def requested(args: argparse.Namespace) -> bool:
    """Whether the command line asks for the CI dry-run (any of its options is given)."""
    return bool(args.all_hosts or args.against or args.snapshots)


def run(args: argparse.Namespace, config: HostConfig | None = None) -> int:
    """The CI dry-run of a parsed ``reconcile --dry-run`` command line: exit 1 on an invalid
    repository or any host's errors, 2 with --detailed-exitcode when something would change,
    else 0. ``--repo`` must be a local checkout. ``config`` is the host configuration the
    desired state is checked against (None: the defaults); nothing from the repository
    runs."""
    if gitsource.is_url(args.repo):
        print(
            "reconcile: the CI dry-run reads a checkout: pass its path as --repo", file=sys.stderr
        )
        return EXIT_ERROR
    kinds = args.only or list(common.KINDS)
    try:
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(gitsource.open_local(Path(args.repo), args.ref, args.path))
            desired_mod.check_repository(source.path, common.shown_repo(args))
            base = _export_against(args, source, stack)
            result = _plan(args, source, kinds, base, config)
    except ReconcilerError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    if result.problems:
        return common.invalid(ValidationError(result.problems))
    _write(args, result, source.commit)
    if result.failed:
        return EXIT_ERROR
    if result.changes and args.detailed_exitcode:
        return EXIT_CHANGES
    return EXIT_OK


def _export_against(
    args: argparse.Namespace, source: gitsource.Source, stack: contextlib.ExitStack[Any]
) -> Path | None:
    """With ``--against REV``: the desired state at REV, read from git objects into a
    temporary directory that lives as long as ``stack``; else None."""
    if not args.against:
        return None
    if source.repo is None:
        raise SourceError(f"--against {args.against}: {args.repo} is not in a git repository")
    rev = gitsource.resolve(source.repo, args.against)
    return gitsource.materialized(source.repo, rev, source.subdir, stack)


def _plan(
    args: argparse.Namespace,
    source: gitsource.Source,
    kinds: Sequence[str],
    base: Path | None,
    config: HostConfig | None = None,
) -> CiResult:
    """Plan every host (``--all-hosts``) or this one, against the host configuration
    ``config``."""
    from reconciler import ci

    hosts = None if args.all_hosts else [args.host or common.short_hostname()]
    return ci.plan_all(
        source.path,
        hosts,
        kinds,
        commit=source.commit,
        base=base,
        base_rev=args.against,
        snapshots=Path(args.snapshots) if args.snapshots else None,
        config=config,
    )


def _write(args: argparse.Namespace, result: CiResult, commit: str | None) -> None:
    """Print the plans to stdout, as text or (``--output json``) one JSON document."""
    from reconciler import ci

    if args.output == "json":
        doc = {
            "format_version": 1,
            "commit": commit,
            "against": args.against,
            "hosts": result.plans,
            "summary": {
                "hosts": len(result.plans),
                "changes": result.changes,
                "errors": result.errors,
            },
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(ci.render_text(result, commit, colour=common.colour(sys.stdout)))
    sys.stdout.flush()
