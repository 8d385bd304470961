"""An archive whose creation was interrupted is ours (issue 14): the state dir records each
create before the backend runs, and the next run knows what the record means.

The pure plan (:func:`diff_set`) with a recorded ``.part``; the provider against the tarsnap
emulator (a create killed after a checkpoint stores ``NAME.part``, its ``kill`` mode) with a
real state dir; a restic backup killed while it holds the repository's lock, against a real
restic repository (its stale lock would block every ``forget``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.kinds.backup.provider import SetLive, diff_set
from reconciler.kinds.backup.restic import ResticBackend, ResticConfig
from reconciler.state import StateDir
from tests import hostcfg
from tests.clirun import ROOT
from tests.kinds.backup import test_tarsnap
from tests.kinds.backup.test_tarsnap import Account, run
from tests.resticlock import held_by_another_restic
from tests.simclock import Clock

acct = test_tarsnap.acct  # the emulator's account, as the tarsnap tests use it

NOW = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)
SPEC = {"backend": "tarsnap", "paths": ["/etc"], "every": "1d", "keep": {"last": 2}}


def _name(when: datetime) -> str:
    return f"etc-{when:%Y%m%d-%H%M%S}"


def test_a_recorded_part_is_deleted_once_the_new_archive_exists() -> None:
    """The truncated archive of an interrupted create is not a backup (a create is due) and
    does not count for ``last: 2``; it is deleted after the new archive, as superseded."""
    old = [_name(NOW - timedelta(days=d)) for d in (2, 3, 4)]
    part = _name(NOW - timedelta(days=1)) + ".part"
    ch = diff_set("etc", SPEC, SetLive((*old, part), partials=(part,)), NOW)
    assert ch is not None
    ops = [(op.op, op.args["archive"]) for op in ch.ops]
    assert ops[0] == ("create_archive", _name(NOW))
    # last: 2 keeps the new archive and the newest complete one: the partial took no place.
    assert set(ops[1:]) == {("delete_archive", old[1]), ("delete_archive", old[2]),
                            ("delete_archive", part)}  # fmt: skip
    reason = next(op.args["reason"] for op in ch.ops if op.args["archive"] == part)
    assert "interrupted create" in reason and _name(NOW) in reason


def test_a_part_nobody_recorded_is_never_ours() -> None:
    old = [_name(NOW - timedelta(days=d)) for d in (1, 2)]
    part = _name(NOW - timedelta(hours=1)) + ".part"
    ch = diff_set("etc", SPEC, SetLive((*old, part)), NOW)
    assert ch is None or all(op.args.get("archive") != part for op in ch.ops)


def test_a_part_newer_than_every_complete_archive_is_kept() -> None:
    """Nothing supersedes it yet (the schedule is not due, ``every`` was raised): kept."""
    newest = NOW - timedelta(hours=2)
    part = _name(NOW - timedelta(hours=1)) + ".part"
    spec = {**SPEC, "every": "1w"}
    assert diff_set("etc", spec, SetLive((_name(newest), part), partials=(part,)), NOW) is None


def test_a_run_in_the_same_second_waits_for_the_next() -> None:
    """The new archive's name is the partial's: tarsnap would refuse it."""
    part = _name(NOW) + ".part"
    older = _name(NOW - timedelta(days=2))
    ch = diff_set("etc", SPEC, SetLive((older, part), partials=(part,)), NOW)
    assert ch is None or all(op.op != "create_archive" for op in ch.ops)


def _ours(state: StateDir) -> dict[str, dict[str, str]]:
    return StateDir(state.path).ours("backup")


def test_killed_create_leaves_a_record_and_the_next_run_settles_it(
    acct: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tarsnap dies after storing ``NAME.part``: the record says it is ours; the next run
    makes the archive, deletes the partial, and the record goes."""
    start = datetime(2024, 1, 10, 3, 0, tzinfo=UTC)
    seeded = [_name(start - timedelta(days=d)) for d in (1, 2)]
    acct.seed(seeded)
    desired = acct.write({"etc": acct.tarsnap_set(keep={"last": 2})})
    state = StateDir(tmp_path / "state")
    clock = Clock(start)
    monkeypatch.setenv("FAKE_TARSNAP_INTERRUPT", "kill")
    _, result = run(desired, acct.provider(clock=clock, state=state))
    assert not result.ok
    first = _name(start)
    assert first + ".part" in acct.names()
    record = _ours(state)[first]
    assert record == {"set": "etc", "intent": f"creating archive {first} of set etc"}

    monkeypatch.delenv("FAKE_TARSNAP_INTERRUPT")
    clock.now = start + timedelta(minutes=5)
    plan, result = run(desired, acct.provider(clock=clock, state=state))
    assert result.ok, result.errors
    deleted = [op.args["archive"] for op in plan.changes[0].ops if op.op == "delete_archive"]
    assert first + ".part" in deleted and seeded[0] not in deleted
    assert acct.names() == {seeded[0], _name(clock.now)}
    assert _ours(state) == {}


