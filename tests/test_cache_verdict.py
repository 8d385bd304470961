"""The cache's verdicts (``docs/cache.md``): the small entry that says a file was found
valid, read for a host that is only validated (the CI dry-run's unchanged hosts,
:func:`reconciler.desired.validate_host`). A verdict answers exactly what the full
validation answers (the host policy's problems included, file:line exact), holds no
members, and one that cannot be trusted is ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import cache as cache_mod
from reconciler import desired
from reconciler.cache import DesiredCache
from reconciler.errors import ValidationError
from tests import hostcfg

FLEET = """\
ipsets:
  mgmt:
    type: hash:net
    members: [10.1.0.0/16, 192.0.2.7]
"""

HOST = """\
# h1
ipsets:
  own:
    type: hash:net
    members:
      - 198.51.100.0/24
      - 203.0.113.9
nics:
  eth0:
    rings: {rx: 512}
backups:
  etc:
    backend: restic
    repository: /var/lib/reconciler/restic/h1
    password_file: /etc/reconciler/restic.pass
    paths: [/etc]
    every: 1d
    keep: {daily: 7}
"""


def _repo(root: Path, host: str = HOST) -> Path:
    repo = root / "repo"
    (repo / "hosts").mkdir(parents=True, exist_ok=True)
    (repo / "fleet.yaml").write_text(FLEET)
    (repo / "hosts" / "h1.yaml").write_text(host)
    return repo


def _verdict(cache_dir: Path, repo: Path) -> Path:
    key = cache_mod.verdict_key(cache_mod.HOST_ROLE, (repo / "hosts" / "h1.yaml").read_bytes())
    return cache_dir / f"{key}.valid"


def _problems(repo: Path, cache: desired.LoadCache, config: object = None) -> list[str]:
    try:
        desired.validate_host(repo, "h1", cache, config=config)  # type: ignore[arg-type]
    except ValidationError as e:
        return sorted(str(p) for p in e.problems)
    return []


def test_a_valid_file_leaves_a_verdict_without_its_members(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    cache = DesiredCache(tmp_path / "c")
    desired.load_host(repo, "h1", disk_cache=cache)
    verdict = _verdict(tmp_path / "c", repo)
    header, _, payload = verdict.read_bytes().partition(b"\n")
    assert json.loads(header)["format"] == cache_mod.VERDICT_FORMAT
    data = json.loads(payload)["data"]
    assert "backups" in data and "ipsets" not in data and "nics" not in data
    # A verdict is not counted as an entry of a document, and is read as one.
    assert cache.written == 2
    again = DesiredCache(tmp_path / "c")
    assert _problems(repo, desired.LoadCache(disk_cache=again)) == []
    assert again.hits == 2  # fleet.yaml's entry (loaded in full) and the host's verdict


def test_a_verdict_gives_the_policy_problems_located_exactly(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "c"))
    # A host that allows less: the same content, now refused, at the same file:line.
    strict = hostcfg.load(tmp_path, allowed_dirs=["/etc/reconciler"])
    expected = _problems(repo, desired.LoadCache(), strict)
    assert expected and all(p.startswith("hosts/h1.yaml:") for p in expected)
    cached = DesiredCache(tmp_path / "c")
    assert _problems(repo, desired.LoadCache(disk_cache=cached), strict) == expected
    assert cached.hits == 2


@pytest.mark.parametrize("how", ["truncated", "tampered", "foreign"])
def test_a_verdict_that_cannot_be_trusted_is_ignored(tmp_path: Path, how: str) -> None:
    repo = _repo(tmp_path)
    desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "c"))
    verdict = _verdict(tmp_path / "c", repo)
    raw = verdict.read_bytes()
    if how == "truncated":
        verdict.write_bytes(raw[: len(raw) // 2])
    elif how == "tampered":
        # A well-formed payload that drops the backups, with a header that does not match.
        header, _, payload = raw.partition(b"\n")
        verdict.write_bytes(header + b"\n" + payload.replace(b"backups", b"backupz"))
    else:
        # The file's full entry copied under the verdict's name: another key and format.
        key = cache_mod.entry_key(cache_mod.HOST_ROLE, (repo / "hosts" / "h1.yaml").read_bytes())
        verdict.write_bytes((tmp_path / "c" / f"{key}.json").read_bytes())
    verdict.chmod(0o600)
    cache = DesiredCache(tmp_path / "c")
    strict = hostcfg.load(tmp_path, allowed_dirs=["/etc/reconciler"])
    expected = _problems(repo, desired.LoadCache(), strict)
    assert _problems(repo, desired.LoadCache(disk_cache=cache), strict) == expected
    # The verdict missed; fleet.yaml's and the host file's full entries answered.
    assert (cache.misses, cache.hits) == (1, 2)


def test_an_invalid_file_has_no_verdict_and_the_same_problems(tmp_path: Path) -> None:
    repo = _repo(tmp_path, HOST.replace("203.0.113.9", "203.0.113.9/24"))
    cache = DesiredCache(tmp_path / "c")
    expected = _problems(repo, desired.LoadCache())
    assert expected == [
        "hosts/h1.yaml:7:9: ipsets.own.members[1]: 203.0.113.9/24: host bits set; did you "
        "mean 203.0.113.9/32 or 203.0.113.0/24?"
    ]
    assert _problems(repo, desired.LoadCache(disk_cache=cache)) == expected
    assert not _verdict(tmp_path / "c", repo).exists()


def test_the_directory_keeps_at_most_max_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pruning, with the directory counted only now and then: never more than
    MAX_ENTRIES files in it after a write, the least recently written removed first."""
    from reconciler.yamlsrc import YamlDoc

    monkeypatch.setattr(cache_mod, "MAX_ENTRIES", 20)
    monkeypatch.setattr(cache_mod, "RECOUNT_EVERY", 5)
    cache = DesiredCache(tmp_path / "c")
    first = cache_mod.entry_key(cache_mod.HOST_ROLE, b"0")
    for i in range(60):
        assert cache.put(cache_mod.HOST_ROLE, str(i).encode(), YamlDoc("f", {"n": i}))
        assert len(list((tmp_path / "c").iterdir())) <= 20
    assert not (tmp_path / "c" / f"{first}.json").exists()
    last = cache_mod.entry_key(cache_mod.HOST_ROLE, b"59")
    assert (tmp_path / "c" / f"{last}.json").exists()


