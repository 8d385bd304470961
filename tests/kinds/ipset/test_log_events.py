"""The ipset kind's log events (render.log_events): runs of single-member ops are grouped by
op and timeout into events of at most MEMBERS_PER_EVENT members, each member listed, in
order; every other op is an event of its own. Checked against a plain reading of that rule
(itertools.groupby) on generated op sequences."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.kinds.ipset import render
from reconciler.plan import Op

ARGS = st.sampled_from(
    [{"member": "10.0.0.0/8"}, {"member": "10.1.0.0/16", "timeout": 0},
     {"member": "10.2.0.0/16", "timeout": 600}, {"member": "10.3.0.0/16", "timeout": None},
     {"member": "10.4.0.0/16", "comment": "x"}, {"set": "mgmt"}]
)  # fmt: skip
OPS = st.lists(st.builds(Op, st.sampled_from(["add_member", "delete_member"]), ARGS), max_size=40)


def _reference(ops: list[Op], per_event: int) -> list[dict[str, Any]]:
    def key(op: Op) -> tuple[str, Any] | None:
        a = op.args
        if "member" in a and (len(a) == 1 or (len(a) == 2 and "timeout" in a)):
            return (op.op, a.get("timeout"))
        return None

    out: list[dict[str, Any]] = []
    for group, grouped in itertools.groupby(ops, key):
        run = list(grouped)
        if group is None:
            out += [op.to_dict() for op in run]
            continue
        extra = {} if group[1] is None else {"timeout": group[1]}
        for k in range(0, len(run), per_event):
            members = [o.args["member"] for o in run[k : k + per_event]]
            out.append({"op": group[0], "count": len(members), "members": members, **extra})
    return out


@settings(max_examples=300, deadline=None)
@given(OPS, st.integers(1, 5))
def test_events_group_runs_of_member_ops(ops: list[Op], per_event: int) -> None:
    old = render.MEMBERS_PER_EVENT
    render.MEMBERS_PER_EVENT = per_event
    try:
        assert list(render.log_events(ops)) == _reference(ops, per_event)
    finally:
        render.MEMBERS_PER_EVENT = old
