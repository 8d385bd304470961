"""The backup provider end to end against the tarsnap emulator (lab/fake_tarsnap/tarsnap).

The emulator's "server" is a JSON file; the provider drives it exactly as it drives tarsnap
(``commands.tarsnap`` of the host configuration, which the tests write to a file). Simulated
time comes from the provider's clock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler import desired as desired_mod
from reconciler import engine, hostconfig
from reconciler.engine import RunResult
from reconciler.kinds.backup import retention
from reconciler.kinds.backup.provider import BackupProvider
from reconciler.model import HostDesired
from reconciler.plan import Plan
from tests import hostcfg
from tests.clirun import reconcile
from tests.simclock import Clock

FAKE = Path(__file__).resolve().parents[3] / "lab" / "fake_tarsnap" / "tarsnap"
HOST = "h1"


class Account:
    """A fake tarsnap account, a key file, a cache dir, data dirs and a desired-state repo."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "server"
        self.state.mkdir()
        self.calllog = root / "calls.jsonl"
        self.keyfile = root / "tarsnap.key"
        self.keyfile.write_text("# START OF TARSNAP KEY FILE\nfake\n")
        self.keyfile.chmod(0o600)
        self.cachedir = root / "cache"
        self.data = root / "data"
        for d in ("etc", "home"):
            (self.data / d).mkdir(parents=True)
            (self.data / d / "file").write_text(d)
        self.desired_dir = root / "desired"
        (self.desired_dir / "hosts").mkdir(parents=True)
        # The host runs the emulator as its tarsnap, and allows the key and cache here.
        self.config = hostcfg.write(root / "host", tarsnap=str(FAKE), allowed_dirs=[root])
        self.host = hostconfig.load(self.config)

    def write(self, sets: dict[str, dict[str, Any]], **tarsnap_extra: Any) -> HostDesired:
        tarsnap = {
            "keyfile": str(self.keyfile),
            "cachedir": str(self.cachedir),
            **tarsnap_extra,
        }
        doc = {"tarsnap": tarsnap, "backups": sets}
        # JSON is YAML: no quoting surprises in paths.
        (self.desired_dir / "hosts" / f"{HOST}.yaml").write_text(json.dumps(doc, indent=1))
        return desired_mod.load_host(self.desired_dir, HOST, config=self.host)

    def provider(self, **kw: Any) -> BackupProvider:
        """The backup provider with the host's commands, as ``reconcile`` builds it."""
        return BackupProvider(commands=self.host.commands, **kw)

    def tarsnap_set(self, name: str = "etc", **kw: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "backend": "tarsnap",
            "paths": [str(self.data / name)],
            "every": "1d",
            "keep": {"last": 2, "daily": 3, "weekly": 2, "monthly": 3, "yearly": 2},
        }
        spec.update(kw)
        return spec

    def seed(self, names: list[str], *, seq_mismatch: bool = False) -> None:
        doc = {
            "archives": {n: {"ctime": 0, "argv": ["tarsnap"], "files": []} for n in names},
            "seq_mismatch": seq_mismatch,
        }
        (self.state / "state.json").write_text(json.dumps(doc))
        self.cachedir.mkdir(exist_ok=True)
        (self.cachedir / "directory").touch()

    def names(self) -> set[str]:
        path = self.state / "state.json"
        if not path.exists():
            return set()
        return set(json.loads(path.read_text())["archives"])

    def calls(self) -> list[list[str]]:
        if not self.calllog.exists():
            return []
        return [json.loads(ln) for ln in self.calllog.read_text().splitlines()]

    def writes(self) -> list[list[str]]:
        return [c for c in self.calls() if "-c" in c or "-d" in c]


@pytest.fixture
def acct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Account]:
    a = Account(tmp_path)
    monkeypatch.setenv("FAKE_TARSNAP_STATE", str(a.state))
    monkeypatch.setenv("FAKE_TARSNAP_CALLLOG", str(a.calllog))
    for var in ("FAKE_TARSNAP_DELAY", "FAKE_TARSNAP_INTERRUPT", "FAKE_TARSNAP_FAIL_DELETE_AFTER"):
        monkeypatch.delenv(var, raising=False)
    yield a


