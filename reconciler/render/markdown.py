"""Markdown for a review comment: the CI dry-run's JSON document rendered for a pull or
merge request (``reconcile --dry-run --all-hosts --output markdown``).

Rendered only from the JSON document (``docs/plan.md``), as the text renderer is. The
comment starts with a hidden marker line (:func:`marker`) by which a CI job finds its own
comment and updates it on the next push. Then, in this order: a summary line; the problems
of an invalid desired state (``problems``: ``file:line:col: ...``, nothing planned); the errors
(plan errors and refused changes, every host); what needs a reviewer's attention (change
and plan warnings, link resets, archives to be deleted); a table per host of creates,
updates, deletes, moves and errors; the hosts with no changes and those unchanged since
``--against REV``, one line each; and each host's plan, as the text output shows it, in a
collapsible ``<details>`` block, hosts with errors first.

Everything that comes from the repository (host, resource and set names, messages, values)
is untrusted: a branch under review must not be able to write Markdown or HTML into the
comment. Inline text is written as character references except letters, digits and a few
inert characters (:func:`inline`), so no ``|`` splits a table cell, no ``<`` opens a tag and
no backtick opens code; ``@`` and ``#`` are followed by a zero-width space so that no user
is mentioned and no issue is cross-referenced. The plans are in fenced code blocks whose
fence is longer than any run of backticks inside. Non-printable characters (bidirectional
overrides included) are shown as ``\\uXXXX``.

A comment has a size limit (GitHub: 65,536 characters): past :data:`MAX_CHARS` the rest is
left out with a line saying how much and that the JSON plan has it all.
"""

from __future__ import annotations

import re
import string
from typing import Any

from reconciler.render import text as text_mod

#: The hidden first line of every comment, by which a CI job finds its own comment.
MARKER = "<!-- reconcile-plan -->"
#: Stay below GitHub's 65,536-character limit for a comment, with room for the notes.
MAX_CHARS = 60_000
#: At most this many unchanged or no-change hosts are named (the rest are counted).
MAX_NAMES = 100

_SAFE = frozenset(string.ascii_letters + string.digits + " ,./=:+-%()")
_SPACES = frozenset("\n\r\t")
_ZWSP = "&#8203;"
_BACKTICKS = re.compile(r"`+")
_HASH = re.compile(r"[0-9a-f]{40}")


def marker(shard: dict[str, Any] | None = None) -> str:
    """The hidden first line: :data:`MARKER`, or ``<!-- reconcile-plan shard K/N -->`` for
    one shard of a matrix (each shard keeps its own comment)."""
    if shard is None:
        return MARKER
    return f"<!-- reconcile-plan shard {int(shard['index'])}/{int(shard['count'])} -->"


def _visible(ch: str) -> str:
    """A non-printable character as visible text (``\\u202e``), itself escaped."""
    return f"&#92;u{ord(ch):04x}"


def inline(value: Any) -> str:
    """``value`` as inert inline Markdown, in a paragraph, a table cell or inside an HTML
    element alike: letters, digits and `` ,./=:+-%()`` as they are; line breaks as spaces;
    non-printable characters as visible ``\\uXXXX``; every other character as a numeric
    character reference (``@`` and ``#`` followed by a zero-width space)."""
    out: list[str] = []
    for ch in str(value):
        if ch in _SAFE:
            out.append(ch)
        elif ch in _SPACES:
            out.append(" ")
        elif not ch.isprintable():
            out.append(_visible(ch))
        else:
            out.append(f"&#{ord(ch)};")
            if ch in "@#":
                out.append(_ZWSP)
    return "".join(out)


def _printable(line: str) -> str:
    """A line for a code block: non-printable characters shown as ``\\uXXXX``."""
    if line.isprintable():
        return line
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in line)


