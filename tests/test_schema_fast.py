"""The fast schema pre-check (fastjsonschema) never accepts what jsonschema rejects.

``reconciler.desired`` asks fastjsonschema "valid?" first and runs jsonschema (which finds
and locates every problem) only when the answer is no. That is only correct if the two
agree on validity for every document: checked here on every YAML file the tests and the
example ship, and on random corruptions of valid documents.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import desired

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = {"host": "host.schema.json", "vms": "vms.schema.json"}


def agree(schema: str, data: Any) -> tuple[bool, bool]:
    """(fast says valid, jsonschema says valid)."""
    fast = desired._fast_check(schema)(data)
    slow = not any(True for _ in desired._validator(schema).iter_errors(data))
    return fast, slow


def _documents() -> list[tuple[str, Path]]:
    """Every shipped YAML file that parses (the YAML-level bad-input cases never reach a
    schema)."""
    out = []
    files = [*ROOT.glob("desired-state/**/*.yaml"), *ROOT.glob("tests/data/**/*.yaml")]
    for path in sorted(files):
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        schema = SCHEMAS["vms"] if path.name == "vms.yaml" else SCHEMAS["host"]
        out.append((schema, path))
    return out


def test_both_kinds_of_shipped_files_are_checked() -> None:
    docs = _documents()
    assert len(docs) > 20 and {s for s, _ in docs} == set(SCHEMAS.values())


@pytest.mark.parametrize(("schema", "path"), _documents(), ids=lambda v: str(v))
def test_validators_agree_on_every_shipped_file(schema: str, path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    fast, slow = agree(schema, data)
    assert fast == slow, f"{path}: fastjsonschema valid={fast}, jsonschema valid={slow}"


def test_the_fast_check_never_writes_defaults() -> None:
    data = yaml.safe_load((ROOT / "desired-state" / "vms.yaml").read_text())
    before = copy.deepcopy(data)
    desired._fast_check(SCHEMAS["vms"])(data)
    assert data == before


VALID_HOST: dict[str, Any] = {
    "ipsets": {
        "mgmt": {
            "type": "hash:net",
            "family": "inet",
            "maxelem": 65536,
            "members": ["192.0.2.0/24", "198.51.100.0/24"],
            "firewall": {"chain": "INPUT", "in_interface": "eth0", "target": "ACCEPT"},
        }
    },
    "nics": {
        "eth0": {"rings": {"rx": 4096, "tx": "max"}, "offloads": {"gso": "off", "tso": True}},
        "br0": {"ports": {"rings": {"rx": 512}, "offloads": {"gro": "on"}}},
    },
    "backups": {
        "etc": {
            "backend": "restic",
            "repository": "/srv/restic",
            "password_file": "/root/pw",
            "paths": ["/etc"],
            "exclude": [],
            "every": "1h",
            "keep": {"last": 3, "daily": 7},
        },
        "home": {"backend": "tarsnap", "paths": ["/home"], "every": "1d", "keep": {"weekly": 4}},
    },
    "tarsnap": {"keyfile": "/root/tarsnap.key", "cachedir": "/var/cache/tarsnap"},
    "verify": {"signers": [{"name": "ops", "ssh": "keys/ops.pub"}]},
}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12)
    | st.sampled_from(["max", "on", "off", "hash:net", "inet6", "1h", "0", "", "tarsnap"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


@settings(max_examples=400, deadline=None)
@given(data=st.data(), value=JSON, rename=st.booleans())
def test_validators_agree_on_corrupted_documents(
    data: st.DataObject, value: Any, rename: bool
) -> None:
    doc = copy.deepcopy(VALID_HOST)
    path = data.draw(st.sampled_from(_paths(doc)))
    if rename and path and isinstance(path[-1], str):
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[data.draw(st.text(max_size=10))] = parent.pop(path[-1])
    else:
        doc = _set(doc, path, value)
    fast, slow = agree(SCHEMAS["host"], doc)
    assert fast == slow, f"disagree on {doc!r}: fast={fast} slow={slow}"


def test_the_document_corrupted_above_is_valid_to_begin_with() -> None:
    assert agree(SCHEMAS["host"], VALID_HOST) == (True, True)
