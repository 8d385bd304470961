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
from typing import IO, TYPE_CHECKING, Any, NamedTuple, NoReturn

from reconciler import hostconfig, log
from reconciler import kinds as registry
from reconciler.cli.codes import EXIT_CHANGES as EXIT_CHANGES  # re-exported
from reconciler.cli.codes import EXIT_ERROR
from reconciler.cli.codes import EXIT_OK as EXIT_OK  # re-exported
from reconciler.errors import HostConfigError, RepositoryError, ValidationError
from reconciler.hostconfig import HostConfig
from reconciler.kinds.base import Context, IdleProvider, Provider
from reconciler.model import HostDesired

if TYPE_CHECKING:
    from reconciler.cache import DesiredCache

KINDS = registry.NAMES
DEFAULT_STATE_DIR = "/var/lib/reconciler"
DEFAULT_LOCK_FILE = "/run/reconciler.lock"


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit 1 (:data:`EXIT_ERROR`) with the usage
    line and the problem on stderr: exit 2 means "changes pending" (``--detailed-exitcode``),
    which a command line argparse rejects must never look like."""

    def error(self, message: str) -> NoReturn:
        """Print the usage line and ``message`` on stderr, then exit 1."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def colour(stream: IO[str]) -> bool:
    """Whether output to ``stream`` gets colour: only on a terminal, and never when
    ``NO_COLOR`` is set to anything but the empty string (https://no-color.org)."""
    if os.environ.get("NO_COLOR", ""):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _may_write(path: Path) -> bool:
    """Whether this user may create or change ``path`` (a file or directory): the path
    itself when it exists, else the nearest existing directory above it."""
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    mode = os.W_OK | os.X_OK if p.is_dir() else os.W_OK
    return os.access(p, mode)


def needs_root(
    kinds: Sequence[str], *, writes: Sequence[Path] = (), reads: Sequence[Path] = ()
) -> str | None:
    """Why a run of ``kinds`` by this (non-root) user cannot work, as the one-line message
    to print, or None (root, or nothing out of this user's reach). It needs root when a
    kind reads or changes what only root may (the kernel's network state:
    ``Kind.needs_root``), or a path it must write (the state dir, the lock file) or read is
    not this user's to write or read (``/var/lib/reconciler``, ``/run``)."""
    if os.geteuid() == 0:
        return None
    what: list[str] = []
    privileged = [k for k in kinds if registry.get(k).needs_root]
    if privileged:
        what.append(f"this host's {', '.join(privileged)} state in the kernel")
    what += [str(p) for p in writes if not _may_write(p)]
    what += [str(p) for p in reads if p.exists() and not os.access(p, os.R_OK | os.X_OK)]
    if not what:
        return None
    return f"needs root (it reads and changes {'; '.join(what)}); run it with sudo"


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


def add_cache(p: argparse.ArgumentParser, *, state_dir: bool = True) -> None:
    """Add ``--cache-dir DIR`` (default ``$RECONCILER_CACHE_DIR``, else, with
    ``state_dir``, the state dir's ``cache/``) and ``--no-cache``; see :func:`disk_cache`."""
    default = "the state dir's cache/" if state_dir else "none"
    p.add_argument(
        "--cache-dir",
        default=os.environ.get("RECONCILER_CACHE_DIR") or None,
        metavar="DIR",
        help="keep validated desired-state files here, keyed by content, so an unchanged "
        f"file is not parsed again (default: $RECONCILER_CACHE_DIR, else {default})",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="neither read nor write the desired-state cache"
    )


def disk_cache(args: argparse.Namespace, state_dir: Path | None) -> DesiredCache | None:
    """The desired-state cache the options ask for (:mod:`reconciler.cache`): none with
    ``--no-cache``; ``--cache-dir`` (created if missing); else ``<state_dir>/cache`` when
    ``state_dir`` is given and already exists (it is not created for this), read only by
    a dry-run (which writes nothing to the state dir). A directory that cannot be used
    safely (a symlink, not private) is not used, with a warning on stderr: the cache never
    decides whether a run can go on."""
    from reconciler.cache import DesiredCache
    from reconciler.errors import StateError

    if getattr(args, "no_cache", False):
        return None
    # One cache per run and directory: asked again (the load, then the trust check), the
    # same one, its counts whole. Kept on ``args``, whose life is the run's.
    opened: dict[Path | None, DesiredCache] = args.__dict__.setdefault("_disk_caches", {})
    explicit: str | None = getattr(args, "cache_dir", None)
    where = Path(explicit) if explicit else state_dir
    if where in opened:
        return opened[where]
    cache: DesiredCache | None
    if explicit:
        try:
            cache = DesiredCache(Path(explicit))
        except StateError as e:
            print(f"reconcile: warning: desired-state cache not used: {e}", file=sys.stderr)
            return None
    elif state_dir is None:
        return None
    else:
        dry_run = bool(getattr(args, "dry_run", False))
        cache = DesiredCache.in_state_dir(state_dir, read_only=dry_run)
    if cache is not None:  # None (no state dir yet): asked again once it exists
        opened[where] = cache
    return cache


