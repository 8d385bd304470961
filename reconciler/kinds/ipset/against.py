"""What a commit changes in a host's ipsets, without the host (the CI dry-run's plan
against a base revision): member deltas, settings, sets created and dropped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.cidr import sort_networks
from reconciler.fielddiff import Memo, field_ops
from reconciler.kinds.ipset.spec import is_tombstone
from reconciler.model import HostDesired, IpsetSpec
from reconciler.plan import Action, Change, Op, member_ops


def spec_summary(spec: IpsetSpec) -> dict[str, Any]:
    """The plan's ``after`` summary of a desired set (members as a count)."""
    return {
        "type": spec.type,
        "family": spec.family,
        "maxelem": spec.maxelem,
        "hashsize": spec.hashsize,
        "members": len(spec.members),
    }


def _summary(spec: IpsetSpec) -> dict[str, Any]:
    """The provider's summary of a set, plus its firewall rule (a change a commit can make)."""
    fw = spec.firewall
    rule = (
        None
        if fw is None
        else {"chain": fw.chain, "target": fw.target, "in_interface": fw.in_interface}
    )
    return {**spec_summary(spec), "firewall": rule}


def changes(before: HostDesired, after: HostDesired, memo: Memo | None = None) -> list[Change]:
    """The host's ipset changes from ``before`` to ``after`` (see :func:`ipset_changes`)."""
    return ipset_changes(before.ipsets, after.ipsets, memo)


def ipset_changes(
    before: Mapping[str, IpsetSpec], after: Mapping[str, IpsetSpec], memo: Memo | None = None
) -> list[Change]:
    """Sets created, deleted (pruned when reconciler created them) and updated.

    ``memo`` (kept by the caller while the specs are alive) reuses the change between the
    same two spec objects: every host sharing fleet.yaml's 5,000-CIDR set has the same one.
    """
    out: list[Change] = []
    for name in sorted(before.keys() | after.keys()):
        b, a = before.get(name), after.get(name)
        if b is a:  # the same object: both from one cached fleet.yaml
            continue
        found, change = memo.get(b, a) if memo is not None else (False, None)
        if not found:
            change = ipset_change(name, b, a)
            if memo is not None:
                memo.put(b, a, change)
        if change is not None:
            out.append(change)
    return out


def ipset_change(name: str, b: IpsetSpec | None, a: IpsetSpec | None) -> Change | None:
    """The change of one set from ``b`` to ``a`` (None: absent), None when they are equal.

    A tombstone (``absent: true``) is no set: a set that becomes one is deleted (on the host
    if it exists there), one that was one and is defined again is created.
    """
    if b == a:
        return None
    tombstone = is_tombstone(a)
    if is_tombstone(b):
        b = None
    if tombstone:
        a = None
    if b is None and a is None:
        return None  # a tombstone added or removed: nothing on a converged host
    if a is None:
        assert b is not None
        if tombstone:
            note = "marked absent: deleted on the host with the rules reconciler inserted for it"
        else:
            note = (
                "deleted on the host only if reconciler created it (ours.json); refused "
                "there while an ACCEPT rule we manage uses it: mark it `absent: true`"
            )
        op = Op("destroy_set", {"set": name})
        return Change("ipset", name, "delete", (op,), _summary(b), None, None, (note,))
    summary = _summary(a)
    if b is None:
        ops = [Op("create_set", {"set": name, "type": a.type, "family": a.family})]
        ops += member_ops("add_member", sort_networks(a.members))
        return Change("ipset", name, "create", tuple(ops), None, summary)
    bs, as_ = _summary(b), summary
    ops = field_ops(
        {k: v for k, v in bs.items() if k != "members"},
        {k: v for k, v in as_.items() if k != "members"},
        {"set": name},
    )
    action: Action = "update"
    if b.type != a.type or b.family != a.family:
        action = "replace"
    ops += member_ops("add_member", sort_networks(a.members - b.members))
    ops += member_ops("delete_member", sort_networks(b.members - a.members))
    return Change("ipset", name, action, tuple(ops), bs, as_)
