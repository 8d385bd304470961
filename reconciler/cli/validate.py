"""``reconcile validate``: check the whole desired-state repository, touch nothing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler import desired as desired_mod
from reconciler import gitsource
from reconciler.cli import common
from reconciler.cli.common import EXIT_ERROR, EXIT_OK
from reconciler.errors import HostConfigError, ReconcilerError


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile validate``."""
    p = argparse.ArgumentParser(
        prog="reconcile validate", description="Validate the whole desired-state repository."
    )
    common.add_repo(p, documented=False)
    common.add_config(p)
    return p


def run(argv: Sequence[str]) -> int:
    """``reconcile validate``: print every problem as file:line:column: path: message on
    stderr and exit 1, else print a one-line summary and exit 0. Nothing is applied.
    What the repository asks of the host is checked against the host configuration
    (``--config``); an unusable one is an error (exit 1)."""
    args = build_parser().parse_args(argv)
    try:
        config = common.host_config(args)
    except HostConfigError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    shown = Path(args.repo)
    try:
        # As a run reads it: a commit from its git objects, a work tree without symlinks
        # leaving it.
        with gitsource.open_local(shown, None) as source:
            repo = source.path
            problems = desired_mod.validate_repo(repo, config=config)
            hosts = len(desired_mod.list_hosts(repo))
    except ReconcilerError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found; nothing was applied.", file=sys.stderr)
        return EXIT_ERROR
    print(f"{shown}: valid ({hosts} host file(s))")
    return EXIT_OK