def host_config_or_report(args: argparse.Namespace, prog: str) -> HostConfig | None:
    """The host configuration ``--config`` names (:func:`reconciler.hostconfig.load`), or
    None when it cannot be used, after saying why on stderr as ``PROG: reason`` (the command
    then exits :data:`EXIT_ERROR`)."""
    config: Path | None = args.config
    try:
        return hostconfig.load(config)
    except HostConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None


def configure_log(log_format: str) -> None:
    """Configure logging on stderr for a ``--log-format`` value."""
    log.configure(json_lines=None if log_format == "auto" else log_format == "json")


def short_hostname() -> str:
    """This machine's host name up to the first dot: the default ``--host``."""
    return socket.gethostname().split(".")[0]


def shown_repo(args: argparse.Namespace) -> str:
    """The desired-state directory as the user named it (``--repo``, with ``--path``)."""
    repo: str = args.repo
    path: str = getattr(args, "path", "") or ""
    return f"{repo.rstrip('/')}/{path}" if path else repo


class Loaded(NamedTuple):
    """A host's validated desired state for a run: ``desired``, ``vms.yaml`` (with the vm
    kind), the ``kinds`` to plan (those asked for, or for the VM controller without a host
    file only the cluster-wide ones) and ``note``, the warning that says so (else None)."""

    desired: HostDesired
    vms: dict[str, Any] | None
    kinds: list[str]
    note: str | None = None


def load_desired(
    repo: Path,
    host: str,
    kinds: Sequence[str],
    config: HostConfig | None = None,
    *,
    shown: str | None = None,
    disk_cache: DesiredCache | None = None,
) -> Loaded:
    """The host's desired state and (with the vm kind) vms.yaml, checked against the host
    configuration ``config`` (None: the defaults); ValidationError if bad.

    RepositoryError first when ``repo`` (named ``shown`` in the message) is not a
    desired-state repository, or the host has no ``hosts/<host>.yaml``. The one exception
    is the VM controller ``vms.yaml`` names: without a host file it is planned for the
    cluster-wide kind (``vm``) only, which is what vms.yaml names it for; its other kinds
    need the file (an empty ``{}``), and the result's ``note`` says so. ``disk_cache``:
    the desired-state cache to use (:func:`disk_cache`), or None."""
    from reconciler import desired as desired_mod  # not for ``--help``: loaded by a run

    desired_mod.check_repository(repo, shown)
    kinds = list(kinds)
    note = None
    if not desired_mod.has_host_file(repo, host):
        cluster = [k for k in kinds if registry.get(k).cluster]
        if not cluster or desired_mod.vms_controller(repo) != host:
            raise RepositoryError(desired_mod.missing_host_file(host))
        skipped = [k for k in kinds if k not in cluster]
        if skipped:
            note = desired_mod.controller_without_file(host, skipped)
            log.get().warning("kinds_skipped", host=host, kinds=skipped, reason=note)
        kinds = cluster
    desired = desired_mod.load_host(repo, host, config=config, disk_cache=disk_cache)
    cluster_wide = any(registry.get(k).cluster for k in kinds)
    vms = desired_mod.load_vms(repo, config=config) if cluster_wide else None
    return Loaded(desired, vms, kinds, note)


def providers(
    kinds: Sequence[str], ctx: Context, desired: HostDesired | None = None
) -> list[Provider]:
    """The providers of ``kinds``, in registry order; a kind with nothing to do here (vm
    off the controller) has none. Each kind imports its provider's modules only now, so a
    run limited to one kind pays only for that kind's imports. With ``desired`` (a run
    that plans it), a kind idle for it (:attr:`Kind.idle`) gets an
    :class:`~reconciler.kinds.base.IdleProvider`, importing nothing of the kind."""
    out: list[Provider] = []
    for kind in registry.KINDS:
        if kind.name not in kinds:
            continue
        if desired is not None and kind.idle is not None and kind.idle(desired, ctx):
            out.append(IdleProvider(kind.name))
            continue
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
