"""The command line as a user meets it: exit codes, messages, no tracebacks (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.errors import LockHeldError, StateError
from reconciler.lock import RunLock
from reconciler.plan import Change, Op, Plan, PlanError
from reconciler.render import text
from reconciler.state import StateDir
from tests import hostcfg
from tests.clirun import reconcile

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted(p for p in (ROOT / "tests" / "data" / "desired").iterdir() if p.is_dir())


def test_validate_example_exits_0(tmp_path: Path) -> None:
    # The host configuration the example is written for (docs/host-config.md, the lab's).
    config = hostcfg.write(tmp_path, allowed_dirs=hostcfg.EXAMPLE_ALLOWED_DIRS)
    proc = reconcile("validate", "--repo", str(ROOT / "desired-state"), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validate_bad_input_exits_1_with_file_line_and_field(case: Path, tmp_path: Path) -> None:
    # About the schema and semantic checks: a host that allows any path and the test driver.
    config = hostcfg.write(tmp_path, allowed_dirs=["/"], allow_test_driver=True)
    proc = reconcile("validate", "--repo", str(case), "--config", str(config))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    expected = (case / "expected.txt").read_text().splitlines()
    assert proc.stderr.splitlines()[:-1] == expected
    assert "nothing was applied" in proc.stderr.splitlines()[-1]


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hosts" / "www.yaml").write_bytes(b"ipsets:\n  mgmt:\n    type: hash:n\xe9t\n")
    proc = reconcile("validate", "--repo", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("hosts/www.yaml:3:")
    assert "not UTF-8" in proc.stderr and "Traceback" not in proc.stderr


def test_reconcile_with_invalid_state_exits_1_before_touching_the_host(tmp_path: Path) -> None:
    """Validation comes first: the state dir and lock file are never even created."""
    (tmp_path / "fleet.yaml").write_text(
        "ipsets:\n  mgmt:\n    type: hash:net\n    members: [0.0.0.0/0]\n"
    )
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hosts" / "h1.yaml").write_text("{}\n")
    state, lock = tmp_path / "state", tmp_path / "lock"
    proc = reconcile(
        "--dry-run",
        "--repo",
        str(tmp_path),
        "--host",
        "h1",
        "--state-dir",
        str(state),
        "--lock-file",
        str(lock),
    )
    assert proc.returncode == 1
    assert "fleet.yaml:4:" in proc.stderr and "/0" in proc.stderr
    assert not state.exists() and not lock.exists()


def test_unknown_kind_in_only_is_a_usage_error() -> None:
    proc = reconcile("--dry-run", "--only", "ipset,firewall")
    assert proc.returncode == 1  # a usage error (issue 13: 2 means "changes pending")
    assert "unknown kind firewall" in proc.stderr


def test_missing_repo_is_a_clear_error(tmp_path: Path) -> None:
    proc = reconcile("--dry-run", "--repo", str(tmp_path / "nope"))
    assert proc.returncode == 1 and "not a directory" in proc.stderr


def test_lock_names_its_holder(tmp_path: Path) -> None:
    with (
        RunLock(tmp_path / "lock"),
        pytest.raises(LockHeldError, match=f"pid {os.getpid()}"),
        RunLock(tmp_path / "lock"),
    ):
        pass
    with RunLock(tmp_path / "lock"):  # released on exit: can be taken again
        pass


def test_corrupt_state_is_reported_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "ours.json").write_text('{"ipset": {"mgmt"')
    with pytest.raises(StateError, match=r"ours\.json is corrupt"):
        StateDir(tmp_path).ours("ipset")


def test_state_round_trip_is_atomic(tmp_path: Path) -> None:
    s = StateDir(tmp_path)
    s.set_ours("ipset", {"mgmt": {"created": "x", "rules": []}})
    assert StateDir(tmp_path).ours("ipset") == {"mgmt": {"created": "x", "rules": []}}
    assert [p.name for p in tmp_path.iterdir()] == ["ours.json"]


def test_text_is_rendered_from_the_plan_dict() -> None:
    ops = tuple(Op("add_member", {"member": f"10.0.{i}.0/24"}) for i in range(50))
    plan = Plan(
        "www",
        "0123456789abcdef0123",
        [
            Change("ipset", "mgmt", "update", ops, {"members": 1}, {"members": 51}),
            Change("ipset", "old", "delete", (Op("destroy_set", {"set": "old"}),), refused="no"),
        ],
        [PlanError("ipset/x", "boom")],
    )
    d = plan.to_dict()
    assert d["summary"] == {"create": 0, "update": 1, "delete": 1, "move": 0, "refused": 1}
    out = text.render(d)
    assert "at commit 0123456789ab" in out
    assert "~ ipset/mgmt  update" in out
    assert "+ member 10.0.0.0/24" in out and "... and 42 more add_member ops" in out
    assert "! ipset/old  delete" in out and "REFUSED: no" in out
    assert "ipset/x: boom" in out
    assert out.rstrip().endswith(
        "Plan: 0 to create, 1 to update, 1 to delete, 0 to move; 1 refused; 1 error(s)."
    )


def test_member_ops_are_logged_in_chunks_naming_every_member() -> None:
    from reconciler.kinds.ipset.render import MEMBERS_PER_EVENT, log_events

    ops = [Op("add_member", {"member": f"10.{i // 256}.{i % 256}.0/24"}) for i in range(2500)]
    ops += [Op("delete_member", {"member": "192.0.2.0/24"}), Op("destroy_set", {"set": "x"})]
    events = list(log_events(ops))
    assert [(e["op"], e.get("count")) for e in events] == [
        ("add_member", MEMBERS_PER_EVENT),
        ("add_member", MEMBERS_PER_EVENT),
        ("add_member", 500),
        ("delete_member", 1),
        ("destroy_set", None),
    ]
    logged = [m for e in events if e["op"] == "add_member" for m in e["members"]]
    assert logged == [o.args["member"] for o in ops[:2500]]


def test_lock_wait_takes_the_lock_once_the_holder_is_done(tmp_path: Path) -> None:
    import threading

    holder = RunLock(tmp_path / "lock")
    holder.__enter__()
    threading.Timer(0.3, holder.__exit__, (None, None, None)).start()
    with RunLock(tmp_path / "lock", wait=5):
        pass  # got it after the holder released it


def test_lock_wait_gives_up_after_the_timeout(tmp_path: Path) -> None:
    with RunLock(tmp_path / "lock"), pytest.raises(LockHeldError, match=r"waited 0\.2 s"):
        RunLock(tmp_path / "lock", wait=0.2).__enter__()
