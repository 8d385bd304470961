"""The dump memo (:mod:`reconciler.kinds.ipset.dumpmemo`): a converged set is read without
decoding its entries, and the read stays truthful: a set changed by hand, a desired state
that changed, a memo that cannot be trusted are all decoded again. Real sets in a namespace
of their own; the run's own engine (read, plan, apply, verify)."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler import desired as desired_mod
from reconciler import engine
from reconciler.kinds.ipset import dumpmemo, netlink
from reconciler.kinds.ipset.provider import IpsetProvider
from reconciler.model import HostDesired
from reconciler.state import StateDir
from tests.netns import Netns

pytestmark = pytest.mark.kernel

MEMBERS = [str(n) for n in list(ipaddress.ip_network("10.8.0.0/16").subnets(new_prefix=24))[:200]]


def _desired(tmp_path: Path, members: list[str]) -> HostDesired:
    repo = tmp_path / "repo"
    (repo / "hosts").mkdir(parents=True, exist_ok=True)
    (repo / "hosts" / "h1.yaml").write_text("{}\n")
    (repo / "fleet.yaml").write_text(
        "ipsets:\n  mgmt:\n    type: hash:net\n    members:\n"
        + "".join(f"      - {m}\n" for m in members)
    )
    return desired_mod.load_host(repo, "h1")


def _decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sets whose entries are read: a name per decoded ADT nest (a dump of many
    members comes in several messages, each with its nest), or per comparison of all the
    entries with the desired members without decoding them (netlink._Acc._holds_exactly)."""
    seen: list[str] = []
    real = netlink._decode_adt
    real_holds = netlink._Acc._holds_exactly

    def counted(acc: Any, buf: memoryview, start: int, end: int) -> None:
        seen.append(acc.name)
        real(acc, buf, start, end)

    def compared(acc: Any, wanted: frozenset[str]) -> bool | None:
        seen.append(acc.name)
        same: bool | None = real_holds(acc, wanted)
        return same

    monkeypatch.setattr(netlink, "_decode_adt", counted)
    monkeypatch.setattr(netlink._Acc, "_holds_exactly", compared)
    return seen


def _ops(plan: Any) -> list[tuple[str, str]]:
    return sorted((op.op, str(op.args.get("member"))) for c in plan.changes for op in c.ops)


def test_a_converged_set_is_read_undecoded_and_every_change_is_still_seen(
    netns: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "state")
    desired = _desired(tmp_path, MEMBERS)
    assert desired.ipsets["mgmt"].members_digest is not None
    provider = IpsetProvider(state)
    with netns.entered():
        plan, _ = engine.make_plan(desired, [provider])
        result = engine.apply_plan(desired, [provider], plan, state)
        assert result.ok, result.errors
        memo = dumpmemo.load(state.path)
        assert memo["mgmt"][1] == desired.ipsets["mgmt"].members_digest

        decoded = _decodes(monkeypatch)
        plan, lives = engine.make_plan(desired, [IpsetProvider(state)])
        assert plan.changes == [] and decoded == []
        assert lives["ipset"].sets["mgmt"].members == frozenset(MEMBERS)

        # Changed by hand: the dump differs, so it is decoded and the plan puts it back.
        netns.run(["ipset", "del", "mgmt", MEMBERS[0]])
        netns.run(["ipset", "add", "mgmt", "192.0.2.0/24"])
        plan, lives = engine.make_plan(desired, [IpsetProvider(state)])
        assert decoded and set(decoded) == {"mgmt"}
        assert _ops(plan) == [("add_member", MEMBERS[0]), ("delete_member", "192.0.2.0/24")]
        # as many members as desired, not the same ones: not taken for the desired set
        live = lives["ipset"].sets["mgmt"].members
        assert live == {*MEMBERS[1:], "192.0.2.0/24"}
        result = engine.apply_plan(desired, [IpsetProvider(state)], plan, state)
        assert result.ok, result.errors

        # The desired members changed, the set did not: decoded, and the change planned.
        decoded.clear()
        changed = _desired(tmp_path, [*MEMBERS[1:], "198.51.100.0/24"])
        plan, _ = engine.make_plan(changed, [IpsetProvider(state)])
        assert decoded
        assert _ops(plan) == [("add_member", "198.51.100.0/24"), ("delete_member", MEMBERS[0])]
    assert netns.ipset_members("mgmt") == set(MEMBERS)


def test_a_memo_that_cannot_be_trusted_is_not_used(
    netns: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "state")
    desired = _desired(tmp_path, MEMBERS)
    with netns.entered():
        plan, _ = engine.make_plan(desired, [IpsetProvider(state)])
        assert engine.apply_plan(desired, [IpsetProvider(state)], plan, state).ok
    path = state.path / dumpmemo.FILE_NAME
    good = json.loads(path.read_text())
    decoded = _decodes(monkeypatch)
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps(good))
    for how in ("garbage", "other version", "other members", "symlink"):
        path.unlink()
        if how == "symlink":
            os.symlink(other, path)
        else:
            data = json.loads(json.dumps(good))
            if how == "other version":
                data["reconciler"] = "0.0.0+0"
            elif how == "other members":
                data["sets"]["mgmt"]["members"] = "0" * 64
            path.write_text("{not json" if how == "garbage" else json.dumps(data))
        decoded.clear()
        with netns.entered():
            plan, lives = engine.make_plan(desired, [IpsetProvider(state)])
        assert set(decoded) == {"mgmt"}, how
        assert plan.changes == [] and lives["ipset"].sets["mgmt"].members == frozenset(MEMBERS)
        # Decoded and found to be exactly the desired members: given as that very set.
        assert lives["ipset"].sets["mgmt"].members is desired.ipsets["mgmt"].members


def test_a_dry_run_reads_the_memo_and_never_writes_it(netns: Netns, tmp_path: Path) -> None:
    """Through the command line: the run that applies writes the memo, a dry-run of a
    changed set neither uses nor rewrites it, and plans the change."""
    _desired(tmp_path, MEMBERS)
    argv = ["env", "RECONCILER_METRICS_FILE=", sys.executable, "-m", "reconciler",
            "--repo", str(tmp_path / "repo"), "--host", "h1", "--only", "ipset",
            "--state-dir", str(tmp_path / "state"),
            "--lock-file", str(tmp_path / "lock"), "--allow-dirty"]  # fmt: skip
    first = netns.run(argv, check=False)
    assert first.returncode == 0, first.stderr
    path = tmp_path / "state" / dumpmemo.FILE_NAME
    before = path.read_bytes()
    netns.run(["ipset", "del", "mgmt", MEMBERS[5]])
    dry = netns.run([*argv, "--dry-run", "--detailed-exitcode"], check=False)
    assert dry.returncode == 2, dry.stdout + dry.stderr
    assert MEMBERS[5] in dry.stdout
    assert path.read_bytes() == before
