"""Live-state snapshots (reconciler/snapshot.py): every golden live state survives the JSON
round trip with an identical diff, and every malformed snapshot file is a clear SnapshotError.

The live objects are built by the golden tests' own loaders (imported, not copied), so a
field added to a ``*Live`` class and used by a golden case is covered here automatically.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import desired as desired_mod
from reconciler import snapshot
from reconciler.errors import SnapshotError
from reconciler.kinds.backup.provider import BackupProvider
from reconciler.kinds.ipset.netlink import LiveSet, SetHeader
from reconciler.kinds.ipset.provider import IpsetLive, IpsetProvider
from reconciler.kinds.nic.provider import NicProvider
from reconciler.kinds.vm.placement import plan_vms
from reconciler.plan import Change, PlanError
from reconciler.snapshot import (
    FORMAT_VERSION,
    SNAPSHOT_KINDS,
    Snapshot,
    dump_live,
    load_live,
    read_snapshot,
    write_snapshot,
)
from tests.kinds.backup import test_diff as test_backup_diff
from tests.kinds.ipset import test_diff as test_ipset_diff
from tests.kinds.nic import test_diff as test_nic_diff
from tests.kinds.vm import test_diff as test_vm_diff

KIND_TESTS = Path(__file__).parent / "kinds"
# Golden directory of each snapshot kind (the vm provider's cases are "vmplace").
GOLDEN_DIRS = {k: KIND_TESTS / k / "golden" for k in ("ipset", "nic", "backup", "vm")}
CASES = [
    (kind, case)
    for kind in SNAPSHOT_KINDS
    for case in sorted(GOLDEN_DIRS[kind].glob("*.yaml"))
]

Diff = Callable[[Any], tuple[list[Change], list[PlanError]]]


def golden_case(kind: str, case: Path, tmp_path: Path) -> tuple[Any, Diff]:
    """(live object, pure diff against the case's desired state) of one golden case, built
    exactly as that kind's golden test builds them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if kind == "vm":
        _, config, live = test_vm_diff.load_case(case, tmp_path)
        return live, lambda lv: plan_vms(config, lv)
    data = yaml.safe_load(case.read_text())
    if kind == "ipset":
        (tmp_path / "fleet.yaml").write_text(data["desired"])
        desired = desired_mod.load_host(tmp_path, "h1")
        ipset = IpsetProvider(None, force=bool(data.get("force")))
        return test_ipset_diff._live(data["live"]), lambda lv: ipset.diff(desired, lv)
    if kind == "nic":
        desired = test_nic_diff._load(tmp_path, data["desired"])
        return test_nic_diff._live(data["live"]), lambda lv: NicProvider().diff(desired, lv)
    desired = test_backup_diff._desired(data["desired"], tmp_path)
    return test_backup_diff._live(data["live"]), lambda lv: BackupProvider().diff(desired, lv)


SAMPLES = {
    "ipset": "prune_ours.yaml",
    "nic": "bridge_ports.yaml",
    "backup": "due_and_expire.yaml",
    "vm": "define_from_definition.yaml",
}


@functools.cache
def sample_dump(kind: str) -> Any:
    """dump_live of one rich golden case of ``kind`` (do not mutate: shared)."""
    with tempfile.TemporaryDirectory() as tmp:
        live, _ = golden_case(kind, GOLDEN_DIRS[kind] / SAMPLES[kind], Path(tmp))
        return dump_live(kind, live)


def roundtrip(kind: str, live: Any) -> Any:
    """dump -> JSON text (as write_snapshot writes it: sorted keys) -> parse -> load."""
    text = json.dumps(dump_live(kind, live), sort_keys=True, allow_nan=False)
    return load_live(kind, json.loads(text))


def planned(diff: Diff, live: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    changes, errors = diff(live)
    return [c.to_dict() for c in changes], [e.to_dict() for e in errors]


def without_ssh_client(kind: str, live: Any) -> Any:
    """What a snapshot keeps: dump_live drops the reading process's SSH client by design."""
    return dataclasses.replace(live, ssh_client=None) if kind == "ipset" else live


# ----------------------------------------------------------------------- golden round trip
@pytest.mark.parametrize(("kind", "case"), CASES, ids=[f"{k}-{c.stem}" for k, c in CASES])
def test_golden_roundtrip_same_object_same_diff(kind: str, case: Path, tmp_path: Path) -> None:
    live, diff = golden_case(kind, case, tmp_path)
    expected = without_ssh_client(kind, live)

    back = roundtrip(kind, live)

    assert type(back) is type(live)
    assert back == expected
    assert planned(diff, back) == planned(diff, expected)
    # Stable: the loaded object dumps to the same data (the file does not churn in git).
    assert dump_live(kind, back) == dump_live(kind, live)


def test_golden_cases_cover_every_kind_and_nested_type() -> None:
    """The round trip above is only as good as its data: make sure it is not vacuous."""
    assert {k for k, _ in CASES} == set(SNAPSHOT_KINDS)
    assert all(sum(k == kind for k, _ in CASES) >= 5 for kind in SNAPSHOT_KINDS)
    vm = sample_dump("vm")
    assert any(d["info"] and d["info"]["vnc"] and d["xml"] for d in vm["definitions"].values())
    nic = sample_dump("nic")
    assert any(s["rings"] and s["features"] for s in nic["nics"].values())
    assert sample_dump("backup")["now"].endswith("+00:00")
    assert sample_dump("ipset")["ours"]


def test_guard_case_changes_only_by_the_dropped_ssh_client(tmp_path: Path) -> None:
    """The SSH client of the process that took the snapshot is not replayed in CI: the
    anti-lockout guard is the applying host's check. Everything else is kept."""
    live, diff = golden_case("ipset", GOLDEN_DIRS["ipset"] / "guard_ssh_client.yaml", tmp_path)
    assert isinstance(live, IpsetLive) and live.ssh_client == "198.51.100.200"
    data = dump_live("ipset", live)
    assert data["ssh_client"] is None
    back = load_live("ipset", data)
    assert back == dataclasses.replace(live, ssh_client=None)
    (refused,), _ = diff(live)
    (change,), _ = diff(back)
    assert refused.refused and change.refused is None
    assert change.ops == refused.ops


def test_dump_is_plain_sorted_json(tmp_path: Path) -> None:
    live, _ = golden_case("ipset", GOLDEN_DIRS["ipset"] / "update_delta.yaml", tmp_path)
    data = dump_live("ipset", live)
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    for s in data["sets"].values():
        assert s["members"] == sorted(s["members"])  # frozenset -> sorted list
    assert isinstance(data["rules"], list)


# ------------------------------------------------------------------- the generic converter
class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner:
    n: int
    f: float = 0.5


@dataclass(frozen=True)
class AllTypes:
    by_int: Mapping[int, str]
    by_pair: Mapping[tuple[str, int], Inner]
    ints: frozenset[int]
    pair: tuple[int, str]
    names: list[str]
    seq: Sequence[Inner]
    when: datetime
    color: Color
    mode: Literal["a", "b"]
    maybe: Inner | None
    extra: Any
    flags: set[str]
    default: int = 7


ALL = AllTypes(
    by_int={3: "c", 1: "a"},
    by_pair={("x", 2): Inner(2, 1.25), ("a", 1): Inner(1)},
    ints=frozenset({5, 1, 3}),
    pair=(1, "one"),
    names=["b", "a"],
    seq=(Inner(1), Inner(2, 2.0)),
    when=datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=timezone(timedelta(hours=2))),
    color=Color.BLUE,
    mode="b",
    maybe=None,
    extra={"rules": [["iptables", "INPUT"]], "n": 1, "x": None},
    flags={"z", "y"},
)


def test_converter_every_supported_type_roundtrips() -> None:
    data = snapshot._encode(AllTypes, ALL, "$")
    text = json.dumps(data, sort_keys=True, allow_nan=False)
    back = snapshot._decode(AllTypes, json.loads(text), "$")
    assert back == ALL
    assert back.when.utcoffset() == timedelta(hours=2)
    # Non-str keys travel as sorted [key, value] pairs, sets as sorted lists.
    assert data["by_int"] == [[1, "a"], [3, "c"]]
    assert data["by_pair"][0] == [["a", 1], {"n": 1, "f": 0.5}]
    assert data["ints"] == [1, 3, 5]
    assert data["color"] == "blue"
    # A field with a default may be missing (written before it existed).
    del data["default"]
    assert snapshot._decode(AllTypes, data, "$").default == 7


@pytest.mark.parametrize(
    ("field", "value", "where", "words"),
    [
        ("by_int", [[1, "a"], [1, "b"]], "$.by_int[1][0]", "duplicate key"),
        ("by_int", {"1": "a"}, "$.by_int", "[key, value] pairs"),
        ("by_pair", [[["a"], {"n": 1}]], "$.by_pair[0][0]", "list of 2 items"),
        ("seq", [{"n": 1}, {"n": True}], "$.seq[1].n", "expected an integer"),
        ("seq", [{"n": 1, "g": 2}], "$.seq[0].g", "unknown field of Inner"),
        ("seq", [{"f": 1.0}], "$.seq[0].n", "missing field of Inner"),
        ("when", "yesterday", "$.when", "ISO 8601"),
        ("color", "green", "$.color", "'red', 'blue'"),
        ("mode", "c", "$.mode", "one of"),
        ("ints", [1, "2"], "$.ints[1]", "expected an integer"),
        ("pair", [1], "$.pair", "list of 2 items"),
    ],
)
def test_converter_bad_values_name_their_path(
    field: str, value: Any, where: str, words: str
) -> None:
    data = snapshot._encode(AllTypes, ALL, "$")
    data[field] = value
    with pytest.raises(snapshot._TypeMismatch) as e:
        snapshot._decode(AllTypes, data, "$")
    assert e.value.path == where
    assert words in e.value.message


@dataclass(frozen=True)
class NotPlain:
    where: Path


def test_converter_refuses_types_that_are_not_plain_data() -> None:
    """A live field of a new kind of type fails loudly, never silently (de)serialised."""
    with pytest.raises(TypeError, match="unsupported type"):
        snapshot._encode(NotPlain, NotPlain(Path("/")), "$")


# --------------------------------------------------------------------------- load_live
@pytest.mark.parametrize("kind", SNAPSHOT_KINDS)
@pytest.mark.parametrize("data", [None, [], "x", 5, {}, {"nope": 1}])
def test_load_live_garbage_is_a_snapshot_error(kind: str, data: Any) -> None:
    with pytest.raises(SnapshotError, match=rf"bad {kind} live state at \$"):
        load_live(kind, data)


def test_load_live_bad_nested_value_names_kind_and_path(tmp_path: Path) -> None:
    live, _ = golden_case("ipset", GOLDEN_DIRS["ipset"] / "update_delta.yaml", tmp_path)
    data = dump_live("ipset", live)
    name = next(iter(data["sets"]))
    data["sets"][name]["header"]["maxelem"] = "lots"
    with pytest.raises(SnapshotError) as e:
        load_live("ipset", data)
    assert str(e.value) == (
        f"bad ipset live state at $.sets.{name}.header.maxelem: "
        'expected an integer, found string "lots"'
    )


def test_unknown_kind_and_wrong_object() -> None:
    with pytest.raises(SnapshotError, match="unknown snapshot kind 'dns'"):
        load_live("dns", {})
    with pytest.raises(TypeError, match="expected IpsetLive"):
        dump_live("ipset", object())


def test_dump_live_refuses_a_value_that_does_not_fit_its_type() -> None:
    header = SetHeader("s", "hash:net", "inet", 7, 1024, "big", 0, 0)  # type: ignore[arg-type]
    live = IpsetLive({"s": LiveSet(header, frozenset())})
    with pytest.raises(
        SnapshotError, match=r"cannot snapshot ipset .*\$\.sets\.s\.header\.maxelem"
    ):
        dump_live("ipset", live)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@pytest.mark.parametrize("kind", SNAPSHOT_KINDS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_load_live_any_corruption_is_a_snapshot_error(kind: str, data: st.DataObject) -> None:
    """Replacing any node of a valid dump by any JSON value loads or is a SnapshotError;
    never a KeyError/TypeError/ValueError traceback."""
    dumped = sample_dump(kind)
    where = data.draw(st.sampled_from(_paths(dumped)[1:]))
    corrupt = copy.deepcopy(dumped)
    node = corrupt
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = data.draw(JSON)
    try:
        load_live(kind, corrupt)
    except SnapshotError as e:
        assert str(e).startswith(f"bad {kind} live state at $")


# ------------------------------------------------------------------------ snapshot files
CREATED = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)


def sample_snapshot(tmp_path: Path) -> Snapshot:
    lives = {
        kind: without_ssh_client(
            kind, golden_case(kind, GOLDEN_DIRS[kind] / SAMPLES[kind], tmp_path / kind)[0]
        )
        for kind in ("ipset", "nic", "backup")
    }
    return Snapshot("h1", CREATED, "0123abcd" * 5, "0.1.0", lives, {"vm": "node n1: no route"})


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=1))


