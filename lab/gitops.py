"""The lab's GitOps stage: the example fleet in a git remote that requires signed commits.

One host of the lab (in its own network namespace) runs ``reconcile`` the way its systemd
timer would: fetch the remote, verify every new commit's signature against the keys pinned
on the host, apply, record. The transcript shows, checking every exit code:

1. the first signed commit applied (``source.json`` records it);
2. a signed commit that adds a management CIDR, first as CI sees it (``--dry-run
   --all-hosts --against HEAD~1`` on the developer's clone: every host's plan, no host
   touched), then applied by the host's next run;
3. an unsigned commit that removes a CIDR: refused, naming the commit, and the kernel keeps
   the last applied set;
4. a force-push back to an older commit: refused as a rewind.

Everything lives in a temporary directory: a bare "remote", a clone to commit in, a
throwaway SSH signing key (``ssh-keygen``) and the host's pin file; git runs with the user's
own configuration switched off.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.gitverify import key_fingerprint

NEW_CIDR = "100.64.0.0/24"
VERIFY_BLOCK = """\
verify:                       # added by the lab: every commit must be signed by ops
  signers:
    - {name: ops, ssh: keys/ops.pub}
"""


class StageError(Exception):
    """A step did not behave as expected (the message says which)."""


class GitOpsStage:
    """The remote, the clone, the key and one host; ``say`` prints a transcript line."""

    def __init__(
        self, repo: Path, tmp: Path, host: str, prefix: Sequence[str], say: Callable[[str], None]
    ) -> None:
        self.repo = repo
        self.tmp = tmp
        self.host = host
        self.prefix = list(prefix)  # how to run a command on the host (its namespace)
        self.say = say
        self.origin = tmp / "origin.git"
        self.work = tmp / "work"
        self.ds = self.work / "desired-state"
        self.key = tmp / "ops"
        self.pins = tmp / "signers.pin"
        self.state = tmp / "host-state"
        # Commits are made as "lab"; the user's git configuration (signing settings,
        # hooks, aliases) must neither help nor get in the way.
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"},
            "GIT_AUTHOR_NAME": "lab",
            "GIT_AUTHOR_EMAIL": "lab@example.org",
            "GIT_COMMITTER_NAME": "lab",
            "GIT_COMMITTER_EMAIL": "lab@example.org",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
        }

    # ---------------------------------------------------------------------------- helpers
    def _command(
        self, argv: Sequence[str], *, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a lab command (git, ssh-keygen, one on the host) with the stage's environment;
        StageError when ``check`` and it fails."""
        proc = subprocess.run(
            list(argv), cwd=cwd, env=self.env, text=True, capture_output=True, check=False
        )
        if check and proc.returncode != 0:
            raise StageError(f"{shlex.join(argv)} failed: {proc.stderr.strip()}")
        return proc

    def git(self, *args: str, shown: bool = True) -> str:
        """Run git in the clone (the developer's side), showing the command."""
        if shown:
            self.say(f"\n[dev] $ git {shlex.join(args)}")
        base = ["git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
        return self._command([*base, *args], cwd=self.work).stdout.strip()

    def commit(self, message: str, *, signed: bool) -> str:
        """Commit everything in the clone (signed with the ops key, or not) and push."""
        self.git("add", "-A", shown=False)
        if signed:
            sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.key}", "commit", "-S"]
            self.git(*sign, "-q", "-m", message)
        else:
            self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD", shown=False)

    def push(self, *extra: str) -> None:
        """Push the clone's branch to the remote's ``main`` (``extra``: e.g. ``--force``)."""
        self.git("push", "-q", *extra, "origin", "HEAD:main")

    def reconcile(self, where: str, argv: Sequence[str], *, expect: int) -> str:
        """Run the real CLI (on the host when ``where`` is the host) and check its exit
        code; print its output, and from its log only the errors."""
        shown = "reconcile " + " ".join(shlex.quote(a) for a in argv)
        self.say(f"\n[{where}] $ {shown}")
        run_on = self.prefix if where == self.host else []
        env = {**self.env, "RECONCILER_METRICS_FILE": ""}
        cmd = [*run_on, sys.executable, "-m", "reconciler", *argv, "--log-format", "json"]
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True, check=False)
        if proc.stdout.strip():
            self.say(proc.stdout.rstrip())
        for line in proc.stderr.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                self.say(line)
                continue
            if event.get("level") == "error":
                self.say(f"error: {event.get('error') or event.get('message') or event}")
        if proc.returncode != expect:
            self.say(proc.stderr.rstrip())
            raise StageError(f"[{where}] {shown}: exit {proc.returncode}, expected {expect}")
        self.say(f"[{where}] exit code {proc.returncode}")
        return proc.stdout

    def timer_run(self, *, expect: int) -> str:
        """What reconciler.service runs on the host, with the lab's paths."""
        return self.reconcile(
            self.host,
            ["--repo", f"file://{self.origin}", "--path", "desired-state", "--host", self.host,
             "--only", "ipset", "--signer-pins", str(self.pins),
             "--state-dir", str(self.state), "--lock-file", str(self.tmp / "lock")],
            expect=expect,
        )  # fmt: skip

    def members(self) -> set[str]:
        """The members of the host's ``mgmt`` set, as the kernel has them."""
        out = self._command([*self.prefix, "ipset", "list", "mgmt"]).stdout
        lines = out.split("Members:", 1)[1].split() if "Members:" in out else []
        return set(lines)

    def show_members(self) -> None:
        """Print the kernel's members of ``mgmt`` on the host."""
        self.say(f"\n[{self.host}] $ ipset list mgmt  (members)")
        self.say("  " + ", ".join(sorted(self.members())))

    def applied(self) -> str:
        """The commit the host's state dir records as applied (``source.json``)."""
        return str(json.loads((self.state / "source.json").read_text())["commit"])

    # ------------------------------------------------------------------------------ story
    def setup(self) -> str:
        """The remote with the example fleet, signing required; returns the first commit."""
        main = ["-c", "init.defaultBranch=main"]
        self._command(["git", *main, "init", "-q", "--bare", str(self.origin)])
        self._command(["git", "clone", "-q", str(self.origin), str(self.work)])
        self.git("checkout", "-q", "-b", "main", shown=False)
        shutil.copytree(self.repo, self.ds, ignore=shutil.ignore_patterns("__pycache__"))
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", str(self.key)]
        self._command(keygen)
        pub = self.key.with_suffix(".pub").read_text()
        (self.ds / "keys").mkdir(exist_ok=True)
        (self.ds / "keys" / "ops.pub").write_text(pub)
        fleet = self.ds / "fleet.yaml"
        fleet.write_text(fleet.read_text() + VERIFY_BLOCK)
        self.pins.write_text(f"# ops (ssh-keygen -lf ops.pub)\n{key_fingerprint('ssh', pub)}\n")
        self.say(f"\n# a git remote ({self.origin}) with the example fleet; fleet.yaml says:")
        self.say(VERIFY_BLOCK.rstrip())
        self.say(f"# and the host pins the ops key's fingerprint in {self.pins}")
        first = self.commit("the example fleet, signed commits required", signed=True)
        self.push()
        return first

    def run(self) -> None:
        """The whole story; raises StageError at the first surprise."""
        first = self.setup()
        self.say("\n# the host's timer run (reconciler.service): fetch, verify, apply, record")
        self.timer_run(expect=0)
        if self.applied() != first:
            raise StageError(f"source.json records {self.applied()}, not {first}")
        self.say(f"# source.json: applied commit {first[:12]}")
        self.show_members()

        fleet = self.ds / "fleet.yaml"
        text = fleet.read_text()
        anchor = "      - 203.0.113.7/32"
        if anchor not in text:
            raise StageError(f"fleet.yaml no longer has the line {anchor!r} the stage edits")
        fleet.write_text(
            text.replace(anchor, f"      - {NEW_CIDR}         # new bastion\n{anchor}", 1)
        )
        self.say(f"\n# a signed commit adds {NEW_CIDR} to mgmt")
        second = self.commit(f"mgmt: allow the new bastion {NEW_CIDR}", signed=True)
        self.push()
        self.say("\n# CI, on the developer's clone: what the commit does to every host")
        self.reconcile(
            "ci",
            ["--dry-run", "--all-hosts", "--only", "ipset", "--repo", str(self.ds),
             "--against", "HEAD~1", "--detailed-exitcode"],
            expect=2,
        )  # fmt: skip
        self.say("\n# the host's next timer run")
        self.timer_run(expect=0)
        if NEW_CIDR not in self.members() or self.applied() != second:
            raise StageError(f"the host did not apply {second[:12]}")
        self.show_members()

        office = "192.0.2.0/24"
        fleet.write_text(
            "".join(ln for ln in fleet.read_text().splitlines(True) if office not in ln)
        )
        self.say(f"\n# someone removes {office} and pushes without signing")
        unsigned = self.commit(f"quick fix: drop {office}", signed=False)
        self.push()
        self.timer_run(expect=1)
        if office not in self.members() or self.applied() != second:
            raise StageError("the unsigned commit changed the host")
        self.say(f"# refused: {office} is still there, the applied commit is still "
                 f"{second[:12]} (not {unsigned[:12]})")  # fmt: skip
        self.show_members()

        self.say("\n# a force-push back to the first commit (a rewind)")
        self.git("reset", "-q", "--hard", first)
        self.push("--force")
        self.timer_run(expect=1)
        if NEW_CIDR not in self.members() or self.applied() != second:
            raise StageError("the rewind changed the host")
        self.say(f"# refused: still at {second[:12]}; an operator who means it passes "
                 "--allow-rewind")  # fmt: skip
