"""Human text rendering, computed only from the plan dict (never from Plan objects).

The style is the familiar one: ``+`` create/add, ``~`` update, ``-`` delete/remove, ``±``
replace, ``>`` move, ``!`` refused, and a one-line summary at the end. Long runs of the same
op (65,536 members) are shortened so the output stays readable; the JSON plan has them all.
"""

from __future__ import annotations

from typing import Any

from reconciler.kinds import OP_LINES

SYMBOL = {"create": "+", "update": "~", "delete": "-", "replace": "±", "move": ">"}
MAX_RUN = 10  # show at most this many consecutive ops of one kind before summarising


def _op_line(op: dict[str, Any]) -> str:
    """One op as a line: its kind's wording (the registry), ``set_field`` (any kind, from the
    CI dry-run against a base revision), else its name and arguments."""
    name = op["op"]
    a = {k: v for k, v in op.items() if k != "op"}
    line = OP_LINES.get(name)
    if line is not None:
        return line(a)
    if name == "set_field":
        return f"~ {a['field']}: {_value(a.get('from'))} -> {_value(a.get('to'))}"
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
