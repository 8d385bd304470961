"""Commit signature verification against real git repositories, gpg and ssh-keygen.

Throwaway keys are made once per module: alice (OpenPGP) and bob (SSH) are the legitimate,
pinned signers; mallory (OpenPGP) and eve (SSH) are valid keys nobody pinned. Commits are made
with ``git commit -S`` exactly as a user would, with git's global and system config shut out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.errors import VerifyError
from reconciler.gitrepo import GitRepo
from reconciler.gitverify import (
    Signer,
    Verified,
    key_fingerprint,
    read_pins,
    verify_range,
)

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("git", "gpg", "ssh-keygen")),
    reason="needs git, gpg and ssh-keygen",
)

SIGNERS = (
    Signer("alice", "openpgp", "keys/alice.asc"),
    Signer("bob", "ssh", "keys/bob.pub"),
)


@dataclass(frozen=True)
class Keys:
    gnupghome: Path
    alice_fpr: str
    alice_asc: str
    mallory_fpr: str
    mallory_asc: str
    bob_key: Path  # private key; the public one is next to it (.pub)
    bob_pub: str
    eve_key: Path
    eve_pub: str

    def pins(self) -> set[str]:
        return {self.alice_fpr, key_fingerprint("ssh", self.bob_pub)}


def _run(args: list[str], *, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    return subprocess.run(
        args,
        input=stdin,
        env={**os.environ, **(env or {})},
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _gpg_key(home: Path, uid: str) -> tuple[str, str]:
    gpg = ["gpg", "--homedir", str(home), "--batch"]
    _run([*gpg, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"])
    colons = _run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys", uid])
    fpr = next(ln.split(":")[9] for ln in colons.splitlines() if ln.startswith("fpr:"))
    asc = _run(["gpg", "--homedir", str(home), "--armor", "--export", fpr])
    return fpr, asc


def _ssh_key(path: Path, comment: str) -> str:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    base = tmp_path_factory.mktemp("keys")
    home = base / "gnupg"
    home.mkdir(mode=0o700)
    alice_fpr, alice_asc = _gpg_key(home, "Alice <alice@example.org>")
    mallory_fpr, mallory_asc = _gpg_key(home, "Mallory <mallory@example.org>")
    bob_pub = _ssh_key(base / "bob", "bob@example.org")
    eve_pub = _ssh_key(base / "eve", "eve@example.org")
    yield Keys(
        gnupghome=home,
        alice_fpr=alice_fpr,
        alice_asc=alice_asc,
        mallory_fpr=mallory_fpr,
        mallory_asc=mallory_asc,
        bob_key=base / "bob",
        bob_pub=bob_pub,
        eve_key=base / "eve",
        eve_pub=eve_pub,
    )
    # Key generation and signing started a gpg-agent for this home; stop exactly that one.
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


class Repo:
    """A git repository in a temporary directory, committed to as the named signers."""

    def __init__(self, path: Path, keys: Keys) -> None:
        self.path = path
        self.keys = keys
        _run(["git", "init", "-q", "-b", "main", str(path)], env=self._env())
        self.repo = GitRepo.open(path)

    def _env(self) -> dict[str, str]:
        return {
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GNUPGHOME": str(self.keys.gnupghome),
        }

    def git(self, *args: str) -> str:
        base = ["git", "-C", str(self.path), "-c", "user.name=T", "-c", "user.email=t@example.org"]
        return _run([*base, *args], env=self._env()).strip()

    def _sign_opts(self, signer: str | None) -> list[str]:
        k = self.keys
        if signer is None:
            return ["-c", "commit.gpgsign=false"]
        if signer in ("alice", "mallory"):
            fpr = k.alice_fpr if signer == "alice" else k.mallory_fpr
            return ["-c", "gpg.program=gpg", "-c", f"user.signingkey={fpr}"]
        key = k.bob_key if signer == "bob" else k.eve_key
        return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"]

    def commit(self, message: str, signer: str | None, files: dict[str, str] | None = None) -> str:
        """Write ``files`` (or touch a file named after the message), commit, return the hash."""
        for name, text in (files or {message.replace(" ", "_"): message}).items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_text(text)
        self.git("add", "-A")
        sign = ["-S"] if signer else []
        self.git(*self._sign_opts(signer), "commit", "-q", *sign, "-m", message)
        return self.git("rev-parse", "HEAD")

    def merge(self, branch: str, message: str, signer: str) -> str:
        self.git(*self._sign_opts(signer), "merge", "-q", "--no-ff", "-S", "-m", message, branch)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path, keys: Keys) -> Repo:
    r = Repo(tmp_path / "repo", keys)
    r.commit(
        "add signing keys",
        "alice",
        {"keys/alice.asc": keys.alice_asc, "keys/bob.pub": keys.bob_pub},
    )
    return r


def verify(r: Repo, base: str | None, target: str, **kw: bool) -> Verified:
    return verify_range(r.repo, base, target, SIGNERS, r.keys.pins(), **kw)


# -- verify_range -----------------------------------------------------------------------------


def test_range_of_gpg_and_ssh_signed_commits_passes_oldest_first(repo: Repo) -> None:
    base = repo.git("rev-parse", "HEAD")
    c1 = repo.commit("one", "alice")
    c2 = repo.commit("two", "bob")
    c3 = repo.commit("three", "alice")
    result = verify(repo, base, c3)
    assert result.commits == (c1, c2, c3)
    assert result.signers == {c1: "alice", c2: "bob", c3: "alice"}


def test_first_run_verifies_only_the_target(repo: Repo) -> None:
    repo.commit("unsigned but older", None)
    tip = repo.commit("tip", "bob")
    assert verify(repo, None, tip) == Verified((tip,), {tip: "bob"})
    assert verify(repo, None, "HEAD").commits == (tip,)  # anything rev-parse accepts


def test_unsigned_commit_in_the_middle_is_refused_and_named(repo: Repo) -> None:
    base = repo.git("rev-parse", "HEAD")
    repo.commit("signed", "alice")
    bad = repo.commit("sneak in a rule", None)
    tip = repo.commit("signed tip", "bob")
    with pytest.raises(VerifyError) as exc:
        verify(repo, base, tip)
    assert exc.value.commit == bad
    assert f"commit {bad[:12]} (sneak in a rule) is not signed" in exc.value.message
    assert "sign it" in exc.value.message
    assert exc.value.address == "source"


def test_valid_key_in_the_repo_but_not_pinned_is_refused(repo: Repo, keys: Keys) -> None:
    base = repo.git("rev-parse", "HEAD")
    tip = repo.commit("mallory's change", "mallory", {"keys/mallory.asc": keys.mallory_asc})
    signers = (*SIGNERS, Signer("mallory", "openpgp", "keys/mallory.asc"))
    with pytest.raises(VerifyError) as exc:
        verify_range(repo.repo, base, tip, signers, keys.pins())
    msg = exc.value.message
    assert exc.value.commit == tip
    assert "not trusted on this host" in msg
    assert keys.mallory_fpr in msg and "not pinned" in msg


def test_unpinned_ssh_key_is_refused(repo: Repo, keys: Keys) -> None:
    base = repo.git("rev-parse", "HEAD")
    tip = repo.commit("eve's change", "eve")
    with pytest.raises(VerifyError) as exc:
        verify(repo, base, tip)
    assert exc.value.commit == tip
    assert key_fingerprint("ssh", keys.eve_pub) in exc.value.message
    assert "not trusted on this host" in exc.value.message


def test_key_swapped_in_by_an_attacker_is_refused(repo: Repo, keys: Keys) -> None:
    """The attacker replaces alice's key file with their own and signs with it: the new key is
    read from the target tree but is not pinned, and alice's pinned key did not sign."""
    base = repo.git("rev-parse", "HEAD")
    tip = repo.commit("rotate alice's key", "mallory", {"keys/alice.asc": keys.mallory_asc})
    with pytest.raises(VerifyError) as exc:
        verify(repo, base, tip)
    msg = exc.value.message
    assert exc.value.commit == tip
    assert "not trusted on this host" in msg
    assert f"keys/alice.asc at {tip[:12]} has fingerprint {keys.mallory_fpr}" in msg


