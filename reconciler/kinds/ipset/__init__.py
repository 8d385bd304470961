"""The ``ipset`` kind: management CIDRs in ``hash:net`` sets with the iptables rule that uses
each, updated in place by delta (``provider``); the kernel's ipset netlink protocol
(``netlink``) and the iptables calls (``firewall``) are its I/O boundary."""

from __future__ import annotations

from typing import Any

from reconciler.kinds.base import Context, Kind, LazyMapping, Provider, lazy


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
    check=lazy("reconciler.kinds.ipset.checks", "check"),
    load=lazy("reconciler.kinds.ipset.spec", "load"),
    op_lines=LazyMapping("reconciler.kinds.ipset.render", "OP_LINES"),
    log_events=lazy("reconciler.kinds.ipset.render", "log_events"),
    against=lazy("reconciler.kinds.ipset.against", "changes"),
)
