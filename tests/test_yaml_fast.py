"""The fast parser (``yamlsrc.parse_fast``) answers as the line-aware loader does, or not at
all: wherever it gives data, ``parse_yaml`` gives the same data (types included) with no
problem, and every position it holds is the loader's; every mapping key's position is held.
Generated documents mix the scalars YAML 1.1 resolves (booleans, nulls, numbers, dates,
merge keys), quoting styles, flow and block collections, anchors, aliases, tags, duplicate
and non-string keys."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.yamlsrc import MAX_DEPTH, parse_fast, parse_yaml

ROOT = Path(__file__).resolve().parent.parent

SCALARS = [
    "yes", "No", "on", "OFF", "true", "False", "y", "n", "~", "null", "", "0", "-1", "+7",
    "1_000", "0x1F", "0o17", "017", "1e3", "1.5", ".inf", "-.Inf", ".nan", "2024-01-02",
    "2024-01-02 10:00:00", "2024-13-45", "10.0.0.0/8", "2001:db8::/32", "192.0.2.7",
    "a b", "eth0", "<<", "=", "'quoted'", '"dq"', '"\\u00e9"', "'it''s'", "!!str 12",
    "!foo x", "! 12", "&a 5", "*a", "12:30:00", "0b101", "- x", "? x", "[1, 2]", "{a: 1}",
]  # fmt: skip
KEYS = ["a", "b", "nics", "gso", "1", "yes", "~", "<<", "'q'", "x/y", "&k k", "*k"]


def _eq(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_eq(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _block(draw: st.DrawFn, indent: int, depth: int) -> str:
    """A block mapping at ``indent`` whose values are scalars, flow collections, block
    lists or nested mappings."""
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(KEYS))
        pad = " " * indent
        kinds = ["scalar", "flow", "list", "run", "text", "map"]
        kind = draw(st.sampled_from(kinds if depth < 4 else ["scalar", "run"]))
        if kind == "scalar":
            lines.append(f"{pad}{key}: {draw(st.sampled_from(SCALARS))}")
        elif kind == "flow":
            items = draw(st.lists(st.sampled_from(SCALARS[:30]), max_size=3))
            lines.append(f"{pad}{key}: [{', '.join(items)}]")
        elif kind == "list":
            lines.append(f"{pad}{key}:")
            for _ in range(draw(st.integers(0, 3))):
                lines.append(f"{pad}  - {draw(st.sampled_from(SCALARS))}")
        elif kind in ("run", "text"):
            # A long list of networks (what the fast parser folds), with what may break a
            # run; or the same lines as the text of a block scalar, where they are no list.
            lines.append(f"{pad}{key}:" + (" |" if kind == "text" else ""))
            lines += _run_lines(draw, pad + "  ")
        else:
            lines.append(f"{pad}{key}:")
            lines.append(_block(draw, indent + 2, depth + 1))
    return "\n".join(lines)


NETWORKS = ["10.0.0.0/8", "192.0.2.7", "192.0.2.0/24", "2001:db8::/32", "1.2.3.4/32",
            "999.1.1.1", "fe80::1/64", "0.0.0.0/0"]  # fmt: skip
BREAKERS = ["# a comment", "'192.0.2.9/32'", "192.0.2.10/32   # office", "x/y", "12:30",
            "192.0.2.11/32  ", "1.5", "", "&a 10.9.0.0/16"]  # fmt: skip


def _run_lines(draw: st.DrawFn, pad: str) -> list[str]:
    out = []
    for _ in range(draw(st.integers(60, 140))):
        if draw(st.integers(0, 40)) == 0:
            item = draw(st.sampled_from(BREAKERS))
            out.append(f"{pad}{item}" if item.startswith("#") else f"{pad}- {item}")
        else:
            out.append(f"{pad}- {draw(st.sampled_from(NETWORKS))}")
    return out


@st.composite
def documents(draw: st.DrawFn) -> str:
    return _block(draw, 0, 0) + "\n"


def _agrees(text: bytes) -> None:
    fast = parse_fast(text, "f.yaml")
    full = parse_yaml(text, "f.yaml")
    if fast is None:
        return
    assert full.problems == [], text
    assert _eq(fast.data, full.data), text
    values, keys = fast.known_positions()
    assert keys == full.keys, text
    assert all(full.values[p] == v for p, v in values.items()), text


@settings(max_examples=400, deadline=None)
@given(documents())
def test_fast_parse_agrees_with_the_line_aware_loader(text: str) -> None:
    _agrees(text.encode())


def test_every_yaml_file_of_the_repository_agrees() -> None:
    files = [p for p in ROOT.rglob("*.y*ml") if ".venv" not in p.parts and "build" not in p.parts]
    answered = 0
    for path in files:
        _agrees(path.read_bytes())
        answered += parse_fast(path.read_bytes(), "f.yaml") is not None
    assert answered > 50  # the common case is the fast one


def test_a_long_list_of_networks_is_read_as_the_loader_reads_it() -> None:
    """The fold of long network lists (yamlparse._fold_runs): the same data, and the keys
    after a list keep their lines; the same lines as a block scalar's text stay text."""
    items = [f"10.{i // 256}.{i % 256}.0/24" for i in range(500)] + ["192.0.2.7"] * 2
    listed = "".join(f"    - {m}\n" for m in items)
    text = f"a:\n  members:\n{listed}  after: 1\nz: {{k: v}}\n"
    fast = parse_fast(text.encode(), "f.yaml")
    assert fast is not None and fast.data["a"]["members"] == items
    assert fast.pos(("a", "after"), key=True) == (505, 3)
    assert fast.pos(("z",), key=True) == (506, 1)
    _agrees(text.encode())
    block = f"a:\n  note: |\n{listed}z: 1\n"
    assert parse_yaml(block.encode(), "f.yaml").data["a"]["note"].startswith("- 10.0.0.0/24\n")
    _agrees(block.encode())  # the fast parser gives that same text, or leaves it to the loader


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=4, max_size=4))
def test_a_dotted_quad_is_a_string(parts: list[int]) -> None:
    """The fold takes a dotted quad for a string without asking YAML: so does the loader."""
    quad = ".".join(map(str, parts))
    assert parse_yaml(f"a: {quad}\n".encode(), "f.yaml").data == {"a": quad}


