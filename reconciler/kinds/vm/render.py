"""How VM placement ops read in the text plan."""

from __future__ import annotations

from typing import Any

from reconciler.kinds.base import OpLine


def _define(a: dict[str, Any]) -> str:
    if a.get("from_node"):
        return f"+ define {a['vm']} on {a['node']} from {a['from_node']} (VNC {a['vnc_port']})"
    src = a.get("definition") or "its definition"
    return f"+ define {a['vm']} on {a['node']} from {src} (VNC {a['vnc_port']})"


OP_LINES: dict[str, OpLine] = {
    "define": _define,
    "move": lambda a: f"> move {a['vm']} {a['from_node']} -> {a['to_node']}",
    "undefine": lambda a: f"- undefine {a['vm']} on {a['node']} (kept on {a['kept_on']})",
    "start": lambda a: f"+ start {a['vm']} on {a['node']}",
    "shutdown": lambda a: f"- shut down {a['vm']} on {a['node']} (graceful, not forced)",
    "set_vnc_port": lambda a: (
        f"~ VNC port of {a['vm']} on {a['node']}: {a['vnc_port']} (autoport off)"
    ),
    "migrate": lambda a: (
        f"> live-migrate {a['vm']} {a['from_node']} -> {a['to_node']} (VNC {a['vnc_port']})"
    ),
}
