"""The registry of kinds: the one place that lists them (``docs/kinds.md``).

The CLI's ``--only``, the engine, the journal, snapshots, the CI dry-run and the text
renderer ask this module; nothing else names a kind. Adding a kind is a folder
``reconciler/kinds/<name>/`` whose ``__init__`` defines ``KIND`` (:class:`~.base.Kind`) and
one line below.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.kinds import backup, ipset, nic, vm
from reconciler.kinds.base import Kind, OpLine

#: Every kind, in the order plans list them and providers run.
KINDS: tuple[Kind, ...] = (
    ipset.KIND,
    nic.KIND,
    backup.KIND,
    vm.KIND,
)

NAMES: tuple[str, ...] = tuple(k.name for k in KINDS)
_BY_NAME: Mapping[str, Kind] = {k.name: k for k in KINDS}


def get(name: str) -> Kind:
    """The kind called ``name``; KeyError for an unknown one."""
    return _BY_NAME[name]


def _op_lines() -> dict[str, OpLine]:
    out: dict[str, OpLine] = {}
    for kind in KINDS:
        for op, line in kind.op_lines.items():
            if op in out:
                raise RuntimeError(f"op {op!r} is rendered by two kinds")  # a registry bug
            out[op] = line
    return out


#: How every kind's ops read in the text plan, by op name.
OP_LINES: Mapping[str, OpLine] = _op_lines()