def test_write_read_roundtrip(tmp_path: Path) -> None:
    snap = sample_snapshot(tmp_path)
    path = tmp_path / "h1.json"
    write_snapshot(path, snap)
    assert read_snapshot(path) == snap
    assert read_snapshot(path, host="h1") == snap
    text = path.read_text()
    assert text.startswith('{\n "commit": ')  # sorted keys, one-space indent
    assert text.endswith("}\n")
    doc = json.loads(text)
    assert doc["format_version"] == FORMAT_VERSION == 1
    assert list(doc) == sorted(doc)
    assert doc["created"] == "2026-11-28T04:00:00+00:00"
    assert sorted(doc["lives"]) == ["backup", "ipset", "nic"]
    assert os.stat(path).st_mode & 0o777 == 0o644
    # Writing the same state again gives the same bytes (no churn in git).
    write_snapshot(path, read_snapshot(path))
    assert path.read_text() == text


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    snap = sample_snapshot(tmp_path / "cases")
    out = tmp_path / "out"
    out.mkdir()
    path = out / "h1.json"
    write_snapshot(path, snap)
    write_snapshot(path, snap)
    assert [p.name for p in out.iterdir()] == ["h1.json"]
    before = path.read_bytes()
    # A live object that cannot be serialised: the old file stays, nothing else appears.
    header = SetHeader("s", "hash:net", "inet", 7, 1024, "big", 0, 0)  # type: ignore[arg-type]
    broken = dataclasses.replace(snap, lives={"ipset": IpsetLive({"s": LiveSet(header, None)})})
    with pytest.raises(SnapshotError, match="maxelem"):
        write_snapshot(path, broken)
    assert path.read_bytes() == before
    # The rename fails (the target is a directory): the temp file is removed.
    (out / "dir.json").mkdir()
    with pytest.raises(SnapshotError, match="cannot write snapshot"):
        write_snapshot(out / "dir.json", snap)
    assert sorted(p.name for p in out.iterdir()) == ["dir.json", "h1.json"]
    assert list((out / "dir.json").iterdir()) == []