def test_key_removed_in_the_range_still_verifies_earlier_commits(repo: Repo) -> None:
    base = repo.git("rev-parse", "HEAD")
    c1 = repo.commit("alice signs", "alice")
    repo.git("rm", "-q", "keys/alice.asc")
    repo.git(*repo._sign_opts("bob"), "commit", "-q", "-S", "-m", "retire alice's key")
    c2 = repo.git("rev-parse", "HEAD")
    assert verify(repo, base, c2).signers == {c1: "alice", c2: "bob"}


def test_no_pinned_key_at_all_is_refused_for_the_range(repo: Repo) -> None:
    tip = repo.git("rev-parse", "HEAD")
    with pytest.raises(VerifyError) as exc:
        verify_range(repo.repo, None, tip, SIGNERS, {"0" * 40})
    assert exc.value.commit is None
    assert "none of the signers' keys is pinned" in exc.value.message
    assert "keys/alice.asc" in exc.value.message and "keys/bob.pub" in exc.value.message


def test_force_push_is_refused_unless_allowed(repo: Repo) -> None:
    root = repo.git("rev-parse", "HEAD")
    applied = repo.commit("applied", "alice")
    repo.git("reset", "-q", "--hard", root)
    repo.commit("unsigned rewritten history", None)
    tip = repo.commit("force-pushed tip", "bob")
    with pytest.raises(VerifyError) as exc:
        verify(repo, applied, tip)
    msg = exc.value.message
    assert exc.value.commit == tip
    assert f"{tip[:12]} (force-pushed tip) is not a descendant" in msg
    assert applied[:12] in msg
    assert "refusing a rewind; pass --allow-rewind to accept it" in msg
    assert verify(repo, applied, tip, allow_rewind=True) == Verified((tip,), {tip: "bob"})


