"""Batches of member ops: the consecutive ``add_member`` (or ``delete_member``) ops that are
applied as one netlink batch and logged as one run.

A 200,000-member load has one op per member (the plan contract, docs/plan.md), and apply and
the log each walk them: grouped here with ``itertools.groupby`` and ``operator`` getters, so
the walk runs at C speed rather than one Python step per member.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import groupby, repeat
from operator import attrgetter, contains, itemgetter, methodcaller

from reconciler import native
from reconciler.plan import Op

MEMBER_OPS = frozenset({"add_member", "delete_member"})

VERB = attrgetter("op")
"""An op's verb (``operator.attrgetter``: mapped over a load's ops at C speed)."""
_ARGS = attrgetter("args")
_TIMEOUT = methodcaller("get", "timeout")
_MEMBER = itemgetter("member")


def batches(ops: Sequence[Op]) -> Iterator[tuple[int, int]]:
    """``(start, end)`` spans that cover ``ops`` in order: each longest run of consecutive
    member ops with the same verb and the same ``args.get("timeout")`` is one span, and
    every other op is a span of its own."""
    pos = 0
    for verb, group in groupby(ops, VERB):
        if verb not in MEMBER_OPS:
            for _ in group:
                yield pos, pos + 1
                pos += 1
            continue
        args = list(map(_ARGS, group))
        if not any(map(contains, args, repeat("timeout"))):  # the usual run: no timeouts
            yield pos, pos + len(args)
            pos += len(args)
            continue
        for _, run in groupby(map(_TIMEOUT, args)):
            count = len(list(run))
            yield pos, pos + count
            pos += count


def run_members(run: Sequence[Op], width: int = 0) -> list[str] | None:
    """The member of each op of ``run``, when every op's args hold a ``member`` (and, with
    ``width``, exactly that many keys); else None. In C when the extension is built: one
    pass over ops that lie scattered in memory, not four."""
    fast = native.netfast
    if fast is not None:
        found: list[str] | None = fast.members(run, width)
        return found
    args = list(map(_ARGS, run))
    if width and set(map(len, args)) - {width}:
        return None
    if not all(map(contains, args, repeat("member"))):
        return None
    return list(map(_MEMBER, args))
