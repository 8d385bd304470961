"""``reconcile import`` of backup sets: the guessed schedule and keep policy keep every
archive, and round trips through the tarsnap emulator and a real restic repository with a
history: import, then the dry-run is empty (nothing created, nothing deleted)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from reconciler.kinds.backup import retention
from reconciler.kinds.backup.duration import parse_duration
from reconciler.kinds.backup.importer import group_archives, guess, roots
from reconciler.kinds.backup.restic import ResticBackend, ResticConfig
from tests import hostcfg, importrun

FAKE = Path(__file__).resolve().parents[3] / "lab" / "fake_tarsnap" / "tarsnap"
NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


def gfs(newest: datetime, daily: int = 7, weekly: int = 4, monthly: int = 6) -> list[datetime]:
    """A history rotated by hand: dailies, then weeklies, then monthlies."""
    times = [newest - timedelta(days=i) for i in range(daily)]
    times += [newest - timedelta(days=daily + 7 * i) for i in range(1, weekly + 1)]
    times += [newest - timedelta(days=daily + 7 * weekly + 30 * i) for i in range(1, monthly + 1)]
    return times


def _deleted_by_decide(name: str, names: list[str], keep: dict[str, int]) -> tuple[str, ...]:
    policy = retention.KeepPolicy.from_mapping(keep)
    return retention.decide(name, names, policy, NOW).delete


def test_gfs_history_guess_keeps_every_archive() -> None:
    names = [retention.archive_name("etc", t) for t in gfs(NOW - timedelta(hours=4))]
    g = guess("etc", names, NOW)
    assert g.every == "1d"
    assert set(g.keep) == {"daily", "weekly", "monthly"}
    assert _deleted_by_decide("etc", names, g.keep) == ()
    assert g.notes[0].startswith(f"every 1d and keep: guessed from {len(names)} archive(s)")


def test_random_histories_never_lose_an_archive() -> None:
    rng = random.Random(16)
    for _ in range(60):
        n = rng.randint(1, 40)
        span = rng.choice([3600, 86400, 86400 * 30, 86400 * 900])
        names = sorted(
            {retention.archive_name("s", NOW - timedelta(seconds=rng.randint(0, span)))
             for _ in range(n)}
        )  # fmt: skip
        g = guess("s", names, NOW)
        assert _deleted_by_decide("s", names, g.keep) == (), (names, g)
        # The run right after the import: when it creates an archive (the newest is at
        # least every old), none of these is deleted either.
        newest = max(t for a in names if (t := retention.parse_archive_name("s", a)))
        if NOW - newest >= parse_duration(g.every):
            new = retention.archive_name("s", NOW)
            policy = retention.KeepPolicy.from_mapping(g.keep)
            assert not set(retention.decide("s", [*names, new], policy, NOW).delete) & set(names)


def test_archive_names_by_set_and_the_paths_of_a_listing() -> None:
    sets, other = group_archives(
        ["etc-20260101-000000", "etc-20260102-000000", "etc-20260103-000000.part",
         "manual", "home-20261301-000000", "www-data-20260101-000000"]
    )  # fmt: skip
    assert sets == {
        "etc": ["etc-20260101-000000", "etc-20260102-000000"],
        "www-data": ["www-data-20260101-000000"],
    }
    assert other == ["etc-20260103-000000.part", "manual", "home-20261301-000000"]
    assert roots(["srv/a", "srv/a/f", "etc/", "etc/passwd", "var/www", "var/www/x"]) == [
        "/etc", "/srv/a", "/var/www"
    ]  # fmt: skip


# ------------------------------------------------------------------------ tarsnap
def _tarsnap(root: Path, env: dict[str, str], name: str, when: datetime, path: Path) -> None:
    subprocess.run(
        [str(FAKE), "--keyfile", str(root / "tarsnap.key"), "--cachedir", str(root / "cache"),
         "-c", "-f", name, str(path)],
        env={**env, "FAKE_TARSNAP_NOW": str(int(when.timestamp()))},
        check=True, capture_output=True,
    )  # fmt: skip


def test_tarsnap_round_trip(tmp_path: Path) -> None:
    key = tmp_path / "tarsnap.key"
    key.write_text("# START OF TARSNAP KEY FILE\nfake\n")
    key.chmod(0o600)
    (tmp_path / "server").mkdir()
    data = tmp_path / "data"
    for d in ("etc", "home"):
        (data / d).mkdir(parents=True)
        (data / d / "file").write_text(d)
    config = hostcfg.write(tmp_path / "host", tarsnap=str(FAKE), allowed_dirs=[tmp_path])
    env = {**os.environ, "FAKE_TARSNAP_STATE": str(tmp_path / "server"),
           "RECONCILER_CONFIG": str(config)}  # fmt: skip
    now = datetime.now(UTC).replace(microsecond=0)
    for t in gfs(now - timedelta(hours=2)):
        _tarsnap(tmp_path, env, retention.archive_name("etc", t), t, data / "etc")
    for h in range(2, 30, 3):
        t = now - timedelta(hours=h)
        _tarsnap(tmp_path, env, retention.archive_name("home", t), t, data / "home")
    _tarsnap(tmp_path, env, "manual-copy", now, data / "etc")
    _tarsnap(tmp_path, env, "www-data-20260101-000000", now, data / "etc")
    before = json.loads((tmp_path / "server" / "state.json").read_text())["archives"]
    repo = importrun.new_repo(tmp_path)
    text = importrun.round_trip(
        repo, tmp_path, "--tarsnap", "--tarsnap-keyfile", str(key),
        "--tarsnap-cachedir", str(tmp_path / "cache"), env=env, only="backup",
    )  # fmt: skip
    doc = yaml.safe_load(text)
    assert doc["tarsnap"] == {"keyfile": str(key), "cachedir": str(tmp_path / "cache")}
    assert doc["backups"]["etc"]["paths"] == [str(data / "etc")]
    assert doc["backups"]["etc"]["every"] == "1d"
    assert doc["backups"]["home"]["every"] == "3h"
    assert "GUESS: every 1d and keep" in text
    assert "# not imported: backup/www-data: git names sets" in text
    after = json.loads((tmp_path / "server" / "state.json").read_text())["archives"]
    assert after.keys() == before.keys()  # import and dry-run made and deleted nothing


# -------------------------------------------------------------------------- restic
@pytest.mark.skipif(shutil.which("restic") is None, reason="needs restic on PATH")
def test_restic_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_CACHE_DIR", str(tmp_path / "restic-cache"))
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    pw.chmod(0o600)
    restic_repo = tmp_path / "restic"
    subprocess.run(
        ["restic", "init"], check=True, capture_output=True,
        env={**os.environ, "RESTIC_REPOSITORY": str(restic_repo), "RESTIC_PASSWORD_FILE": str(pw)},
    )  # fmt: skip
    data = tmp_path / "data" / "etc"
    data.mkdir(parents=True)
    (data / "a.conf").write_text("a\n")
    backend = ResticBackend(
        ResticConfig(repository=str(restic_repo), password_file=pw, host=importrun.HOST),
        address="backup/etc",
    )
    now = datetime.now(UTC).replace(microsecond=0)
    names = []
    for t in gfs(now - timedelta(hours=3), daily=5, weekly=3, monthly=2):
        names.append(retention.archive_name("etc", t))
        backend.create(names[-1], [str(data)], when=t)
    config = hostcfg.write(tmp_path / "host", allowed_dirs=[tmp_path])
    env = {**os.environ, "RECONCILER_CONFIG": str(config)}
    repo = importrun.new_repo(tmp_path)
    text = importrun.round_trip(
        repo, tmp_path, "--restic", str(restic_repo), "--restic-password-file", str(pw),
        env=env, only="backup",
    )  # fmt: skip
    etc = yaml.safe_load(text)["backups"]["etc"]
    assert etc["backend"] == "restic" and etc["repository"] == str(restic_repo)
    assert etc["paths"] == [str(data)] and etc["every"] == "1d"
    assert f"paths of the newest archive, {max(names)}" in text
    assert {a.name for a in backend.list_archives()} == set(names)