def test_the_trust_check_reads_fleet_yaml_from_its_verdict(tmp_path: Path) -> None:
    """The target's ``verify:`` block is read from fleet.yaml's verdict (which keeps it)
    without decoding the members; content the cache does not know is left to the parser."""
    from reconciler.cli.apply import _cached_fleet

    repo = _repo(tmp_path)
    desired.load_host(repo, "h1", disk_cache=DesiredCache(tmp_path / "c"))
    desired._VALIDATED_FLEET.clear()  # another process: only the cache knows the file
    cache = DesiredCache(tmp_path / "c")
    read = _cached_fleet(cache)
    raw = (repo / "fleet.yaml").read_bytes()
    assert read(raw, "fleet.yaml") == {}  # the verdict of FLEET: its ipsets left out
    assert cache.hits == 1
    assert read(raw + b"# changed\n", "fleet.yaml") is None
    assert _cached_fleet(None)(raw, "fleet.yaml") is None


def test_the_trust_check_reads_the_fleet_yaml_this_run_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trust reads ``verify:`` after the desired state is loaded: with nothing cached (a
    first run), the fleet.yaml the load validated is not parsed again; other bytes are."""
    from reconciler import yamlparse
    from reconciler.cli.apply import _cached_fleet

    repo = _repo(tmp_path)
    verify = {"signers": [{"name": "alice", "ssh": "keys/alice.pub"}]}
    (repo / "keys").mkdir()
    (repo / "keys" / "alice.pub").write_text("ssh-ed25519 AAAA alice\n")
    (repo / "fleet.yaml").write_text(
        FLEET + "verify:\n  signers:\n    - {name: alice, ssh: keys/alice.pub}\n"
    )
    desired.load_host(repo, "h1")
    parsed: list[str] = []
    real_parse = yamlparse.parse_fast

    def counted(raw: bytes, name: str) -> object:
        parsed.append(name)
        return real_parse(raw, name)

    monkeypatch.setattr(yamlparse, "parse_fast", counted)
    read = _cached_fleet(None)
    raw = (repo / "fleet.yaml").read_bytes()
    assert read(raw, "fleet.yaml") == {"verify": verify}
    assert read(raw + b"# changed\n", "fleet.yaml") is None  # left to the parser
    assert parsed == []
