"""Verification of git commit signatures before a configuration is applied.

Threat model: whoever can push to the configuration repository must not be able to get a
change applied unless it is signed by a key the *host* trusts. The public keys themselves live
in the repository (so rotating them is a reviewed commit), but a key is only trusted when its
fingerprint is pinned in a file on the host, which a push cannot change. A key an attacker adds
or swaps in is therefore read, found unpinned and skipped.

Signatures are checked with ``gpg`` (OpenPGP) and ``ssh-keygen -Y`` (SSH) directly, never with
``git verify-commit``: that would consult the user's keyring, ``gpg.conf`` and git config, any
of which may trust more than the pins do. gpg runs in a throwaway home holding only the pinned
keys.

Every commit between the last applied commit and the target is checked, not just the tip: a
signed tip on top of an unsigned commit would otherwise smuggle the unsigned change in. A target
that does not descend from the last applied commit (a force-push) is refused unless the operator
accepts the rewind explicitly.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler import runner
from reconciler.errors import CommandError, CommandNotFound, CommandTimeout, VerifyError
from reconciler.gitrepo import GitError, GitRepo
from reconciler.gitsource import commit_hash
from reconciler.rewind import check_rewind_resolved, describe_commit, raw_commit_bytes

OPENPGP = "openpgp"
SSH = "ssh"
KINDS = (OPENPGP, SSH)

_PGP_SIG = b"-----BEGIN PGP SIGNATURE-----"
_SSH_SIG = b"-----BEGIN SSH SIGNATURE-----"
# The headers git strips from a commit to get the signed payload (both hash algorithms, as git
# itself does in parse_buffer_signed_by_header).
_SIG_HEADERS = (b"gpgsig", b"gpgsig-sha256")
# Signer names become SSH principals in an allowed_signers file, where commas, wildcards,
# quotes and spaces have meaning; keep names to a plain token.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*\Z")
_HEX40_RE = re.compile(r"[0-9A-Fa-f]{40}\Z")
_SSH_FPR_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}\Z")
# A key file bigger than this is not a public key; do not feed it to gpg.
_MAX_KEY_BYTES = 1 << 20
_TIMEOUT = 60.0
"""Seconds one gpg or ssh-keygen call may take: they check one signature or read one key,
which takes well under a second; a minute means it is stuck (e.g. on an agent)."""
_PACKAGES = {"gpg": "gpg (Debian package gpg)", "ssh-keygen": "openssh-client"}


@dataclass(frozen=True)
class Signer:
    """Someone allowed to sign commits: ``key_type`` is "openpgp" or "ssh"; ``key_path`` is the
    public key file's path inside the repository (e.g. "keys/alice.asc", "keys/bob.pub")."""

    name: str
    key_type: str
    key_path: str


@dataclass(frozen=True)
class Verified:
    """The outcome of a successful verify_range: the full hashes checked, oldest first, and
    which signer signed each."""

    commits: tuple[str, ...]
    signers: dict[str, str]


class _ToolMissing(VerifyError):
    """gpg or ssh-keygen is not installed: a problem with the host, not with any key."""


@dataclass(frozen=True)
class _Key:
    signer: str
    key_type: str
    fingerprint: str
    text: str


# -- pins -------------------------------------------------------------------------------------


