"""What a commit changes in VM placement, without the nodes: ``vms.yaml`` before vs after."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.fielddiff import NOT_MANAGED, field_ops
from reconciler.plan import Action, Change, Op


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
        ops += field_ops(rest_b, rest_a, {"vm": name})
        out.append(Change("vm", name, action, tuple(ops), dict(b), dict(a)))
    return out
