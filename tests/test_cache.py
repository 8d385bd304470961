"""The cache of validated desired state (``reconciler/cache.py``, ``docs/cache.md``).

A hit gives what validating the file gives (data, sources, errors, plans); a changed file,
schema or reconciler misses; an entry that cannot be trusted (truncated, tampered,
foreign, a symlink, a directory) is ignored and rewritten; nothing is stored for an invalid
file; the directory follows the state-file rules. The whole-process checks run the real
command line (a dry-run in a network namespace the test creates).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler import __version__, desired
from reconciler import cache as cache_mod
from reconciler.cache import DesiredCache
from reconciler.errors import StateError, ValidationError
from reconciler.yamlsrc import YamlDoc
from tests import hostcfg
from tests.clirun import reconcile
from tests.netns import Netns

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted(p for p in (ROOT / "tests" / "data" / "desired").iterdir() if p.is_dir())

FLEET = """\
# the fleet's sets
ipsets:
  mgmt:
    type: hash:net
    maxelem: 1024
    members:
      - 10.1.0.0/16
      - "192.0.2.7"
      - 198.51.100.128/25
    firewall: {in_interface: eth0}
  six:
    type: hash:net
    family: inet6
    members: [2001:db8::/32, "2001:db8:1::1"]
"""

HOST = """\
# h1: one NIC the namespace does not have (a plan error naming where it was written)
nics:

  eth9:
    rings: {rx: 512}
    offloads: {gso: off}