def test_base_missing_from_the_repository_is_a_rewind(repo: Repo) -> None:
    tip = repo.commit("tip", "alice")
    gone = "0123456789abcdef" * 2 + "01234567"
    with pytest.raises(VerifyError) as exc:
        verify(repo, gone, tip)
    assert "no longer in the repository" in exc.value.message
    assert "--allow-rewind" in exc.value.message
    assert verify(repo, gone, tip, allow_rewind=True).commits == (tip,)


def test_base_equal_to_target_has_nothing_to_verify(repo: Repo) -> None:
    tip = repo.commit("unsigned", None)  # verified (or accepted) when it was applied
    assert verify(repo, tip, tip) == Verified((), {})


def test_merge_with_unsigned_commit_on_the_side_branch_is_refused(repo: Repo) -> None:
    base = repo.git("rev-parse", "HEAD")
    repo.git("checkout", "-q", "-b", "side")
    side = repo.commit("side change", None)
    repo.git("checkout", "-q", "main")
    repo.commit("main change", "alice")
    merge = repo.merge("side", "merge side", "bob")
    with pytest.raises(VerifyError) as exc:
        verify(repo, base, merge)
    assert exc.value.commit == side
    assert f"{side[:12]} (side change) is not signed" in exc.value.message


def test_merge_of_signed_branches_lists_every_commit(repo: Repo) -> None:
    base = repo.git("rev-parse", "HEAD")
    repo.git("checkout", "-q", "-b", "side")
    side = repo.commit("side change", "bob")
    repo.git("checkout", "-q", "main")
    main = repo.commit("main change", "alice")
    merge = repo.merge("side", "merge side", "alice")
    result = verify(repo, base, merge)
    assert set(result.commits) == {side, main, merge}
    assert result.commits[-1] == merge
    assert result.signers[side] == "bob"


