"""The ``nic`` kind: ring sizes and offloads of NICs, bridge ports included (``provider``);
ethtool's ioctls and rtnetlink (``ethtool``) are its I/O boundary, ``offloads`` its names."""

from __future__ import annotations

from typing import Any

from reconciler.kinds.base import Context, Kind, Provider
from reconciler.kinds.nic import against, checks, render


def _provider(ctx: Context) -> Provider:
    from reconciler.kinds.nic.provider import NicProvider

    return NicProvider()


def _live_class() -> type[Any]:
    from reconciler.kinds.nic.provider import NicLive

    return NicLive


KIND = Kind(
    name="nic",
    provider=_provider,
    live_class=_live_class,
    section="nics",
    check=checks.check,
    check_file=checks.check_file,
    load=checks.load,
    keeps_raw=True,
    op_lines=render.OP_LINES,
    against=against.changes,
)
