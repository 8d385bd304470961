"""Human text rendering, computed only from the plan dict (never from Plan objects).

The style is the familiar one: ``+`` create/add, ``~`` update, ``-`` delete/remove, ``±``
replace, ``>`` move, ``!`` refused, and a one-line summary at the end. Long runs of the same
op (65,536 members) are shortened so the output stays readable; the JSON plan has them all.
"""

from __future__ import annotations

import shlex
from typing import Any

SYMBOL = {"create": "+", "update": "~", "delete": "-", "replace": "±", "move": ">"}
MAX_RUN = 10  # show at most this many consecutive ops of one kind before summarising


def _op_line(op: dict[str, Any]) -> str:
    name = op["op"]
    a = {k: v for k, v in op.items() if k != "op"}
    if name == "add_member":
        return f"+ member {a['member']}"
    if name == "delete_member":
        return f"- member {a['member']}"
    if name == "create_set":
        extra = "".join(
            f" {k} {a[k]}" for k in ("family", "maxelem", "hashsize") if a.get(k) is not None
        )
        return f"+ create set {a['set']} {a['type']}{extra}"
    if name == "fill_set":
        return f"+ fill set {a['set']} with {a['count']} members"
    if name == "swap_sets":
        return f"~ swap set {a['set']} with {a['with']} (atomic; rules keep matching)"
    if name == "rename_set":
        return f"~ rename set {a['set']} to {a['to']}"
    if name == "destroy_set":
        why = f" ({a['reason']})" if a.get("reason") else ""
        return f"- destroy set {a['set']}{why}"
    if name == "insert_rule":
        return f"+ rule {a['binary']} -I {a['chain']} {shlex.join(a['rule'])}"
    if name == "delete_rule":
        return f"- rule {a['binary']} -D {a['chain']} {shlex.join(a['rule'])}"
    if name == "set_features":
        feats = ", ".join(f"{k} {'on' if v else 'off'}" for k, v in a["features"].items())
        return f"~ features {feats}"
    if name == "set_rings":
        rings = " ".join(f"{k} {a[k]}" for k in ("rx", "tx", "rx-mini", "rx-jumbo") if k in a)
        bounce = " (resets the link)" if a.get("bounces_link") else ""
        return f"~ rings {rings}{bounce}"
    if name == "create_archive":
        excl = f" excluding {', '.join(a['exclude'])}" if a.get("exclude") else ""
        return f"+ archive {a['archive']} ({', '.join(a['paths'])}){excl}"
    if name == "prune_repository":
        return f"- prune {a['repository']} (frees the expired snapshots' data)"
    if name == "delete_archive":
        return f"- archive {a['archive']}: {a['reason']}"
    if name == "define" and a.get("from_node"):
        return f"+ define {a['vm']} on {a['node']} from {a['from_node']} (VNC {a['vnc_port']})"
    if name == "define":
        src = a.get("definition") or "its definition"
        return f"+ define {a['vm']} on {a['node']} from {src} (VNC {a['vnc_port']})"
    if name == "move":
        return f"> move {a['vm']} {a['from_node']} -> {a['to_node']}"
    if name == "set_field":
        return f"~ {a['field']}: {_value(a.get('from'))} -> {_value(a.get('to'))}"
    if name == "undefine":
        return f"- undefine {a['vm']} on {a['node']} (kept on {a['kept_on']})"
    if name == "start":
        return f"+ start {a['vm']} on {a['node']}"
    if name == "shutdown":
        return f"- shut down {a['vm']} on {a['node']} (graceful, not forced)"
    if name == "set_vnc_port":
        return f"~ VNC port of {a['vm']} on {a['node']}: {a['vnc_port']} (autoport off)"
    if name == "migrate":
        return f"> live-migrate {a['vm']} {a['from_node']} -> {a['to_node']} (VNC {a['vnc_port']})"
    rest = " ".join(f"{k}={v}" for k, v in a.items())
    return f"* {name} {rest}".rstrip()


def _value(v: Any) -> str:
    if v is None:
        return "(unset)"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


def _ops_lines(ops: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    i = 0
    while i < len(ops):
        j = i
        while j < len(ops) and ops[j]["op"] == ops[i]["op"]:
            j += 1
        run = ops[i:j]
        shown = run if len(run) <= MAX_RUN else run[: MAX_RUN - 2]
        lines += [_op_line(o) for o in shown]
        if len(shown) < len(run):
            lines.append(f"  ... and {len(run) - len(shown)} more {ops[i]['op']} ops")
        i = j
    return lines


def render(plan: dict[str, Any], *, dry_run: bool = True) -> str:
    """Render the plan dict as text for people."""
    out: list[str] = []
    commit = plan.get("commit")
    at = f" at commit {commit[:12]}" if commit else ""
    mode = "dry run" if dry_run else "apply"
    out.append(f"Plan for host {plan['host']}{at} ({mode}):")
    changes = plan["changes"]
    if not changes and plan["errors"]:
        out.append("  No changes planned; the resources with errors below were not compared.")
    elif not changes:
        out.append("  No changes: live state matches the desired state.")
    for ch in changes:
        sym = "!" if ch.get("refused") else SYMBOL.get(ch["action"], "*")
        out.append("")
        out.append(f"  {sym} {ch['address']}  {ch['action']}")
        if ch.get("refused"):
            out.append(f"      REFUSED: {ch['refused']}")
        for w in ch.get("warnings", []):
            out.append(f"      warning: {w}")
        out += [f"      {line}" for line in _ops_lines(ch["ops"])]
    if plan.get("warnings"):
        out.append("")
        out.append("Warnings:")
        out += [f"  {w['address']}: {w['message']}" for w in plan["warnings"]]
    if plan["errors"]:
        out.append("")
        out.append("Errors:")
        out += [f"  {e['address']}: {e['message']}" for e in plan["errors"]]
    s = plan["summary"]
    out.append("")
    summary = (
        f"Plan: {s.get('create', 0)} to create, {s.get('update', 0)} to update, "
        f"{s.get('delete', 0)} to delete, {s.get('move', 0)} to move"
    )
    if s.get("replace"):
        summary += f", {s['replace']} to replace"
    if s.get("refused"):
        summary += f"; {s['refused']} refused"
    if plan["errors"]:
        summary += f"; {len(plan['errors'])} error(s)"
    out.append(summary + ".")
    return "\n".join(out) + "\n"
