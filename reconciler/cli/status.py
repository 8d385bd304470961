"""``reconcile status``: the last runs, the applied commit and the drift, from the journal."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler import journal
from reconciler.cli import common
from reconciler.cli.codes import EXIT_ERROR, EXIT_OK
from reconciler.errors import StateError
from reconciler.render import status as render_status
from reconciler.state import StateDir


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile status``."""
    p = common.Parser(
        prog="reconcile status",
        description="Show the last runs, the applied commit and the drift seen, "
        "from the run journal in the state dir.",
    )
    common.add_state_dir(p)
    p.add_argument(
        "--last", type=_positive_int, default=10, metavar="N", help="runs to show (default 10)"
    )
    p.add_argument("--output", choices=("text", "json"), default="text")
    return p


def _positive_int(value: str) -> int:
    """``--last``'s type: an integer of at least 1, else ``argparse.ArgumentTypeError``."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


def run(argv: Sequence[str]) -> int:
    """``reconcile status``: the last runs, the applied commit and the drift, from the journal.

    Exit 0 when the journal could be read (also when no run is recorded yet, or some lines
    had to be skipped: those are warned about on stderr); 1 when the state dir is missing or
    unreadable, or ``ours.json`` is corrupt.
    """
    args = build_parser().parse_args(argv)
    path = Path(args.state_dir)
    if os.geteuid() != 0 and path.is_dir() and _owner(path) == 0:
        # root's state dir (the timer's): only root may trust it, and read it.
        print(
            f"reconcile status: needs root (it reads {path}, which is root's); run it with sudo",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        state = StateDir(path, create=False)
        contents = state.runs()
    except StateError as e:
        print(f"reconcile status: {e}", file=sys.stderr)
        return EXIT_ERROR
    for problem in contents.problems:
        print(f"reconcile status: warning: {state.journal.path}: {problem}", file=sys.stderr)
    runs = [r for r in contents.records if not r.get("dry_run")]
    shown = runs[-args.last :]
    try:
        owned = {k: sorted(v) for k, v in state.ours_all().items() if v}
        ours_error = None
    except StateError as e:
        owned, ours_error = {}, e.message
    _write(args.output, state, contents, runs, shown, owned)
    if ours_error is not None:
        print(f"reconcile status: {ours_error}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _write(
    output: str,
    state: StateDir,
    contents: journal.JournalContents,
    runs: list[dict[str, Any]],
    shown: list[dict[str, Any]],
    owned: dict[str, list[str]],
) -> None:
    """Print the status to stdout, as text or (``--output json``) one JSON document."""
    success = journal.last_success(runs)
    drift = journal.drift_events(shown)
    if output == "json":
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
