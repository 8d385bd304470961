"""The backup provider end to end against real restic repositories in temporary directories.

restic (Debian's package) makes real snapshots; ``--time`` and the provider's ``clock`` let a
test live through years of simulated time in seconds. No root needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli, engine, hostconfig
from reconciler import desired as desired_mod
from reconciler.engine import RunResult
from reconciler.errors import ValidationError
from reconciler.kinds.backup import checkstate, retention
from reconciler.kinds.backup.provider import BackupProvider
from reconciler.kinds.backup.restic import (
    ResticBackend,
    ResticConfig,
    ResticError,
    archive_of,
    parse_snapshots,
)
from reconciler.model import HostDesired
from reconciler.plan import Plan
from reconciler.render import text as render_text
from reconciler.state import StateDir
from tests import hostcfg
from tests.resticlock import held_by_another_restic
from tests.simclock import Clock

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")

HOST = "h1"


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised repository (restic init calibrates its KDF: slow), copied per test."""
    root = tmp_path_factory.mktemp("restic-template")
    (root / "pw").write_text("correct horse\n")
    subprocess.run(
        ["restic", "init"],
        env={
            "RESTIC_REPOSITORY": str(root / "repo"),
            "RESTIC_PASSWORD_FILE": str(root / "pw"),
            "PATH": "/usr/bin:/bin",
            "RESTIC_CACHE_DIR": str(root / "cache"),
        },
        check=True,
        capture_output=True,
    )
    return root


class Site:
    """A desired-state repo, restic repositories and data dirs under one tmp dir."""

    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.template = template
        self.desired_dir = root / "desired"
        (self.desired_dir / "hosts").mkdir(parents=True)
        self.data = root / "data"
        (self.data / "etc").mkdir(parents=True)
        (self.data / "etc" / "a.conf").write_text("a\n")
        (self.data / "etc" / "skip.swp").write_text("x\n")
        (self.data / "home").mkdir()
        (self.data / "home" / "notes").write_text("n\n")
        self.pw = root / "pw"
        shutil.copy(template / "pw", self.pw)
        self.pw.chmod(0o600)
        # The host allows the repositories and password file here (restic: the default).
        self.config = hostcfg.write(root / "host", allowed_dirs=[root])
        self.host = hostconfig.load(self.config)

    def repo(self, name: str) -> Path:
        path = self.root / name
        if not path.exists():
            shutil.copytree(self.template / "repo", path)
        return path

    def write(self, sets: dict[str, dict[str, Any]]) -> HostDesired:
        lines = ["backups:"]
        for name, s in sets.items():
            lines.append(f"  {name}:")
            lines += [f"    {k}: {json.dumps(v)}" for k, v in s.items()]
        (self.desired_dir / "hosts" / f"{HOST}.yaml").write_text("\n".join(lines) + "\n")
        return desired_mod.load_host(self.desired_dir, HOST, config=self.host)

    def restic_set(self, repo: str = "repo", **kw: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "backend": "restic",
            "repository": str(self.repo(repo)),
            "password_file": str(self.pw),
            "paths": [str(self.data / "etc")],
            "exclude": ["*.swp"],
            "every": "30d",
            "keep": {"last": 2, "monthly": 3, "yearly": 3},
        }
        spec.update(kw)
        return spec

    def backend(self, repo: str = "repo", set_name: str = "etc") -> ResticBackend:
        cfg = ResticConfig(repository=str(self.repo(repo)), password_file=self.pw, host=HOST)
        return ResticBackend(cfg, address=f"backup/{set_name}")

    def snapshots_json(self, repo: str = "repo") -> Any:
        out = subprocess.run(
            ["restic", "snapshots", "--json", "--no-lock"],
            env=self.backend(repo)._env(),
            check=True,
            capture_output=True,
        ).stdout
        return json.loads(out)

    def names(self, repo: str = "repo") -> set[str]:
        return {a.name for a in self.backend(repo).list_archives()}


