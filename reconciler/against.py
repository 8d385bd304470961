"""What a commit changes for a host, without the host: desired state at a base revision vs now.

In CI the hosts are out of reach. With no live-state snapshot of a host, ``reconcile
--dry-run --against REV`` assumes the host matches the desired state at ``REV`` (it
converged there) and plans the difference, in the same plan format as a live run; each kind
says what that difference is (its ``against``, e.g. :mod:`reconciler.kinds.ipset.against`).
It is the change the commit *asks for*; what a host really needs can differ when it
drifted, which is what snapshots are for.

Pure functions over typed desired state, no I/O; ``before=None`` means the host (or the VM
controller's ``vms.yaml``) did not exist at the base.

:func:`changed_hosts` decides which hosts need planning at all (the incremental CI dry-run):
from the two revisions' file listings (path -> blob id, read from git objects by the
caller), conservatively: only a change confined to host files spares the other hosts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler import desired as desired_mod
from reconciler import kinds as registry
from reconciler.fielddiff import Memo
from reconciler.model import HostDesired
from reconciler.plan import Change

__all__ = ["Memo", "changed_hosts", "cluster_changes", "host_changes", "host_of"]


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


def host_of(path: str) -> str | None:
    """The host whose file ``path`` (relative to the desired-state root) is, or None when it
    is no host file: exactly ``hosts/<host>.yaml`` with a valid short host name."""
    head, sep, name = path.partition("/")
    if head != desired_mod.HOSTS_DIR or not sep or "/" in name or not name.endswith(".yaml"):
        return None
    host = name.removesuffix(".yaml")
    return host if desired_mod.valid_host_name(host) else None


def changed_hosts(before: Mapping[str, str], after: Mapping[str, str]) -> frozenset[str] | None:
    """The hosts whose inputs differ between two listings of the desired-state tree (each
    ``{path: blob id}``, every file of the tree), or None when every host must be planned.

    A host's own input is its file ``hosts/<host>.yaml``; every other file (``fleet.yaml``,
    ``vms.yaml``, ``vms/*.xml``, member lists, key files, a stray file in ``hosts/``, even a
    README) may be read for any host, so a change to any of them returns None. A host file
    added, removed or changed names its host. Identical listings return the empty set.
    """
    hosts: set[str] = set()
    for path in before.keys() | after.keys():
        if before.get(path) == after.get(path):
            continue
        host = host_of(path)
        if host is None:
            return None
        hosts.add(host)
    return frozenset(hosts)