"""


def _repo(root: Path, fleet: str = FLEET, host: str = HOST) -> Path:
    repo = root / "repo"
    (repo / "hosts").mkdir(parents=True, exist_ok=True)
    (repo / "fleet.yaml").write_text(fleet)
    (repo / "hosts" / "h1.yaml").write_text(host)
    return repo


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.name.endswith(".json"))


def _fleet_entry(cache_dir: Path, repo: Path) -> Path:
    key = cache_mod.entry_key(cache_mod.FLEET_ROLE, (repo / "fleet.yaml").read_bytes())
    return cache_dir / f"{key}.json"


# ------------------------------------------------------------------- hits are identical
def test_a_hit_gives_the_same_desired_state_sources_included(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    plain = desired.load_host(repo, "h1")
    cold = DesiredCache(tmp_path / "cache")
    first = desired.load_host(repo, "h1", disk_cache=cold)
    assert (cold.hits, cold.misses, cold.written) == (0, 2, 2)
    warm = DesiredCache(tmp_path / "cache")
    second = desired.load_host(repo, "h1", disk_cache=warm)
    assert (warm.hits, warm.misses, warm.written) == (2, 0, 0)
    for got in (first, second):
        assert got == plain
        assert got.raw == plain.raw
        # ``source`` is not compared by ==: where each resource was written, as parsed.
        assert {n: s.source for n, s in got.ipsets.items()} == {
            n: s.source for n, s in plain.ipsets.items()
        }
        assert {n: s.source for n, s in got.nics.items()} == {
            n: s.source for n, s in plain.nics.items()
        }
    assert str(second.ipsets["six"].source) == "fleet.yaml:11:3"
    assert str(second.nics["eth9"].source) == "hosts/h1.yaml:4:3"
    assert second.ipsets["mgmt"].members == frozenset(
        {"10.1.0.0/16", "192.0.2.7/32", "198.51.100.128/25"}
    )


def test_long_lists_are_stored_as_lines_and_read_back_the_same(tmp_path: Path) -> None:
    """A set of 300 members (past PACK_MIN): its data list and canonical members are stored
    as blobs of lines after the entry's JSON and read back equal; a packed path that names
    no blob, or blob sizes that do not add up, are a miss."""
    members = [f"10.{i // 256}.{i % 256}.0/24" for i in range(300)] + ["192.0.2.7"]
    fleet = "ipsets:\n  big:\n    type: hash:net\n    members:\n" + "".join(
        f"      - {m}\n" for m in members
    )
    repo = _repo(tmp_path, fleet=fleet, host="{}\n")
    plain = desired.load_host(repo, "h1")
    desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "cache"))
    entry = _fleet_entry(tmp_path / "cache", repo)
    header_line, _, body = entry.read_bytes().partition(b"\n")
    head = json.loads(header_line)
    payload = json.loads(body[: head["json"]])
    blobs = body[head["json"] :]
    assert payload["packed"] == [["ipsets", "big", "members"]]
    index = payload["data"]["ipsets"]["big"]["members"]
    assert [how for _, how, _ in payload["derived"]] == ["lines", "plain"]
    assert sum(payload["blobs"]) == len(blobs) and len(payload["blobs"]) == 2
    start = sum(payload["blobs"][:index])
    assert blobs[start : start + payload["blobs"][index]].decode() == "\n".join(members)
    raw = (repo / "fleet.yaml").read_bytes()
    doc = DesiredCache(tmp_path / "cache").get(cache_mod.FLEET_ROLE, raw, "fleet.yaml", repo)
    assert doc is not None and doc.data["ipsets"]["big"]["members"] == members
    again = desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "cache"))
    assert again == plain and len(again.ipsets["big"].members) == 301
    assert again.ipsets["big"].members_digest == plain.ipsets["big"].members_digest

    def rewrite(change: dict[str, Any]) -> None:
        # Rewritten with matching digests (a consistent forgery, not a torn file).
        forged = json.dumps({**payload, **change}).encode()
        full = forged + blobs
        head2 = {**head, "json": len(forged), "size": len(full),
                 "sha256": hashlib.sha256(full).hexdigest()}  # fmt: skip
        entry.write_bytes(json.dumps(head2).encode() + b"\n" + full)

    for change in (
        {"packed": [["ipsets", "big", "type"]]},  # names a string, not a blob index
        {"blobs": [payload["blobs"][0], payload["blobs"][1] + 1]},  # sizes do not add up
    ):
        rewrite(change)
        cold = DesiredCache(tmp_path / "cache")
        assert cold.get(cache_mod.FLEET_ROLE, raw, "fleet.yaml", repo) is None, change


def test_a_hit_locates_a_later_problem_exactly(tmp_path: Path) -> None:
    """A position the entry does not hold (a list item) is parsed from the unchanged file."""
    repo = _repo(tmp_path)
    desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "cache"))
    warm = DesiredCache(tmp_path / "cache")
    doc = warm.get(cache_mod.FLEET_ROLE, (repo / "fleet.yaml").read_bytes(), "fleet.yaml", repo)
    assert doc is not None and doc.partial
    assert doc.pos(("ipsets", "mgmt", "members", 2)) == (9, 9)
    assert not doc.partial
    assert doc.texts[("ipsets", "mgmt", "members", 1)] == "192.0.2.7"


def test_key_files_are_checked_on_every_hit(tmp_path: Path) -> None:
    """What ``verify`` names is another file: a hit does not vouch for it."""
    fleet = "verify:\n  signers:\n    - {name: ops, ssh: keys/ops.pub}\n" + FLEET
    repo = _repo(tmp_path, fleet=fleet)
    (repo / "keys").mkdir()
    (repo / "keys" / "ops.pub").write_text("ssh-ed25519 AAAA ops\n")
    assert desired.validate_repo(repo, disk_cache=DesiredCache(tmp_path / "cache")) == []
    (repo / "keys" / "ops.pub").unlink()
    warm = DesiredCache(tmp_path / "cache")
    problems = desired.validate_repo(repo, disk_cache=warm)
    assert warm.hits == 2
    assert problems == desired.validate_repo(repo)
    assert [str(p) for p in problems] == [
        "fleet.yaml:3:24: verify.signers[0].ssh: no such key file keys/ops.pub"
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_cache_never_changes_what_is_valid(case: Path, tmp_path: Path) -> None:
    config = hostcfg.permissive()
    expected = desired.validate_repo(case, config=config)
    assert expected  # every case is invalid
    for _ in range(2):  # cold, then warm
        got = desired.validate_repo(case, config=config, disk_cache=DesiredCache(tmp_path / "c"))
        assert got == expected
    # Only files without a problem were stored.
    bad = {p.file for p in expected}
    stored = [
        rel
        for rel in ["fleet.yaml", *(f"hosts/{h}.yaml" for h in desired.list_hosts(case))]
        if (case / rel).exists()
        and (
            tmp_path
            / "c"
            / (
                cache_mod.entry_key(
                    cache_mod.FLEET_ROLE if rel == "fleet.yaml" else cache_mod.HOST_ROLE,
                    (case / rel).read_bytes(),
                )
                + ".json"
            )
        ).exists()
    ]
    assert not bad & set(stored)


def test_no_entry_is_written_for_an_invalid_file(tmp_path: Path) -> None:
    repo = _repo(tmp_path, fleet=FLEET.replace("192.0.2.7", "192.0.2.7/24"))
    cache = DesiredCache(tmp_path / "cache")
    with pytest.raises(ValidationError) as e:
        desired.load_host(repo, "h1", disk_cache=cache)
    assert [str(p) for p in e.value.problems] == [
        "fleet.yaml:8:9: ipsets.mgmt.members[1]: 192.0.2.7/24: host bits set; did you mean "
        "192.0.2.7/32 or 192.0.2.0/24?"
    ]
    # The host file is valid and stored; the fleet file is not.
    assert not _fleet_entry(tmp_path / "cache", repo).exists()
    assert len(_entries(tmp_path / "cache")) == 1


def test_validate_of_an_invalid_file_writes_nothing(tmp_path: Path) -> None:
    repo = _repo(
        tmp_path, fleet="ipsets:\n  mgmt:\n    type: hash:net\n    members: [10.0.0.0/0]\n"
    )
    (repo / "hosts" / "h1.yaml").unlink()
    cache_dir = tmp_path / "cache"
    plain = reconcile("validate", "--repo", str(repo), "--no-cache")
    cached = reconcile("validate", "--repo", str(repo), "--cache-dir", str(cache_dir))
    assert plain.returncode == cached.returncode == 1
    assert plain.stderr == cached.stderr and "fleet.yaml:4:15" in cached.stderr
    assert _entries(cache_dir) == []


# -------------------------------------------------------------------------------- misses
def test_a_changed_file_misses(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "cache"))
    (repo / "fleet.yaml").write_text(FLEET.replace("10.1.0.0/16", "10.2.0.0/16"))
    cache = DesiredCache(tmp_path / "cache")
    got = desired.load_host(repo, "h1", disk_cache=cache)
    assert (cache.hits, cache.misses, cache.written) == (1, 1, 1)
    assert "10.2.0.0/16" in got.ipsets["mgmt"].members
    assert "10.1.0.0/16" not in got.ipsets["mgmt"].members


@pytest.mark.parametrize("version", ["schema_version", "reconciler_version"])
def test_another_schema_or_reconciler_version_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    repo = _repo(tmp_path)
    desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "cache"))
    monkeypatch.setattr(cache_mod, version, lambda: "something-else")
    cache = DesiredCache(tmp_path / "cache")
    desired.load_host(repo, "h1", disk_cache=cache)
    assert (cache.hits, cache.misses, cache.written) == (0, 2, 2)


def test_the_reconciler_version_follows_the_source() -> None:
    """A development change misses too: the version hashes the package's files."""
    version = cache_mod.reconciler_version()
    assert version.startswith(f"{__version__}+")
    assert len(version.split("+")[1]) == 32
    assert cache_mod.schema_version() != cache_mod.reconciler_version()
    # The C extension checks and canonicalises members too: its source and built module count.
    files = cache_mod._package_files()
    assert "./_netfast.c" in files
    assert any(f.startswith("./_netfast.") and f.endswith(".so") for f in files)
    assert "kinds/ipset/checks.py" in files