def test_create_that_committed_before_the_kill_is_confirmed(
    acct: Account, tmp_path: Path
) -> None:
    """A record whose archive exists (killed after tarsnap committed): dropped, nothing
    created twice; one whose archive never appeared: dropped too."""
    start = datetime(2024, 1, 10, 3, 0, tzinfo=UTC)
    made, never = _name(start), _name(start - timedelta(hours=1))
    acct.seed([_name(start - timedelta(days=1)), made])
    desired = acct.write({"etc": acct.tarsnap_set(keep={"last": 2})})
    state = StateDir(tmp_path / "state")
    for archive in (made, never):
        state.intend("backup", archive, f"creating archive {archive} of set etc", {"set": "etc"})
    provider = acct.provider(clock=Clock(start + timedelta(minutes=1)), state=state)
    plan, result = run(desired, provider)
    assert result.ok and plan.changes == []
    assert _ours(state) == {}


def test_a_state_dir_that_cannot_be_written_creates_nothing(acct: Account) -> None:
    """The real command line with the state dir on a read-only filesystem (a mount
    namespace of this run only): the run stops before tarsnap is called."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    acct.seed([])
    acct.write({"etc": acct.tarsnap_set()})
    state = acct.root / "state"
    state.mkdir(mode=0o700)
    mount = f'mount -t tmpfs -o ro,mode=0700 tmpfs {state} && exec "$@"'
    env = hostcfg.env_with(acct.config, {**os.environ, "RECONCILER_METRICS_FILE": ""})
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", mount, "sh", sys.executable, "-m", "reconciler",
         "--repo", str(acct.desired_dir), "--host", "h1", "--only", "backup",
         "--state-dir", str(state), "--lock-file", str(acct.root / "lock")],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot be written" in proc.stderr and "nothing was applied" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert acct.writes() == [] and acct.names() == set()


def test_a_create_whose_record_cannot_be_written_is_not_made(
    acct: Account, tmp_path: Path
) -> None:
    """The provider's own guard (a state dir that fails after the run's check): the
    record comes first, so its failure means no tarsnap -c."""
    acct.seed([])
    desired = acct.write({"etc": acct.tarsnap_set()})
    state = StateDir(tmp_path / "state")

    def refuse(*_args: object, **_kw: object) -> None:
        raise StateError(f"cannot write {state.ours_file}: Read-only file system")

    state.intend = refuse  # type: ignore[method-assign]
    provider = acct.provider(clock=Clock(datetime(2024, 1, 1, tzinfo=UTC)), state=state)
    _, result = run(desired, provider)
    assert [e.address for e in result.errors] == ["backup/etc"]
    assert "could not be recorded as ours" in result.errors[0].message
    assert acct.writes() == [] and acct.names() == set()


# --------------------------------------------------------------------------------- restic
@pytest.fixture
def restic_repo(tmp_path: Path) -> Iterator[ResticBackend]:
    if shutil.which("restic") is None:
        pytest.skip("restic is not installed")
    (tmp_path / "pass").write_text("interrupted\n")
    (tmp_path / "data").mkdir()
    # Big enough that restic is still writing when it is killed.
    (tmp_path / "data" / "big").write_bytes(os.urandom(30 * 1024 * 1024))
    backend = ResticBackend(
        ResticConfig(str(tmp_path / "repo"), tmp_path / "pass", host="h1"), address="backup/etc"
    )
    env = {**backend._env(), "RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    yield backend


def test_stale_lock_of_a_killed_backup_does_not_block_forget(
    restic_repo: ResticBackend, tmp_path: Path
) -> None:
    """restic killed mid-backup leaves its lock; restic does not skip it, so ``forget``
    would say "already locked" on every run. The backend runs ``restic unlock`` (stale
    locks only) and retries once."""
    backend = restic_repo
    for day in (1, 2):
        backend.create(f"etc-2020010{day}-000000", [str(tmp_path / "data")],
                       when=datetime(2020, 1, day, tzinfo=UTC))  # fmt: skip
    proc = subprocess.Popen(
        ["restic", "backup", "--tag", "x", "--", str(tmp_path / "data")],
        env=backend._env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    locks = tmp_path / "repo" / "locks"
    deadline = time.monotonic() + 30
    while not [p for p in locks.iterdir() if "-tmp-" not in p.name]:
        assert time.monotonic() < deadline and proc.poll() is None, "restic took no lock"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p for p in locks.iterdir() if "-tmp-" not in p.name], "the lock should be left"
    result = backend.delete(["etc-20200101-000000"])
    assert result.deleted == ["etc-20200101-000000"]
    assert [a.name for a in backend.list_archives()] == ["etc-20200102-000000"]


def test_a_live_lock_is_still_busy(restic_repo: ResticBackend, tmp_path: Path) -> None:
    """``restic unlock`` leaves a lock whose process runs: the set is busy, as before."""
    from reconciler.kinds.backup.restic import ResticBusy

    backend = restic_repo
    backend.create("etc-20200101-000000", [str(tmp_path / "data")],
                   when=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    with held_by_another_restic(backend._env(), tmp_path / "repo"), pytest.raises(ResticBusy):
        backend.delete(["etc-20200101-000000"])
    assert json.loads(
        subprocess.run(["restic", "snapshots", "--json", "--no-lock", "--tag", "reconciler"],
                       env=backend._env(), capture_output=True, text=True, check=True).stdout
    )  # the archive was not forgotten  # fmt: skip
