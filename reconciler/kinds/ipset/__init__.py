"""The ``ipset`` kind: management CIDRs in ``hash:net`` sets with the iptables rule that uses
each, updated in place by delta (``provider``); the kernel's ipset netlink protocol
(``netlink``) and the iptables calls (``firewall``) are its I/O boundary."""

from __future__ import annotations

from typing import Any

from reconciler.kinds.base import Context, Kind, Provider
from reconciler.kinds.ipset import against, checks, render


def _provider(ctx: Context) -> Provider:
    from reconciler.kinds.ipset.provider import IpsetProvider

    return IpsetProvider(ctx.state, force=ctx.force, allow_empty=ctx.allow_empty)


def _live_class() -> type[Any]:
    from reconciler.kinds.ipset.provider import IpsetLive

    return IpsetLive


KIND = Kind(
    name="ipset",
    provider=_provider,
    live_class=_live_class,
    section="ipsets",
    check=checks.check,
    load=checks.load,
    op_lines=render.OP_LINES,
    log_events=render.log_events,
    against=against.changes,
)