def test_a_changed_input_file_misses(tmp_path: Path) -> None:
    """An entry derived from another repository file (a ``members_from:`` list) is only
    as current as that file."""
    repo = _repo(tmp_path)
    (repo / "lists").mkdir()
    (repo / "lists" / "extra.txt").write_text("10.9.0.0/16\n")
    content = (repo / "hosts" / "h1.yaml").read_bytes()
    doc = YamlDoc("hosts/h1.yaml", {"nics": {}}, source=content)
    doc.depends_on("lists/extra.txt", (repo / "lists" / "extra.txt").read_bytes())
    cache = DesiredCache(tmp_path / "cache")
    assert cache.put(cache_mod.HOST_ROLE, content, doc)
    assert cache.get(cache_mod.HOST_ROLE, content, "hosts/h1.yaml", repo) is not None
    (repo / "lists" / "extra.txt").write_text("10.8.0.0/16\n")
    assert cache.get(cache_mod.HOST_ROLE, content, "hosts/h1.yaml", repo) is None
    (repo / "lists" / "extra.txt").unlink()
    (repo / "lists" / "extra.txt").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("10.9.0.0/16\n")  # same bytes, through a symlink
    assert cache.get(cache_mod.HOST_ROLE, content, "hosts/h1.yaml", repo) is None


# ---------------------------------------------------------- entries that are not trusted
def _truncate(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:-40])


def _tamper(entry: Path) -> None:
    # A member changed, the header kept: the payload's digest no longer matches.
    entry.write_bytes(entry.read_bytes().replace(b"10.1.0.0/16", b"10.7.0.0/16"))