def _write_commit(r: Repo, raw: str) -> str:
    """Store ``raw`` as a commit object as is (no re-signing) and return its hash."""
    args = ["git", "-C", str(r.path), "hash-object", "-t", "commit", "-w", "--stdin"]
    return _run(args, stdin=raw).strip()


def _tamper(r: Repo, sha: str) -> str:
    """A new commit object: ``sha`` with its message changed and its signature kept."""
    raw = r.git("cat-file", "commit", sha) + "\n"
    forged = raw.replace("\n\nlegit", "\n\nevil", 1)
    assert forged != raw and "gpgsig" in forged
    return _write_commit(r, forged)


@pytest.mark.parametrize("signer", ["alice", "bob"])
def test_tampered_commit_has_a_bad_signature(repo: Repo, signer: str) -> None:
    sha = repo.commit("legit change", signer)
    assert verify(repo, None, sha).signers == {sha: signer}
    forged = _tamper(repo, sha)
    with pytest.raises(VerifyError) as exc:
        verify(repo, None, forged)
    assert exc.value.commit == forged
    assert f"commit {forged[:12]} (evil change) has a bad signature" in exc.value.message


def test_garbage_signature_is_refused_without_a_traceback(repo: Repo) -> None:
    sha = repo.commit("legit change", "alice")
    raw = repo.git("cat-file", "commit", sha) + "\n"
    head, _, body = raw.partition("\n\n")
    lines = head.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("gpgsig "))
    lines[start + 2] = " AAAAnot-a-signature"
    forged = _write_commit(repo, "\n".join(lines) + "\n\n" + body)
    with pytest.raises(VerifyError) as exc:
        verify(repo, None, forged)
    assert exc.value.commit == forged


def test_revoked_key_is_refused(repo: Repo, keys: Keys) -> None:
    """carol signs, then her key is revoked and the revoked key committed: her earlier commit
    in the range no longer verifies (gpg reports REVKEYSIG)."""
    home = str(keys.gnupghome)
    carol_fpr, _ = _gpg_key(keys.gnupghome, "Carol <carol@example.org>")
    base = repo.git("rev-parse", "HEAD")
    opts = ["-c", "gpg.program=gpg", "-c", f"user.signingkey={carol_fpr}"]
    (repo.path / "carol").write_text("carol")
    repo.git("add", "-A")
    repo.git(*opts, "commit", "-q", "-S", "-m", "carol's change")
    signed = repo.git("rev-parse", "HEAD")
    # gpg stores a revocation certificate at key generation; its first line is defused with a
    # leading ':' so that it cannot be imported by accident.
    cert = (keys.gnupghome / "openpgp-revocs.d" / f"{carol_fpr}.rev").read_text()
    cert = cert.replace(":-----BEGIN PGP PUBLIC KEY BLOCK", "-----BEGIN PGP PUBLIC KEY BLOCK")
    _run(["gpg", "--homedir", home, "--batch", "--import"], stdin=cert)
    revoked = _run(["gpg", "--homedir", home, "--armor", "--export", carol_fpr])
    tip = repo.commit("publish carol's revoked key", "alice", {"keys/carol.asc": revoked})
    signers = (*SIGNERS, Signer("carol", "openpgp", "keys/carol.asc"))
    with pytest.raises(VerifyError) as exc:
        verify_range(repo.repo, base, tip, signers, keys.pins() | {carol_fpr})
    assert exc.value.commit == signed
    assert "(carol's change) is signed by a revoked key" in exc.value.message


