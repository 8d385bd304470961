"""The plan as plain data.

A :class:`Plan` is what providers compute and what renderers and ``apply`` consume. It is built
from frozen dataclasses and serialises with :meth:`Plan.to_dict` to the versioned JSON contract
described in ``docs/plan.md``. The human text output is rendered *from* that dict, never from
the objects, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from reconciler import native

FORMAT_VERSION = 1

Action = Literal["create", "update", "delete", "replace", "move"]


class Op(NamedTuple):
    """One typed operation. ``op`` is its verb; ``args`` names what it touches.

    ``args`` must be JSON-serialisable (strings, numbers, lists, dicts) because it is copied
    verbatim into the JSON plan, e.g. ``Op("add_member", {"member": "203.0.113.0/24"})``.
    Immutable; a named tuple, not a frozen dataclass, because a 200,000-member load makes one
    per member and a tuple is made in half the time.
    """

    op: str
    args: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"op": ..., **args}`` as in the JSON plan."""
        return {"op": self.op, **self.args}


def member_ops(verb: str, members: list[str], **extra: Any) -> list[Op]:
    """``[Op(verb, {"member": m, **extra}) for m in members]``: one op per member (a
    200,000-member load makes 200,000), made in C when the extension is built."""
    fast = native.netfast
    if fast is not None:
        made: list[Op] = fast.ops(Op, verb, members, extra)
        return made
    return [Op(verb, {"member": m, **extra}) for m in members]


def op_dicts(ops: tuple[Op, ...]) -> list[dict[str, Any]]:
    """``[op.to_dict() for op in ops]``, made in C when the extension is built."""
    fast = native.netfast
    done: list[dict[str, Any]] | None = fast.dicts(ops) if fast is not None else None
    return done if done is not None else [{"op": op.op, **op.args} for op in ops]


@dataclass(frozen=True)
class Change:
    """A change to one resource: its address, action, before/after summaries and ordered ops.

    ``refused`` is set when a safety guard blocks the change (e.g. it would lock out the
    current SSH client); a refused change is shown in the plan but never applied.
    ``warnings`` are shown with the change and do not block it.
    """

    kind: str
    name: str
    action: Action
    ops: tuple[Op, ...]
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    refused: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        """``kind/name``: the resource address used in plans, logs and errors."""
        return f"{self.kind}/{self.name}"

    def with_warnings(self, *extra: str) -> Change:
        """The same change with ``extra`` warnings appended."""
        return replace(self, warnings=(*self.warnings, *extra))

    def to_dict(self) -> dict[str, Any]:
        """Serialise to the JSON plan's change object."""
        d: dict[str, Any] = {
            "address": self.address,
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "before": self.before,
            "after": self.after,
            "ops": op_dicts(self.ops),
        }
        if self.refused:
            d["refused"] = self.refused
        if self.warnings:
            d["warnings"] = list(self.warnings)
        return d


class PlanError(NamedTuple):
    """An error found while reading or planning one resource; the rest of the plan stands."""

    address: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Serialise to the JSON plan's error object."""
        return {"address": self.address, "message": self.message}


class PlanWarning(NamedTuple):
    """Something to know about one resource that has no change in the plan (a change
    carries its own ``warnings``), e.g. a backup set with nothing to do that holds a
    future-dated archive. It blocks nothing and does not change the exit code."""

    address: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Serialise to the JSON plan's warning object."""
        return {"address": self.address, "message": self.message}


@dataclass
class Plan:
    """All changes and errors for one host at one commit, and warnings about resources
    that have no change."""

    host: str
    commit: str | None = None
    changes: list[Change] = field(default_factory=list)
    errors: list[PlanError] = field(default_factory=list)
    warnings: list[PlanWarning] = field(default_factory=list)
    #: the addresses the plan is limited to (``--target``); empty: the whole host.
    targets: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when there is nothing to change (errors are not changes)."""
        return not self.changes

    def summary(self) -> dict[str, int]:
        """Count changes per action (``create``/``update``/``delete``/``move``, plus any other
        action that occurs) and the refused ones."""
        counts: dict[str, int] = {"create": 0, "update": 0, "delete": 0, "move": 0}
        for ch in self.changes:
            counts[ch.action] = counts.get(ch.action, 0) + 1
        refused = sum(1 for ch in self.changes if ch.refused)
        if refused:
            counts["refused"] = refused
        return counts

    def to_dict(self) -> dict[str, Any]:
        """Serialise to the versioned JSON contract (``docs/plan.md``), plus
        ``warnings`` (a list of ``{"address", "message"}``) when there are any and
        ``targets`` when the plan is limited to some resources (``--target``)."""
        d: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "host": self.host,
            "commit": self.commit,
        }
        if self.targets:
            d["targets"] = list(self.targets)
        d |= {
            "changes": [c.to_dict() for c in self.changes],
            "errors": [e.to_dict() for e in self.errors],
        }
        if self.warnings:
            d["warnings"] = [w.to_dict() for w in self.warnings]
        d["summary"] = self.summary()
        return d
