"""What several subcommands share: exit codes, defaults, shared options and small helpers.

Exit codes (docs/cli.md): 0 success (nothing to do, or everything applied and verified);
1 error (invalid desired state, a failed or refused operation, a lock held by another run);
2 changes pending, only with ``--detailed-exitcode`` and ``--dry-run``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler import desired as desired_mod
from reconciler import hostconfig, log
from reconciler import kinds as registry
from reconciler.errors import ValidationError
from reconciler.hostconfig import HostConfig
from reconciler.kinds.base import Context, Provider
from reconciler.model import HostDesired

KINDS = registry.NAMES
EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
DEFAULT_STATE_DIR = "/var/lib/reconciler"
DEFAULT_LOCK_FILE = "/run/reconciler.lock"


def parse_kinds(value: str) -> list[str]:
    """The kinds named in a comma-separated ``--only`` value, each one of the registry's;
    ``argparse.ArgumentTypeError`` for an unknown kind or an empty list."""
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind {', '.join(bad) or repr(value)} (choose from {', '.join(KINDS)})"
        )
    return kinds


# The options several subcommands take. Each is defined once here; ``documented=False``
# leaves it out of a subcommand's help text (where that subcommand never described it).


def add_repo(p: argparse.ArgumentParser, *, documented: bool = True) -> None:
    """Add ``--repo`` (default ``$RECONCILER_REPO`` or ``.``)."""
    p.add_argument(
        "--repo",
        default=os.environ.get("RECONCILER_REPO", "."),
        help=(
            "desired-state directory or git URL (default: $RECONCILER_REPO or .); a URL is "
            "cloned into the state dir and fetched on every run"
            if documented
            else None
        ),
    )


def add_path(p: argparse.ArgumentParser, *, documented: bool = True) -> None:
    """Add ``--path SUBDIR`` (default ``$RECONCILER_PATH`` or the repository's top)."""
    p.add_argument(
        "--path",
        default=os.environ.get("RECONCILER_PATH", ""),
        metavar="SUBDIR",
        help=(
            "the desired state's directory inside the repository (default: its top)"
            if documented
            else None
        ),
    )


def add_host(p: argparse.ArgumentParser, *, documented: bool = True) -> None:
    """Add ``--host`` (default ``$RECONCILER_HOST``, else None: see :func:`short_hostname`)."""
    p.add_argument(
        "--host",
        default=os.environ.get("RECONCILER_HOST"),
        help="host name (default: $RECONCILER_HOST or the short hostname)" if documented else None,
    )


def add_only(p: argparse.ArgumentParser, *, documented: bool = True) -> None:
    """Add ``--only KINDS`` (parsed by :func:`parse_kinds`; default None: every kind)."""
    p.add_argument(
        "--only",
        type=parse_kinds,
        help=f"comma-separated kinds: {','.join(KINDS)}" if documented else None,
    )


def add_state_dir(p: argparse.ArgumentParser, *, documented: bool = True) -> None:
    """Add ``--state-dir`` (default ``$RECONCILER_STATE_DIR`` or :data:`DEFAULT_STATE_DIR`)."""
    p.add_argument(
        "--state-dir",
        default=os.environ.get("RECONCILER_STATE_DIR", DEFAULT_STATE_DIR),
        help=f"default: $RECONCILER_STATE_DIR or {DEFAULT_STATE_DIR}" if documented else None,
    )


def add_lock_file(p: argparse.ArgumentParser, *, documented: bool = True) -> None:
    """Add ``--lock-file`` (default ``$RECONCILER_LOCK_FILE`` or :data:`DEFAULT_LOCK_FILE`)."""
    p.add_argument(
        "--lock-file",
        default=os.environ.get("RECONCILER_LOCK_FILE", DEFAULT_LOCK_FILE),
        help=f"default: $RECONCILER_LOCK_FILE or {DEFAULT_LOCK_FILE}" if documented else None,
    )


def add_wait(p: argparse.ArgumentParser, default: float, *, documented: bool = True) -> None:
    """Add ``--wait SECONDS``, how long to wait for the run lock (default ``default``)."""
    p.add_argument(
        "--wait",
        type=float,
        default=default,
        metavar="SECONDS",
        help=(
            f"wait up to SECONDS for another run to release the lock (default {default:g})"
            if documented
            else None
        ),
    )


def add_log_format(p: argparse.ArgumentParser, *, documented: bool = True) -> None:
    """Add ``--log-format`` (auto, console or json; default auto); see :func:`configure_log`."""
    p.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help=(
            "log format on stderr (default: console on a terminal, else JSON lines)"
            if documented
            else None
        ),
    )


def add_config(p: argparse.ArgumentParser, *, documented: bool = True) -> None:
    """Add ``--config FILE``, the host configuration (default ``$RECONCILER_CONFIG``, else
    :data:`reconciler.hostconfig.DEFAULT_PATH` if it exists); read by :func:`host_config`."""
    p.add_argument(
        "--config",
        type=Path,
        default=hostconfig.default_path(),
        metavar="FILE",
        help=(
            "host configuration: the commands run, the directories the repository may name "
            f"files in (default: $RECONCILER_CONFIG, else {hostconfig.DEFAULT_PATH} if it "
            "exists; never read from the repository)"
            if documented
            else None
        ),
    )


def host_config(args: argparse.Namespace) -> HostConfig:
    """The host configuration ``--config`` names (:func:`reconciler.hostconfig.load`);
    raises :class:`~reconciler.errors.HostConfigError` when it cannot be used."""
    config: Path | None = args.config
    return hostconfig.load(config)


def configure_log(log_format: str) -> None:
    """Configure logging on stderr for a ``--log-format`` value."""
    log.configure(json_lines=None if log_format == "auto" else log_format == "json")


def short_hostname() -> str:
    """This machine's host name up to the first dot: the default ``--host``."""
    return socket.gethostname().split(".")[0]


def load_desired(
    repo: Path, host: str, kinds: Sequence[str], config: HostConfig | None = None
) -> tuple[HostDesired, dict[str, Any] | None]:
    """The host's desired state and (with the vm kind) vms.yaml, checked against the host
    configuration ``config`` (None: the defaults); ValidationError if bad."""
    desired = desired_mod.load_host(repo, host, config=config)
    vms = desired_mod.load_vms(repo, config=config) if "vm" in kinds else None
    return desired, vms


def providers(kinds: Sequence[str], ctx: Context) -> list[Provider]:
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


def invalid(e: ValidationError) -> int:
    """Print every problem of an invalid desired state and a summary on stderr; returns
    :data:`EXIT_ERROR` (nothing was applied)."""
    for p in e.problems:
        print(p, file=sys.stderr)
    print(f"{len(e.problems)} problem(s) found; nothing was applied.", file=sys.stderr)
    return EXIT_ERROR
