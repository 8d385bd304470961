"""How ipset ops read in the text plan, and how executed ones are logged."""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Sequence
from typing import Any

from reconciler.kinds.base import OpLine
from reconciler.kinds.ipset.batches import MEMBER_OPS, batches, run_members
from reconciler.plan import Op


def _create_set(a: dict[str, Any]) -> str:
    extra = "".join(
        f" {k} {a[k]}"
        for k in ("family", "maxelem", "hashsize", "timeout")
        if a.get(k) is not None
    )
    extra += "".join(f" {o}" for o in a.get("options") or ())
    if a.get("temporary_for"):
        extra += f" (temporary, to rebuild {a['temporary_for']})"
    return f"+ create set {a['set']} {a['type']}{extra}"


def _permanent(a: dict[str, Any]) -> str:
    """`` (permanent)`` for a member added with timeout 0 to a set with a default timeout."""
    return " (permanent: timeout 0)" if a.get("timeout") == 0 else ""


def _destroy_set(a: dict[str, Any]) -> str:
    why = f" ({a['reason']})" if a.get("reason") else ""
    return f"- destroy set {a['set']}{why}"


OP_LINES: dict[str, OpLine] = {
    "add_member": lambda a: f"+ member {a['member']}{_permanent(a)}",
    "delete_member": lambda a: f"- member {a['member']}",
    "create_set": _create_set,
    "fill_set": lambda a: f"+ fill set {a['set']} with {a['count']} members{_permanent(a)}",
    "swap_sets": lambda a: f"~ swap set {a['set']} with {a['with']} (atomic; rules keep matching)",
    "rename_set": lambda a: f"~ rename set {a['set']} to {a['to']}",
    "destroy_set": _destroy_set,
    "insert_rule": lambda a: f"+ rule {a['binary']} -I {a['chain']} {shlex.join(a['rule'])}",
    "delete_rule": lambda a: f"- rule {a['binary']} -D {a['chain']} {shlex.join(a['rule'])}",
    "require_applied": lambda a: f"= only after {a['needs']} is applied ({a['reason']})",
}

MEMBERS_PER_EVENT = 1000


def log_events(ops: Sequence[Op]) -> Iterator[dict[str, Any]]:
    """The log events for executed ops: one per op, except runs of single-member ops.

    A run of ``add_member``/``delete_member`` ops (with the same ``timeout``, if any) is
    logged as events of up to MEMBERS_PER_EVENT members, each member listed: a 65,536-member
    load then costs 66 events instead of 65,536 (one event per member cost six times the
    kernel work), and the log still names every member touched. A bulk op's own member list
    (``fill_set``, the complete desired set) is summarised by its count; the delta is in the
    plan.
    """
    for i, j in batches(ops):
        run = ops[i:j]
        first = run[0]
        if first.op in MEMBER_OPS:
            timeout = first.args.get("timeout")
            # Every op's args are exactly "member" (and "timeout"): the usual run, at C speed.
            members = run_members(run, 1 if timeout is None else 2)
            if members is not None:
                extra = {} if timeout is None else {"timeout": timeout}
                for k in range(0, len(members), MEMBERS_PER_EVENT):
                    chunk = members[k : k + MEMBERS_PER_EVENT]
                    yield {"op": first.op, "count": len(chunk), "members": chunk, **extra}
                continue
        yield from _events(run)


def _events(ops: Sequence[Op]) -> Iterator[dict[str, Any]]:
    """:func:`log_events` op by op (for runs whose ops have other args too)."""

    def key(op: Op) -> tuple[str, Any] | None:
        args = op.args
        if "member" not in args or not (len(args) == 1 or (len(args) == 2 and "timeout" in args)):
            return None
        return (op.op, args.get("timeout"))

    n = len(ops)
    i = 0
    while i < n:
        op = ops[i]
        group = key(op)
        if group is not None:
            j = i + 1
            while j < n and key(ops[j]) == group:
                j += 1
            name, timeout = group
            extra = {} if timeout is None else {"timeout": timeout}
            for k in range(i, j, MEMBERS_PER_EVENT):
                chunk = [o.args["member"] for o in ops[k : min(j, k + MEMBERS_PER_EVENT)]]
                yield {"op": name, "count": len(chunk), "members": chunk, **extra}
            i = j
            continue
        event = op.to_dict()
        members = event.get("members")
        if isinstance(members, list) and len(members) > 5:
            event["members"] = [*members[:5], f"... {len(members) - 5} more"]
        yield event
        i += 1
