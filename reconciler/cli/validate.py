"""``reconcile validate``: check the whole desired-state repository, touch nothing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler import desired as desired_mod
from reconciler.cli import common
from reconciler.cli.common import EXIT_ERROR, EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile validate``."""
    p = argparse.ArgumentParser(
        prog="reconcile validate", description="Validate the whole desired-state repository."
    )
    common.add_repo(p, documented=False)
    return p


def run(argv: Sequence[str]) -> int:
    """``reconcile validate``: print every problem as file:line:column: path: message on
    stderr and exit 1, else print a one-line summary and exit 0. Nothing is applied."""
    args = build_parser().parse_args(argv)
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
