"""The ``backup`` kind: backup sets on tarsnap or restic, and their retention.

``retention`` holds the pure retention decision (restic's ``forget`` policy applied to archive
names ``<set>-YYYYMMDD-HHMMSS``) that every backend obeys; the backends (``tarsnap``,
``restic``) list, create and delete.
"""

from __future__ import annotations

from typing import Any

from reconciler.kinds.backup import against, checks, render
from reconciler.kinds.base import Context, Kind, Provider


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


def _live_class() -> type[Any]:
    from reconciler.kinds.backup.provider import BackupLive

    return BackupLive


KIND = Kind(
    name="backup",
    provider=_provider,
    live_class=_live_class,
    section="backups",
    check=checks.check,
    check_host=checks.check_host,
    check_host_file=checks.check_host_file,
    # ``command`` stays a key of the settings (a repository may still write the host's own
    # command); the command run is always the host configuration's.
    settings={"tarsnap": {"command": "tarsnap"}},
    op_lines=render.OP_LINES,
    against=against.changes,
    scheduled=True,
    needs_root=False,  # tarsnap/restic with what the host configuration allows
)
