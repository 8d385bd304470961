"""Human text rendering, computed only from the plan dict (never from Plan objects).

The style is the familiar one: ``+`` create/add, ``~`` update, ``-`` delete/remove, ``±``
replace, ``>`` move, ``!`` refused, and a one-line summary at the end. Long runs of the same
op (65,536 members) are shortened so the output stays readable; the JSON plan has them all.
With ``colour`` (decided by the command line: a terminal, and no ``NO_COLOR``) additions are
green, updates yellow, deletions and refusals red, and headers bold.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any

from reconciler.kinds import OP_LINES

SYMBOL = {"create": "+", "update": "~", "delete": "-", "replace": "±", "move": ">"}
MAX_RUN = 10  # show at most this many consecutive ops of one kind before summarising

BOLD, GREEN, YELLOW, RED, RESET = "\x1b[1m", "\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[0m"
#: The colour of a line that starts with a symbol.
_SYMBOL_COLOUR = {"+": GREEN, "~": YELLOW, "±": YELLOW, ">": YELLOW, "-": RED, "!": RED}


def paint(text: str, style: str, colour: bool) -> str:
    """``text`` in ``style`` (ANSI escapes) when ``colour``, else as it is."""
    return f"{style}{text}{RESET}" if colour and text else text


def by_symbol(line: str, colour: bool) -> str:
    """An op or change line coloured by its leading symbol (indentation kept plain)."""
    body = line.lstrip(" ")
    style = _SYMBOL_COLOUR.get(body[:1])
    if style is None or not colour:
        return line
    return line[: len(line) - len(body)] + paint(body, style, colour)


def op_line(op: dict[str, Any]) -> str:
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
    # groupby: a 200,000-member load's runs are found at C speed, not a step per op.
    for verb, group in itertools.groupby(ops, operator.itemgetter("op")):
        run = list(group)
        shown = run if len(run) <= MAX_RUN else run[: MAX_RUN - 2]
        lines += [op_line(o) for o in shown]
        if len(shown) < len(run):
            lines.append(f"  ... and {len(run) - len(shown)} more {verb} ops")
    return lines


def commit_text(commit: str) -> str:
    """A commit as the header shows it: 12 hex digits, and ``+dirty`` when it has it."""
    head, plus, rest = commit.partition("+")
    return head[:12] + plus + rest


def _no_changes(plan: dict[str, Any]) -> str:
    """The line for a plan without changes, saying only what was compared: live state on a
    host, a snapshot, or (the CI dry-run against a revision) the desired state at it."""
    basis = plan.get("basis") or {}
    if plan.get("status") == "unchanged":
        return (
            f"  Unchanged since {basis.get('rev')}: its host file and every shared file are "
            "the same there, so it was not planned."
        )
    if plan["errors"]:
        return "  No changes planned; the resources with errors below were not compared."
    if basis.get("kind") == "against":
        return (
            f"  No changes against {basis.get('rev')}: the commit asks nothing of this host "
            "(its live state was not read)."
        )
    if basis.get("kind") == "snapshot":
        return "  No changes: the snapshot's live state matches the desired state."
    return "  No changes: live state matches the desired state."


def render(plan: dict[str, Any], *, dry_run: bool = True, colour: bool = False) -> str:
    """Render the plan dict as text for people (with ANSI colours when ``colour``)."""
    out: list[str] = []
    commit = plan.get("commit")
    at = f" at commit {commit_text(commit)}" if commit else ""
    mode = "dry run" if dry_run else "apply"
    if plan.get("targets"):
        mode += f"; only {', '.join(plan['targets'])}"
    out.append(paint(f"Plan for host {plan['host']}{at} ({mode}):", BOLD, colour))
    changes = plan["changes"]
    if not changes:
        out.append(_no_changes(plan))
    for ch in changes:
        sym = "!" if ch.get("refused") else SYMBOL.get(ch["action"], "*")
        out.append("")
        head = f"  {sym} {ch['address']}  {ch['action']}"
        out.append(paint(head, BOLD + RED, colour) if sym == "!" else by_symbol(head, colour))
        if ch.get("refused"):
            out.append("      " + paint(f"REFUSED: {ch['refused']}", RED, colour))
        for w in ch.get("warnings", []):
            out.append("      " + paint(f"warning: {w}", YELLOW, colour))
        out += [by_symbol(f"      {line}", colour) for line in _ops_lines(ch["ops"])]
    if plan.get("warnings"):
        out.append("")
        out.append(paint("Warnings:", BOLD, colour))
        out += [
            "  " + paint(f"{w['address']}: {w['message']}", YELLOW, colour)
            for w in plan["warnings"]
        ]
    if plan["errors"]:
        out.append("")
        out.append(paint("Errors:", BOLD + RED, colour))
        out += [
            "  " + paint(f"{e['address']}: {e['message']}", RED, colour) for e in plan["errors"]
        ]
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
    out.append(paint(summary + ".", BOLD, colour))
    return "\n".join(out) + "\n"
