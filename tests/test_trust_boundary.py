"""The trust boundary (issue 12), attacked as an attacker would: real git, ssh-keygen keys,
the real CLI, applies inside throw-away network namespaces. Each attack is refused with a
message naming the commit, file or value; nothing is applied, no secret is printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clirun import reconcile
from tests.netns import Netns, netns  # noqa: F401  (fixture)
from tests.test_gitsource import GIT_ENV, Host, Remote, fleet, git
from tests.test_signed_source import SignedRemote

A, B = ["192.0.2.0/24"], ["198.51.100.0/24"]
SECRET = "root:$6$SECRETHASH$abcdefghijklmnop:19000:0:99999:7:::"


def _members_or_none(ns: Netns) -> set[str] | None:
    names = ns.run(["ipset", "list", "-n"]).stdout.split()
    return ns.ipset_members("mgmt") if "mgmt" in names else None


@pytest.fixture
def host(netns: Netns, tmp_path: Path) -> Host:  # noqa: F811
    return Host(netns, tmp_path)


# ------------------------------------------------------- 1. a symlink turns verification off
def test_a_symlinked_path_is_refused_naming_it(tmp_path: Path, host: Host) -> None:
    remote = SignedRemote(tmp_path)
    remote.commit_as(A, "signed", remote.key)  # fleet.yaml with verify: at the top
    prod = remote.work / "prod"
    prod.mkdir()
    (prod / "fleet.yaml").write_text(fleet(B))  # no verify: here
    (remote.work / "desired-state").symlink_to("prod")
    git(remote.work, "add", "-A")
    git(remote.work, "commit", "-q", "-m", "shortcut")  # unsigned
    remote.push()
    r = host.run(remote.url, "--path", "desired-state", "--signer-pins", str(remote.pins))
    assert r.returncode == 1
    # Verification reads git objects, so the link hides nothing: no signers, no run.
    assert "desired-state/fleet.yaml at" in r.stderr and "lists no verify.signers" in r.stderr
    # On a host that does not require signatures the link is still never read through.
    no_pins = str(tmp_path / "no.pin")
    r = host.run(remote.url, "--path", "desired-state", "--signer-pins", no_pins)
    assert r.returncode == 1
    assert "desired-state is a symbolic link" in r.stderr
    assert _members_or_none(host.ns) is None  # nothing applied


def test_a_symlinked_fleet_file_in_a_commit_is_refused(remote: Remote, host: Host) -> None:
    (remote.work / "prod.yaml").write_text(fleet(A))
    (remote.work / "fleet.yaml").symlink_to("prod.yaml")
    git(remote.work, "add", "-A")
    git(remote.work, "commit", "-q", "-m", "link")
    remote.push()
    for extra in ((), ("--dry-run",)):
        r = host.run(remote.url, *extra)
        assert r.returncode == 1
        assert "fleet.yaml is a symbolic link" in r.stderr
    assert _members_or_none(host.ns) is None


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


# ------------------------------------- 3. the host decides: a pins file makes it mandatory
def test_first_run_with_a_pins_file_refuses_an_unsigned_commit(
    tmp_path: Path, host: Host
) -> None:
    remote = SignedRemote(tmp_path)
    (remote.work / "fleet.yaml").write_text(fleet(A))  # verify: dropped, unsigned
    git(remote.work, "add", "-A")
    git(remote.work, "commit", "-q", "-m", "no verify block")
    remote.push()
    assert not (host.state / "source.json").exists()  # a first run
    r = host.run(remote.url, "--signer-pins", str(remote.pins))
    assert r.returncode == 1
    assert "signed commits are required" in r.stderr
    assert _members_or_none(host.ns) is None
    assert host.journal()[-1]["ok"] is False  # the refusal is journalled


def test_a_trusted_signer_cannot_switch_verification_off(tmp_path: Path, host: Host) -> None:
    remote = SignedRemote(tmp_path)
    remote.commit_as(A, "first", remote.key)
    remote.push()
    assert host.run(remote.url, "--signer-pins", str(remote.pins)).returncode == 0
    # A signed commit that drops verify:, then an unsigned one on top.
    (remote.work / "fleet.yaml").write_text(fleet(A))
    git(remote.work, "add", "-A")
    key = remote.key
    git(remote.work, "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-S",
        "-q", "-m", "drop verify")  # fmt: skip
    (remote.work / "fleet.yaml").write_text(fleet(B))
    git(remote.work, "commit", "-q", "-am", "unsigned")
    remote.push()
    r = host.run(remote.url, "--signer-pins", str(remote.pins))
    assert r.returncode == 1
    assert host.ns.ipset_members("mgmt") == set(A)


# ------------------------------------------ 4. symlinks to host files are never followed
def _repo_with_host_link(tmp_path: Path, *, commit: bool) -> tuple[Path, Path]:
    secret = tmp_path / "shadow-copy"
    secret.write_text(SECRET + "\n")
    repo = tmp_path / "repo"
    (repo / "hosts").mkdir(parents=True)
    (repo / "fleet.yaml").write_text("{}\n")
    (repo / "hosts" / "h1.yaml").symlink_to(secret)
    if commit:
        git(tmp_path, "init", "-q", str(repo))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "link to a host file")
    return repo, secret


@pytest.mark.parametrize("commit", [True, False], ids=["committed", "plain-dir"])
def test_a_symlink_to_a_host_file_is_refused_and_never_echoed(
    tmp_path: Path, commit: bool
) -> None:
    repo, _ = _repo_with_host_link(tmp_path, commit=commit)
    env = {**GIT_ENV, "RECONCILER_METRICS_FILE": ""}
    runs = [
        reconcile("validate", "--repo", str(repo), env=env),
        reconcile("--dry-run", "--repo", str(repo), "--host", "h1", "--only", "backup",
                  "--state-dir", str(tmp_path / "st"), "--lock-file", str(tmp_path / "lk"),
                  env=env),
        reconcile("--dry-run", "--all-hosts", "--repo", str(repo), env=env),
    ]  # fmt: skip
    for r in runs:
        assert r.returncode == 1, r.args
        assert "h1.yaml" in r.stderr and "symbolic link" in r.stderr, r.stderr
        assert "SECRETHASH" not in r.stdout + r.stderr
        assert "Traceback" not in r.stderr


def test_a_fleet_file_linked_to_dev_zero_is_refused_at_once(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "fleet.yaml").symlink_to("/dev/zero")
    r = reconcile("validate", "--repo", str(repo))
    assert r.returncode == 1 and "fleet.yaml is a symbolic link" in r.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n"
            for i in range(8)), "aliases expand to more than"),
        ("a: &a [*a]\n", "nested more than 64 levels"),
        ("ipsets:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200)),
         "nested more than 64 levels"),
    ],
    ids=["alias-bomb", "self-alias", "deep"],
)  # fmt: skip
def test_hostile_yaml_is_a_located_error_not_a_crash(
    tmp_path: Path, text: str, message: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "fleet.yaml").write_text(text)
    r = reconcile("validate", "--repo", str(repo))
    assert r.returncode == 1
    assert "fleet.yaml:" in r.stderr and message in r.stderr
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr


def test_a_deep_fleet_file_in_an_unsigned_push_is_a_journalled_refusal(
    tmp_path: Path, host: Host
) -> None:
    remote = SignedRemote(tmp_path)
    (remote.work / "fleet.yaml").write_text("verify: " + "[" * 20000 + "]" * 20000 + "\n")
    git(remote.work, "add", "-A")
    git(remote.work, "commit", "-q", "-m", "deep")
    remote.push()
    r = host.run(remote.url, "--signer-pins", str(remote.pins))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "refused" in r.stderr
    assert host.journal()[-1]["ok"] is False


# ------------------------- 5. the dry-run and apply read the same content (git objects)
def test_export_ignore_cannot_make_the_dry_run_lie(remote: Remote, host: Host) -> None:
    remote.commit(A, "first")
    remote.push()
    assert host.run(remote.url).returncode == 0
    (remote.work / ".gitattributes").write_text("fleet.yaml export-ignore\n")
    remote.commit(A + B, "add B, hidden from git archive")
    remote.push()
    dry = host.run(remote.url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert B[0] in dry.stdout  # the dry-run sees the commit's fleet.yaml
    assert host.ns.ipset_members("mgmt") == set(A)
    assert host.run(remote.url).returncode == 0
    assert host.ns.ipset_members("mgmt") == set(A + B)


def test_a_dirty_tree_is_not_applied_when_signatures_are_required(
    tmp_path: Path, host: Host
) -> None:
    remote = SignedRemote(tmp_path)
    remote.commit_as(A, "signed", remote.key)
    (remote.work / "fleet.yaml").write_text(fleet(B))  # uncommitted
    r = host.run(str(remote.work), "--allow-dirty", "--signer-pins", str(remote.pins))
    assert r.returncode == 1 and "uncommitted changes" in r.stderr
    assert _members_or_none(host.ns) is None




# ------------------------------- the CI dry-run reads no host file a repository names
@pytest.mark.parametrize("target", ["/dev/zero", "secret"])
def test_a_snapshot_that_is_a_symlink_is_refused(tmp_path: Path, target: str) -> None:
    repo = tmp_path / "repo"
    (repo / "hosts").mkdir(parents=True)
    (repo / "fleet.yaml").write_text("{}\n")
    (repo / "hosts" / "h1.yaml").write_text("{}\n")
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    (snaps / "h1.json").symlink_to(secret if target == "secret" else Path(target))
    r = reconcile("--dry-run", "--all-hosts", "--repo", str(repo), "--snapshots", str(snaps))
    assert r.returncode == 1
    assert "h1.json is a symbolic link: refused" in r.stdout
    assert "SECRETHASH" not in r.stdout + r.stderr and "Traceback" not in r.stderr
