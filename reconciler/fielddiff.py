"""Settings compared one by one: the ``set_field`` ops a commit asks for (the CI dry-run's
plan against a base revision, :mod:`reconciler.against`), shared by every kind."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from reconciler.plan import Change, Op

NOT_MANAGED = "no longer in git: reconciler stops managing it and leaves its settings as they are"


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"rings": {"rx": 1}}`` -> ``{"rings.rx": 1}``: settings compared one by one."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def field_ops(
    before: Mapping[str, Any], after: Mapping[str, Any], target: dict[str, Any]
) -> list[Op]:
    """One ``set_field`` op (with ``target``'s args) per setting that differs, sorted."""
    b, a = flat(before), flat(after)
    return [
        Op("set_field", {**target, "field": f, "from": b.get(f), "to": a.get(f)})
        for f in sorted(b.keys() | a.keys())
        if b.get(f) != a.get(f)
    ]


def settings_changes(
    kind: str, target_key: str, before: Mapping[str, Any], after: Mapping[str, Any]
) -> list[Change]:
    """Per resource of ``kind``: created, updated field by field, or no longer managed."""
    out: list[Change] = []
    for name in sorted(before.keys() | after.keys()):
        b, a = before.get(name), after.get(name)
        if b == a:
            continue
        if a is None:
            out.append(Change(kind, name, "delete", (), b, None, None, (NOT_MANAGED,)))
            continue
        ops = field_ops(b or {}, a, {target_key: name})
        out.append(Change(kind, name, "create" if b is None else "update", tuple(ops), b, a))
    return out


class Memo:
    """The last few changes computed, by the identity of their two specs.

    Entries hold the specs themselves, so an id is never reused while its entry exists (a
    hit is checked by identity), and only ``size`` entries are kept: the pairs shared by
    every host (fleet.yaml's set at both revisions) stay, per-host pairs pass through.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[int, int], tuple[object, object, Change | None]] = (
            OrderedDict()
        )

    def get(self, b: object, a: object) -> tuple[bool, Change | None]:
        """(found, change) for the pair ``b``, ``a``."""
        entry = self._entries.get((id(b), id(a)))
        if entry is None or entry[0] is not b or entry[1] is not a:
            return False, None
        self._entries.move_to_end((id(b), id(a)))
        return True, entry[2]

    def put(self, b: object, a: object, change: Change | None) -> None:
        """Remember ``change`` for the pair."""
        self._entries[(id(b), id(a))] = (b, a, change)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