def test_two_signature_headers_are_refused(repo: Repo) -> None:
    sha = repo.commit("legit change", "alice")
    raw = repo.git("cat-file", "commit", sha) + "\n"
    head, _, body = raw.partition("\n\n")
    sig = head[head.index("gpgsig ") :]
    forged = _write_commit(repo, head + "\n" + sig + "\n\n" + body)
    with pytest.raises(VerifyError, match="more than one signature header") as exc:
        verify(repo, None, forged)
    assert exc.value.commit == forged


def test_key_file_that_is_not_a_key_is_skipped_and_reported(repo: Repo) -> None:
    base = repo.git("rev-parse", "HEAD")
    tip = repo.commit("break bob's key", "alice", {"keys/bob.pub": "hello\n"})
    # alice's key still verifies; bob's broken file in the target is not fatal by itself.
    assert verify(repo, base, tip).signers == {tip: "alice"}
    junk = (Signer("alice", "openpgp", "keys/bob.pub"),)
    with pytest.raises(VerifyError) as exc:
        verify_range(repo.repo, None, tip, junk, repo.keys.pins())
    assert "not an OpenPGP public key" in exc.value.message


def test_unknown_target_is_an_error(repo: Repo) -> None:
    with pytest.raises(VerifyError, match="not a commit"):
        verify(repo, None, "no-such-branch")


# -- read_pins --------------------------------------------------------------------------------


def test_read_pins_normalises_and_skips_comments(tmp_path: Path, keys: Keys) -> None:
    ssh_fpr = key_fingerprint("ssh", keys.bob_pub)
    spaced = " ".join(keys.alice_fpr.lower()[i : i + 4] for i in range(0, 40, 4))
    pins = tmp_path / "pins"
    pins.write_text(f"# trusted signers\n\n{spaced}  # alice\n{ssh_fpr}\n")
    assert read_pins(pins) == {keys.alice_fpr, ssh_fpr}


def test_read_pins_bad_line_names_file_and_line(tmp_path: Path) -> None:
    pins = tmp_path / "pins"
    pins.write_text("# ok\n" + "A" * 40 + "\n256 SHA256:abc bob (ED25519)\n")
    with pytest.raises(VerifyError) as exc:
        read_pins(pins)
    assert f"{pins}:3:" in exc.value.message
    assert "not a key fingerprint" in exc.value.message


def test_read_pins_missing_file(tmp_path: Path) -> None:
    pins = tmp_path / "nope"
    with pytest.raises(VerifyError) as exc:
        read_pins(pins)
    assert f"no keys are pinned at {pins}" in exc.value.message
    assert "commit verification is on" in exc.value.message


# -- key_fingerprint --------------------------------------------------------------------------


def test_key_fingerprint_matches_gpg_and_ssh_keygen(keys: Keys) -> None:
    assert key_fingerprint("openpgp", keys.alice_asc) == keys.alice_fpr.upper()
    printed = _run(["ssh-keygen", "-lf", str(keys.bob_key.with_suffix(".pub"))]).split()[1]
    assert key_fingerprint("ssh", keys.bob_pub) == printed


@pytest.mark.parametrize(
    ("kind", "text", "needle"),
    [
        ("openpgp", "hello\n", "not an OpenPGP public key"),
        ("openpgp", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxx\n", "not a usable OpenPGP"),
        ("ssh", "ssh-ed25519 notbase64!\n", "not base64"),
        ("ssh", "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIA==\n", "does not match type"),
        ("ssh", "-----BEGIN OPENSSH PRIVATE KEY-----\n", "private SSH key"),
        ("x509", "whatever", "unknown key kind"),
    ],
)
def test_key_fingerprint_rejects_non_keys(kind: str, text: str, needle: str) -> None:
    with pytest.raises(VerifyError, match=needle):
        key_fingerprint(kind, text)


def test_missing_gpg_is_an_error_naming_the_tool(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a real PATH without gpg on it
    with pytest.raises(VerifyError, match=r"gpg is not installed.*install gpg"):
        key_fingerprint("openpgp", keys.alice_asc)
