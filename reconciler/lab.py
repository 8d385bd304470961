"""A self-contained lab: the example fleet's hosts as network namespaces on this machine.

``reconcile-lab`` (or ``python -m reconciler.lab``) creates one network namespace per host file
in the desired state (``rlab-<host>``), gives each host the NICs its file names (veth pairs
wired to a lab "switch" namespace; a bridge with a veth port where the file has ``ports:``),
and then runs the real ``reconcile`` command inside each namespace through the whole story:
dry-run → apply → converged dry-run → out-of-band drift (``ipset add``/``del`` by hand) →
dry-run shows it → apply fixes it. Nothing on the host's own network is touched; every
namespace is deleted at the end (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler import desired as desired_mod
from reconciler.errors import ValidationError
from reconciler.model import HostDesired

PREFIX = "rlab"
SWITCH = f"{PREFIX}-switch"
DEFAULT_REPO = Path(__file__).resolve().parent.parent / "desired-state"


class LabError(Exception):
    """A lab step did not behave as the story expects."""


def _sh(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), text=True, capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ns_name(host: str) -> str:
    """The namespace that plays ``host``."""
    return f"{PREFIX}-{host}"


def _in(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _sh(["ip", "netns", "exec", ns, *argv], check=check)


def build_host(host: str, nics: dict[str, Any]) -> None:
    """Create the namespace for ``host`` with its NICs wired to the lab switch."""
    ns = ns_name(host)
    _sh(["ip", "netns", "add", ns])
    _in(ns, "ip", "link", "set", "lo", "up")
    for i, (ifname, cfg) in enumerate(sorted(nics.items())):
        if isinstance(cfg, dict) and "ports" in cfg:
            _in(ns, "ip", "link", "add", ifname, "type", "bridge")
            port = f"{ifname}p0"[:15]
            _veth_to_switch(ns, port, f"{host[:6]}{i}p")
            _in(ns, "ip", "link", "set", port, "master", ifname)
            _in(ns, "ip", "link", "set", ifname, "up")
        else:
            _veth_to_switch(ns, ifname, f"{host[:6]}{i}")


def _veth_to_switch(ns: str, ifname: str, peer: str) -> None:
    peer = peer[:15]
    _sh(
        [
            "ip",
            "link",
            "add",
            ifname,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            SWITCH,
        ]
    )
    _in(SWITCH, "ip", "link", "set", peer, "master", "sw0")
    _in(SWITCH, "ip", "link", "set", peer, "up")
    _in(ns, "ip", "link", "set", ifname, "up")


def teardown(hosts: Sequence[str]) -> None:
    """Delete every lab namespace (their links, ipsets and rules go with them)."""
    for ns in [*(ns_name(h) for h in hosts), SWITCH]:
        _sh(["ip", "netns", "delete", ns], check=False)


class Lab:
    """Drives the story for each host and checks every step's exit code."""

    def __init__(self, repo: Path, workdir: Path, out: Any = sys.stdout) -> None:
        self.repo = repo
        self.workdir = workdir
        self.out = out
        self.env = {k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}

    def say(self, text: str = "") -> None:
        """Print a line of the transcript."""
        print(text, file=self.out, flush=True)

    def reconcile(self, host: str, *args: str, expect: int) -> str:
        """Run the real CLI inside the host's namespace and check its exit code."""
        state = self.workdir / host
        argv = [
            "ip",
            "netns",
            "exec",
            ns_name(host),
            sys.executable,
            "-m",
            "reconciler",
            "--repo",
            str(self.repo),
            "--host",
            host,
            "--only",
            "ipset,nic",
            "--state-dir",
            str(state / "state"),
            "--lock-file",
            str(state / "lock"),
            "--log-format",
            "json",
            *args,
        ]
        shown = f"reconcile {' '.join(args)}".strip()
        self.say(f"\n[{host}] $ {shown}")
        proc = subprocess.run(argv, text=True, capture_output=True, env=self.env, check=False)
        self.say(proc.stdout.rstrip())
        if proc.returncode != expect:
            self.say(proc.stderr.rstrip())
            raise LabError(f"[{host}] {shown}: exit {proc.returncode}, expected {expect}")
        self.say(f"[{host}] exit code {proc.returncode}")
        return proc.stdout

    def by_hand(self, host: str, *argv: str) -> None:
        """Someone changes the host out of band."""
        self.say(f"\n[{host}] # out-of-band change by hand: {shlex.join(argv)}")
        _in(ns_name(host), *argv)

    def show(self, host: str, *argv: str) -> None:
        """Show what the standard tools say."""
        self.say(f"\n[{host}] $ {shlex.join(argv)}")
        out = _in(ns_name(host), *argv).stdout
        self.say(out.rstrip())

    def story(self, host: str, desired: HostDesired) -> None:
        """dry-run → apply → converged → drift → detected → fixed, for one host."""
        self.say(f"\n=== host {host} (namespace {ns_name(host)}) ===")
        self.reconcile(host, "--dry-run", "--detailed-exitcode", expect=2)
        self.reconcile(host, expect=0)
        self.reconcile(host, "--dry-run", "--detailed-exitcode", expect=0)
        self.show(host, "ipset", "save")
        self.show(host, "iptables", "-S", "INPUT")
        drift_nic = _drift_target(desired)
        if drift_nic:
            self.show(host, "ethtool", "-k", drift_nic[0])
        # Someone changes the host by hand.
        if desired.ipsets:
            name = sorted(desired.ipsets)[0]
            members = sorted(desired.ipsets[name].members)
            self.by_hand(host, "ipset", "add", name, "203.0.113.66")
            if members:
                self.by_hand(host, "ipset", "del", name, members[0])
        if drift_nic:
            nic, feature = drift_nic
            self.by_hand(host, "ethtool", "-K", nic, feature, "on")
        self.reconcile(host, "--dry-run", "--detailed-exitcode", expect=2)
        self.reconcile(host, expect=0)
        self.reconcile(host, "--dry-run", "--detailed-exitcode", expect=0)
        if desired.ipsets:
            self.show(host, "ipset", "list", sorted(desired.ipsets)[0])


