"""The registry of kinds: the one place that lists them (``docs/kinds.md``).

The CLI's ``--only``, the engine, the journal, snapshots, the CI dry-run and the text
renderer ask this module; nothing else names a kind. Adding a kind is a folder
``reconciler/kinds/<name>/`` whose ``__init__`` defines ``KIND`` (:class:`~.base.Kind`) and
one line below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

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


class _OpLines(Mapping[str, OpLine]):
    """Every kind's op lines by op name. A lookup asks the kinds in order and imports their
    renderers only until one has the op, so a plan of ipset ops loads no other kind's
    renderer. An op belongs to one kind (tests/test_registry.py checks it)."""

    def __getitem__(self, op: str) -> OpLine:
        for kind in KINDS:
            line = kind.op_lines.get(op)
            if line is not None:
                return line
        raise KeyError(op)

    def __iter__(self) -> Iterator[str]:
        return iter({op: None for kind in KINDS for op in kind.op_lines})

    def __len__(self) -> int:
        return len({op for kind in KINDS for op in kind.op_lines})


#: How every kind's ops read in the text plan, by op name.
OP_LINES: Mapping[str, OpLine] = _OpLines()
