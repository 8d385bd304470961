"""The pure parts of ``--target`` and saved plans (issue 13): what a targeted plan keeps and
refuses (:func:`reconciler.engine.select`), that a targeted run is never a drift baseline,
and how a saved plan is found stale (:func:`reconciler.planfile.stale_reasons`). The same
behaviour through the real CLI on real ipsets: ``tests/cli/test_saved_plans.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import engine, journal, planfile
from reconciler.errors import TargetError
from reconciler.model import HostDesired, IpsetSpec
from reconciler.plan import Change, Op, Plan, PlanError, PlanWarning


def _plan() -> Plan:
    require = Op("require_applied", {"needs": "ipset/new", "reason": "it keeps 192.0.2.5 accepted"})
    return Plan(
        "h1",
        "c0ffee",
        changes=[
            Change("ipset", "new", "create", (Op("create_set", {"set": "new"}),)),
            Change("ipset", "old", "update", (require, Op("delete_member", {"member": "x"}))),
            Change("ipset", "gone", "delete", (Op("destroy_set", {"set": "gone"}),)),
            Change("ipset", "dead", "delete", (Op("destroy_set", {"set": "dead"}),)),
            Change("nic", "eth1", "update", (Op("set_features", {"nic": "eth1"}),)),
        ],
        errors=[
            PlanError("ipset/bad", "boom"),
            PlanError("nic", "reading live state: no netlink"),
            PlanError("node/kvm1", "unreachable"),
            PlanError("source", "cannot fetch"),
        ],
        warnings=[PlanWarning("nic/eth1", "heads up"), PlanWarning("ipset/new", "x")],
    )


KNOWN = {"ipset/new", "ipset/old", "ipset/bad", "ipset/dead", "nic/eth1"}  # dead: a tombstone


def test_select_keeps_the_targets_and_what_may_hide_them() -> None:
    got = engine.select(_plan(), ["nic/eth1"], KNOWN)
    assert [c.address for c in got.changes] == ["nic/eth1"]
    assert [e.address for e in got.errors] == ["nic", "source"]
    assert [w.address for w in got.warnings] == ["nic/eth1"]
    assert got.targets == ("nic/eth1",) and got.to_dict()["targets"] == ["nic/eth1"]
    got = engine.select(_plan(), ["vm/web"], KNOWN | {"vm/web"})
    assert [e.address for e in got.errors] == ["node/kvm1", "source"]


def test_select_refuses_a_prune_but_not_a_tombstone() -> None:
    got = engine.select(_plan(), ["ipset/gone", "ipset/dead"], KNOWN)
    refused = {c.address: c.refused for c in got.changes}
    assert refused["ipset/gone"] is not None
    assert refused["ipset/gone"].startswith("--target does not prune: ipset/gone is no longer")
    assert refused["ipset/dead"] is None  # absent: true in git is not pruning


def test_select_refuses_a_change_that_needs_one_left_out() -> None:
    got = engine.select(_plan(), ["ipset/old"], KNOWN)
    (old,) = got.changes
    assert old.refused == (
        "it must be applied together with ipset/new (it keeps 192.0.2.5 accepted): "
        "add --target ipset/new"
    )
    got = engine.select(_plan(), ["ipset/old", "ipset/new"], KNOWN)
    assert [c.refused for c in got.changes] == [None, None]


def test_select_rejects_an_address_that_names_nothing() -> None:
    with pytest.raises(TargetError, match=r"--target ipset/nope: no such resource"):
        engine.select(_plan(), ["ipset/nope", "nic/eth1"], KNOWN)
    assert engine.select(_plan(), ["ipset/bad"], KNOWN).errors[0].address == "ipset/bad"


def test_desired_addresses_name_every_section_and_the_vms() -> None:
    desired = HostDesired(
        "h1", ipsets={"mgmt": IpsetSpec("mgmt")}, raw={"backups": {"etc": {}}, "nics": {}}
    )
    got = engine.desired_addresses(desired, {"vms": {"web": {}}})
    assert got == {"ipset/mgmt", "backup/etc", "vm/web"}
    assert "vm/web" not in engine.desired_addresses(desired, None)


def test_a_targeted_run_is_never_a_drift_baseline() -> None:
    full = journal.run_record(
        host="h1", commit="c1", started="t", finished="t", kinds=["ipset"], ok=True,
        changes=[], refused=[], errors=[],
    )  # fmt: skip
    targeted = {**full, "commit": "c2", "targets": ["ipset/mgmt"]}
    assert journal.converged_kinds(full) == {"ipset"}
    assert journal.converged_kinds(targeted) == set()
    assert journal.baselines([full, targeted]) == {"ipset": "c1"}


def _saved(
    plan: Plan, *, commit: str | None = "c0ffee", digest: str | None = None
) -> planfile.SavedPlan:
    return planfile.SavedPlan(
        path=Path("plan.json"), doc=plan.to_dict(), host="h1", commit=commit, digest=digest,
        kinds=("ipset",), targets=(), force=False, allow_empty=False,
    )  # fmt: skip


def _simple(*members: str) -> Plan:
    ops = tuple(Op("add_member", {"member": m}) for m in members)
    return Plan("h1", "c0ffee", [Change("ipset", "mgmt", "update", ops)])


def test_stale_reasons_name_what_moved() -> None:
    saved = _saved(_simple("10.0.0.0/8"))
    fresh = _simple("10.0.0.0/8").to_dict()
    assert planfile.stale_reasons(saved, fresh, commit="c0ffee", digest=None) == []
    (why,) = planfile.stale_reasons(saved, fresh, commit="beef", digest=None)
    assert why == "it was made at commit c0ffee, and the desired state is now at beef"
    moved = _simple("10.0.0.0/8", "192.0.2.0/24").to_dict()
    (why,) = planfile.stale_reasons(saved, moved, commit="c0ffee", digest=None)
    assert why == (
        "ipset/mgmt: a fresh plan differs from the saved one (now also: + member 192.0.2.0/24)"
    )
    extra = Plan("h1", "c0ffee", [*_simple("10.0.0.0/8").changes,
                                   Change("ipset", "x", "create", ())])  # fmt: skip
    (why,) = planfile.stale_reasons(saved, extra.to_dict(), commit="c0ffee", digest=None)
    assert why == "ipset/x: a fresh plan has a change (create) that the saved plan does not"
    errs = Plan("h1", "c0ffee", errors=[PlanError("ipset", "no netlink")]).to_dict()
    assert planfile.stale_reasons(saved, errs, commit="c0ffee", digest=None) == [
        "ipset/mgmt: the saved plan has a change (update), and a fresh plan has none",
        "ipset: no netlink",
    ]
    plain = _saved(_simple("10.0.0.0/8"), commit=None, digest="sha256:aa")
    (why,) = planfile.stale_reasons(
        plain, fresh | {"commit": None}, commit=None, digest="sha256:bb"
    )
    assert "files changed since it was made" in why