def test_age_and_created_normalised_to_utc() -> None:
    snap = Snapshot("h1", CREATED, None, "0.1.0", {}, {})
    assert snap.age(CREATED + timedelta(minutes=5)) == timedelta(minutes=5)
    assert snap.age(CREATED - timedelta(seconds=1)) == timedelta(seconds=-1)
    assert abs(Snapshot("h1", datetime.now(UTC), None, "x", {}, {}).age()) < timedelta(minutes=1)
    local = CREATED.astimezone(timezone(timedelta(hours=-5)))
    s2 = Snapshot("h1", local, None, "0.1.0", {}, {})
    assert s2.created == CREATED and s2.created.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        Snapshot("h1", datetime(2026, 1, 1), None, "0.1.0", {}, {})
    with pytest.raises(ValueError, match="unknown snapshot kind"):
        Snapshot("h1", CREATED, None, "0.1.0", {}, {"dns": "x"})
    with pytest.raises(ValueError, match="both read and failed"):
        Snapshot("h1", CREATED, None, "0.1.0", {"vm": None}, {"vm": "x"})


def _mutate(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    write_json(path, doc)


def _set_maxelem(doc: dict[str, Any]) -> None:
    s = next(iter(doc["lives"]["ipset"]["sets"].values()))
    s["header"]["maxelem"] = "many"


BAD_FILES: list[tuple[str, Callable[[Path], object], Sequence[str]]] = [
    ("missing file", lambda p: p.unlink(), ["cannot read snapshot", "No such file"]),
    (
        "truncated JSON",
        lambda p: p.write_text(p.read_text()[:200]),
        ["is not valid JSON", "(line ", ", column ", "truncated?"],
    ),
    (
        "garbage JSON",
        lambda p: p.write_text("{\n 'x': 1}"),
        ["not valid JSON", "(line 2, column 2)"],
    ),
    ("not UTF-8", lambda p: p.write_bytes(b'{"host": "\xff"}'), ["not UTF-8"]),
    ("not an object", lambda p: p.write_text("[1, 2]\n"), ["is not a JSON object", "a list"]),
    (
        "newer format",
        lambda p: _mutate(p, lambda d: d.update(format_version=2, lives="whatever")),
        [
            "written by a newer reconciler (format 2); this version reads format 1: "
            "upgrade reconciler in CI"
        ],
    ),
    (
        "format not a number",
        lambda p: _mutate(p, lambda d: d.update(format_version="1")),
        ["$.format_version: expected an integer"],
    ),
    (
        "format 0",
        lambda p: _mutate(p, lambda d: d.update(format_version=0)),
        ["$.format_version: no such format 0"],
    ),
    (
        "missing field",
        lambda p: _mutate(p, lambda d: d.pop("tool_version")),
        ["$.tool_version: missing field"],
    ),
    ("missing host", lambda p: _mutate(p, lambda d: d.pop("host")), ["$.host: missing field"]),
    (
        "unknown field",
        lambda p: _mutate(p, lambda d: d.update(extra=1)),
        ["$.extra: unknown field"],
    ),
    (
        "bad created",
        lambda p: _mutate(p, lambda d: d.update(created="noon")),
        ["$.created: expected an ISO 8601", '"noon"'],
    ),
    (
        "naive created",
        lambda p: _mutate(p, lambda d: d.update(created="2026-11-28T04:00:00")),
        ["$.created", "UTC offset"],
    ),
    (
        "bad commit",
        lambda p: _mutate(p, lambda d: d.update(commit=5)),
        ["$.commit: expected a string or null"],
    ),
    (
        "lives not object",
        lambda p: _mutate(p, lambda d: d.update(lives=[])),
        ["$.lives: expected an object"],
    ),
    (
        "unknown kind",
        lambda p: _mutate(p, lambda d: d["lives"].update(dns={})),
        ["unknown kind 'dns' in $.lives", "known: ipset, nic, backup, vm"],
    ),
    (
        "unknown error kind",
        lambda p: _mutate(p, lambda d: d["errors"].update(dns="x")),
        ["unknown kind 'dns' in $.errors"],
    ),
    (
        "error not text",
        lambda p: _mutate(p, lambda d: d["errors"].update(vm=3)),
        ["$.errors.vm: expected a string, found number 3"],
    ),
    (
        "kind read and failed",
        lambda p: _mutate(p, lambda d: d["errors"].update(nic="x")),
        ["'nic' is both in lives and errors"],
    ),
    (
        "bad nested value",
        lambda p: _mutate(p, _set_maxelem),
        ["bad ipset live state at $.lives.ipset.sets.", ".header.maxelem", '"many"'],
    ),
    (
        "bad backup time",
        lambda p: _mutate(p, lambda d: d["lives"]["backup"].update(now=17)),
        ["bad backup live state at $.lives.backup.now: expected an ISO 8601"],
    ),
    (
        "duplicate key",
        lambda p: p.write_text(p.read_text().replace('{\n "commit"', '{"host": "h2",\n "commit"')),
        ["has the key 'host' twice"],
    ),
]


@pytest.mark.parametrize(("label", "damage", "words"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_read_snapshot_errors(
    label: str, damage: Callable[[Path], object], words: Sequence[str], tmp_path: Path
) -> None:
    path = tmp_path / "h1.json"
    write_snapshot(path, sample_snapshot(tmp_path / "cases"))
    damage(path)
    with pytest.raises(SnapshotError) as e:
        read_snapshot(path)
    message = str(e.value)
    assert str(path) in message
    for w in words:
        assert w in message, (w, message)


def test_read_snapshot_of_another_host(tmp_path: Path) -> None:
    path = tmp_path / "h1.json"
    write_snapshot(path, sample_snapshot(tmp_path / "cases"))
    with pytest.raises(SnapshotError) as e:
        read_snapshot(path, host="h2")
    assert str(e.value) == f"snapshot {path} is of host h1, not h2"
    # The host is checked before the rest of the file: the mistake that matters most.
    _mutate(path, lambda d: d.update(lives={"dns": 1}))
    with pytest.raises(SnapshotError, match="is of host h1, not h2"):
        read_snapshot(path, host="h2")
