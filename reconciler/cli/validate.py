"""``reconcile validate``: check the whole desired-state repository, touch nothing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler import gitsource
from reconciler import kinds as registry
from reconciler.cli import common
from reconciler.cli.codes import EXIT_ERROR, EXIT_OK
from reconciler.errors import ReconcilerError, RepositoryError


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile validate``."""
    p = common.Parser(
        prog="reconcile validate", description="Validate the whole desired-state repository."
    )
    common.add_repo(p, documented=False)
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="also require hosts/NAME.yaml, as a run for that host does (repeatable)",
    )
    common.add_config(p)
    common.add_cache(p, state_dir=False)
    return p


def _host_note(repo: Path, host: str) -> str | None:
    """None when ``hosts/<host>.yaml`` exists; for the VM controller without one, the
    warning its run gives (VM placement only); RepositoryError for any other host."""
    from reconciler import desired as desired_mod

    if desired_mod.has_host_file(repo, host):
        return None
    if desired_mod.vms_controller(repo) == host:
        others = [k.name for k in registry.KINDS if not k.cluster]
        return desired_mod.controller_without_file(host, others)
    raise RepositoryError(desired_mod.missing_host_file(host))


def run(argv: Sequence[str]) -> int:
    """``reconcile validate``: print every problem as file:line:column: path: message on
    stderr and exit 1, else print a one-line summary and exit 0. Nothing is applied.
    A directory with neither ``fleet.yaml`` nor ``hosts/`` is an error, and so is a
    ``--host NAME`` without ``hosts/NAME.yaml`` (unless NAME is the VM controller
    ``vms.yaml`` names: a warning then says it is planned for VM placement only). What
    the repository asks of the host is checked against the host configuration
    (``--config``); an unusable one is an error (exit 1)."""
    args = build_parser().parse_args(argv)
    # Imported once the options are parsed: ``validate --help`` loads no schema code.
    from reconciler import desired as desired_mod

    config = common.host_config_or_report(args, "reconcile")
    if config is None:
        return EXIT_ERROR
    shown = Path(args.repo)
    try:
        # As a run reads it: a commit from its git objects, a work tree without symlinks
        # leaving it.
        with gitsource.open_local(shown, None) as source:
            repo = source.path
            desired_mod.check_repository(repo, str(shown))
            notes = [_host_note(repo, host) for host in args.host]
            problems = desired_mod.validate_repo(
                repo, config=config, disk_cache=common.disk_cache(args, None)
            )
            hosts = len(desired_mod.list_hosts(repo))
    except ReconcilerError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found; nothing was applied.", file=sys.stderr)
        return EXIT_ERROR
    for note in notes:
        if note is not None:
            print(f"reconcile: warning: {note}", file=sys.stderr)
    print(f"{shown}: valid ({hosts} host file(s))")
    return EXIT_OK
