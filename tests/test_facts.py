"""Read-side golden cases ("facts"): what the kernel and the tools answer, and the live object
each answer must parse into.

A fact is a tool's or the kernel's output plus a pure parser. Every file under
``tests/kinds/<kind>/facts/`` (YAML or JSON) is one case:

``description``
    what the case shows and where its input came from (free text);
``parser``
    a name in :data:`PARSERS`, e.g. ``firewall.parse_save``;
``input`` or ``input_hex``
    the output the parser reads. ``input`` is text; a parser that reads bytes gets it as UTF-8
    (with ``surrogateescape``, so ``"\\udcff"`` in the file is the byte 0xff). ``input_hex`` is
    bytes in hex (whitespace ignored), or a list of such strings for a list of byte strings
    (the netlink datagrams of a dump, in the order they were received);
``args``
    further keyword arguments of the parser (optional);
``expected``
    the parsed object as plain data (see :func:`plain`), or instead
``raises``
    ``{type: ValueError, match: regex}`` when parsing must fail (``type`` is a builtin
    exception or a dotted path such as ``reconciler.errors.NetlinkError``).

The expected values pin what the parsers return today: a change in a parser's behaviour shows
up here as a failing case named after its file.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from reconciler.kinds.backup import restic, tarsnap
from reconciler.kinds.ipset import firewall, netlink
from reconciler.kinds.nic import ethtool
from reconciler.kinds.vm import domainxml


class Parser(NamedTuple):
    """A pure parser, the name of the parameter its input is passed as, and whether that input
    is bytes (a text ``input`` is then encoded)."""

    func: Callable[..., object]
    input_arg: str
    reads_bytes: bool = False


PARSERS: dict[str, Parser] = {
    "firewall.parse_save": Parser(firewall.parse_save, "text"),
    "domainxml.parse_domain_xml": Parser(domainxml.parse_domain_xml, "text"),
    "domainxml.parse_definition": Parser(domainxml.parse_definition, "text"),
    "domainxml.live_vnc_port": Parser(domainxml.live_vnc_port, "text"),
    "restic.parse_snapshots": Parser(restic.parse_snapshots, "data"),
    "tarsnap.parse_archive_list": Parser(tarsnap.parse_archive_list, "data", reads_bytes=True),
    "netlink.decode_list_dump": Parser(netlink.decode_list_dump, "datagrams", reads_bytes=True),
    "ethtool.unpack_ringparam": Parser(ethtool.unpack_ringparam, "data", reads_bytes=True),
    "ethtool.unpack_features": Parser(ethtool.unpack_features, "data", reads_bytes=True),
}

FACTS = Path(__file__).parent / "kinds"
CASES = sorted(p for p in FACTS.glob("*/facts/*") if p.is_file())


def plain(value: object) -> Any:
    """``value`` as plain JSON data: dataclasses and NamedTuples as objects of their fields,
    datetimes as ISO 8601 text, sets as sorted lists, tuples as lists, bytes as hex."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(plain(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"no plain form for {type(value).__name__}")


def load(path: Path) -> dict[str, Any]:
    """One case file, checked for the keys a case must have."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        case = yaml.safe_load(text)
    elif path.suffix == ".json":
        case = json.loads(text)
    else:
        raise AssertionError(f"{path}: a fact file is .yaml, .yml or .json")
    assert isinstance(case, dict), f"{path}: not a mapping"
    assert case.get("parser") in PARSERS, f"{path}: unknown parser {case.get('parser')!r}"
    assert ("input" in case) != ("input_hex" in case), f"{path}: give input or input_hex"
    assert ("expected" in case) != ("raises" in case), f"{path}: give expected or raises"
    assert case.get("description"), f"{path}: say what the case shows (description)"
    return case


def parser_input(case: Mapping[str, Any], parser: Parser) -> object:
    """The value the parser reads: text, bytes, or a list of byte strings."""
    if "input_hex" in case:
        raw = case["input_hex"]
        if isinstance(raw, list):
            return [bytes.fromhex(h) for h in raw]
        return bytes.fromhex(raw)
    text = case["input"]
    assert isinstance(text, str), "input is text (input_hex for bytes)"
    return text.encode("utf-8", "surrogateescape") if parser.reads_bytes else text


def run(case: Mapping[str, Any]) -> object:
    """Call the case's parser on its input and arguments."""
    parser = PARSERS[case["parser"]]
    kwargs = {parser.input_arg: parser_input(case, parser), **(case.get("args") or {})}
    return parser.func(**kwargs)


def exception_type(name: str) -> type[BaseException]:
    """The exception class called ``name`` (a builtin, or a dotted path)."""
    module, _, attr = name.rpartition(".")
    found = getattr(importlib.import_module(module or "builtins"), attr)
    assert isinstance(found, type) and issubclass(found, BaseException), name
    return found


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.parent.name}/{p.name}" for p in CASES])
def test_fact(path: Path) -> None:
    case = load(path)
    if "raises" in case:
        want = case["raises"]
        with pytest.raises(exception_type(want["type"]), match=want.get("match")):
            run(case)
        return
    assert plain(run(case)) == case["expected"]


def test_every_parser_has_cases() -> None:
    used = {load(p)["parser"] for p in CASES}
    assert sorted(set(PARSERS) - used) == []