def _tamper_consistently(entry: Path) -> None:
    # Rewritten with a matching digest but a payload of the wrong shape.
    header, _, _ = entry.read_bytes().partition(b"\n")
    payload = json.dumps({"data": ["not", "a", "mapping"]}).encode()
    head = json.loads(header)
    head["size"] = len(payload)
    head["sha256"] = __import__("hashlib").sha256(payload).hexdigest()
    entry.write_bytes(json.dumps(head).encode() + b"\n" + payload)


def _foreign(entry: Path) -> None:
    # Another key's entry (the host file's) under this name.
    other = next(p for p in entry.parent.iterdir() if p != entry and p.suffix == ".json")
    entry.write_bytes(other.read_bytes())


def _garbage(entry: Path) -> None:
    entry.write_bytes(b"\x00\xffnot json at all")


def _empty(entry: Path) -> None:
    entry.write_bytes(b"")


def _group_writable(entry: Path) -> None:
    entry.chmod(0o664)


def _hard_link(entry: Path) -> None:
    os.link(entry, entry.parent.parent / "second-name")


@pytest.mark.parametrize(
    "spoil",
    [
        _truncate,
        _tamper,
        _tamper_consistently,
        _foreign,
        _garbage,
        _empty,
        _group_writable,
        _hard_link,
    ],
)
def test_an_entry_that_cannot_be_trusted_is_ignored_and_rewritten(
    tmp_path: Path, spoil: object
) -> None:
    repo = _repo(tmp_path)
    expected = desired.load_host(repo, "h1")
    desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "cache"))
    entry = _fleet_entry(tmp_path / "cache", repo)
    assert callable(spoil)
    spoil(entry)
    cache = DesiredCache(tmp_path / "cache")
    got = desired.load_host(repo, "h1", disk_cache=cache)
    assert got == expected and got.ipsets["mgmt"].members == expected.ipsets["mgmt"].members
    assert (cache.hits, cache.misses, cache.written) == (1, 1, 1)
    assert entry.is_file() and not entry.is_symlink() and os.stat(entry).st_nlink == 1
    assert (entry.stat().st_mode & 0o777) == 0o600
    again = DesiredCache(tmp_path / "cache")
    desired.load_host(repo, "h1", disk_cache=again)
    assert again.hits == 2


def test_a_symlink_in_place_of_an_entry_is_not_followed(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "cache"))
    entry = _fleet_entry(tmp_path / "cache", repo)
    # A perfectly good entry elsewhere, and a victim file: neither is read nor written.
    good = tmp_path / "good.json"
    shutil.move(entry, good)
    entry.symlink_to(good)
    before = good.read_bytes()
    cache = DesiredCache(tmp_path / "cache")
    desired.load_host(repo, "h1", disk_cache=cache)
    assert (cache.hits, cache.misses, cache.written) == (1, 1, 1)
    assert not entry.is_symlink() and entry.is_file()
    assert good.read_bytes() == before


def test_a_directory_in_place_of_an_entry_is_replaced(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    entry = _fleet_entry(tmp_path / "cache", repo)
    (entry / "inside").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (entry / "inside" / "link").symlink_to(outside)  # removing it never follows the link
    cache = DesiredCache(tmp_path / "cache")
    desired.load_host(repo, "h1", disk_cache=cache)
    assert (cache.hits, cache.misses, cache.written) == (0, 2, 2)
    assert entry.is_file()
    assert (outside / "keep").read_text() == "x"


# ------------------------------------------------------------------------ the directory
def test_a_symlinked_cache_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(StateError, match="symbolic link"):
        DesiredCache(tmp_path / "link")


def test_a_cache_dir_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StateError, match="writable by its owner only"):
        DesiredCache(shared)


