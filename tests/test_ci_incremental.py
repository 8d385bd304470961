"""The incremental CI dry-run (``--against REV`` plans only hosts whose inputs changed) and
``--shard K/N``: real git repositories, the real CLI, and :func:`reconciler.ci.plan_all` for
comparing the incremental plans with full ones.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler import against, ci, gittree
from reconciler import hostconfig as hostconfig_mod
from reconciler import kinds as registry
from tests import hostcfg
from tests.test_ci_dryrun import HOST_A, Repo, by_host
from tests.test_gitsource import git


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def statuses(out: str) -> dict[str, str]:
    return {h: p["status"] for h, p in by_host(out).items()}


def commit_all(repo: Repo, message: str) -> str:
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", message)
    return git(repo.root, "rev-parse", "HEAD")


# --- which hosts are planned -----------------------------------------------------------------


def test_a_change_to_fleet_yaml_plans_every_host(repo: Repo) -> None:
    base = repo.write()
    repo.write(members="192.0.2.0/24, 203.0.113.0/24")
    r = repo.plan("--against", base, "--output", "json")
    assert r.returncode == 0, r.stderr
    assert statuses(r.stdout) == {"a": "planned", "b": "planned", "ctl": "planned"}
    assert json.loads(r.stdout)["summary"]["unchanged"] == 0


def test_a_change_to_one_host_file_plans_that_host_only(repo: Repo) -> None:
    base = repo.write()
    head = repo.write(rx=8192)
    r = repo.plan("--against", base, "--output", "json", "--detailed-exitcode")
    assert r.returncode == 2, r.stderr
    doc = json.loads(r.stdout)
    assert statuses(r.stdout) == {"a": "planned", "b": "unchanged", "ctl": "unchanged"}
    assert doc["summary"] == {"hosts": 3, "changes": 1, "errors": 0, "unchanged": 2}
    plans = by_host(r.stdout)
    for host in ("b", "ctl"):
        assert plans[host]["changes"] == [] and plans[host]["errors"] == []
        assert plans[host]["basis"] == {"kind": "against", "rev": base}
        assert plans[host]["commit"] == head
    text = repo.plan("--against", base).stdout
    assert f"=== host b: unchanged since {base} (not planned)" in text
    assert "~ rings.rx: 4096 -> 8192" in text
    assert f"1 change(s) on 1 host(s), 0 error(s); 2 host(s) unchanged since {base}" in text


@pytest.mark.parametrize(
    "edit",
    [
        lambda ds: (ds / "vms.yaml").write_text((ds / "vms.yaml").read_text() + "# note\n"),
        lambda ds: (ds / "README").write_text("docs\n"),
        lambda ds: (ds / "lists").mkdir() or (ds / "lists" / "mgmt.txt").write_text("x\n"),
        lambda ds: (ds / "hosts" / "c.yml").write_text("{}\n"),  # not a host file
    ],
    ids=["vms.yaml", "readme", "a list file", "a stray file in hosts"],
)
def test_a_change_to_any_shared_file_plans_every_host(repo: Repo, edit: Any) -> None:
    base = repo.write()
    repo.write(rx=8192)
    edit(repo.ds)
    commit_all(repo, "shared change")
    r = repo.plan("--against", base, "--output", "json")
    if r.returncode == 1:  # the stray hosts/c.yml is a problem: validated, nothing planned
        assert "hosts/c.yml" in r.stderr
        return
    assert set(statuses(r.stdout).values()) == {"planned"}


def test_a_new_host_is_planned_and_the_others_are_not(repo: Repo) -> None:
    base = repo.write()
    (repo.ds / "hosts" / "c.yaml").write_text(HOST_A.format(rx=1024))
    commit_all(repo, "new host c")
    r = repo.plan("--against", base, "--output", "json")
    assert statuses(r.stdout) == {"a": "unchanged", "b": "unchanged", "c": "planned",
                                  "ctl": "unchanged"}  # fmt: skip
    assert all(c["action"] == "create" for c in by_host(r.stdout)["c"]["changes"])


def test_a_dirty_tree_plans_every_host(repo: Repo) -> None:
    base = repo.write()
    (repo.ds / "hosts" / "a.yaml").write_text(HOST_A.format(rx=2048))  # not committed
    r = repo.plan("--against", base, "--output", "json")
    assert set(statuses(r.stdout).values()) == {"planned"}
    assert json.loads(r.stdout)["commit"].endswith("+dirty")


def test_a_host_with_a_snapshot_is_always_planned(repo: Repo, tmp_path: Path) -> None:
    """Host b's inputs did not change, but its snapshot says its live state did."""
    from reconciler.kinds.backup.provider import BackupLive, SetLive
    from reconciler.snapshot import Snapshot, write_snapshot

    base = repo.write()
    repo.write(rx=8192)
    now = datetime.now(UTC)
    old = f"etc-{(now - timedelta(days=3)):%Y%m%d-%H%M%S}"  # due: every 1d
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    live = BackupLive(now, {"etc": SetLive((old,))})
    write_snapshot(snaps / "b.json", Snapshot("b", now, base, "test", {"backup": live}, {}))
    r = repo.plan("--against", base, "--snapshots", str(snaps), "--only", "backup",
                  "--output", "json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    plans = by_host(r.stdout)
    assert plans["b"]["status"] == "planned" and plans["b"]["basis"]["kind"] == "snapshot"
    (change,) = plans["b"]["changes"]
    assert change["address"] == "backup/etc"
    assert plans["ctl"]["status"] == "unchanged"


def test_the_whole_repository_is_still_validated(repo: Repo, tmp_path: Path) -> None:
    """Host b is unchanged, but what it asks of the host is checked against this run's host
    configuration: an error naming its file and line, and nothing planned."""
    base = repo.write()
    repo.write(rx=8192)
    strict = hostcfg.write(tmp_path / "strict", allow_test_driver=True)  # no /srv/restic
    repo.config = strict
    r = repo.plan("--against", base)
    assert r.returncode == 1
    assert "hosts/b.yaml:4:" in r.stderr and "/srv/restic" in r.stderr
    assert "=== host" not in r.stdout


def _full_and_incremental(repo: Repo, tmp_path: Path, base: str, head: str) -> tuple[Any, Any]:
    """plan_all at HEAD against BASE: every host planned, and only the changed ones."""
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    gittree.materialize(repo.root, base, "desired-state", base_dir)
    before = {e.path: e.blob for e in gittree.list_tree(repo.root, base, "desired-state")}
    after = {e.path: e.blob for e in gittree.list_tree(repo.root, head, "desired-state")}
    changed = against.changed_hosts(before, after)
    assert changed == frozenset({"a"})
    config = hostconfig_mod.load(repo.config)
    kw: dict[str, Any] = {"commit": head, "base": base_dir, "base_rev": base, "config": config}
    kinds = list(registry.NAMES)
    full = ci.plan_all(repo.ds, None, kinds, **kw)
    inc = ci.plan_all(repo.ds, None, kinds, changed=changed, **kw)
    assert not full.problems and not inc.problems
    return full, inc


def test_planned_hosts_get_the_same_plan_as_a_full_run(repo: Repo, tmp_path: Path) -> None:
    base = repo.write()
    head = repo.write(rx=8192)
    full, inc = _full_and_incremental(repo, tmp_path, base, head)
    full_by = {p["host"]: p for p in full.plans}
    inc_by = {p["host"]: p for p in inc.plans}
    assert inc_by["a"] == full_by["a"] and inc_by["a"]["changes"]
    for host in ("b", "ctl"):  # unchanged: the full run found nothing either
        assert full_by[host]["changes"] == [] and full_by[host]["errors"] == []
        assert inc_by[host]["status"] == "unchanged"
    assert (inc.changes, inc.errors) == (full.changes, full.errors)


def test_changed_hosts_rules() -> None:
    same = {"fleet.yaml": "1", "hosts/a.yaml": "2", "hosts/b.yaml": "3"}
    assert against.changed_hosts(same, dict(same)) == frozenset()
    assert against.changed_hosts(same, {**same, "hosts/a.yaml": "9"}) == frozenset({"a"})
    assert against.changed_hosts(same, {**same, "hosts/c.yaml": "9"}) == frozenset({"c"})
    gone = {k: v for k, v in same.items() if k != "hosts/b.yaml"}
    assert against.changed_hosts(same, gone) == frozenset({"b"})
    assert against.changed_hosts(same, {**same, "fleet.yaml": "9"}) is None
    assert against.changed_hosts(same, {**same, "hosts/sub/x.yaml": "9"}) is None
    assert against.changed_hosts(same, {**same, "hosts/..yaml": "9"}) is None
    assert against.host_of("hosts/a.yaml") == "a"
    assert against.host_of("hosts/a.yml") is None and against.host_of("a.yaml") is None


# --- shards ------------------------------------------------------------------------------


def many_hosts(repo: Repo, n: int = 12) -> str:
    base = repo.write()
    for i in range(n):
        (repo.ds / "hosts" / f"h{i:02d}.yaml").write_text(HOST_A.format(rx=1024 + i))
    commit_all(repo, "many hosts")
    repo.write(members="192.0.2.0/24, 203.0.113.0/24")  # every host has a change
    return base


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_are_disjoint_and_their_union_is_the_whole(repo: Repo, count: int) -> None:
    base = many_hosts(repo)
    whole = by_host(repo.plan("--against", base, "--output", "json").stdout)
    seen: dict[str, dict[str, Any]] = {}
    for k in range(1, count + 1):
        r = repo.plan("--against", base, "--shard", f"{k}/{count}", "--output", "json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["shard"] == {"index": k, "count": count, "hosts_total": len(whole)}
        for host, plan in by_host(r.stdout).items():
            assert host not in seen, f"{host} is in two shards"
            seen[host] = plan
    assert seen == whole  # same plans, each host once
    if count > 1:
        sizes = [
            len(json.loads(repo.plan("--against", base, "--shard", f"{k}/{count}",
                                     "--output", "json").stdout)["hosts"])
            for k in range(1, count + 1)
        ]  # fmt: skip
        assert sum(sizes) == len(whole)


def test_shards_together_report_every_problem(repo: Repo) -> None:
    base = many_hosts(repo)
    (repo.ds / "hosts" / "h03.yaml").write_text("nics: {eth0: {rings: {rx: -1}}}\n")
    (repo.ds / "hosts" / "h07.yaml").write_text("nics: {eth0: {rings: {rx: -2}}}\n")
    commit_all(repo, "two broken hosts")
    whole = repo.plan("--against", base)
    assert whole.returncode == 1
    errs = [line for line in whole.stderr.splitlines() if "hosts/h0" in line]
    assert len(errs) == 2
    found: list[str] = []
    for k in (1, 2, 3):
        r = repo.plan("--against", base, "--shard", f"{k}/3")
        found += [line for line in r.stderr.splitlines() if "hosts/h0" in line]
        assert r.returncode == (1 if any("hosts/h0" in x for x in r.stderr.splitlines()) else 0)
    assert sorted(found) == sorted(errs)


def test_shard_text_output_names_the_shard(repo: Repo) -> None:
    base = many_hosts(repo)
    r = repo.plan("--against", base, "--shard", "2/3")
    assert r.returncode == 0, r.stderr
    assert "(shard 2/3: " in r.stdout and " of 15 hosts)" in r.stdout


@pytest.mark.parametrize("shard", ["0/2", "3/2", "2", "a/b", "1/0", "-1/2", ""])
def test_a_bad_shard_is_a_usage_error(repo: Repo, shard: str) -> None:
    base = repo.write()
    r = repo.plan("--against", base, "--shard", shard)
    assert r.returncode == 1
    assert "--shard" in r.stderr and "Traceback" not in r.stderr


def test_in_shard_is_stable_and_total() -> None:
    hosts = [f"web{i}" for i in range(200)]
    for n in (1, 2, 7):
        shards = [ci.Shard(k, n) for k in range(1, n + 1)]
        for h in hosts:
            assert sum(ci.in_shard(h, s) for s in shards) == 1
    assert ci.in_shard("web1", ci.Shard(1, 7)) == ci.in_shard("web1", ci.Shard(1, 7))
    with pytest.raises(ValueError, match="between 1 and N"):
        ci.parse_shard("5/4")


# --- the desired-state cache (--cache-dir) ------------------------------------------------


def test_a_cache_dir_changes_nothing_but_the_time(repo: Repo, tmp_path: Path) -> None:
    base = repo.write()
    repo.write(members="192.0.2.0/24, 203.0.113.0/24", rx=8192)
    cache = tmp_path / "cache"
    plain = repo.plan("--against", base, "--output", "json")
    cold = repo.plan("--against", base, "--output", "json", "--cache-dir", str(cache))
    assert any(cache.iterdir())  # the validated files were kept
    warm = repo.plan("--against", base, "--output", "json", "--cache-dir", str(cache))
    assert plain.returncode == cold.returncode == warm.returncode == 0, warm.stderr
    assert json.loads(plain.stdout) == json.loads(cold.stdout) == json.loads(warm.stdout)
    # An invalid file: the same problems, file:line, with the cache warm.
    (repo.ds / "hosts" / "a.yaml").write_text(HOST_A.format(rx=-1))
    commit_all(repo, "broken a")
    want = repo.plan("--against", base)
    got = repo.plan("--against", base, "--cache-dir", str(cache))
    assert want.returncode == got.returncode == 1
    assert "hosts/a.yaml:3:" in got.stderr
    assert want.stderr == got.stderr


# --- worker processes ----------------------------------------------------------------------


@pytest.mark.parametrize("shard", [None, ci.Shard(2, 3)])
def test_worker_processes_give_the_same_result(
    repo: Repo, tmp_path: Path, shard: ci.Shard | None
) -> None:
    base = many_hosts(repo)
    head = git(repo.root, "rev-parse", "HEAD")
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    gittree.materialize(repo.root, base, "desired-state", base_dir)
    kw: dict[str, Any] = {
        "commit": head, "base": base_dir, "base_rev": base, "shard": shard,
        "config": hostconfig_mod.load(repo.config), "now": datetime.now(UTC),
    }  # fmt: skip
    kinds = list(registry.NAMES)
    one = ci.plan_all(repo.ds, None, kinds, workers=1, **kw)
    assert one.plans and not one.problems
    for n in (2, 3, 7):
        many = ci.plan_all(repo.ds, None, kinds, workers=n, **kw)
        got = (many.plans, many.problems, many.total_hosts)
        assert got == (one.plans, one.problems, one.total_hosts)
    # The same problems, whichever worker read the broken files.
    (repo.ds / "hosts" / "h03.yaml").write_text("nics: {eth0: {rings: {rx: -1}}}\n")
    (repo.ds / "hosts" / "h08.yaml").write_text("nics: {eth0: {rings: {rx: -2}}}\n")
    one = ci.plan_all(repo.ds, None, kinds, workers=1, **kw)
    many = ci.plan_all(repo.ds, None, kinds, workers=3, **kw)
    assert (many.plans, many.problems) == (one.plans, one.problems)
    if shard is None:  # (shard 2/3 holds neither of them)
        assert len(one.problems) == 2 and not one.plans
