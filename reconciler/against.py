"""What a commit changes for a host, without the host: desired state at a base revision vs now.

In CI the hosts are out of reach. With no live-state snapshot of a host, ``reconcile
--dry-run --against REV`` assumes the host matches the desired state at ``REV`` (it
converged there) and plans the difference, in the same plan format as a live run: member
deltas of ipsets, the ring and offload settings of NICs, the settings of backup sets, and the
placement, VNC port and state of VMs. It is the change the commit *asks for*; what a host
really needs can differ when it drifted, which is what snapshots are for.

Pure functions over typed desired state, no I/O; ``before=None`` means the host (or the VM
controller's ``vms.yaml``) did not exist at the base.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from reconciler.cidr import sort_key
from reconciler.kinds.ipset.provider import spec_summary
from reconciler.model import HostDesired, IpsetSpec
from reconciler.plan import Action, Change, Op

NOT_MANAGED = "no longer in git: reconciler stops managing it and leaves its settings as they are"


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"rings": {"rx": 1}}`` -> ``{"rings.rx": 1}``: settings compared one by one."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _field_ops(
    before: Mapping[str, Any], after: Mapping[str, Any], target: dict[str, Any]
) -> list[Op]:
    b, a = _flat(before), _flat(after)
    return [
        Op("set_field", {**target, "field": f, "from": b.get(f), "to": a.get(f)})
        for f in sorted(b.keys() | a.keys())
        if b.get(f) != a.get(f)
    ]


def _ipset_summary(spec: IpsetSpec) -> dict[str, Any]:
    """The provider's summary of a set, plus its firewall rule (a change a commit can make)."""
    fw = spec.firewall
    rule = (
        None
        if fw is None
        else {"chain": fw.chain, "target": fw.target, "in_interface": fw.in_interface}
    )
    return {**spec_summary(spec), "firewall": rule}


class Memo:
    """The last few ipset changes computed, by the identity of their two specs.

    Entries hold the specs themselves, so an id is never reused while its entry exists (a
    hit is checked by identity), and only ``size`` entries are kept: the pairs shared by
    every host (fleet.yaml's set at both revisions) stay, per-host pairs pass through.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[int, int], tuple[object, object, Change | None]] = (
            OrderedDict()
        )

    def get(self, b: object, a: object) -> tuple[bool, Change | None]:
        """(found, change) for the pair ``b``, ``a``."""
        entry = self._entries.get((id(b), id(a)))
        if entry is None or entry[0] is not b or entry[1] is not a:
            return False, None
        self._entries.move_to_end((id(b), id(a)))
        return True, entry[2]

    def put(self, b: object, a: object, change: Change | None) -> None:
        """Remember ``change`` for the pair."""
        self._entries[(id(b), id(a))] = (b, a, change)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


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
    """The change of one set from ``b`` to ``a`` (None: absent), None when they are equal."""
    if b == a:
        return None
    if a is None:
        assert b is not None
        note = "deleted on the host only if reconciler created it (ours.json)"
        op = Op("destroy_set", {"set": name})
        return Change("ipset", name, "delete", (op,), _ipset_summary(b), None, None, (note,))
    summary = _ipset_summary(a)
    if b is None:
        ops = [Op("create_set", {"set": name, "type": a.type, "family": a.family})]
        ops += [Op("add_member", {"member": m}) for m in sorted(a.members, key=sort_key)]
        return Change("ipset", name, "create", tuple(ops), None, summary)
    bs, as_ = _ipset_summary(b), summary
    ops = _field_ops(
        {k: v for k, v in bs.items() if k != "members"},
        {k: v for k, v in as_.items() if k != "members"},
        {"set": name},
    )
    action: Action = "update"
    if b.type != a.type or b.family != a.family:
        action = "replace"
    ops += [Op("add_member", {"member": m}) for m in sorted(a.members - b.members, key=sort_key)]
    ops += [Op("delete_member", {"member": m}) for m in sorted(b.members - a.members, key=sort_key)]
    return Change("ipset", name, action, tuple(ops), bs, as_)


def _settings_changes(
    kind: str, target_key: str, before: Mapping[str, Any], after: Mapping[str, Any]
) -> list[Change]:
    out: list[Change] = []
    for name in sorted(before.keys() | after.keys()):
        b, a = before.get(name), after.get(name)
        if b == a:
            continue
        if a is None:
            out.append(Change(kind, name, "delete", (), b, None, None, (NOT_MANAGED,)))
            continue
        ops = _field_ops(b or {}, a, {target_key: name})
        out.append(Change(kind, name, "create" if b is None else "update", tuple(ops), b, a))
    return out


def _backup_sets(desired: HostDesired) -> dict[str, Any]:
    """Backup sets with the fleet's ``tarsnap:`` defaults folded into the sets that use them
    (a changed key file changes those sets)."""
    tarsnap = desired.raw.get("tarsnap") or {}
    out = {}
    for name, spec in (desired.raw.get("backups") or {}).items():
        merged = dict(spec)
        if spec.get("backend") == "tarsnap":
            merged["tarsnap"] = {**tarsnap, **(spec.get("tarsnap") or {})}
        out[name] = merged
    return out


def host_changes(
    before: HostDesired | None, after: HostDesired, kinds: set[str], memo: Memo | None = None
) -> list[Change]:
    """Every change the move from ``before`` to ``after`` asks of one host, kind by kind
    (``memo``: see :func:`ipset_changes`)."""
    empty = HostDesired(host=after.host)
    b = before or empty
    out: list[Change] = []
    if "ipset" in kinds:
        out += ipset_changes(b.ipsets, after.ipsets, memo)
    if "nic" in kinds:
        out += _settings_changes("nic", "nic", b.raw.get("nics") or {}, after.raw.get("nics") or {})
    if "backup" in kinds:
        out += _settings_changes("backup", "set", _backup_sets(b), _backup_sets(after))
    return out


def vm_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Change]:
    """Placement changes between two ``vms.yaml`` (validated, defaults filled): moves with
    their nodes, VNC port and state changes, VMs added (defined) and dropped (unmanaged)."""
    b_vms: Mapping[str, Any] = (before or {}).get("vms", {})
    a_vms: Mapping[str, Any] = after.get("vms", {})
    out: list[Change] = []
    for name in sorted(b_vms.keys() | a_vms.keys()):
        b, a = b_vms.get(name), a_vms.get(name)
        if b == a:
            continue
        if a is None:
            out.append(Change("vm", name, "delete", (), dict(b or {}), None, None, (NOT_MANAGED,)))
            continue
        if b is None:
            op = Op(
                "define",
                {
                    "vm": name,
                    "node": a["node"],
                    "vnc_port": a.get("vnc_port"),
                    "definition": a.get("definition"),
                },
            )
            out.append(Change("vm", name, "create", (op,), None, dict(a)))
            continue
        ops: list[Op] = []
        action: Action = "update"
        if b.get("node") != a.get("node"):
            action = "move"
            ops.append(Op("move", {"vm": name, "from_node": b["node"], "to_node": a["node"]}))
        rest_b = {k: v for k, v in b.items() if k != "node"}
        rest_a = {k: v for k, v in a.items() if k != "node"}
        ops += _field_ops(rest_b, rest_a, {"vm": name})
        out.append(Change("vm", name, action, tuple(ops), dict(b), dict(a)))
    return out