def read_pins(path: Path) -> set[str]:
    """Return the fingerprints pinned on the host in ``path``.

    One fingerprint per line; ``#`` starts a comment; blank lines are ignored. OpenPGP
    fingerprints are 40 hex digits (any case, spaces allowed) and come back upper-case without
    spaces; SSH fingerprints are ``SHA256:<base64>`` as ``ssh-keygen -lf`` prints them and come
    back unchanged. Raises VerifyError naming the file and line for anything else, and a
    VerifyError saying no keys are pinned when the file does not exist or cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VerifyError(
            f"commit verification is on but no keys are pinned at {path}: create it with the "
            "fingerprint of each trusted signing key, one per line (gpg --with-colons "
            "--show-keys KEY.asc for OpenPGP, ssh-keygen -lf KEY.pub for SSH)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VerifyError(f"cannot read the pinned key fingerprints at {path}: {exc}") from None
    pins: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        fpr = _normalise_pin(item)
        if fpr is None:
            raise VerifyError(
                f"{path}:{lineno}: {item!r} is not a key fingerprint: expected 40 hex digits "
                "(OpenPGP) or SHA256:<base64> (SSH, the second field of ssh-keygen -lf); fix or "
                "remove the line"
            )
        pins.add(fpr)
    return pins


def _normalise_pin(item: str) -> str | None:
    if item.startswith("SHA256:"):
        # Base64 is case-sensitive, so SSH fingerprints are kept exactly as written.
        return item if _SSH_FPR_RE.match(item) and _b64_len(item[7:]) == 32 else None
    compact = item.replace(" ", "")
    return compact.upper() if _HEX40_RE.match(compact) else None


def _b64_len(text: str) -> int:
    try:
        return len(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
    except binascii.Error:
        return -1


# -- keys -------------------------------------------------------------------------------------


def key_fingerprint(kind: str, key_text: str) -> str:
    """Return the fingerprint of one public key: for "openpgp" the primary key's fingerprint in
    upper-case hex (as ``gpg --with-colons`` prints it), for "ssh" ``SHA256:<base64>`` (as
    ``ssh-keygen -lf`` prints it). Raises VerifyError when the text is not exactly one public
    key of that kind, or when gpg is needed and missing."""
    if kind == SSH:
        return _ssh_key(key_text)[0]
    if kind == OPENPGP:
        with tempfile.TemporaryDirectory(prefix="reconciler-gpg-", ignore_cleanup_errors=True) as d:
            home = _gpg_home(Path(d))
            try:
                return _openpgp_fingerprint(key_text, home)
            finally:
                _stop_gpg(home)
    raise VerifyError(f"unknown key kind {kind!r}: expected one of {', '.join(KINDS)}")


def _ssh_key(text: str) -> tuple[str, str, str]:
    """(fingerprint, key type, base64 blob) of the single SSH public key in ``text``."""
    if "PRIVATE KEY" in text:
        raise VerifyError("this is a private SSH key; commit only the public key (the .pub file)")
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1:
        raise VerifyError(f"expected exactly one SSH public key line, found {len(lines)}")
    fields = lines[0].split()
    if len(fields) < 2:
        raise VerifyError("not an SSH public key: expected '<type> <base64> [comment]'")
    keytype, b64 = fields[0], fields[1]
    try:
        blob = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise VerifyError("not an SSH public key: the key data is not base64") from None
    # The blob starts with the key type as an SSH string; checking it catches a mangled key and
    # a type field that lies about the key.
    inner = _ssh_string(blob, 0)
    if inner is None or inner[0] != keytype.encode():
        raise VerifyError(f"not an SSH public key: the key data does not match type {keytype!r}")
    if "-cert-" in keytype:
        raise VerifyError("SSH certificates are not supported as signing keys; use the plain key")
    return _ssh_fingerprint(blob), keytype, b64


def _ssh_string(data: bytes, offset: int) -> tuple[bytes, int] | None:
    """The SSH wire-format string at ``offset`` and the offset after it, or None if truncated."""
    if offset + 4 > len(data):
        return None
    size = int.from_bytes(data[offset : offset + 4], "big")
    end = offset + 4 + size
    if end > len(data):
        return None
    return data[offset + 4 : end], end


def _ssh_fingerprint(blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def _openpgp_fingerprint(text: str, home: Path) -> str:
    """Primary fingerprint of the single OpenPGP public key in ``text``; nothing is imported."""
    if "PRIVATE KEY BLOCK" in text:
        raise VerifyError("this is a secret OpenPGP key; commit only the public key (--export)")
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in text:
        raise VerifyError("not an OpenPGP public key: no armored PUBLIC KEY BLOCK")
    proc = _signature_tool(
        "gpg",
        ["--batch", "--with-colons", "--import-options", "show-only", "--import"],
        what="read an OpenPGP key",
        commit=None,
        env=_gpg_env(home),
        stdin=text.encode(),
    )
    records = [ln.split(":") for ln in proc.stdout.decode(errors="replace").splitlines()]
    primaries = [i for i, r in enumerate(records) if r[0] == "pub"]
    if proc.returncode != 0 or not primaries:
        raise VerifyError(f"not a usable OpenPGP public key: {_last_line(proc.stderr)}")
    if len(primaries) > 1:
        raise VerifyError(f"holds {len(primaries)} OpenPGP keys; keep one key per file")
    # The first fpr record after the pub record is the primary key's (later ones are subkeys').
    for rec in records[primaries[0] + 1 :]:
        if rec[0] == "fpr" and len(rec) > 9 and _HEX40_RE.match(rec[9]):
            return rec[9].upper()
    raise VerifyError("not a usable OpenPGP public key: gpg printed no fingerprint for it")


def _load_keys(
    repo: GitRepo, commits: Sequence[str], signers: Sequence[Signer], pins: set[str]
) -> tuple[list[_Key], list[str]]:
    """The pinned keys named by ``signers`` in the trees of ``commits``, and notes on the keys
    that were skipped (missing, not a key, not pinned) for error messages."""
    trusted: dict[tuple[str, str, str], _Key] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="reconciler-gpg-", ignore_cleanup_errors=True) as d:
        home = _gpg_home(Path(d))
        try:
            for signer in signers:
                found = False
                for sha in commits:
                    text, problem = _read_blob(repo, sha, signer.key_path)
                    where = f"{signer.name}'s key {signer.key_path} at {sha[:12]}"
                    if problem == "missing":
                        continue
                    found = True
                    if text is None:
                        notes.append(f"{where}: {problem}")
                        continue
                    try:
                        if signer.key_type == SSH:
                            fpr = _ssh_key(text)[0]
                        else:
                            fpr = _openpgp_fingerprint(text, home)
                    except _ToolMissing:
                        raise
                    except VerifyError as exc:
                        notes.append(f"{where}: {exc.message}")
                        continue
                    if fpr not in pins:
                        note = f"{where} has fingerprint {fpr}, which is not pinned on this host"
                        if note not in notes:
                            notes.append(note)
                        continue
                    trusted.setdefault(
                        (signer.key_type, fpr, text), _Key(signer.name, signer.key_type, fpr, text)
                    )
                if not found:
                    notes.append(
                        f"{signer.name}'s key {signer.key_path} is missing from "
                        + " and ".join(sha[:12] for sha in commits)
                    )
        finally:
            _stop_gpg(home)
    return list(trusted.values()), _dedupe(notes)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _read_blob(repo: GitRepo, sha: str, path: str) -> tuple[str | None, str | None]:
    """(text, None) for the file at ``path`` in commit ``sha``, or (None, problem)."""
    try:
        item = repo.entry(sha, path)
    except GitError as exc:
        return None, f"cannot be read ({_last_line(exc.stderr.encode())})"
    if item is None:
        return None, "missing"
    if item.type != "blob":
        return None, "is not a file"
    if (item.size or 0) > _MAX_KEY_BYTES:
        return None, f"is {item.size} bytes, too large for a public key"
    data = repo.blob(item.sha)
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "is not a text file (commit the armored/ASCII form of the key)"


# -- subprocesses -----------------------------------------------------------------------------


def _signature_tool(
    tool: str,
    args: list[str],
    *,
    what: str,
    commit: str | None,
    env: dict[str, str],
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run gpg or ssh-keygen with at most _TIMEOUT seconds; the exit status is the caller's
    to judge. A tool that is missing (_ToolMissing, naming its package), cannot start or runs
    too long is a VerifyError about ``commit``."""
    try:
        return runner.run([tool, *args], input=stdin, env=env, timeout=_TIMEOUT)
    except CommandNotFound:
        raise _ToolMissing(
            f"{tool} is not installed but is needed to {what}; install {_PACKAGES[tool]}",
            commit=commit,
        ) from None
    except CommandTimeout:
        raise VerifyError(
            f"{tool} did not finish within {_TIMEOUT:.0f} s while trying to {what}", commit=commit
        ) from None
    except CommandError as e:
        raise VerifyError(f"{e.message} (needed to {what})", commit=commit) from None


