"""Real libvirt daemons for a test module (lab/libvirtd.py), started once per module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pytest

from lab.libvirtd import Node, libvirt_daemons, reason_unavailable


@contextlib.contextmanager
def started_nodes(names: Sequence[str]) -> Iterator[dict[str, Node]]:
    """One libvirtd per name (``{name: Node}``) for the block, or a skip saying why they
    cannot start. libvirt-python prints every error to stderr by default; the tests expect
    some errors and report the ones they do not, so printing is off meanwhile."""
    reason = reason_unavailable()
    if reason is not None:
        pytest.skip(f"cannot start real libvirt daemons: {reason}")
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        with libvirt_daemons(names) as started:
            yield started
    finally:
        libvirt.registerErrorHandler(None, None)
