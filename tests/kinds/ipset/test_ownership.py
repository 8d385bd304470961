"""Issue 14, items 6 and 7 at the provider: ownership is on disk before the write that
creates what it records, temporary sets get names no set has, and the ops that carry a
timeout read and log as such. The kernel parts run in a namespace of their own."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ProviderError
from reconciler.kinds.ipset import firewall, render
from reconciler.kinds.ipset.netlink import IpsetClient, LiveSet, SetHeader
from reconciler.kinds.ipset.provider import IpsetLive, IpsetProvider, temp_name
from reconciler.plan import Change, Op
from reconciler.state import StateDir
from tests.netns import Netns


def _records(state: Path) -> dict[str, Any]:
    path = state / "ours.json"
    records: dict[str, Any] = json.loads(path.read_text()).get("ipset", {}) if path.exists() else {}
    return records


def _create(name: str, *, rule: bool = False, temporary_for: str | None = None) -> Change:
    args: dict[str, Any] = {"set": name, "type": "hash:net", "family": "inet",
                            "maxelem": None, "hashsize": None}  # fmt: skip
    if temporary_for:
        args["temporary_for"] = temporary_for
    ops = [Op("create_set", args), Op("add_member", {"member": "192.0.2.0/24"})]
    if rule:
        spec = ["-m", "set", "--match-set", name, "src", "-j", "ACCEPT"]
        ops.append(Op("insert_rule", {"binary": "iptables", "chain": "INPUT", "rule": spec}))
    return Change("ipset", name, "create", tuple(ops), None, {"family": "inet"})


def _spy(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, seen: list[Any], look: Callable[[], Any]
) -> None:
    """Make ``owner.name`` record ``look()`` (the state on disk) when it is called."""
    original = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(look())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)


@pytest.mark.kernel
def test_set_and_rule_are_recorded_before_they_are_made(
    netns: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    seen: list[Any] = []
    _spy(monkeypatch, IpsetClient, "create", seen, lambda: _records(state_dir))
    _spy(monkeypatch, firewall, "insert_rule", seen, lambda: _records(state_dir))
    with netns.entered():
        IpsetProvider(StateDir(state_dir)).apply(_create("mgmt", rule=True))
    at_create, at_insert = seen
    assert at_create["mgmt"]["intent"] == "creating set mgmt"
    assert at_insert["mgmt"]["intent"].startswith("inserting rule iptables -I INPUT -m set")
    assert at_insert["mgmt"]["rules"] == [
        ["iptables", "INPUT", "-m", "set", "--match-set", "mgmt", "src", "-j", "ACCEPT"]
    ]
    after = _records(state_dir)["mgmt"]
    assert "intent" not in after and len(after["rules"]) == 1


@pytest.mark.kernel
def test_a_refused_create_is_not_ours(netns: Netns, tmp_path: Path) -> None:
    """The set appeared between plan and apply (someone else's): the kernel refuses the
    create, and the record written before it is dropped again."""
    netns.run(["ipset", "create", "mgmt", "hash:net"])
    state = StateDir(tmp_path / "state")
    with netns.entered(), pytest.raises(ProviderError, match="already exists"):
        IpsetProvider(state).apply(_create("mgmt"))
    assert _records(tmp_path / "state") == {}


@pytest.mark.kernel
def test_a_temporary_set_is_recorded_as_one(
    netns: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    seen: list[Any] = []
    _spy(monkeypatch, IpsetClient, "create", seen, lambda: _records(state_dir))
    with netns.entered():
        IpsetProvider(StateDir(state_dir)).apply(_create("mgmt~rnew", temporary_for="mgmt"))
    assert seen[0]["mgmt~rnew"]["temporary_for"] == "mgmt"
    assert seen[0]["mgmt~rnew"]["intent"] == "creating temporary set mgmt~rnew to rebuild mgmt"


def _live(*names: str) -> IpsetLive:
    header = SetHeader("x", "hash:net", "inet", 7, 1024, 65536, 0, 0)
    return IpsetLive({n: LiveSet(header, frozenset()) for n in names})


def test_forget_vanished_drops_what_a_killed_run_never_made(tmp_path: Path) -> None:
    """A record of a set that does not exist is forgotten; an intent of one that does is
    confirmed."""
    state = StateDir(tmp_path / "state")
    state.intend("ipset", "made", "creating set made", {"created": "t", "rules": []})
    state.intend("ipset", "never", "creating set never", {"created": "t", "rules": []})
    IpsetProvider(state).forget_vanished(_live("made"))
    assert _records(tmp_path / "state") == {"made": {"created": "t", "rules": []}}


def test_state_intend_confirm_forget(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.intend("ipset", "a", "creating set a", {"created": "t", "rules": [], "intent": "old"})
    assert state.ours("ipset") == {"a": {"created": "t", "rules": [], "intent": "creating set a"}}
    state.confirm("ipset", "a")
    assert state.ours("ipset") == {"a": {"created": "t", "rules": []}}
    state.intend("ipset", "a", None, {"created": "t", "rules": [["iptables", "INPUT"]]})
    assert state.ours("ipset")["a"] == {"created": "t", "rules": [["iptables", "INPUT"]]}
    state.forget("ipset", "a")
    state.forget("ipset", "missing")
    assert state.ours("ipset") == {}
    # Written each time: a fresh reader sees the same.
    assert StateDir(tmp_path / "state").ours("ipset") == {}


@pytest.mark.parametrize(
    ("name", "taken", "expected"),
    [
        ("mgmt", set(), "mgmt~rnew"),
        ("mgmt", {"mgmt~rnew"}, "mgmt~rnew2"),
        ("mgmt", {"mgmt~rnew", "mgmt~rnew2"}, "mgmt~rnew3"),
        ("a" * 31, set(), "a" * 26 + "~rnew"),
        ("a" * 31, {"a" * 26 + "~rnew"}, "a" * 25 + "~rnew2"),
    ],
)
def test_temporary_names_are_free_and_fit(name: str, taken: set[str], expected: str) -> None:
    got = temp_name(name, taken)
    assert got == expected and len(got) <= 31 and got not in taken


def test_timeout_ops_read_and_log_as_permanent() -> None:
    create = render.OP_LINES["create_set"](
        {"set": "mgmt~rnew", "type": "hash:net", "family": "inet", "maxelem": 4,
         "hashsize": None, "timeout": 600, "options": ["comment"], "temporary_for": "mgmt"}
    )  # fmt: skip
    assert create == (
        "+ create set mgmt~rnew hash:net family inet maxelem 4 timeout 600 comment "
        "(temporary, to rebuild mgmt)"
    )
    assert render.OP_LINES["add_member"]({"member": "192.0.2.0/24", "timeout": 0}) == (
        "+ member 192.0.2.0/24 (permanent: timeout 0)"
    )
    ops = [
        Op("add_member", {"member": "192.0.2.0/24", "timeout": 0}),
        Op("add_member", {"member": "198.51.100.0/24", "timeout": 0}),
        Op("add_member", {"member": "203.0.113.0/24"}),
        Op("delete_member", {"member": "10.0.0.0/8"}),
    ]
    assert list(render.log_events(ops)) == [
        {"op": "add_member", "count": 2, "members": ["192.0.2.0/24", "198.51.100.0/24"],
         "timeout": 0},
        {"op": "add_member", "count": 1, "members": ["203.0.113.0/24"]},
        {"op": "delete_member", "count": 1, "members": ["10.0.0.0/8"]},
    ]  # fmt: skip
