"""The tarsnap backend against the tarsnap emulator (lab/fake_tarsnap/tarsnap); no root.

The first group pins the emulator's formats and messages (which come from tarsnap's manual page
and sources), so that the backend tests below keep testing against what tarsnap really does.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ProviderError
from reconciler.kinds.backup.tarsnap import (
    ArchiveExists,
    ArchiveInfo,
    TarsnapBackend,
    TarsnapBusy,
    TarsnapConfig,
    TarsnapError,
    parse_archive_list,
)

FAKE = Path(__file__).resolve().parents[3] / "lab" / "fake_tarsnap" / "tarsnap"
ADDR = "backup/etc"


class Env:
    """A temporary tarsnap account: state dir, key file, cache dir, call log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "server"
        self.keyfile = root / "tarsnap.key"
        self.keyfile.write_text("# START OF TARSNAP KEY FILE\nfake\n")
        self.keyfile.chmod(0o600)
        self.cachedir = root / "cache"
        self.calllog = root / "calls.jsonl"
        self.data = root / "data"
        (self.data / "sub").mkdir(parents=True)
        (self.data / "a.conf").write_text("a\n")
        (self.data / "sub" / "b.conf").write_text("b\n")

    def config(self, **kw: Any) -> TarsnapConfig:
        return TarsnapConfig(command=str(FAKE), keyfile=self.keyfile, cachedir=self.cachedir, **kw)

    def backend(self, **kw: Any) -> TarsnapBackend:
        return TarsnapBackend(self.config(**kw), address=ADDR)

    def seed(self, archives: dict[str, int], *, seq_mismatch: bool = False) -> None:
        """Write the server state directly (name -> unix ctime); the cache looks initialised."""
        self.state.mkdir(exist_ok=True)
        doc = {
            "archives": {
                n: {"ctime": t, "argv": ["tarsnap", "-c", "-f", n, "/etc"], "files": []}
                for n, t in archives.items()
            },
            "seq_mismatch": seq_mismatch,
        }
        (self.state / "state.json").write_text(json.dumps(doc))
        self.cachedir.mkdir(exist_ok=True)
        (self.cachedir / "directory").touch()

    def names(self) -> set[str]:
        doc = json.loads((self.state / "state.json").read_text())
        return set(doc["archives"])

    def calls(self) -> list[list[str]]:
        if not self.calllog.exists():
            return []
        return [json.loads(ln) for ln in self.calllog.read_text().splitlines()]

    def run(
        self, *args: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the emulator directly."""
        env = {**os.environ, **(extra_env or {})}
        return subprocess.run([str(FAKE), *args], env=env, capture_output=True, check=False)


@pytest.fixture
def tenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    e = Env(tmp_path)
    monkeypatch.setenv("FAKE_TARSNAP_STATE", str(e.state))
    monkeypatch.setenv("FAKE_TARSNAP_CALLLOG", str(e.calllog))
    for var in ("FAKE_TARSNAP_DELAY", "FAKE_TARSNAP_INTERRUPT", "FAKE_TARSNAP_FAIL_DELETE_AFTER"):
        monkeypatch.delenv(var, raising=False)
    return e


def ts(s: str) -> int:
    return int(datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())


# --- the emulator's formats (pinned to tarsnap's print_separator() and messages) ------------


def test_emulator_list_formats(tenv: Env) -> None:
    tenv.seed({"a b": ts("2024-01-02 03:04:05")})
    k = ["--keyfile", str(tenv.keyfile)]
    utc = {"TZ": "UTC"}
    assert tenv.run("--list-archives", *k, extra_env=utc).stdout == b"a b\n"
    assert tenv.run("--list-archives", "-v", *k, extra_env=utc).stdout == (
        b"a b\t2024-01-02 03:04:05\n"
    )
    assert tenv.run("--list-archives", "-vv", *k, extra_env=utc).stdout == (
        b"a b\t2024-01-02 03:04:05\ttarsnap -c -f a b /etc\n"
    )
    # One NUL between records, two between fields, three between command-line arguments.
    assert tenv.run("--list-archives", "--null-output", *k, extra_env=utc).stdout == b"a b\0"
    assert tenv.run("--list-archives", "-v", "--null-output", *k, extra_env=utc).stdout == (
        b"a b\0\x002024-01-02 03:04:05\0"
    )
    assert tenv.run("--list-archives", "-vv", "--null-output", *k, extra_env=utc).stdout == (
        b"a b\0\x002024-01-02 03:04:05\0\0tarsnap\0\0\0-c\0\0\0-f\0\0\0a b\0\0\0/etc\0"
    )


def test_emulator_prints_local_time(tenv: Env) -> None:
    tenv.seed({"x": ts("2024-07-01 12:00:00")})
    out = tenv.run(
        "--list-archives", "-v", "--keyfile", str(tenv.keyfile), extra_env={"TZ": "Asia/Tokyo"}
    ).stdout
    assert out == b"x\t2024-07-01 21:00:00\n"


def test_emulator_storage_order_is_not_chronological(tenv: Env) -> None:
    names = {f"etc-202401{d:02d}-000000": ts(f"2024-01-{d:02d} 00:00:00") for d in range(1, 21)}
    tenv.seed(names)
    out = tenv.run("--list-archives", "--keyfile", str(tenv.keyfile)).stdout.decode()
    listed = out.splitlines()
    assert sorted(listed) == sorted(names)
    assert listed != sorted(names)
    # Stable across calls, like the server's directory order.
    assert tenv.run("--list-archives", "--keyfile", str(tenv.keyfile)).stdout.decode() == out


def test_emulator_messages_and_exit_codes(tenv: Env) -> None:
    tenv.seed({"a": 1, "c": 2})
    k = ["--keyfile", str(tenv.keyfile), "--cachedir", str(tenv.cachedir)]
    r = tenv.run("-c", *k, "-f", "a", str(tenv.data))
    assert r.returncode == 1
    assert b'tarsnap: An archive already exists with the name "a"\n' in r.stderr
    r = tenv.run("-d", *k, "-f", "a", "-f", "missing", "-f", "c")
    assert r.returncode == 2
    assert r.stderr.decode().splitlines() == [
        "tarsnap: Archive does not exist: missing",
        "tarsnap: Error deleting archive",
        "tarsnap: Error exit delayed from previous errors.",
        "tarsnap: Data on server was modified, but it might not be exactly what you requested",
    ]
    assert tenv.names() == {"c"}  # stopped at the first failure
    r = tenv.run("-d", *k, "-f", "nothere")
    assert r.returncode == 1  # nothing was modified
    r = tenv.run("-c", *k, "-f", "n", str(tenv.root / "nope"))
    assert r.returncode == 2
    assert f"tarsnap: {tenv.root}/nope: Cannot stat: No such file or directory" in r.stderr.decode()
    assert "n" in tenv.names()  # tarsnap commits the archive without the missing path
    r = tenv.run("--list-archives", "--keyfile", str(tenv.root / "nokey"))
    assert r.returncode == 1
    assert r.stderr.decode() == (
        f"tarsnap: Cannot read key file: {tenv.root}/nokey: No such file or directory\n"
    )
    r = tenv.run("--list-archives", "--bogus")
    assert r.returncode == 1
    assert r.stderr.decode().startswith("tarsnap: Option --bogus is not supported\nUsage:\n")
    r = tenv.run("-c", "-Z")
    assert r.returncode == 1 and r.stderr.startswith(b"Usage:\n")


def test_emulator_lists_an_archives_members(tenv: Env) -> None:
    """``-t -f NAME`` (tar/read.c): one member per line, or NUL-terminated; a missing
    archive and a corrupt one fail with tarsnap's messages, exit 1."""
    k = ["--keyfile", str(tenv.keyfile), "--cachedir", str(tenv.cachedir)]
    tenv.seed({})
    assert tenv.run("-c", *k, "-f", "a", str(tenv.data)).returncode == 0
    data = str(tenv.data).lstrip("/")
    members = [data, f"{data}/sub", f"{data}/a.conf", f"{data}/sub/b.conf"]
    r = tenv.run("-t", *k, "-f", "a")
    assert r.returncode == 0 and r.stdout.decode().splitlines() == members
    r = tenv.run("-t", "--null-output", *k, "-f", "a")
    assert r.stdout.decode().split("\0") == [*members, ""]
    r = tenv.run("-t", *k, "-f", "gone")
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().splitlines() == [
        "tarsnap: Archive does not exist: gone",
        "tarsnap: Error opening archive",
        "tarsnap: Error exit delayed from previous errors.",
    ]
    doc = json.loads((tenv.state / "state.json").read_text())
    doc["archives"]["a"]["corrupt"] = True
    (tenv.state / "state.json").write_text(json.dumps(doc))
    r = tenv.run("-t", *k, "-f", "a")
    assert r.returncode == 1 and r.stdout.decode().splitlines() == members[:2]
    err = r.stderr.decode().splitlines()
    assert err[0].startswith("tarsnap: Chunk ") and err[0].endswith(" is corrupt")
    assert err[1:] == ["tarsnap: Error reading archive", "tarsnap: Error exit delayed from "
                       "previous errors."]  # fmt: skip
    assert tenv.run("-t", *k).stderr == b"tarsnap: Archive name must be specified\n"
    r = tenv.run("-t", *k, "-f", "a", "-f", "b")
    assert r.stderr == b"tarsnap: Option -f may only be specified once in mode -t\n"


def test_list_contents_counts_members_and_fails_on_damage(tenv: Env) -> None:
    tenv.seed({})
    backend = tenv.backend()
    backend.create("etc-20240101-000000", [str(tenv.data)])
    assert backend.list_contents("etc-20240101-000000") == 4
    doc = json.loads((tenv.state / "state.json").read_text())
    doc["archives"]["etc-20240101-000000"]["corrupt"] = True
    (tenv.state / "state.json").write_text(json.dumps(doc))
    with pytest.raises(TarsnapError, match=r"listing archive etc-20240101-000000: tarsnap "
                       r"exited 1: .*is corrupt"):  # fmt: skip
        backend.list_contents("etc-20240101-000000")


def test_emulator_sequence_mismatch_and_fsck(tenv: Env) -> None:
    tenv.seed({"a": 1}, seq_mismatch=True)
    k = ["--keyfile", str(tenv.keyfile), "--cachedir", str(tenv.cachedir)]
    r = tenv.run("-d", *k, "-f", "a")
    assert r.returncode == 1
    assert b"tarsnap: Sequence number mismatch: Run --fsck\n" in r.stderr
    r = tenv.run("--fsck", *k)
    assert r.returncode == 0 and r.stdout.startswith(b"Phase 1: Verifying metadata validity\n")
    assert tenv.run("-d", *k, "-f", "a").returncode == 0


def test_emulator_lock(tenv: Env) -> None:
    tenv.seed({"a": 1})
    k = ["--keyfile", str(tenv.keyfile), "--cachedir", str(tenv.cachedir)]
    env = {**os.environ, "FAKE_TARSNAP_DELAY": "1.5"}
    holder = subprocess.Popen(
        [str(FAKE), "-c", *k, "-f", "slow", str(tenv.data)], env=env, stderr=subprocess.PIPE
    )
    try:
        time.sleep(0.7)
        r = tenv.run("-c", *k, "-f", "other", str(tenv.data))
        assert r.returncode == 1
        assert b"tarsnap: Transaction already in progress\n" in r.stderr
        # Listing is read-only and takes no lock.
        assert tenv.run("--list-archives", "--keyfile", str(tenv.keyfile)).returncode == 0
    finally:
        assert holder.wait(timeout=10) == 0


# --- the backend ----------------------------------------------------------------------------


def test_parse_names_with_spaces_tabs_newlines() -> None:
    data = (
        b"etc 2024\0\x002024-01-01 00:00:00\0"
        b"tab\there\0\x002024-01-02 00:00:00\0"
        b"new\nline\0\x002024-01-03 00:00:00\0"
        b"no-date\0"
        b"quote\"'$(x)\0\x002024-01-04 00:00:00\0"
    )
    got = parse_archive_list(data)
    assert [a.name for a in got] == [
        "etc 2024",
        "tab\there",
        "new\nline",
        "no-date",
        "quote\"'$(x)",
    ]
    assert got[0].created == datetime(2024, 1, 1, tzinfo=UTC)
    assert got[3].created is None
    assert parse_archive_list(b"") == []


def test_list_roundtrip_unusual_names_and_storage_order(tenv: Env) -> None:
    names = {
        "etc 20240101-000000": ts("2024-01-01 00:00:00"),
        "etc\t20240102-000000": ts("2024-01-02 00:00:00"),
        "etc\n20240103": ts("2024-01-03 00:00:00"),
        "étc-ü": ts("2024-01-04 00:00:00"),
        "-f --looks-like-an-option": ts("2024-01-05 00:00:00"),
    }
    tenv.seed(names)
    got = tenv.backend().list_archives()
    assert {a.name: a.created for a in got} == {
        n: datetime.fromtimestamp(t, UTC) for n, t in names.items()
    }
    assert [a.name for a in got] != sorted(names, key=names.__getitem__)


def test_list_is_utc_whatever_the_callers_tz(tenv: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    tenv.seed({"etc-20240701-120000": ts("2024-07-01 12:00:00")})
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    [a] = tenv.backend().list_archives()
    assert a == ArchiveInfo("etc-20240701-120000", datetime(2024, 7, 1, 12, 0, tzinfo=UTC))


def test_create_and_duplicate(tenv: Env) -> None:
    b = tenv.backend()
    b.create("etc-20240101-000000", [str(tenv.data)], exclude=["*.tmp"])
    assert tenv.names() == {"etc-20240101-000000"}
    call = tenv.calls()[-1]
    assert call[call.index("--") + 1 :] == [str(tenv.data)]  # paths after "--", options before
    with pytest.raises(ArchiveExists) as ei:
        b.create("etc-20240101-000000", [str(tenv.data)])
    assert ei.value.address == ADDR
    assert "already exists" in str(ei.value)


def test_dry_run_create_stores_nothing(tenv: Env) -> None:
    tenv.backend().create("etc-x", [str(tenv.data)], dry_run=True)
    assert not (tenv.state / "state.json").exists()


def test_part_leftover_is_reported_and_blocks_the_name(
    tenv: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = tenv.backend()
    monkeypatch.setenv("FAKE_TARSNAP_INTERRUPT", "kill")
    with pytest.raises(TarsnapError):
        b.create("etc-20240101-000000", [str(tenv.data)])
    monkeypatch.delenv("FAKE_TARSNAP_INTERRUPT")
    archives = b.list_archives()
    assert [a.name for a in archives] == ["etc-20240101-000000.part"]
    assert b.leftover_parts(archives, "etc-") == ["etc-20240101-000000.part"]
    assert b.leftover_parts(archives, "www-") == []
    with pytest.raises(ArchiveExists) as ei:
        b.create("etc-20240101-000000", [str(tenv.data)])
    assert ei.value.name == "etc-20240101-000000.part"
    assert "interrupted" in str(ei.value)
    assert tenv.names() == {"etc-20240101-000000.part"}  # never deleted by us


def test_missing_path_fails_before_tarsnap_runs(tenv: Env) -> None:
    with pytest.raises(TarsnapError, match="do not exist") as ei:
        tenv.backend().create("etc-1", [str(tenv.data), str(tenv.root / "gone")])
    assert ei.value.address == ADDR
    assert tenv.calls() == []


def test_delete_10000_in_bounded_batches(tenv: Env) -> None:
    names = {f"etc-2000{i:08d}": 946684800 + i for i in range(10_000)}
    tenv.seed(names)
    res = tenv.backend().delete(list(names), batch=500)
    assert res.calls == len(tenv.calls()) == math.ceil(10_000 / 500)
    assert sorted(res.deleted) == sorted(names) and res.missing == []
    assert tenv.names() == set()
    assert all(c.count("-f") <= 500 for c in tenv.calls())


def test_delete_skips_already_gone(tenv: Env) -> None:
    tenv.seed({"a": 1, "b": 2})
    res = tenv.backend().delete(["a", "ghost", "b"])
    assert res.deleted == ["a", "b"] and res.missing == ["ghost"]


def test_partial_delete_relists(tenv: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    tenv.seed({n: i for i, n in enumerate("abcdef")})
    monkeypatch.setenv("FAKE_TARSNAP_FAIL_DELETE_AFTER", "2")
    with pytest.raises(TarsnapError) as ei:
        tenv.backend().delete(list("abcdef"), batch=4)
    assert ei.value.deleted == ("a", "b")
    assert tenv.names() == {"c", "d", "e", "f"}
    assert "--list-archives" in tenv.calls()[-1]  # it re-listed rather than guessed
    assert ei.value.address == ADDR


def test_tarsnap_lock_held_is_busy(tenv: Env) -> None:
    tenv.seed({"a": 1})
    env = {**os.environ, "FAKE_TARSNAP_DELAY": "2"}
    holder = subprocess.Popen(
        [
            str(FAKE),
            "--keyfile",
            str(tenv.keyfile),
            "--cachedir",
            str(tenv.cachedir),
            "-c",
            "-f",
            "other",
            str(tenv.data),
        ],
        env=env,
    )
    try:
        time.sleep(0.7)
        with pytest.raises(TarsnapBusy) as ei:
            tenv.backend().delete(["a"])
        assert "retry later" in str(ei.value) and ei.value.address == ADDR
        assert isinstance(ei.value, ProviderError)
    finally:
        holder.wait(timeout=10)
    assert tenv.names() == {"a", "other"}


def test_our_own_lock_serialises_runs(tenv: Env) -> None:
    tenv.seed({"a": 1})
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from reconciler.kinds.backup.tarsnap import TarsnapBackend, TarsnapConfig\n"
        f"b = TarsnapBackend(TarsnapConfig(command={str(FAKE)!r}, keyfile=Path("
        f"{str(tenv.keyfile)!r}), cachedir=Path({str(tenv.cachedir)!r})), address='x')\n"
        "with b.session():\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(3)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert other.stdout is not None
        assert other.stdout.readline() == b"locked\n"
        n = len(tenv.calls())
        with pytest.raises(TarsnapBusy, match="another reconciler run"):
            tenv.backend().delete(["a"])
        assert len(tenv.calls()) == n  # tarsnap was not even started
        # Reads take no lock (a dry-run must not even create the lock file).
        assert [a.name for a in tenv.backend().list_archives()] == ["a"]
        assert tenv.backend(lock_wait=10).delete(["a"]).deleted == ["a"]  # waits its turn
    finally:
        other.wait(timeout=10)


def test_sequence_mismatch_tells_the_fix(tenv: Env) -> None:
    tenv.seed({"a": 1}, seq_mismatch=True)
    b = tenv.backend()
    with pytest.raises(TarsnapError) as ei:
        b.delete(["a"])
    msg = str(ei.value)
    assert "Sequence number mismatch" in msg and "--fsck" in msg and msg.startswith(ADDR)
    with pytest.raises(TarsnapError, match="not allowed"):
        b.fsck()
    assert not any("--fsck" in c for c in tenv.calls())
    assert "Phase 5" in b.fsck(allow_fsck=True)
    assert b.delete(["a"]).deleted == ["a"]


def test_keyfile_missing(tenv: Env) -> None:
    tenv.keyfile.unlink()
    b = tenv.backend()
    with pytest.raises(TarsnapError, match="does not exist") as ei:
        b.check_keyfile()
    assert ei.value.address == ADDR
    with pytest.raises(TarsnapError, match=f"cannot read key file {tenv.keyfile}"):
        b.list_archives()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_keyfile_group_or_other_readable(tenv: Env, mode: int) -> None:
    tenv.keyfile.chmod(mode)
    with pytest.raises(TarsnapError, match=f"chmod 600 {tenv.keyfile}"):
        tenv.backend().check_keyfile()


def test_keyfile_ok(tenv: Env) -> None:
    tenv.backend().check_keyfile()
    tenv.keyfile.chmod(0o400)
    tenv.backend().check_keyfile()


def test_keyfile_unreadable(tenv: Env) -> None:
    """Root reads any file through CAP_DAC_OVERRIDE, so when we are root the check runs in
    a child that has dropped that capability (as a non-root service user would lack it)."""
    tenv.keyfile.chmod(0o000)
    if os.geteuid() != 0:
        with pytest.raises(TarsnapError, match="not readable"):
            tenv.backend().check_keyfile()
        return
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (Debian package util-linux) to drop CAP_DAC_OVERRIDE")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from reconciler.kinds.backup.tarsnap import TarsnapBackend, TarsnapConfig\n"
        "from reconciler.kinds.backup.tarsnap import TarsnapError\n"
        f"cfg = TarsnapConfig(command='tarsnap', keyfile=Path({str(tenv.keyfile)!r}),"
        f" cachedir=Path({str(tenv.cachedir)!r}))\n"
        "try:\n"
        "    TarsnapBackend(cfg, address='backup/etc').check_keyfile()\n"
        "except TarsnapError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    caps = "-dac_override,-dac_read_search"
    proc = subprocess.run(
        ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "not readable" in proc.stdout


def test_keyfile_is_a_directory(tenv: Env) -> None:
    tenv.keyfile.unlink()
    tenv.keyfile.mkdir()
    with pytest.raises(TarsnapError, match="not a regular file"):
        tenv.backend().check_keyfile()
    with pytest.raises(TarsnapError, match="Is a directory"):
        tenv.backend().list_archives()


def test_command_not_found(tenv: Env) -> None:
    b = TarsnapBackend(
        TarsnapConfig(
            command=str(tenv.root / "no-tarsnap"), keyfile=tenv.keyfile, cachedir=tenv.cachedir
        ),
        address=ADDR,
    )
    with pytest.raises(TarsnapError, match="not found"):
        b.list_archives()


def test_config_from_desired(tmp_path: Path) -> None:
    c = TarsnapConfig.from_desired(
        {"command": "/opt/tarsnap", "keyfile": "/k", "cachedir": str(tmp_path / "c")}
    )
    assert c.command == "/opt/tarsnap" and c.keyfile == Path("/k")
    assert c.lock_path == tmp_path / "c.reconciler.lock"
    assert TarsnapConfig.from_desired({}).command == "tarsnap"
