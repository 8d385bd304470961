"""The ``backup`` kind: backup sets on tarsnap or restic, and their retention.

``retention`` holds the pure retention decision (restic's ``forget`` policy applied to archive
names ``<set>-YYYYMMDD-HHMMSS``) that every backend obeys; the backends (``tarsnap``,
``restic``) list, create and delete.
"""

from __future__ import annotations

import os
from typing import Any

from reconciler.kinds.base import Context, Kind, LazyMapping, Provider, lazy
from reconciler.model import HostDesired


def _provider(ctx: Context) -> Provider:
    from reconciler.kinds.backup.provider import BackupProvider

    now = ctx.now
    # The programs run are the host's (ctx.host.commands), never the repository's; the
    # state dir records when each set was last checked.
    return BackupProvider(
        clock=None if now is None else (lambda: now),
        commands=ctx.host.commands,
        state=ctx.state,
    )


#: The state dir's record of backup checks (:mod:`.checkstate`), named here so that
#: :func:`_idle` needs nothing else of the kind.
CHECKS_FILE = "backup-checks.json"


def _idle(desired: HostDesired, ctx: Context) -> bool:
    """No set desired, and no check record a run would drop (the provider's
    ``forget_vanished`` drops those of sets gone from git)."""
    if desired.raw.get("backups"):
        return False
    return ctx.state is None or not os.path.lexists(ctx.state.path / CHECKS_FILE)


def _live_class() -> type[Any]:
    from reconciler.kinds.backup.provider import BackupLive

    return BackupLive


KIND = Kind(
    name="backup",
    provider=_provider,
    live_class=_live_class,
    section="backups",
    check=lazy("reconciler.kinds.backup.checks", "check"),
    check_host=lazy("reconciler.kinds.backup.checks", "check_host"),
    check_host_file=lazy("reconciler.kinds.backup.checks", "check_host_file"),
    # ``command`` stays a key of the settings (a repository may still write the host's own
    # command); the command run is always the host configuration's.
    settings={"tarsnap": {"command": "tarsnap"}},
    op_lines=LazyMapping("reconciler.kinds.backup.render", "OP_LINES"),
    against=lazy("reconciler.kinds.backup.against", "changes"),
    scheduled=True,
    needs_root=False,  # tarsnap/restic with what the host configuration allows
    idle=_idle,
)