def _drift_target(desired: HostDesired) -> tuple[str, str] | None:
    """A NIC and an ethtool short name that git wants off: something to switch on by hand."""
    for nic, spec in sorted(desired.nics.items()):
        for name, on in sorted(spec.offloads.items()):
            if not on and name in ("gso", "tso", "gro", "sg"):
                return nic, name
    return None


def _preflight() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces: run it as root")
    missing = [t for t in ("ip", "ipset", "iptables", "ip6tables") if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (scripts/setup installs them)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``reconcile-lab``; returns 0 when every step behaved as expected."""
    ap = argparse.ArgumentParser(prog="reconcile-lab", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--repo",
        type=Path,
        default=DEFAULT_REPO,
        help=f"desired-state directory (default: {DEFAULT_REPO})",
    )
    ap.add_argument("--keep", action="store_true", help="keep the namespaces afterwards")
    args = ap.parse_args(argv)
    repo: Path = args.repo.resolve()
    hosts = desired_mod.list_hosts(repo)
    try:
        _preflight()
        print(f"$ reconcile validate --repo {repo}")
        problems = desired_mod.validate_repo(repo)
        for p in problems:
            print(p)
        if problems:
            raise LabError("the desired state is invalid; nothing was applied")
        print(f"valid: {len(hosts)} host(s): {', '.join(hosts)}")
        teardown(hosts)  # a previous lab that was interrupted
        _sh(["ip", "netns", "add", SWITCH])
        _in(SWITCH, "ip", "link", "add", "sw0", "type", "bridge")
        _in(SWITCH, "ip", "link", "set", "sw0", "up")
        with tempfile.TemporaryDirectory(prefix="reconcile-lab-") as tmp:
            lab = Lab(repo, Path(tmp))
            for host in hosts:
                d = desired_mod.load_host(repo, host)
                build_host(host, d.raw.get("nics") or {})
                links = _in(ns_name(host), "ip", "-br", "link").stdout.splitlines()
                names = [ln.split()[0].split("@")[0] for ln in links if ln.strip()]
                lab.say(f"\n# built {ns_name(host)} with links: {', '.join(names)}")
                lab.story(host, d)
        print("\nLab finished: every step behaved as expected.")
        return 0
    except (LabError, ValidationError) as e:
        print(f"\nreconcile-lab: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            teardown(hosts)


if __name__ == "__main__":
    raise SystemExit(main())
