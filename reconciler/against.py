"""What a commit changes for a host, without the host: desired state at a base revision vs now.

In CI the hosts are out of reach. With no live-state snapshot of a host, ``reconcile
--dry-run --against REV`` assumes the host matches the desired state at ``REV`` (it
converged there) and plans the difference, in the same plan format as a live run; each kind
says what that difference is (its ``against``, e.g. :mod:`reconciler.kinds.ipset.against`).
It is the change the commit *asks for*; what a host really needs can differ when it
drifted, which is what snapshots are for.

Pure functions over typed desired state, no I/O; ``before=None`` means the host (or the VM
controller's ``vms.yaml``) did not exist at the base.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler import kinds as registry
from reconciler.fielddiff import Memo
from reconciler.model import HostDesired
from reconciler.plan import Change

__all__ = ["Memo", "cluster_changes", "host_changes"]


def host_changes(
    before: HostDesired | None, after: HostDesired, kinds: set[str], memo: Memo | None = None
) -> list[Change]:
    """Every change the move from ``before`` to ``after`` asks of one host, kind by kind in
    registry order (``memo`` reuses a change between the same two spec objects)."""
    b = before or HostDesired(host=after.host)
    out: list[Change] = []
    for kind in registry.KINDS:
        if kind.name in kinds and kind.against is not None:
            out += kind.against(b, after, memo)
    return out


def cluster_changes(
    before: Mapping[str, Any] | None, after: Mapping[str, Any], kinds: set[str]
) -> list[Change]:
    """The changes of the cluster-wide kinds (VM placement) between two validated cluster
    desired states (``vms.yaml``), for the controller's plan."""
    out: list[Change] = []
    for kind in registry.KINDS:
        if kind.name in kinds and kind.cluster_against is not None:
            out += kind.cluster_against(before, after)
    return out
