"""The registry of kinds (docs/kinds.md): what it promises of every kind's descriptor, which
names its modules lazily (``lazy``, ``LazyMapping``: imported when first used)."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping

from reconciler import kinds as registry


def test_every_op_is_rendered_by_one_kind() -> None:
    seen: dict[str, str] = {}
    for kind in registry.KINDS:
        for op in kind.op_lines:
            assert op not in seen, f"{op} is rendered by {seen[op]} and {kind.name}"
            seen[op] = kind.name
    assert sorted(registry.OP_LINES) == sorted(seen) and len(registry.OP_LINES) == len(seen)
    for op, name in seen.items():
        assert registry.OP_LINES[op] is registry.get(name).op_lines[op]


def test_every_lazy_name_is_a_real_function_or_mapping() -> None:
    named = 0
    for kind in registry.KINDS:
        for f in dataclasses.fields(kind):
            target = getattr(getattr(kind, f.name), "lazy_target", None)
            if target is None:
                continue
            module, name = target
            value = getattr(importlib.import_module(module), name)
            assert isinstance(value, Mapping) if f.name == "op_lines" else callable(value), (
                f"{kind.name}.{f.name}: {module}.{name}"
            )
            named += 1
    assert named >= 4 * 3  # every kind names at least its checks, renderer and diff lazily