def test_a_new_cache_dir_is_private(tmp_path: Path) -> None:
    DesiredCache(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


def test_the_state_dirs_cache_is_used_only_when_the_state_dir_exists(tmp_path: Path) -> None:
    assert DesiredCache.in_state_dir(tmp_path / "state") is None
    assert not (tmp_path / "state").exists()
    (tmp_path / "state").mkdir(mode=0o700)
    cache = DesiredCache.in_state_dir(tmp_path / "state")
    assert cache is not None and cache.path == tmp_path / "state" / "cache"
    (tmp_path / "open").mkdir(mode=0o777)
    (tmp_path / "open").chmod(0o777)
    assert DesiredCache.in_state_dir(tmp_path / "open") is None
    assert not (tmp_path / "open" / "cache").exists()


def test_an_unusable_cache_dir_is_a_warning_and_the_run_goes_on(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    proc = reconcile("validate", "--repo", str(repo), "--cache-dir", str(tmp_path / "link"))
    assert proc.returncode == 0, proc.stderr
    assert "warning: desired-state cache not used" in proc.stderr
    assert "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert list(real.iterdir()) == []


def test_validate_fills_the_cache_and_says_the_same(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    cache_dir = tmp_path / "cache"
    runs = [reconcile("validate", "--repo", str(repo), "--cache-dir", str(cache_dir))]
    assert len(_entries(cache_dir)) == 2
    runs.append(reconcile("validate", "--repo", str(repo), "--cache-dir", str(cache_dir)))
    runs.append(reconcile("validate", "--repo", str(repo), "--no-cache"))
    assert {(p.returncode, p.stdout, p.stderr) for p in runs} == {
        (0, f"{repo}: valid (1 host file(s))\n", "")
    }


# ------------------------------------------------------------ a real dry-run, 3 ways
@pytest.mark.kernel
def test_a_dry_run_plans_the_same_with_and_without_the_cache(netns: Netns, tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}

    def run(*args: str) -> tuple[int, str, str]:
        proc = netns.run(
            [
                sys.executable, "-m", "reconciler", "--repo", str(repo), "--host", "h1",
                "--state-dir", str(state), "--lock-file", str(tmp_path / "lock"),
                "--log-format", "json", *args,
            ],
            check=False,
            env={**env, "RECONCILER_METRICS_FILE": ""},
        )  # fmt: skip
        return proc.returncode, proc.stdout, proc.stderr

    def plan(*extra: str) -> tuple[int, str]:
        code, out, _ = run("--dry-run", "--output", "json", "--only", "ipset,nic", *extra)
        return code, out

    code, without = plan("--no-cache")
    assert code == 1, without  # a plan error: the NIC is not in the namespace
    document = json.loads(without)
    assert [c["address"] for c in document["changes"]] == ["ipset/mgmt", "ipset/six"]
    assert any("hosts/h1.yaml:4:3" in e["message"] for e in document["errors"])
    # A dry-run only reads the state dir's cache: it writes nothing to the state dir.
    assert plan() == (1, without)
    assert not (state / "cache").exists()
    # --cache-dir (the CI's) is written by a dry-run too: cold, then warm.
    assert plan("--cache-dir", str(tmp_path / "ci-cache")) == (1, without)
    assert len(_entries(tmp_path / "ci-cache")) == 2
    assert plan("--cache-dir", str(tmp_path / "ci-cache")) == (1, without)
    # A run that applies fills the state dir's cache (here: the backup kind, nothing to do);
    # the next dry-run reads it.
    code, _, err = run("--only", "backup")
    assert code == 0, err
    assert len(_entries(state / "cache")) == 2
    before = sorted((p.name, p.stat().st_mtime_ns) for p in _entries(state / "cache"))
    assert plan() == (1, without)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in _entries(state / "cache")) == before


def test_a_read_only_cache_reads_and_writes_nothing(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    assert DesiredCache.in_state_dir(tmp_path / "state", read_only=True) is None
    assert not (tmp_path / "state" / "cache").exists()
    filled = DesiredCache.in_state_dir(tmp_path / "state")
    assert filled is not None
    desired.load_host(repo, "h1", disk_cache=filled)
    entry = _fleet_entry(tmp_path / "state" / "cache", repo)
    os.utime(entry, (0, 0))  # old enough that a writing cache would touch it
    (repo / "hosts" / "h1.yaml").write_text(HOST + "# changed\n")
    reader = DesiredCache.in_state_dir(tmp_path / "state", read_only=True)
    assert reader is not None
    desired.load_host(repo, "h1", disk_cache=reader)
    assert (reader.hits, reader.misses, reader.written) == (1, 1, 0)
    assert len(_entries(tmp_path / "state" / "cache")) == 2
    assert entry.stat().st_mtime == 0


def test_a_run_opens_one_cache_per_directory(tmp_path: Path) -> None:
    """``common.disk_cache`` asked twice in a run (the load, then the trust check) gives the
    same cache; a state dir that does not exist yet gives none, and a cache once it does."""
    import argparse

    from reconciler.cli import common

    args = argparse.Namespace(no_cache=False, cache_dir=None, dry_run=False)
    state = tmp_path / "state"
    assert common.disk_cache(args, state) is None  # not created for this
    state.mkdir(mode=0o700)
    first = common.disk_cache(args, state)
    assert first is not None and common.disk_cache(args, state) is first
    explicit = argparse.Namespace(no_cache=False, cache_dir=str(tmp_path / "ci"), dry_run=True)
    assert common.disk_cache(explicit, None) is common.disk_cache(explicit, state)
    assert common.disk_cache(argparse.Namespace(no_cache=True), state) is None