def run(desired: HostDesired, provider: BackupProvider) -> tuple[Plan, RunResult]:
    """Plan and apply, as the CLI does without --dry-run."""
    plan, _ = engine.make_plan(desired, [provider])
    return plan, engine.apply_plan(desired, [provider], plan, None)


FOREIGN = [
    "www-etc-20140716-1508",  # the hand-made cron style of the issue
    "etc-old-20200101-000000",  # another set whose name starts with ours
    "etc 20200101-000000",  # spaces: never split
    "etc-20200101-000000.part",  # an interrupted create
]


def test_years_of_simulated_time_follow_decide(acct: Account) -> None:
    spec = acct.tarsnap_set()
    desired = acct.write({"etc": spec})
    acct.seed(FOREIGN)
    policy = retention.KeepPolicy.from_mapping(spec["keep"])
    clock = Clock(datetime(2022, 12, 30, 2, 0, tzinfo=UTC))
    provider = acct.provider(clock=clock)
    ours: set[str] = set()
    deleted = 0
    for step in range(20):
        due = retention.archive_name("etc", clock.now)
        want = retention.decide("etc", [*ours, due, *FOREIGN], policy, clock.now)
        plan, result = run(desired, provider)
        assert result.ok, (plan.to_dict(), result.errors)
        ours = set(want.keep)
        deleted += len(want.delete)
        assert acct.names() == ours | set(FOREIGN), step
        # Runs every 23 days 7 hours (over a year change): due each time (every 1d).
        clock.now += timedelta(days=23, hours=7)
    assert deleted >= 8
    assert len(ours) <= 2 + 3 + 2 + 3 + 2


def test_nothing_due_is_a_noop_and_dry_run_writes_nothing(acct: Account) -> None:
    desired = acct.write({"etc": acct.tarsnap_set(every="1h", keep={"last": 1})})
    acct.seed(["etc-20240101-000000", "etc-20240102-000000", *FOREIGN])
    clock = Clock(datetime(2024, 1, 2, 0, 59, 59, tzinfo=UTC))
    provider = acct.provider(clock=clock)
    state_before = (acct.state / "state.json").read_text()
    # Dry run = make_plan only (the engine never calls apply): a deletion is planned ...
    plan, _ = engine.make_plan(desired, [provider])
    assert [o.op for o in plan.changes[0].ops] == ["delete_archive"]
    assert acct.writes() == []
    assert (acct.state / "state.json").read_text() == state_before
    # Not even our own lock file: reads take no lock.
    assert not Path(f"{acct.cachedir}.reconciler.lock").exists()
    # ... and a real run does it; a second run at the same time has nothing to do.
    _, result = run(desired, provider)
    assert result.ok
    n = len(acct.calls())
    plan, result = run(desired, provider)
    assert plan.empty and result.ok and result.applied == []
    assert acct.writes()[-1][acct.writes()[-1].index("-d") :] == [
        "-d",
        "--keep-going",
        "-f",
        "etc-20240101-000000",
    ]
    assert len(acct.calls()) == n + 2  # read and re-read list only
    assert acct.names() == {"etc-20240102-000000", *FOREIGN}


