"""The ``nic`` kind: ring sizes and offloads of NICs, bridge ports included (``provider``);
ethtool's ioctls and rtnetlink (``ethtool``) are its I/O boundary, ``offloads`` its names."""

from __future__ import annotations

from typing import Any

from reconciler.kinds.base import Context, Kind, LazyMapping, Provider, lazy
from reconciler.model import HostDesired


def _provider(ctx: Context) -> Provider:
    from reconciler.kinds.nic.provider import NicProvider

    return NicProvider()


def _idle(desired: HostDesired, ctx: Context) -> bool:
    """No NIC desired: nothing is read (the provider records nothing of its own)."""
    return not desired.nics


def _live_class() -> type[Any]:
    from reconciler.kinds.nic.provider import NicLive

    return NicLive


KIND = Kind(
    name="nic",
    provider=_provider,
    live_class=_live_class,
    section="nics",
    check=lazy("reconciler.kinds.nic.checks", "check"),
    check_file=lazy("reconciler.kinds.nic.checks", "check_file"),
    load=lazy("reconciler.kinds.nic.checks", "load"),
    keeps_raw=True,
    op_lines=LazyMapping("reconciler.kinds.nic.render", "OP_LINES"),
    against=lazy("reconciler.kinds.nic.against", "changes"),
    idle=_idle,
)