@pytest.fixture
def site(tmp_path: Path, template_repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setenv("RESTIC_CACHE_DIR", str(tmp_path / "restic-cache"))
    yield Site(tmp_path, template_repo)


def run(desired: HostDesired, provider: BackupProvider) -> tuple[Plan, RunResult]:
    """Plan and apply, as the CLI does without --dry-run."""
    plan, _ = engine.make_plan(desired, [provider])
    return plan, engine.apply_plan(desired, [provider], plan, None)


def test_years_of_simulated_time_follow_decide(site: Site) -> None:
    """Every run creates when due and leaves exactly what retention.decide keeps."""
    spec = site.restic_set()
    desired = site.write({"etc": spec})
    policy = retention.KeepPolicy.from_mapping(spec["keep"])
    clock = Clock(datetime(2023, 1, 1, 3, 0, tzinfo=UTC))
    provider = BackupProvider(clock=clock)
    expected: set[str] = set()
    deleted_total = 0
    for _ in range(7):
        new = retention.archive_name("etc", clock.now)
        want = retention.decide("etc", [*expected, new], policy, clock.now)
        plan, result = run(desired, provider)
        assert result.ok, (plan.to_dict(), result.errors)
        expected = set(want.keep)
        deleted_total += len(want.delete)
        assert site.names() == expected
        clock.now += timedelta(days=150)
    assert deleted_total > 0  # the policy really expired archives over the years
    # Snapshot times are the times in the names (--time), tags carry the names unsplit.
    for snap in site.snapshots_json():
        name = archive_of(snap["tags"], snap["short_id"])
        assert retention.parse_archive_name("etc", name) == datetime.fromisoformat(snap["time"])
        assert snap["tags"] == ["reconciler", name]
        assert snap["hostname"] == HOST
    # --exclude was passed: the excluded file is not in the newest snapshot.
    newest = max(site.names())
    ls = subprocess.run(
        ["restic", "ls", "--no-lock", "latest", "--tag", newest],
        env=site.backend()._env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "a.conf" in ls and "skip.swp" not in ls


def test_second_run_with_nothing_due_is_a_noop(site: Site) -> None:
    desired = site.write({"etc": site.restic_set(every="1d", keep={"last": 3})})
    clock = Clock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    provider = BackupProvider(clock=clock)
    plan, result = run(desired, provider)
    assert result.ok and [c.action for c in plan.changes] == ["create"]
    before = site.snapshots_json()
    clock.now += timedelta(hours=23, minutes=59)
    plan, result = run(desired, provider)
    assert result.ok and plan.empty and result.applied == []
    assert site.snapshots_json() == before


def test_dry_run_changes_nothing(site: Site, tmp_path: Path) -> None:
    """The CLI's --dry-run plans a create and deletions, and runs neither."""
    backend = site.backend()
    for day in (1, 2, 3):
        name = f"etc-202001{day:02d}-000000"
        backend.create(name, [str(site.data / "etc")], when=datetime(2020, 1, day, tzinfo=UTC))
    site.write({"etc": site.restic_set(every="1h", keep={"last": 1})})
    repo = site.repo("repo")
    files_before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    before = site.snapshots_json()
    code = cli.main(
        [
            "--dry-run",
            "--repo",
            str(site.desired_dir),
            "--host",
            HOST,
            "--only",
            "backup",
            "--output",
            "json",
            "--detailed-exitcode",
            "--lock-file",
            str(tmp_path / "lock"),
            "--state-dir",
            str(tmp_path / "state"),
            "--log-format",
            "json",
            "--config",
            str(site.config),
        ]
    )
    assert code == cli.EXIT_CHANGES
    assert site.snapshots_json() == before
    # Not even a lock file was written into the repository.
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == files_before


def test_dry_run_plan_lists_create_and_deletes(site: Site) -> None:
    backend = site.backend()
    for day in (1, 2):
        name = f"etc-202001{day:02d}-000000"
        backend.create(name, [str(site.data / "etc")], when=datetime(2020, 1, day, tzinfo=UTC))
    desired = site.write({"etc": site.restic_set(every="1h", keep={"last": 1})})
    provider = BackupProvider(clock=Clock(datetime(2021, 1, 1, tzinfo=UTC)))
    plan, _ = engine.make_plan(desired, [provider])
    assert [o.to_dict()["op"] for o in plan.changes[0].ops] == [
        "create_archive",
        "delete_archive",
        "delete_archive",
    ]
    assert [o.args["archive"] for o in plan.changes[0].ops] == [
        "etc-20210101-000000",
        "etc-20200101-000000",
        "etc-20200102-000000",
    ]


def test_wrong_password_is_an_error_for_that_set_only(site: Site) -> None:
    bad = site.root / "bad-pw"
    bad.write_text("wrong\n")
    desired = site.write(
        {
            "etc": site.restic_set(repo="repo1", password_file=str(bad)),
            "home": site.restic_set(repo="repo2", paths=[str(site.data / "home")]),
        }
    )
    provider = BackupProvider(clock=Clock(datetime(2024, 1, 1, tzinfo=UTC)))
    plan, result = run(desired, provider)
    assert [(e.address, "wrong password" in e.message) for e in plan.errors] == [
        ("backup/etc", True)
    ]
    assert result.applied == ["backup/home"] and result.errors == []
    assert site.names("repo2") == {"home-20240101-000000"}
    assert site.names("repo1") == set()


def test_missing_repository_and_password_file(site: Site) -> None:
    desired = site.write(
        {
            "etc": site.restic_set(repository=str(site.root / "nowhere")),
            "home": site.restic_set(
                paths=[str(site.data / "home")], password_file=str(site.root / "no-pw")
            ),
        }
    )
    plan, _ = engine.make_plan(desired, [BackupProvider()])
    msgs = {e.address: e.message for e in plan.errors}
    assert "no restic repository at" in msgs["backup/etc"]
    assert "password file" in msgs["backup/home"] and "does not exist" in msgs["backup/home"]
    assert plan.changes == []


def test_locked_repository_is_retried_next_run(site: Site) -> None:
    """Another restic holding a lock fails that set's deletions, with a retry note."""
    backend = site.backend()
    for day in (1, 2):
        backend.create(
            f"etc-202001{day:02d}-000000",
            [str(site.data / "etc")],
            when=datetime(2020, 1, day, tzinfo=UTC),
        )
    desired = site.write({"etc": site.restic_set(every="1h", keep={"last": 1})})
    provider = BackupProvider(clock=Clock(datetime(2020, 1, 2, 0, 30, tzinfo=UTC)))
    with held_by_another_restic(backend._env(), site.repo("repo")):
        _, result = run(desired, provider)
    assert [e.address for e in result.errors] == ["backup/etc"]
    assert "locked" in result.errors[0].message
    assert "retried on the next run" in result.errors[0].message
    assert "etc-20200101-000000" in site.names()
    # The next run, with the lock gone, converges.
    _, result = run(desired, provider)
    assert result.ok
    assert site.names() == {"etc-20200102-000000"}


def test_parse_snapshots_names() -> None:
    data = json.dumps(
        [
            {"id": "a" * 64, "short_id": "aaaaaaaa", "time": "2024-01-01T01:02:03.5+01:00",
             "tags": ["reconciler", "etc-20240101-000203"], "paths": ["/etc"]},
            {"id": "b" * 64, "short_id": "bbbbbbbb", "time": "2024-01-01T00:00:00Z",
             "tags": ["reconciler"]},
        ]
    )  # fmt: skip
    a, b = parse_snapshots(data)
    assert a.name == "etc-20240101-000203" and a.created == datetime(
        2024, 1, 1, 0, 2, 3, 500000, tzinfo=UTC
    )
    assert retention.parse_archive_name("etc", b.name) is None  # never a candidate
    assert parse_snapshots("null") == []


def test_delete_in_bounded_batches(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = site.backend()
    names = [f"etc-202001{d:02d}-000000" for d in range(1, 4)]
    for i, n in enumerate(names):
        backend.create(n, [str(site.data / "etc")], when=datetime(2020, 1, i + 1, tzinfo=UTC))
    result = backend.delete([*names[:2], "etc-19990101-000000"], batch=1)
    assert result.calls == 2  # one list, then ceil(2 / 1) forget calls
    assert result.deleted == names[:2] and result.missing == ["etc-19990101-000000"]
    assert site.names() == {names[2]}
    with pytest.raises(ResticError):
        backend.create("etc-20200201-000000", [str(site.root / "gone")])


def _raw_size(site: Site) -> int:
    """Bytes of pack files stored in the repository (what prune frees; ``restic stats``
    counts only what snapshots reference, which a forget alone already lowers)."""
    data = site.repo("repo") / "data"
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file())


def test_prune_frees_the_data_of_expired_snapshots(site: Site) -> None:
    """``prune: true``: the expired snapshots are forgotten, then ``restic prune`` frees
    their data in the same run; the repository still checks clean."""
    backend = site.backend()
    for day in (1, 2, 3):
        # Incompressible, different each time: every snapshot brings its own data.
        (site.data / "etc" / "blob").write_bytes(os.urandom(1_000_000))
        name = f"etc-202001{day:02d}-000000"
        backend.create(name, [str(site.data / "etc")], when=datetime(2020, 1, day, tzinfo=UTC))
    before = _raw_size(site)
    desired = site.write({"etc": site.restic_set(every="100d", keep={"last": 1}, prune=True)})
    provider = BackupProvider(clock=Clock(datetime(2020, 1, 3, 1, tzinfo=UTC)))
    plan, result = run(desired, provider)
    assert [o.op for o in plan.changes[0].ops] == [
        "delete_archive",
        "delete_archive",
        "prune_repository",
    ]
    assert result.ok, result.errors
    text = render_text.render(plan.to_dict(), dry_run=False)
    assert f"- prune {site.repo('repo')} (frees the expired snapshots' data)" in text
    assert site.names() == {"etc-20200103-000000"}
    after = _raw_size(site)
    assert after < before - 1_500_000, (before, after)  # two snapshots' unique data freed
    check = subprocess.run(
        ["restic", "check"], env=site.backend()._env(), capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_without_prune_forget_only_and_the_data_stays(site: Site) -> None:
    backend = site.backend()
    for day in (1, 2):
        (site.data / "etc" / "blob").write_bytes(os.urandom(1_000_000))
        name = f"etc-202001{day:02d}-000000"
        backend.create(name, [str(site.data / "etc")], when=datetime(2020, 1, day, tzinfo=UTC))
    before = _raw_size(site)
    desired = site.write({"etc": site.restic_set(every="100d", keep={"last": 1})})
    plan, result = run(desired, BackupProvider(clock=Clock(datetime(2020, 1, 2, 1, tzinfo=UTC))))
    assert [o.op for o in plan.changes[0].ops] == ["delete_archive"]
    assert result.ok and site.names() == {"etc-20200102-000000"}
    assert _raw_size(site) == before


def test_prune_is_a_restic_only_key(site: Site) -> None:
    with pytest.raises(ValidationError) as ei:
        site.write({"etc": {"backend": "tarsnap", "paths": ["/etc"], "every": "1d",
                            "keep": {"last": 1}, "prune": True}})  # fmt: skip
    assert "'prune' only applies to backend restic" in str(ei.value)


# --- checks ----------------------------------------------------------------------------


def _corrupt_a_pack(repo: Path) -> Path:
    """Flip one byte inside the largest pack file (its size stays the same, so only reading
    the data back finds it)."""
    packs = [p for p in (repo / "data").rglob("*") if p.is_file()]
    pack = max(packs, key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.chmod(0o600)
    pack.write_bytes(bytes(data))
    return pack


def _seed(site: Site, days: tuple[int, ...] = (1, 2, 3)) -> None:
    backend = site.backend()
    for day in days:
        (site.data / "etc" / "blob").write_bytes(os.urandom(200_000))
        name = f"etc-202001{day:02d}-000000"
        backend.create(name, [str(site.data / "etc")], when=datetime(2020, 1, day, tzinfo=UTC))


def test_check_of_a_corrupted_repository_fails_and_deletes_nothing(
    site: Site, tmp_path: Path
) -> None:
    """A pack file with a flipped byte: ``restic check --read-data-subset=100%`` fails, the
    set's error says so, the two expired archives stay, the failure is recorded and the next
    run checks again (and still deletes nothing)."""
    _seed(site)
    _corrupt_a_pack(site.repo("repo"))
    desired = site.write(
        {"etc": site.restic_set(every="100d", keep={"last": 1},
                                check={"every": "30d", "read_data_subset": "100%"})}
    )  # fmt: skip
    state = StateDir(tmp_path / "state")
    clock = Clock(datetime(2020, 1, 3, 1, tzinfo=UTC))
    provider = BackupProvider(clock=clock, state=state)
    plan, result = run(desired, provider)
    assert [o.op for o in plan.changes[0].ops] == [
        "check_repository",
        "delete_archive",
        "delete_archive",
    ]
    text = render_text.render(plan.to_dict())
    assert "= check repository (restic check --read-data-subset=100%): never checked" in text
    assert not result.ok and [e.address for e in result.errors] == ["backup/etc"]
    message = result.errors[0].message
    assert "check failed (restic check --read-data-subset=100%)" in message
    assert "Pack ID does not match" in message or "repository contains errors" in message
    assert "2 expired archive(s) are kept until a check passes" in message
    assert site.names() == {f"etc-202001{d:02d}-000000" for d in (1, 2, 3)}
    records = checkstate.load(state.path)
    assert records["etc"].ok is False and records["etc"].at == clock.now
    assert records["etc"].what == "restic check --read-data-subset=100%"
    # The next run checks again (a failed check is due on every run): still nothing deleted.
    clock.now += timedelta(minutes=15)
    plan, result = run(desired, BackupProvider(clock=clock, state=state))
    assert plan.changes[0].ops[0].args["reason"].startswith("the last check (2020-01-03 01:00:00")
    assert not result.ok and "check failed" in result.errors[0].message
    assert len(site.names()) == 3


def test_a_passing_check_is_recorded_and_not_repeated_before_every(
    site: Site, tmp_path: Path
) -> None:
    _seed(site)
    desired = site.write(
        {"etc": site.restic_set(every="100d", keep={"last": 1}, check={"every": "7d"})}
    )
    state = StateDir(tmp_path / "state")
    clock = Clock(datetime(2020, 1, 3, 1, tzinfo=UTC))
    plan, result = run(desired, BackupProvider(clock=clock, state=state))
    assert result.ok, result.errors
    assert plan.changes[0].ops[0].op == "check_repository"
    assert site.names() == {"etc-20200103-000000"}  # the check passed: deletions made
    record = checkstate.load(state.path)["etc"]
    assert record.ok and record.message == "no errors were found" and record.every == "7d"
    clock.now += timedelta(days=7) - timedelta(seconds=1)
    plan, result = run(desired, BackupProvider(clock=clock, state=state))
    assert result.ok and plan.empty
    clock.now += timedelta(seconds=1)
    plan, result = run(desired, BackupProvider(clock=clock, state=state))
    assert result.ok and [c.ops[0].op for c in plan.changes] == ["check_repository"]
    # Without check: the record is forgotten (no metric for a check that is not made).
    desired = site.write({"etc": site.restic_set(every="100d", keep={"last": 1})})
    _, result = run(desired, BackupProvider(clock=clock, state=state))
    assert result.ok and checkstate.load(state.path) == {}


def test_a_locked_repository_is_not_a_failed_check(site: Site, tmp_path: Path) -> None:
    """restic check locks exclusively: another restic's lock makes the set busy (retried on
    the next run) and records nothing."""
    _seed(site, (1,))
    desired = site.write(
        {"etc": site.restic_set(every="100d", keep={"last": 1}, check={"every": "7d"})}
    )
    state = StateDir(tmp_path / "state")
    provider = BackupProvider(clock=Clock(datetime(2020, 1, 3, 1, tzinfo=UTC)), state=state)
    with held_by_another_restic(site.backend()._env(), site.repo("repo")):
        _, result = run(desired, provider)
    assert [e.address for e in result.errors] == ["backup/etc"]
    assert "locked" in result.errors[0].message and "retried" in result.errors[0].message
    assert checkstate.load(state.path) == {}


def test_keep_tags_keeps_a_snapshot_tagged_by_hand(site: Site) -> None:
    """``restic tag --add keep`` on an old snapshot: ``keep.tags: [keep]`` keeps it while
    ``last: 1`` expires the others."""
    _seed(site)
    old = next(a for a in site.backend().list_archives() if a.name == "etc-20200101-000000")
    subprocess.run(
        ["restic", "tag", "--add", "keep", old.id],
        env=site.backend()._env(),
        check=True,
        capture_output=True,
    )
    desired = site.write(
        {"etc": site.restic_set(every="100d", keep={"last": 1, "tags": ["keep"]})}
    )
    plan, result = run(desired, BackupProvider(clock=Clock(datetime(2020, 1, 3, 1, tzinfo=UTC))))
    assert result.ok, result.errors
    assert [o.args["archive"] for o in plan.changes[0].ops] == ["etc-20200102-000000"]
    assert site.names() == {"etc-20200101-000000", "etc-20200103-000000"}


def test_cli_dry_run_plans_the_check_and_records_nothing(site: Site, tmp_path: Path) -> None:
    """Through the command line: the dry-run shows the check and writes no check record;
    the real run checks and records it in the state dir."""
    _seed(site, (1,))
    site.write({"etc": site.restic_set(every="100000d", keep={"last": 1},
                                       check={"every": "7d"})})  # fmt: skip
    state = tmp_path / "state"
    argv = [
        "--repo", str(site.desired_dir), "--host", HOST, "--only", "backup",
        "--lock-file", str(tmp_path / "lock"), "--state-dir", str(state),
        "--log-format", "json", "--config", str(site.config),
    ]  # fmt: skip
    code = cli.main(["--dry-run", "--detailed-exitcode", "--output", "json", *argv])
    assert code == cli.EXIT_CHANGES
    assert not (state / checkstate.FILE_NAME).exists()
    assert cli.main(argv) == cli.EXIT_OK
    record = checkstate.load(state)["etc"]
    assert record.ok and record.what == "restic check"
    assert cli.main(["--dry-run", "--detailed-exitcode", *argv]) == cli.EXIT_OK
