"""Batches of member ops: the consecutive ``add_member`` (or ``delete_member``) ops that are
applied as one netlink batch and logged as one run.

A 200,000-member load has one op per member (the plan contract, docs/plan.md), and apply and
the log each walk them: grouped here with ``itertools.groupby`` and ``operator`` getters, so
the walk runs at C speed rather than one Python step per member.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import groupby, repeat
from operator import attrgetter, contains, methodcaller

from reconciler.plan import Op

MEMBER_OPS = frozenset({"add_member", "delete_member"})

_VERB = attrgetter("op")
_ARGS = attrgetter("args")
_TIMEOUT = methodcaller("get", "timeout")


def batches(ops: Sequence[Op]) -> Iterator[tuple[int, int]]:
    """``(start, end)`` spans that cover ``ops`` in order: each longest run of consecutive
    member ops with the same verb and the same ``args.get("timeout")`` is one span, and
    every other op is a span of its own."""
    pos = 0
    for verb, group in groupby(ops, _VERB):
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
