"""Signed commits end to end: the real CLI (and the timer unit's ExecStart) fetching a real
remote whose fleet.yaml requires signatures, with throwaway SSH keys and a pin file.

Each commit sets the members of an ipset in a throw-away network namespace, so the kernel
shows which commit was applied; a refused commit must leave the last applied one in place.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler.gitverify import key_fingerprint
from tests.netns import Netns, netns  # noqa: F401  (fixture)
from tests.packaging.test_systemd_units import DIST, _exec_start
from tests.test_gitsource import GIT_ENV, Host, Remote, fleet, git


def ssh_key(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text()


class SignedRemote(Remote):
    """A remote whose fleet.yaml requires commits signed by ``ops`` (an SSH key)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.key = tmp / "ops"
        self.pub = ssh_key(self.key)
        self.mallory = tmp / "mallory"
        ssh_key(self.mallory)
        (self.work / "keys").mkdir()
        (self.work / "keys" / "ops.pub").write_text(self.pub)
        self.pins = tmp / "signers.pin"
        self.pins.write_text(f"# ops team\n{key_fingerprint('ssh', self.pub)}\n")

    def commit_as(self, members: list[str], message: str, key: Path | None) -> str:
        verify = "verify:\n  signers:\n    - {name: ops, ssh: keys/ops.pub}\n"
        (self.work / "fleet.yaml").write_text(fleet(members) + verify)
        (self.work / "hosts").mkdir(exist_ok=True)
        (self.work / "hosts" / "h1.yaml").write_text("{}\n")  # every host has its file
        git(self.work, "add", "-A")
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-S"]
        git(self.work, *(sign if key is not None else ["commit"]), "-q", "-m", message)
        return git(self.work, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> SignedRemote:
    return SignedRemote(tmp_path)


@pytest.fixture
def host(netns: Netns, tmp_path: Path) -> Host:  # noqa: F811
    return Host(netns, tmp_path)


A, B, C = ["192.0.2.0/24"], ["198.51.100.0/24"], ["203.0.113.0/24"]


def test_signed_commits_apply_and_an_unsigned_one_is_refused(
    remote: SignedRemote, host: Host
) -> None:
    a = remote.commit_as(A, "first", remote.key)
    remote.push()
    r = host.run(remote.url, "--signer-pins", str(remote.pins))
    assert r.returncode == 0, r.stderr
    assert host.ns.ipset_members("mgmt") == set(A)
    assert '"commits_verified"' in r.stderr

    # Two new commits, the first unsigned: the whole range is refused, naming it.
    unsigned = remote.commit_as(B, "sneaky change", None)
    remote.commit_as(C, "signed on top", remote.key)
    remote.push()
    r = host.run(remote.url, "--signer-pins", str(remote.pins))
    assert r.returncode == 1
    assert f"commit {unsigned[:12]} (sneaky change) is not signed" in r.stderr
    assert host.ns.ipset_members("mgmt") == set(A)  # the last applied state is kept
    assert host.applied() == a
    assert git(host.state / "source", "rev-parse", "HEAD") == a  # nor checked out
    last = host.journal()[-1]
    assert last["ok"] is False and last["commit"] == unsigned
    assert "not signed" in str(last["errors"])


def test_commit_signed_by_an_unpinned_key_is_refused(remote: SignedRemote, host: Host) -> None:
    remote.commit_as(A, "first", remote.key)
    remote.push()
    assert host.run(remote.url, "--signer-pins", str(remote.pins)).returncode == 0
    # Mallory adds her key to the repository and signs with it: not pinned on the host.
    (remote.work / "keys" / "ops.pub").write_text(remote.mallory.with_suffix(".pub").read_text())
    bad = remote.commit_as(B, "take over", remote.mallory)
    remote.push()
    r = host.run(remote.url, "--signer-pins", str(remote.pins))
    assert r.returncode == 1
    assert bad[:12] in r.stderr and "not pinned" in r.stderr
    assert host.ns.ipset_members("mgmt") == set(A)


def test_switching_verification_off_needs_a_signed_commit(remote: SignedRemote, host: Host) -> None:
    remote.commit_as(A, "first", remote.key)
    remote.push()
    assert host.run(remote.url, "--signer-pins", str(remote.pins)).returncode == 0
    (remote.work / "fleet.yaml").write_text(fleet(B))  # verify: block removed, unsigned
    git(remote.work, "commit", "-q", "-am", "no more signatures")
    remote.push()
    r = host.run(remote.url, "--signer-pins", str(remote.pins))
    assert r.returncode == 1 and "is not signed" in r.stderr
    assert host.ns.ipset_members("mgmt") == set(A)


def test_require_signed_without_pins_is_refused(remote: SignedRemote, host: Host) -> None:
    remote.commit_as(A, "first", remote.key)
    remote.push()
    r = host.run(remote.url, "--signer-pins", str(remote.pins.with_name("missing.pin")))
    assert r.returncode == 1
    assert "no keys are pinned" in r.stderr
    assert "mgmt" not in host.ns.run(["ipset", "list", "-n"]).stdout


def test_timer_execstart_fetches_verifies_applies_and_records(
    remote: SignedRemote, host: Host, tmp_path: Path
) -> None:
    """The periodic unit's ExecStart, configured the way /etc/default/reconciler does it."""
    a = remote.commit_as(A, "first", remote.key)
    remote.push()
    argv = _exec_start(DIST / "systemd" / "reconciler.service")
    env = {
        **GIT_ENV,
        "RECONCILER_REPO": remote.url,
        "RECONCILER_HOST": "h1",
        "RECONCILER_STATE_DIR": str(host.state),
        "RECONCILER_LOCK_FILE": str(host.lock),
        "RECONCILER_METRICS_FILE": "",
        "RECONCILER_REQUIRE_SIGNED": "1",
        "RECONCILER_SIGNER_PINS": str(remote.pins),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    r = host.ns.run(argv, env=env, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert host.ns.ipset_members("mgmt") == set(A)
    assert host.applied() == a and host.journal()[-1]["commit"] == a