def _base_env() -> dict[str, str]:
    # A minimal environment: LC_ALL=C keeps the output parseable, and nothing of the user's
    # (GNUPGHOME, agent sockets, SSH_AUTH_SOCK) can leak into the checks.
    return {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}


def _gpg_env(home: Path) -> dict[str, str]:
    return {**_base_env(), "GNUPGHOME": str(home)}


def _gpg_home(tmp: Path) -> Path:
    home = tmp / "gnupg"
    home.mkdir(mode=0o700)
    home.chmod(0o700)  # gpg warns about (and may refuse) a home others can read
    return home


def _stop_gpg(home: Path) -> None:
    """Stop any agent gpg started in the throwaway ``home`` so no process outlives it."""
    if any(p.name.startswith("S.") for p in home.iterdir()):
        # Best effort: the directory is deleted next, which also makes an agent exit.
        with contextlib.suppress(CommandError):
            runner.run(
                ["gpgconf", "--homedir", str(home), "--kill", "all"],
                env=_gpg_env(home),
                timeout=_TIMEOUT,
            )


def _last_line(stderr: bytes) -> str:
    """The tool's last diagnostic; gpg ends with untagged hint lines, so its own "gpg:" lines
    are preferred."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    tagged = [ln.removeprefix("gpg: ") for ln in lines if ln.startswith("gpg: ")]
    return (tagged or lines or ["no diagnostic"])[-1]


# -- commits ----------------------------------------------------------------------------------


def _split_signature(raw: bytes) -> tuple[bytes, bytes | None]:
    """(signed payload, signature or None): the payload is the commit object without its
    signature headers and their space-indented continuation lines, as git signs it."""
    end = raw.find(b"\n\n")
    head, rest = (raw[: end + 1], raw[end + 1 :]) if end >= 0 else (raw, b"")
    kept: list[bytes] = []
    sigs: list[list[bytes]] = []
    in_sig = False
    for line in head.split(b"\n")[:-1] if head.endswith(b"\n") else head.split(b"\n"):
        if in_sig and line.startswith(b" "):
            sigs[-1].append(line[1:])
            continue
        name = line.split(b" ", 1)[0]
        in_sig = name in _SIG_HEADERS
        if in_sig:
            if name == b"gpgsig":
                sigs.append([line[len(name) + 1 :]])
            else:
                sigs.append([])  # stripped from the payload, but not ours to check (SHA-256)
            continue
        kept.append(line)
    payload = b"".join(ln + b"\n" for ln in kept) + rest
    ours = [s for s in sigs if s]
    if len(ours) > 1:
        # Two gpgsig headers is not something git writes; refuse rather than pick one.
        return payload, b""
    return payload, (b"\n".join(ours[0]) + b"\n") if ours else None


# -- verify -----------------------------------------------------------------------------------


def verify_range(
    repo: GitRepo,
    base: str | None,
    target: str,
    signers: Sequence[Signer],
    pins: set[str],
    *,
    allow_rewind: bool = False,
) -> Verified:
    """Verify that every commit from ``base`` (the last applied commit, None on the first run)
    up to ``target`` is signed by a signer whose key is pinned on the host.

    Returns the commits checked (full hashes, oldest first, ``base..target`` including merged
    side branches; only ``target`` when ``base`` is None or a rewind is allowed; nothing when
    ``base`` is ``target``) and who signed each. Keys are read from the trees of ``target`` and
    ``base``; a key whose fingerprint is not in ``pins`` is never trusted. Raises VerifyError
    naming the first offending commit (unsigned, bad signature, untrusted or expired/revoked
    key), or, when ``target`` does not descend from ``base``, refusing the rewind unless
    ``allow_rewind``. Never imports into or reads the user's keyring or git config.
    """
    for signer in signers:
        if signer.key_type not in KINDS:
            raise VerifyError(
                f"signer {signer.name!r} has unknown key kind {signer.key_type!r}: expected one of "
                f"{', '.join(KINDS)}"
            )
        if not _NAME_RE.match(signer.name):
            raise VerifyError(
                f"signer name {signer.name!r} is not usable: use letters, digits and . _ @ + -"
            )

    target_sha = commit_hash(repo, target)
    if target_sha is None:
        raise VerifyError(f"cannot verify {target!r}: it is not a commit in the repository")

    base_sha = commit_hash(repo, base) if base is not None else None
    if base is not None and base_sha == target_sha:
        return Verified((), {})  # verified when it was applied; nothing new to check

    if base is None:
        todo = [target_sha]
    elif check_rewind_resolved(repo, base, base_sha, target_sha, allow_rewind):
        assert base_sha is not None  # a descendant of base: base is in the repository
        listing = repo.git("rev-list", "--topo-order", "--reverse", f"{base_sha}..{target_sha}")
        todo = listing.split()
    else:
        # The operator accepted the rewind: what is applied next is the target's tree, so the
        # target is what must be signed; the discarded history is no longer relevant.
        todo = [target_sha]

    # Keys come from the target's tree (so a key added in this range can sign) and the base's
    # (so a key removed or swapped in this range still counts for the commits it signed); the
    # pins decide which of them are trusted.
    trees = [target_sha] + ([base_sha] if base_sha is not None else [])
    keys, notes = _load_keys(repo, trees, signers, pins)
    if not keys:
        detail = "; ".join(notes) if notes else "no signers are configured"
        raise VerifyError(
            "none of the signers' keys is pinned on this host, so no commit can be verified "
            f"({detail}); pin the fingerprint of a trusted signer's key on the host, or fix the "
            "signers' key paths"
        )

    checker = _Checker(keys, notes)
    try:
        names: dict[str, str] = {}
        for sha in todo:
            names[sha] = checker.check(sha, raw_commit_bytes(repo, sha))
    finally:
        checker.close()
    return Verified(tuple(todo), names)


class _Checker:
    """Checks commits against one fixed set of trusted keys; owns the throwaway gpg home."""

    def __init__(self, keys: list[_Key], notes: list[str]) -> None:
        self.keys = keys
        self.notes = notes
        self._tmp = tempfile.TemporaryDirectory(
            prefix="reconciler-verify-", ignore_cleanup_errors=True
        )
        self.tmp = Path(self._tmp.name)
        self._home: Path | None = None
        self._allowed: Path | None = None

    def close(self) -> None:
        if self._home is not None:
            _stop_gpg(self._home)
        self._tmp.cleanup()

    def _fail(self, what: str, reason: str, advice: str, sha: str) -> VerifyError:
        trusted = ", ".join(f"{k.signer} ({k.fingerprint})" for k in self.keys)
        parts = [f"{what} {reason}", f"trusted on this host: {trusted}"]
        if self.notes:
            parts.append("skipped: " + "; ".join(self.notes))
        return VerifyError("; ".join(parts) + f"; {advice}", commit=sha)

    def check(self, sha: str, raw: bytes) -> str:
        """The name of the trusted signer of commit ``sha``, or VerifyError."""
        what = describe_commit(raw, sha)
        payload, sig = _split_signature(raw)
        if sig == b"":
            raise VerifyError(
                f"{what} has more than one signature header, which git never writes; do not "
                "apply it: find out who made it, then re-sign it with a trusted key",
                commit=sha,
            )
        if sig is None:
            raise VerifyError(
                f"{what} is not signed; every commit since the last applied one must be signed "
                "by a trusted key: sign it (git commit --amend -S, or git rebase -S for older "
                "commits) and push again",
                commit=sha,
            )
        if sig.startswith(_PGP_SIG):
            return self._check_gpg(sha, what, payload, sig)
        if sig.startswith(_SSH_SIG):
            return self._check_ssh(sha, what, payload, sig)
        raise VerifyError(
            f"{what} carries a signature of an unsupported kind (only OpenPGP and SSH "
            "signatures are verified); re-sign it with a trusted OpenPGP or SSH key",
            commit=sha,
        )

    # gpg ------------------------------------------------------------------------------------

    def _gpg_keyring(self, sha: str) -> Path:
        """The throwaway gpg home with every trusted OpenPGP key imported (made once)."""
        if self._home is None:
            home = _gpg_home(self.tmp)
            for i, key in enumerate(k for k in self.keys if k.key_type == OPENPGP):
                keyfile = self.tmp / f"key{i}.asc"
                keyfile.write_text(key.text, encoding="utf-8")
                proc = _signature_tool(
                    "gpg",
                    ["--batch", "--import", str(keyfile)],
                    what="verify OpenPGP-signed commits",
                    commit=sha,
                    env=_gpg_env(home),
                )
                if proc.returncode != 0:
                    raise VerifyError(
                        f"gpg could not import {key.signer}'s pinned key {key.fingerprint}: "
                        f"{_last_line(proc.stderr)}"
                    )
            self._home = home
        return self._home

    def _check_gpg(self, sha: str, what: str, payload: bytes, sig: bytes) -> str:
        """The signer of commit ``sha`` whose OpenPGP signature ``sig`` covers ``payload``.

        gpg checks it in the throwaway home holding only the pinned keys (never a keyserver),
        and its ``--status-fd`` lines, not its exit code, decide. Returns the signer's name
        only for exactly one good, valid signature by a trusted primary key; anything else
        (bad, expired, revoked, unknown or untrusted key, malformed) is a VerifyError saying
        what to do, via :meth:`_fail`.
        """
        pgp = {k.fingerprint: k.signer for k in self.keys if k.key_type == OPENPGP}
        if not pgp:
            raise self._fail(
                what,
                "is signed with OpenPGP, but no OpenPGP key is trusted on this host",
                "sign it with a trusted key, or pin the signer's key on the host",
                sha,
            )
        home = self._gpg_keyring(sha)
        sigfile, datafile = self.tmp / "commit.sig", self.tmp / "commit.payload"
        sigfile.write_bytes(sig)
        datafile.write_bytes(payload)
        # --no-auto-key-retrieve: an unknown key must fail here, never be fetched from a
        # keyserver (it would not be pinned anyway, but the lookup leaks and can hang).
        args = ["--batch", "--no-auto-key-retrieve", "--status-fd", "1", "--verify"]
        proc = _signature_tool(
            "gpg",
            [*args, str(sigfile), str(datafile)],
            what=f"verify the OpenPGP signature of {what}",
            commit=sha,
            env=_gpg_env(home),
        )
        status: dict[str, list[list[str]]] = {}
        for line in proc.stdout.decode(errors="replace").splitlines():
            if line.startswith("[GNUPG:] "):
                keyword, *args = line[9:].split()
                status.setdefault(keyword, []).append(args)

        def keyid(keyword: str) -> str:
            args = status[keyword][0]
            return args[0] if args else "?"

        resign = "re-sign it with a trusted key and push again"
        if "BADSIG" in status:
            raise self._fail(
                what,
                f"has a bad signature (key {keyid('BADSIG')}): the commit was changed after it "
                "was signed",
                "do not apply it; find out who changed it, then " + resign,
                sha,
            )
        if "EXPKEYSIG" in status:
            raise self._fail(
                what, f"is signed by an expired key ({keyid('EXPKEYSIG')})", resign, sha
            )
        if "REVKEYSIG" in status:
            raise self._fail(
                what, f"is signed by a revoked key ({keyid('REVKEYSIG')})", resign, sha
            )
        if "EXPSIG" in status:
            raise self._fail(what, "has an expired signature", resign, sha)
        if "NO_PUBKEY" in status or "ERRSIG" in status:
            errsig = status.get("ERRSIG", [[]])[0]
            # ERRSIG <keyid> <pkalgo> <hashalgo> <class> <time> <rc> [<fpr>]; rc 9: no key.
            if "NO_PUBKEY" in status or (len(errsig) > 5 and errsig[5] == "9"):
                if len(errsig) > 6:
                    who = errsig[6]
                else:
                    who = keyid("NO_PUBKEY" if "NO_PUBKEY" in status else "ERRSIG")
                raise self._fail(
                    what,
                    f"is signed by a key that is not trusted on this host (OpenPGP key {who})",
                    "sign it with a trusted key, or pin that key's fingerprint on the host if "
                    "you trust it",
                    sha,
                )
            raise self._fail(
                what,
                f"has a signature gpg cannot check ({_last_line(proc.stderr)})",
                resign,
                sha,
            )
        # PLAINTEXT means the "signature" carried its own data, i.e. it is not a detached
        # signature of this commit; exactly one signature is what git writes.
        good, valid = status.get("GOODSIG", []), status.get("VALIDSIG", [])
        if "NODATA" in status:
            raise self._fail(
                what, "has a malformed OpenPGP signature (no signature data)", resign, sha
            )
        if "PLAINTEXT" in status or len(good) != 1 or len(valid) != 1 or not valid[0]:
            raise self._fail(
                what,
                f"has a malformed OpenPGP signature ({_last_line(proc.stderr)})",
                resign,
                sha,
            )
        fields = valid[0]
        primary = (fields[9] if len(fields) > 9 else fields[0]).upper()
        if primary not in pgp:
            raise self._fail(
                what,
                f"is signed by a key that is not trusted on this host (OpenPGP key {primary})",
                "sign it with a trusted key, or pin that key's fingerprint if you trust it",
                sha,
            )
        return pgp[primary]

    # ssh ------------------------------------------------------------------------------------

    def _allowed_signers(self) -> Path:
        if self._allowed is None:
            lines = []
            for key in self.keys:
                if key.key_type == SSH:
                    _, keytype, b64 = _ssh_key(key.text)
                    lines.append(f'{key.signer} namespaces="git" {keytype} {b64}\n')
            self._allowed = self.tmp / "allowed_signers"
            self._allowed.write_text("".join(lines), encoding="utf-8")
        return self._allowed

    def _check_ssh(self, sha: str, what: str, payload: bytes, sig: bytes) -> str:
        resign = "re-sign it with a trusted key and push again"
        signing_key = _ssh_signature_key(sig)
        if signing_key is None:
            raise self._fail(what, "has a malformed SSH signature", resign, sha)
        ssh = {k.fingerprint for k in self.keys if k.key_type == SSH}
        if signing_key not in ssh:
            # Answer without running ssh-keygen: the key is not one we would accept anyway.
            raise self._fail(
                what,
                f"is signed by a key that is not trusted on this host (SSH key {signing_key})",
                "sign it with a trusted key, or pin that key's fingerprint on the host if you "
                "trust it",
                sha,
            )
        allowed = self._allowed_signers()
        sigfile = self.tmp / "commit.sshsig"
        sigfile.write_bytes(sig)
        env = _base_env()
        found = _signature_tool(
            "ssh-keygen",
            ["-Y", "find-principals", "-s", str(sigfile), "-f", str(allowed)],
            what=f"verify the SSH signature of {what}",
            commit=sha,
            env=env,
        )
        principals = found.stdout.decode(errors="replace").split()
        if found.returncode != 0 or not principals:
            raise self._fail(
                what,
                f"is signed by a key that is not trusted on this host (SSH key {signing_key})",
                "sign it with a trusted key, or pin that key's fingerprint if you trust it",
                sha,
            )
        principal = principals[0]
        proc = _signature_tool(
            "ssh-keygen",
            ["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", "git", "-s", str(sigfile)],
            what=f"verify the SSH signature of {what}",
            commit=sha,
            env=env,
            stdin=payload,
        )
        if proc.returncode != 0:
            raise self._fail(
                what,
                f"has a bad signature (SSH key {signing_key}: {_last_line(proc.stderr)}): the "
                "commit was changed after it was signed, or the signature is not for git",
                "do not apply it; find out who changed it, then " + resign,
                sha,
            )
        return principal


def _ssh_signature_key(sig: bytes) -> str | None:
    """Fingerprint of the public key inside an armored SSH signature (the SSHSIG format), or
    None when it is malformed. Used to name the signing key in messages and to refuse
    untrusted keys early; ssh-keygen still does the actual verification."""
    lines = sig.decode(errors="replace").strip().splitlines()
    if len(lines) < 3 or lines[-1].strip() != "-----END SSH SIGNATURE-----":
        return None
    try:
        blob = base64.b64decode("".join(ln.strip() for ln in lines[1:-1]), validate=True)
    except binascii.Error:
        return None
    # SSHSIG: magic "SSHSIG", uint32 version, string publickey, ...
    if not blob.startswith(b"SSHSIG") or len(blob) < 10:
        return None
    key = _ssh_string(blob, 10)
    return _ssh_fingerprint(key[0]) if key is not None and key[0] else None
