"""What the backup backends (tarsnap, restic) share: their error types and delete result.

The provider treats both backends alike through these: a :class:`BackendBusy` error means
"another process holds the backend, retry on the next run", and :class:`DeleteResult` says
what a batched deletion really did.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reconciler import runner
from reconciler.errors import CommandError, CommandNotFound, CommandTimeout, ProviderError

DEFAULT_TIMEOUT = 24 * 3600.0
"""Seconds one tarsnap or restic call may take when the set's config gives no ``timeout``.

Generous on purpose: a first backup over a slow uplink, or a ``restic prune`` that rewrites
packs, can take hours. A call still running after a day is hung (a stalled network, say),
not slow; killing it frees the backend's lock, and the reconcile run, which would otherwise
keep every other kind on the host from converging, carries on.
"""


class BackendError(ProviderError):
    """A backup backend failed for one backup set.

    ``stderr`` is what the backend's command printed; ``deleted`` lists archives that really
    went away during a failed deletion (found by re-listing), so the caller can record them.
    """

    def __init__(
        self,
        message: str,
        *,
        address: str | None = None,
        stderr: str = "",
        deleted: Sequence[str] = (),
    ) -> None:
        super().__init__(message, address=address)
        self.stderr = stderr
        self.deleted: tuple[str, ...] = tuple(deleted)


class BackendBusy(BackendError):
    """Another process holds the backend (a cache or repository lock): retry on a later run.

    Not a failure of the whole run: the set is skipped this time.
    """


@dataclass
class DeleteResult:
    """What a batched deletion did."""

    deleted: list[str] = field(default_factory=list)
    """Archives that are gone now (requested and no longer listed)."""
    missing: list[str] = field(default_factory=list)
    """Requested archives that did not exist before the call (already gone)."""
    calls: int = 0
    """Number of backend invocations (``tarsnap -d`` / ``restic forget``)."""


def run_backend(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float | None,
    error: type[BackendError],
    address: str,
    name: str,
    what: str,
) -> subprocess.CompletedProcess[bytes]:
    """Run one backend command (``name`` is tarsnap or restic) with no stdin and its output
    captured, through :func:`reconciler.runner.run`. A command that is not installed, cannot
    be started, or runs past ``timeout`` seconds (``None``: :data:`DEFAULT_TIMEOUT`; killed)
    raises ``error`` for ``address``; ``what`` names the call in the timeout message."""
    limit = DEFAULT_TIMEOUT if timeout is None else timeout
    try:
        return runner.run(argv, env=env, timeout=limit, address=address)
    except CommandNotFound as e:
        raise error(f"{name} command not found: {argv[0]}", address=address) from e
    except CommandTimeout as e:
        raise error(f"{name} did not finish within {limit:g} s: {what}", address=address) from e
    except CommandError as e:
        raise error(e.message, address=address) from e