def code_block(body: str, info: str = "text") -> str:
    """``body`` in a fenced code block whose fence no run of backticks in it can close."""
    lines = [_printable(line) for line in body.splitlines()]
    longest = max((len(m.group()) for line in lines for m in _BACKTICKS.finditer(line)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([f"{fence}{info}", *lines, fence])


# --------------------------------------------------------------------------------------------
# What a host's plan holds
# --------------------------------------------------------------------------------------------


def counts(plan: dict[str, Any]) -> dict[str, int]:
    """The table's numbers for one host: creates, updates (replacements included), deletes,
    moves, and errors (refused changes included: both fail the check)."""
    s = plan.get("summary") or {}
    refused = sum(1 for c in plan["changes"] if c.get("refused"))
    return {
        "creates": int(s.get("create", 0)),
        "updates": int(s.get("update", 0)) + int(s.get("replace", 0)),
        "deletes": int(s.get("delete", 0)),
        "moves": int(s.get("move", 0)),
        "errors": len(plan["errors"]) + refused,
    }


def _errors(plan: dict[str, Any]) -> list[str]:
    """Each error and refusal of one host, as a list item."""
    host = inline(plan["host"])
    items = [f"- **{host}** {inline(e['address'])}: {inline(e['message'])}" for e in plan["errors"]]
    items += [
        f"- **{host}** {inline(c['address'])}: refused: {inline(c['refused'])}"
        for c in plan["changes"]
        if c.get("refused")
    ]
    return items


def _op_attention(op: dict[str, Any]) -> str | None:
    """What a reviewer must see about one op even in a long plan: a link reset, an archive
    deleted."""
    if op.get("bounces_link"):
        return "resets the link (ring sizes change)"
    if op.get("op") == "delete_archive":
        why = f" ({op['reason']})" if op.get("reason") else ""
        return f"deletes archive {op.get('archive')}{why}"
    return None


def _attention(plan: dict[str, Any]) -> list[str]:
    """Each warning of one host (the plan's, its changes'), and each link reset and archive
    deletion, as a list item."""
    host = inline(plan["host"])
    items = [
        f"- **{host}** {inline(w['address'])}: {inline(w['message'])}"
        for w in plan.get("warnings") or []
    ]
    for c in plan["changes"]:
        addr = inline(c["address"])
        items += [f"- **{host}** {addr}: {inline(w)}" for w in c.get("warnings") or []]
        for op in c["ops"]:
            what = _op_attention(op)
            if what is not None:
                items.append(f"- **{host}** {addr}: {inline(what)}")
    return items


def _rev(rev: Any) -> str:
    """A revision as shown: a full commit hash as its first 12 digits, else as given."""
    text = str(rev)
    return text[:12] if _HASH.fullmatch(text) else text


def _basis(plan: dict[str, Any]) -> str:
    b = plan.get("basis") or {}
    if b.get("kind") == "snapshot":
        age = f", taken {b['age']} ago" if b.get("age") else ""
        return f"against its snapshot{age}"
    if b.get("kind") == "against":
        return f"against {_rev(b.get('rev'))}"
    return "with nothing to compare against"


def _summary_line(n: dict[str, int]) -> str:
    return (
        f"{n['creates']} to create, {n['updates']} to update, {n['deletes']} to delete, "
        f"{n['moves']} to move" + (f", {n['errors']} error(s)" if n["errors"] else "")
    )


def _details(plan: dict[str, Any]) -> str:
    """One host's plan, as the text output has it, in a collapsible block."""
    n = counts(plan)
    head = f"{plan['host']}: {_summary_line(n)} ({_basis(plan)})"
    body = text_mod.render(plan, dry_run=True, colour=False)
    return "\n".join(
        [f"<details><summary>{inline(head)}</summary>", "", code_block(body), "", "</details>"]
    )


# --------------------------------------------------------------------------------------------
# The comment
# --------------------------------------------------------------------------------------------


class _Budget:
    """The comment's parts, kept under ``limit`` characters: :meth:`add` refuses a part that
    does not fit (the caller then says what was left out, with :meth:`force`)."""

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit

    def add(self, part: str) -> bool:
        if self.size + len(part) + 1 > self.limit:
            return False
        self.force(part)
        return True

    def force(self, part: str) -> None:
        self.parts.append(part)
        self.size += len(part) + 1

    def section(self, title: str, items: list[str], what: str) -> None:
        """A titled list of ``items`` (nothing when there are none)."""
        if items:
            self.force("")
            self.force(f"#### {title} ({len(items)})")
            self.force("")
            self.items(items, what)

    def items(self, items: list[str], what: str) -> None:
        """Add ``items`` in order until one does not fit; then a line counting the rest."""
        for i, item in enumerate(items):
            if not self.add(item):
                self.force(f"- *{len(items) - i} more {what} not shown: see the JSON plan*")
                return


def _names(plans: list[dict[str, Any]]) -> str:
    shown = ", ".join(inline(p["host"]) for p in plans[:MAX_NAMES])
    more = len(plans) - MAX_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def _order(plan: dict[str, Any]) -> int:
    """Hosts with errors first, then those with changes."""
    n = counts(plan)
    return 0 if n["errors"] else 1


def render_ci(doc: dict[str, Any], *, limit: int = MAX_CHARS) -> str:
    """The CI dry-run's document ``doc`` (as ``--output json`` prints it) as Markdown for a
    review comment, at most about ``limit`` characters (see the module docstring)."""
    hosts: list[dict[str, Any]] = list(doc.get("hosts") or [])
    unchanged = [p for p in hosts if p.get("status") == "unchanged"]
    planned = sorted((p for p in hosts if p.get("status") != "unchanged"), key=_order)
    acting = [p for p in planned if p["changes"] or p["errors"] or p.get("warnings")]
    quiet = [p for p in planned if not (p["changes"] or p["errors"] or p.get("warnings"))]
    totals = {k: sum(counts(p)[k] for p in planned) for k in counts(_EMPTY)}
    out = _Budget(limit)
    commit = doc.get("commit")
    at = inline(text_mod.commit_text(commit)) if commit else "the work tree"
    against = f" against {inline(_rev(doc['against']))}" if doc.get("against") else ""
    shard = doc.get("shard")
    out.force(marker(shard))
    out.force(f"### reconcile plan at {at}{against}")
    out.force("")
    line = (
        f"**{len(planned)} host(s) planned**: {_summary_line(totals)}; "
        f"{sum(1 for p in planned if p['changes'])} host(s) with changes"
    )
    if unchanged:
        line += f"; {len(unchanged)} unchanged"
    if shard is not None:
        line += (
            f". Shard {int(shard['index'])}/{int(shard['count'])}: {len(hosts)} of "
            f"{int(shard.get('hosts_total', len(hosts)))} hosts"
        )
    out.force(line + ".")
    problems = [str(x) for x in doc.get("problems") or []]
    if problems:
        out.force("")
        out.force("**The desired state is invalid: nothing was planned.**")
    out.section(":x: Problems", [f"- {inline(x)}" for x in problems], "problem(s)")
    out.section(":x: Errors", [item for p in planned for item in _errors(p)], "error(s)")
    attention = [item for p in planned + unchanged for item in _attention(p)]
    out.section(":warning: Needs attention", attention, "warning(s)")
    if acting:
        out.force("")
        out.force("| host | creates | updates | deletes | moves | errors |")
        out.force("| --- | ---: | ---: | ---: | ---: | ---: |")
        rows = []
        for p in acting:
            n = counts(p)
            cells = " | ".join(str(n[k]) for k in ("creates", "updates", "deletes", "moves"))
            rows.append(f"| {inline(p['host'])} | {cells} | {n['errors']} |")
        out.items(rows, "host(s)")
    if quiet or unchanged:
        out.force("")
    if quiet:
        out.force(f"No changes ({len(quiet)}): {_names(quiet)}.")
        out.force("")
    if unchanged:
        rev = inline(_rev(doc.get("against") or unchanged[0]["basis"].get("rev")))
        out.force(f"Unchanged since {rev}, not planned ({len(unchanged)}): {_names(unchanged)}.")
    for i, p in enumerate(acting):
        block = _details(p)
        if not out.add("\n" + block):
            out.force("")
            out.force(
                f"*{len(acting) - i} more host plan(s) not shown (the comment would exceed "
                f"{limit} characters): see the JSON plan.*"
            )
            break
    return "\n".join(out.parts) + "\n"


_EMPTY: dict[str, Any] = {"changes": [], "errors": [], "summary": {}}
