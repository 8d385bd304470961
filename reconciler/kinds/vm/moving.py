"""VMs being moved: the state dir's record of each move in flight, and what the next run
makes of a move that a killed run left half done.

Before the first write of a move (the graceful stop on the source, the define on the
target, or a live migration) the provider records ``{"uuid", "from", "to", "how"}`` with
the intent "moving VM V from A to B" (``ours.json``, kind ``vm``, keyed by the VM's name);
the record goes when the move is done (the source's copy undefined, or the migration
returned). Most interrupted moves need no record: the same UUID on both nodes is finished by
:mod:`.placement` (undefine the copy git does not name). The record is what tells the next
run about the states only a live migration leaves, which otherwise never converge:

* the VM **paused on the source, not running on the target**: the migration's memory copy
  ended and the run died before the target resumed the guest (libvirt then leaves the
  source paused and the target's incoming domain is dropped). The target never ran it, so
  the source's copy is the VM: it is resumed there (op ``resume``), then migrated again;
* the VM **running on the target, paused on the source**, same UUID: the target resumed the
  guest and the run died before the source was told (libvirt's confirm step, which would
  stop and undefine it). The running copy is the VM; the paused one is stale and shares its
  disks: it is stopped (``destroy``: a paused guest cannot shut down) and undefined (op
  ``discard_paused``).

A run started right after one killed mid-migration can still find the target's *incoming*
copy (transient, same UUID): libvirt tears it down, and cancels the migration on the source,
once it sees the killed run's connection close. With a record, the read waits for that
(:func:`incoming`, at most :data:`SETTLE_WAIT` seconds) rather than plan against a migration
that is ending; one still there after the wait is an error that says so, retried on the next
run.

Without a record both are left as they are, with placement's error (a paused domain, or the
same domain "running on both"): they are judged by hand. A record is dropped once the VM is
defined on one node only and not paused there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from reconciler.kinds.vm.read import DomainLive, NodeLive, VmLive
from reconciler.plan import Change, Op, PlanError

KIND = "vm"


SETTLE_WAIT = 30.0
"""Seconds a read waits for libvirt to drop the incoming copy of our interrupted migration."""


def incoming(records: Mapping[str, Mapping[str, Any]], nodes: Mapping[str, NodeLive]) -> list[str]:
    """The VMs whose recorded live migration's target holds a transient copy with the
    recorded UUID: the incoming side of a migration that is still being torn down. Pure."""
    out = []
    for name, rec in sorted(records.items()):
        to = rec.get("to")
        nl = nodes.get(to) if rec.get("how") == "migrate" and isinstance(to, str) else None
        d = nl.domains.get(name) if nl is not None and nl.error is None else None
        if d is not None and not d.persistent and d.uuid == rec.get("uuid"):
            out.append(name)
    return out


def move_record(change: Change) -> tuple[str, dict[str, Any]] | None:
    """The intent and record of ``change`` when it moves a VM between nodes (a ``define``
    copying from another node, a ``migrate``, or an ``undefine`` finishing a move), else
    None. Pure."""
    for op in change.ops:
        a = op.args
        if op.op == "migrate":
            src, dst, how, uuid = a["from_node"], a["to_node"], "migrate", a["uuid"]
        elif op.op == "define" and a.get("from_node"):
            src, dst, how, uuid = a["from_node"], a["node"], "move", a["uuid"]
        elif op.op == "undefine":
            src, dst, how, uuid = a["node"], a["kept_on"], "move", a["uuid"]
        else:
            continue
        intent = f"moving VM {change.name} from {src} to {dst}"
        return intent, {"uuid": uuid, "from": src, "to": dst, "how": how}
    return None


def _copy(live: VmLive, node: Any, name: str) -> DomainLive | None:
    """The domain ``name`` on ``node`` when that node was read, else None."""
    nl = live.nodes.get(node) if isinstance(node, str) else None
    if nl is None or nl.error is not None:
        return None
    return nl.domains.get(name)


def recover(
    records: Mapping[str, Mapping[str, Any]],
    live: VmLive,
    changes: list[Change],
    errors: list[PlanError],
) -> tuple[list[Change], list[PlanError]]:
    """Placement's plan with the two states of an interrupted live migration of ours (see
    the module doc) planned to converge: ``resume`` first for a VM paused on the source
    and not running on the target; ``discard_paused`` instead of the error for one running
    on the target and paused on the source. Pure."""
    out = list(changes)
    errs = list(errors)
    for name, rec in sorted(records.items()):
        if rec.get("how") != "migrate":
            continue
        uuid, src, dst = rec.get("uuid"), rec.get("from"), rec.get("to")
        s, d = _copy(live, src, name), _copy(live, dst, name)
        if d is not None and not d.persistent and d.uuid == uuid:
            errs = [e for e in errs if e.address != f"{KIND}/{name}"]
            errs.append(PlanError(f"{KIND}/{name}", (
                f"a live migration of {name} from {src} to {dst} (recorded in the state dir) "
                f"was interrupted, and libvirt has not yet removed its incoming copy on {dst}; "
                "nothing is done to it this run (never define that copy), the next run retries"
            )))  # fmt: skip
            continue
        if s is None or s.uuid != uuid or s.state != "paused":
            continue
        address = f"{KIND}/{name}"
        note = (
            f"a live migration of {name} from {src} to {dst} (recorded in the state dir) "
            "was interrupted"
        )
        if d is None or not d.active:
            op = Op("resume", {"vm": name, "node": src, "uuid": uuid, "not_running_on": dst})
            warning = f"{note} before {dst} ran it: resumed on {src}, where it still is"
            at = next((i for i, c in enumerate(out) if c.address == address), None)
            if at is None:
                out.append(Change(KIND, name, "update", (op,), {"node": src, "state": "paused"},
                                  {"node": src, "state": "running"}, None, (warning,)))  # fmt: skip
                errs = [e for e in errs if e.address != address]
            else:
                c = out[at]
                out[at] = replace(c, ops=(op, *c.ops), warnings=(warning, *c.warnings))
        elif d.uuid == uuid and d.state == "running":
            op = Op("discard_paused", {"vm": name, "node": src, "uuid": uuid, "kept_on": dst})
            warning = (
                f"{note} after {dst} resumed it: the stale paused copy on {src} is stopped "
                "and undefined"
            )
            out = [c for c in out if c.address != address]
            errs = [e for e in errs if e.address != address]
            out.append(Change(KIND, name, "move", (op,), {"node": [src, dst]}, {"node": dst},
                              None, (warning,)))  # fmt: skip
    return out, errs


def settled(record: Mapping[str, Any], name: str, live: VmLive) -> bool:
    """Whether the move ``record`` describes is over: the VM is on one node only, not
    paused there (nodes that could not be read leave it open). Pure."""
    copies = []
    for node in (record.get("from"), record.get("to")):
        nl = live.nodes.get(node) if isinstance(node, str) else None
        if nl is None or nl.error is not None:
            return False
        if name in nl.domains:
            copies.append(nl.domains[name])
    return len(copies) == 1 and copies[0].state != "paused"