def test_busy_cache_lock_fails_that_set_only(acct: Account, tmp_path: Path) -> None:
    """Another tarsnap holding the cache lock: the tarsnap set is retried next run, a restic
    set in the same run converges."""
    acct.seed(["etc-20240101-000000"])
    sets: dict[str, dict[str, Any]] = {"etc": acct.tarsnap_set()}
    restic_ok = shutil.which("restic") is not None
    if restic_ok:
        pw = tmp_path / "restic.pw"
        pw.write_text("pw\n")
        repo = tmp_path / "restic-repo"
        env = {
            **os.environ,
            "RESTIC_REPOSITORY": str(repo),
            "RESTIC_PASSWORD_FILE": str(pw),
            "RESTIC_CACHE_DIR": str(tmp_path / "rcache"),
        }
        subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
        sets["home"] = {
            "backend": "restic",
            "repository": str(repo),
            "password_file": str(pw),
            "paths": [str(acct.data / "home")],
            "every": "1d",
            "keep": {"last": 3},
        }
    desired = acct.write(sets)
    provider = acct.provider(clock=Clock(datetime(2024, 1, 5, tzinfo=UTC)))
    # tarsnap's own cache lock: lockf() on <cachedir>/lockf, as another tarsnap holds it.
    fd = os.open(acct.cachedir / "lockf", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        plan, result = run(desired, provider)
    finally:
        os.close(fd)
    assert [c.address for c in plan.changes] == ["backup/etc"] + (
        ["backup/home"] if restic_ok else []
    )
    assert [e.address for e in result.errors] == ["backup/etc"]
    msg = result.errors[0].message
    assert "Transaction already in progress" in msg and "retried on the next run" in msg
    assert result.applied == (["backup/home"] if restic_ok else [])
    assert acct.names() == {"etc-20240101-000000"}
    # Lock released: the next run converges.
    _, result = run(desired, provider)
    assert result.ok
    assert acct.names() == {"etc-20240101-000000", "etc-20240105-000000"}


def test_unsafe_key_file_is_an_error_for_that_set_only(acct: Account) -> None:
    acct.keyfile.chmod(0o644)
    desired = acct.write({"etc": acct.tarsnap_set()})
    plan, _ = engine.make_plan(desired, [acct.provider()])
    assert [e.address for e in plan.errors] == ["backup/etc"]
    assert "chmod 600" in plan.errors[0].message
    assert acct.calls() == []  # checked before tarsnap ever ran


def test_missing_path_is_an_error_for_that_set_only(acct: Account) -> None:
    desired = acct.write(
        {
            "etc": acct.tarsnap_set(paths=[str(acct.data / "etc"), str(acct.root / "gone")]),
            "home": acct.tarsnap_set("home"),
        }
    )
    acct.seed([])
    plan, result = run(desired, acct.provider(clock=Clock(datetime(2024, 3, 1, tzinfo=UTC))))
    assert [e.address for e in plan.errors] == ["backup/etc"]
    assert result.applied == ["backup/home"]
    assert acct.names() == {"home-20240301-000000"}


def test_many_deletions_in_bounded_batches(acct: Account) -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    old = [retention.archive_name("etc", start + timedelta(hours=i)) for i in range(1200)]
    acct.seed(old)
    desired = acct.write({"etc": acct.tarsnap_set(every="1h", keep={"last": 1})})
    provider = acct.provider(clock=Clock(datetime(2021, 1, 1, tzinfo=UTC)), delete_batch=500)
    _, result = run(desired, provider)
    assert result.ok
    deletes = [c for c in acct.calls() if "-d" in c]
    assert len(deletes) == 3  # ceil(1200 / 500)
    assert acct.names() == {"etc-20210101-000000"}


def test_backup_longer_than_every_still_converges(acct: Account) -> None:
    """The verify read after apply judges the planned moment: a backup that took longer than
    ``every`` is not reported as "did not converge"; the next run makes the next archive."""
    desired = acct.write({"etc": acct.tarsnap_set(every="1h", keep={"last": 5})})
    times = iter(datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(0, 24, 3))
    provider = acct.provider(clock=lambda: next(times))  # 3 hours pass per clock reading
    _, result = run(desired, provider)
    assert result.ok, result.errors
    assert acct.names() == {"etc-20240101-000000"}
    _, result = run(desired, provider)
    assert result.ok, result.errors
    assert acct.names() == {"etc-20240101-000000", "etc-20240101-030000"}


def test_sequence_mismatch_runs_fsck_only_when_git_allows_it(acct: Account) -> None:
    """tarsnap's "Sequence number mismatch: Run --fsck": an error naming the fix, unless the
    desired state says ``tarsnap: {allow_fsck: true}``; then --fsck runs once and the run
    converges."""
    acct.seed(["etc-20240101-000000"], seq_mismatch=True)
    clock = Clock(datetime(2024, 1, 3, tzinfo=UTC))
    desired = acct.write({"etc": acct.tarsnap_set(keep={"last": 1})})
    _, result = run(desired, acct.provider(clock=clock))
    assert not result.ok
    assert "--fsck" in result.errors[0].message and "Sequence number mismatch" in (
        result.errors[0].message
    )
    assert not any("--fsck" in c for c in acct.calls())
    desired = acct.write({"etc": acct.tarsnap_set(keep={"last": 1})}, allow_fsck=True)
    _, result = run(desired, acct.provider(clock=clock))
    assert result.ok, result.errors
    assert sum("--fsck" in c for c in acct.calls()) == 1
    assert acct.names() == {"etc-20240103-000000"}


def test_cli_shows_a_future_archive_even_when_nothing_is_due(acct: Account) -> None:
    """The real command line, real clock: a set with a recent archive (nothing due, nothing
    to expire) and one dated years ahead. The dry run and the real run both exit 0 with
    nothing to do, write nothing, and name the future archive in text and JSON."""
    recent = retention.archive_name("etc", datetime.now(UTC) - timedelta(hours=1))
    future = "etc-20991231-000000"
    acct.seed([recent, future])
    acct.write({"etc": acct.tarsnap_set(keep={"last": 5})})
    base = (
        "--repo", str(acct.desired_dir), "--host", HOST, "--only", "backup",
        "--state-dir", str(acct.root / "state"), "--lock-file", str(acct.root / "lock"),
    )  # fmt: skip
    env = hostcfg.env_with(acct.config, {**os.environ, "RECONCILER_METRICS_FILE": ""})
    dry = reconcile(*base, "--dry-run", "--output", "json", "--detailed-exitcode", env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["changes"] == [] and plan["errors"] == []
    (warning,) = plan["warnings"]
    assert warning["address"] == "backup/etc"
    assert f"archive {future} is dated 2099-12-31 00:00:00 UTC" in warning["message"]
    real = reconcile(*base, env=env)
    assert real.returncode == 0, real.stderr
    assert f"backup/etc: backup set 'etc': archive {future}" in real.stdout
    assert acct.writes() == []
    assert acct.names() == {recent, future}


# --- checks ----------------------------------------------------------------------------


def _corrupt(acct: Account, name: str) -> None:
    doc = json.loads((acct.state / "state.json").read_text())
    doc["archives"][name]["corrupt"] = True
    (acct.state / "state.json").write_text(json.dumps(doc))


def test_check_reads_back_the_new_archive_through_tarsnap_t(
    acct: Account, tmp_path: Path
) -> None:
    """``check: {every: 7d}``: the run creates, then lists the archive it made with
    ``tarsnap -t -f``, records the check, and expires; a week later it checks again."""
    from reconciler.kinds.backup import checkstate
    from reconciler.state import StateDir

    desired = acct.write(
        {"etc": acct.tarsnap_set(every="1d", keep={"last": 1}, check={"every": "7d"})}
    )
    state = StateDir(tmp_path / "state")
    clock = Clock(datetime(2024, 3, 1, 3, tzinfo=UTC))
    plan, result = run(desired, acct.provider(clock=clock, state=state))
    assert result.ok, result.errors
    assert [o.op for o in plan.changes[0].ops] == ["create_archive", "check_archive"]
    listing = [c for c in acct.calls() if "-t" in c]
    assert [c[c.index("-t") :] for c in listing] == [["-t", "-f", "etc-20240301-030000"]]
    record = checkstate.load(state.path)["etc"]
    assert record.ok and record.what == "tarsnap -t -f etc-20240301-030000"
    assert record.message == "etc-20240301-030000: 2 member(s) listed"  # the dir and its file
    clock.now += timedelta(days=1)
    plan, result = run(desired, acct.provider(clock=clock, state=state))
    assert result.ok and [o.op for o in plan.changes[0].ops] == ["create_archive",
                                                                  "delete_archive"]  # fmt: skip
    clock.now += timedelta(days=6)
    plan, result = run(desired, acct.provider(clock=clock, state=state))
    assert result.ok and "check_archive" in [o.op for o in plan.changes[0].ops]


def test_an_archive_that_does_not_read_back_fails_the_check_and_deletes_nothing(
    acct: Account, tmp_path: Path
) -> None:
    from reconciler.kinds.backup import checkstate
    from reconciler.state import StateDir

    desired = acct.write(
        {"etc": acct.tarsnap_set(every="1d", keep={"last": 1}, check={"every": "30d"})}
    )
    acct.seed(["etc-20240101-000000", "etc-20240102-000000", "etc-20240103-000000"])
    doc = json.loads((acct.state / "state.json").read_text())
    for meta in doc["archives"].values():
        meta["files"] = ["srv", "srv/a", "srv/b", "srv/c"]
    (acct.state / "state.json").write_text(json.dumps(doc))
    _corrupt(acct, "etc-20240103-000000")
    state = StateDir(tmp_path / "state")
    clock = Clock(datetime(2024, 1, 3, 5, tzinfo=UTC))
    plan, result = run(desired, acct.provider(clock=clock, state=state))
    assert [o.op for o in plan.changes[0].ops] == [
        "check_archive",
        "delete_archive",
        "delete_archive",
    ]
    assert plan.changes[0].ops[0].args["archive"] == "etc-20240103-000000"
    assert not result.ok and [e.address for e in result.errors] == ["backup/etc"]
    message = result.errors[0].message
    assert "check failed (tarsnap -t -f etc-20240103-000000)" in message
    assert "is corrupt" in message and "2 expired archive(s) are kept" in message
    assert acct.names() == {"etc-20240101-000000", "etc-20240102-000000", "etc-20240103-000000"}
    assert not [c for c in acct.calls() if "-d" in c]
    assert checkstate.load(state.path)["etc"].ok is False
    # Repaired (here: the record fixed), the next run checks again, passes and expires.
    doc = json.loads((acct.state / "state.json").read_text())
    doc["archives"]["etc-20240103-000000"]["corrupt"] = False
    (acct.state / "state.json").write_text(json.dumps(doc))
    clock.now += timedelta(minutes=15)
    _, result = run(desired, acct.provider(clock=clock, state=state))
    assert result.ok, result.errors
    assert acct.names() == {"etc-20240103-000000"}
    assert checkstate.load(state.path)["etc"].ok is True


def test_a_missing_archive_fails_the_check(acct: Account) -> None:
    """What tarsnap says for an archive that is gone reaches the error (emulated from
    multitape_metadata_get_byname(): "Archive does not exist")."""
    from reconciler.kinds.backup.tarsnap import TarsnapBackend, TarsnapConfig, TarsnapError

    acct.seed([])
    backend = TarsnapBackend(
        TarsnapConfig(command=str(FAKE), keyfile=acct.keyfile, cachedir=acct.cachedir),
        address="backup/etc",
    )
    with pytest.raises(TarsnapError, match="Archive does not exist: etc-20240101-000000"):
        backend.list_contents("etc-20240101-000000")


def test_unreadable_check_records_fail_only_the_sets_with_check(
    acct: Account, tmp_path: Path
) -> None:
    """A corrupt backup-checks.json is an error for the sets that have check: (with the
    fix), never a guess; the set without check: still plans."""
    from reconciler.kinds.backup import checkstate
    from reconciler.state import StateDir

    desired = acct.write(
        {
            "etc": acct.tarsnap_set(every="1d", keep={"last": 1}, check={"every": "7d"}),
            "home": acct.tarsnap_set("home", every="1d", keep={"last": 1}),
        }
    )
    acct.seed([])
    state = StateDir(tmp_path / "state")
    checkstate.path_in(state.path).write_text("{broken")
    provider = acct.provider(clock=Clock(datetime(2024, 3, 1, tzinfo=UTC)), state=state)
    plan, _ = engine.make_plan(desired, [provider])
    assert [(e.address, "Remove it" in e.message) for e in plan.errors] == [("backup/etc", True)]
    assert [c.address for c in plan.changes] == ["backup/home"]


def test_a_backup_command_that_cannot_be_started_is_an_error_not_a_traceback(
    acct: Account,
) -> None:
    """The host's tarsnap is a file that is not executable (issue 12: PermissionError):
    the set is an error naming the command, exit 1, nothing written, no traceback."""
    acct.seed(["etc-20240101-000000"])
    acct.write({"etc": acct.tarsnap_set(keep={"last": 5})})
    broken = acct.root / "tarsnap-not-executable"
    broken.write_text("#!/bin/sh\nexit 0\n")
    broken.chmod(0o644)
    config = hostcfg.write(acct.root / "host2", tarsnap=str(broken), allowed_dirs=[acct.root])
    base = (
        "--repo", str(acct.desired_dir), "--host", HOST, "--only", "backup",
        "--state-dir", str(acct.root / "state"), "--lock-file", str(acct.root / "lock"),
    )  # fmt: skip
    env = hostcfg.env_with(config, {**os.environ, "RECONCILER_METRICS_FILE": ""})
    for extra in (("--dry-run",), ()):
        r = reconcile(*base, *extra, env=env)
        assert r.returncode == 1
        assert "backup/etc" in r.stdout + r.stderr and str(broken) in r.stdout + r.stderr
        assert "Traceback" not in r.stderr
    assert acct.writes() == []
