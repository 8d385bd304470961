"""``reconcile snapshot``: write this host's live state to a JSON file for the CI dry-run."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import __version__, gitsource
from reconciler.cli import common
from reconciler.cli.codes import EXIT_ERROR, EXIT_OK
from reconciler.errors import ReconcilerError, ValidationError
from reconciler.hostconfig import HostConfig
from reconciler.kinds import base
from reconciler.kinds.base import Context
from reconciler.lock import RunLock
from reconciler.model import HostDesired
from reconciler.state import StateDir

if TYPE_CHECKING:
    from reconciler.snapshot import Snapshot


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``reconcile snapshot``."""
    p = common.Parser(
        prog="reconcile snapshot",
        description="Write this host's live state (read only, nothing changed) to a JSON file "
        "that 'reconcile --dry-run --snapshots DIR' plans against in CI.",
    )
    common.add_repo(p, documented=False)
    common.add_path(p, documented=False)
    common.add_host(p, documented=False)
    common.add_only(p, documented=False)
    common.add_state_dir(p, documented=False)
    common.add_lock_file(p, documented=False)
    common.add_wait(p, 60.0, documented=False)
    common.add_config(p)
    p.add_argument(
        "--output", "-o", metavar="FILE", help="where to write it (default: ./<host>.json)"
    )
    common.add_log_format(p, documented=False)
    return p


def run(argv: Sequence[str]) -> int:
    """``reconcile snapshot``: read every kind's live state and write it atomically.

    The desired state (a local path; the timer's clone is ``<state-dir>/source``) tells the
    providers what to read; NICs are read wide (every physical NIC) so a commit that adds a
    NIC can still be planned. A kind that cannot be read is recorded as an error in the
    snapshot (exit 1), the others are written. The programs run to read (tarsnap, restic)
    are the host configuration's (``--config``).
    """
    from reconciler import snapshot

    args = build_parser().parse_args(argv)
    common.configure_log(args.log_format)
    config = common.host_config_or_report(args, "reconcile snapshot")
    if config is None:
        return EXIT_ERROR
    host = args.host or common.short_hostname()
    kinds = args.only or list(common.KINDS)
    out = Path(args.output or f"{host}.json")
    why = common.needs_root(kinds, writes=[Path(args.lock_file)], reads=[Path(args.state_dir)])
    if why is not None:
        print(f"reconcile snapshot: {why}", file=sys.stderr)
        return EXIT_ERROR
    try:
        # Taken so the snapshot never shows a half-applied run.
        with RunLock(Path(args.lock_file), wait=args.wait), contextlib.ExitStack() as stack:
            source = stack.enter_context(gitsource.open_local(Path(args.repo), None, args.path))
            try:
                loaded = common.load_desired(
                    source.path, host, kinds, config, shown=common.shown_repo(args)
                )
            except ValidationError as e:
                return common.invalid(e)
            if loaded.note is not None:
                print(f"reconcile snapshot: warning: {loaded.note}", file=sys.stderr)
            snap = _read(
                args, stack, source, host, loaded.kinds, loaded.desired, loaded.vms, config
            )
            snapshot.write_snapshot(out, snap)
    except ReconcilerError as e:
        print(f"reconcile snapshot: {e}", file=sys.stderr)
        return EXIT_ERROR
    for kind, message in snap.errors.items():
        print(f"reconcile snapshot: {kind}: {message}", file=sys.stderr)
    print(f"{out}: snapshot of {host} ({', '.join(sorted(snap.lives)) or 'nothing'})")
    return EXIT_ERROR if snap.errors else EXIT_OK


def _read(
    args: argparse.Namespace,
    stack: contextlib.ExitStack[Any],
    source: gitsource.Source,
    host: str,
    kinds: Sequence[str],
    desired: HostDesired,
    vms: dict[str, Any] | None,
    config: HostConfig,
) -> Snapshot:
    """Read the live state of every kind (a kind's read error is recorded, not raised).
    Providers use the state dir if there is one, else a scratch one, and the host
    configuration ``config``; nothing is changed."""
    from reconciler import snapshot

    if vms is not None and vms["controller"] != host:
        vms = None
    state = StateDir(Path(args.state_dir), create=False) if Path(args.state_dir).is_dir() else None
    scratch = StateDir(Path(stack.enter_context(tempfile.TemporaryDirectory())))
    ctx = Context(state=state or scratch, vms=vms, repo=source.path, host=config)
    lives: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for p in common.providers(kinds, ctx):
        try:
            lives[p.kind] = p.read(base.snapshot_scope(p, desired))
        except ReconcilerError as e:
            errors[p.kind] = e.message
    commit = state.applied_commit() if state is not None else None
    return snapshot.Snapshot(
        host=host,
        created=datetime.now(UTC),
        commit=commit or source.clean_commit,
        tool_version=__version__,
        lives=lives,
        errors=errors,
    )