def test_what_only_the_loader_reports_is_left_to_it() -> None:
    for text in [
        "a: 1\na: 2\n",  # duplicate key
        "1: x\n",  # non-string key
        "a: &x {b: 1}\nc: *x\n",  # alias
        "a: &x 1\nb: &x 2\n",  # a duplicate anchor (the composer refuses it)
        "a: {<<: {b: 1}}\n",  # merge key
        "a: !!str 1\n",  # explicit tag
        "a: [1\n",  # syntax error
        "- 1\n",  # top level not a mapping
        "",  # empty
        "a: 1\n---\nb: 2\n",  # two documents
        "a: 2024-13-45\n",  # a date the constructor refuses
        "a: \x07\n",  # a control character
        "a:" + " [" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n",  # too deep
    ]:
        assert parse_fast(text.encode(), "f.yaml") is None, text
    assert parse_fast(b"\xff: 1\n", "f.yaml") is None  # not UTF-8


def test_a_value_yaml_cannot_build_is_a_located_problem() -> None:
    """``2024-13-45`` is read as a date (YAML 1.1) that cannot exist: a problem naming
    the file, line and field, never a traceback."""
    doc = parse_yaml(b"backups:\n  home:\n    since: 2024-13-45\n", "fleet.yaml")
    assert doc.data is None
    assert [str(p) for p in doc.problems] == [
        "fleet.yaml:3:12: backups.home.since: '2024-13-45' is read as a date but is not a "
        "valid one (month must be in 1..12); quote it if it is text"
    ]


def test_positions_not_held_are_parsed_when_asked_for() -> None:
    doc = parse_fast(b"a:\n  members:\n    - 10.0.0.0/8\n    - x\n", "f.yaml")
    assert doc is not None and doc.partial
    assert doc.pos(("a", "members"), key=True) == (2, 3)
    assert doc.partial  # a key's position is held
    assert doc.pos(("a", "members", 1)) == (4, 7)
    assert not doc.partial
    assert doc.texts[("a", "members", 0)] == "10.0.0.0/8"
