"""A self-contained lab: the example fleet's hosts played on this machine, its network untouched.

``./scripts/lab`` (``python -m lab``) runs the real ``reconcile`` command line for
every host file in the desired state through the whole story: dry-run → apply → converged
dry-run → out-of-band drift (``ipset add``/``del`` and ``ethtool -K``/``-G`` by hand) → the
dry-run shows it → apply fixes it, checking every exit code. For one of them a reviewed
plan is saved (``--dry-run --out``) and applied exactly (``--plan``), and a plan the host
moved under after its review is refused as stale.

The stages:

* **Namespaces.** Each host whose NICs are virtual-friendly gets a network namespace
  (``rlab-<host>``) with the NICs its file names: veth pairs wired to a lab "switch"
  namespace, and a bridge with a veth port where the file has ``ports:``. Real ipsets,
  iptables rules and offloads.
* **A VM.** A host that sets ring sizes needs real NIC drivers (veth has no rings), so it runs
  in a small VM (:mod:`lab.testvm`: QEMU with ``-device e1000`` NICs, whose driver
  supports rings up to 4096), with a bridge ``br0`` over the second NIC so that a bridge's
  port is resized. Under software emulation this stage takes a few minutes.

After the namespaces, one of their hosts is set up by hand (``ipset restore``, an
``iptables -I``, an ``ifup-local`` script) and adopted with ``reconcile import``
(:mod:`lab.importstage`): the dry-run of what was imported is empty. Then one of them
follows a git remote that requires signed commits (:func:`gitops_stage`,
:mod:`lab.gitops`): a CI dry-run of a commit for every host, the host's timer runs applying
it, an unsigned commit and a force-push refused.

Between them, the backup sets run over simulated days (:func:`backup_stage`), and VM placement
(:func:`placement_stage`) runs on two real libvirt nodes, ``kvm1`` and ``kvm2``
(:mod:`lab.libvirtd`): a VM moved by hand onto a node where its VNC port is taken
fails to start; the same move by ``reconcile --only vm`` starts cleanly.

Every namespace is deleted at the end (unless ``--keep``); the VM leaves nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from reconciler import desired as desired_mod
from reconciler import hostconfig
from reconciler.errors import HostConfigError, ValidationError
from reconciler.hostconfig import HostConfig
from reconciler.model import HostDesired

PREFIX = "rlab"
SWITCH = f"{PREFIX}-switch"
DEFAULT_REPO = Path(__file__).resolve().parent.parent / "desired-state"


class LabError(Exception):
    """A lab step did not behave as the story expects."""


FAKE_TARSNAP = Path(__file__).resolve().parent / "fake_tarsnap" / "tarsnap"

#: What the lab's hosts allow the example to name: the defaults, and tarsnap's own
#: default key file and cache (fleet.yaml names them).
LAB_ALLOWED_DIRS = (
    *hostconfig.DEFAULT_ALLOWED_DIRS,
    "/root/tarsnap.key",
    "/usr/local/tarsnap-cache",
)


def write_host_config(directory: Path) -> Path:
    """Write the lab's host configuration (:mod:`reconciler.hostconfig`) into
    ``directory`` and return its path: the tarsnap emulator is the hosts' tarsnap (tarsnap's
    service cannot be reached from a lab), restic is the real one, files only under
    :data:`LAB_ALLOWED_DIRS`. The desired state names none of this."""
    path = directory / "config.yaml"
    doc = {
        "commands": {"tarsnap": str(FAKE_TARSNAP), "restic": "restic"},
        "allowed_dirs": list(LAB_ALLOWED_DIRS),
        "libvirt": {"allow_test_driver": False},
    }
    path.write_text("# the lab's host configuration (lab/stages.py)\n" + yaml.safe_dump(doc))
    path.chmod(0o644)
    return path


def host_config() -> HostConfig:
    """The host configuration every ``reconcile`` of the lab uses: ``$RECONCILER_CONFIG``
    (set by :func:`main` to the file :func:`write_host_config` wrote)."""
    return hostconfig.load(hostconfig.default_path())


def load_host(repo: Path, host: str) -> HostDesired:
    """``host``'s desired state, checked against the lab's host configuration."""
    return desired_mod.load_host(repo, host, config=host_config())


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


def needs_vm(desired: HostDesired) -> bool:
    """True when the host sets ring sizes, which only real NIC drivers have."""
    return any(
        spec.rings is not None or (spec.ports is not None and spec.ports.rings is not None)
        for spec in desired.nics.values()
    )


def build_host(host: str, nics: dict[str, Any], ns: str | None = None) -> None:
    """Create the namespace for ``host`` (``ns``, default ``rlab-<host>``) with its NICs
    wired to the lab switch (peers named after the namespace, so two can coexist)."""
    ns = ns or ns_name(host)
    tag = ns.removeprefix(f"{PREFIX}-")[:6]
    _sh(["ip", "netns", "add", ns])
    _in(ns, "ip", "link", "set", "lo", "up")
    for i, (ifname, cfg) in enumerate(sorted(nics.items())):
        if isinstance(cfg, dict) and "ports" in cfg:
            _in(ns, "ip", "link", "add", ifname, "type", "bridge")
            port = f"{ifname}p0"[:15]
            _veth_to_switch(ns, port, f"{tag}{i}p")
            _in(ns, "ip", "link", "set", port, "master", ifname)
            _in(ns, "ip", "link", "set", ifname, "up")
        else:
            _veth_to_switch(ns, ifname, f"{tag}{i}")


def _veth_to_switch(ns: str, ifname: str, peer: str) -> None:
    peer = peer[:15]
    _sh(["ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", peer,
         "netns", SWITCH])  # fmt: skip
    _in(SWITCH, "ip", "link", "set", peer, "master", "sw0")
    _in(SWITCH, "ip", "link", "set", peer, "up")
    _in(ns, "ip", "link", "set", ifname, "up")


def teardown(hosts: Sequence[str]) -> None:
    """Delete every lab namespace (their links, ipsets and rules go with them)."""
    for ns in [*(ns_name(h) for h in hosts), SWITCH]:
        _sh(["ip", "netns", "delete", ns], check=False)


class Lab:
    """Drives the story for hosts and checks every step's exit code.

    ``in_vm``: the lab runs inside the lab VM, where the host *is* the VM: commands run
    directly, and ``reconcile`` is called in-process through its real entry point (each new
    Python process costs tens of seconds under software emulation).
    """

    def __init__(
        self, repo: Path, workdir: Path, out: Any = sys.stdout, *, in_vm: bool = False
    ) -> None:
        self.repo = repo
        self.workdir = workdir
        self.out = out
        self.in_vm = in_vm
        self.env = {k: v for k, v in os.environ.items() if k != "SSH_CONNECTION"}

    def say(self, text: str = "") -> None:
        """Print a line of the transcript."""
        print(text, file=self.out, flush=True)

    def _prefix(self, host: str) -> list[str]:
        return [] if self.in_vm else ["ip", "netns", "exec", ns_name(host)]

    def reconcile(self, host: str, *args: str, expect: int, messages: bool = False) -> str:
        """Run the real CLI for ``host`` and check its exit code; with ``messages``, show
        its ``reconcile: ...`` lines from stderr too."""
        state = self.workdir / host
        # A saved plan brings its own kinds (--only with --plan is a usage error).
        only = [] if "--plan" in args else ["--only", "ipset,nic"]
        cli_args = [
            "--repo", str(self.repo), "--host", host, *only,
            "--state-dir", str(state / "state"), "--lock-file", str(state / "lock"),
            "--log-format", "json",
            # The lab is where you try edits to desired-state/ before committing them.
            "--allow-dirty", *args,
        ]  # fmt: skip
        shown = f"reconcile {' '.join(args)}".strip()
        self.say(f"\n[{host}] $ {shown}")
        if self.in_vm:
            from reconciler import cli

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(cli_args)
            stdout, stderr = out.getvalue(), err.getvalue()
        else:
            argv = [*self._prefix(host), sys.executable, "-m", "reconciler", *cli_args]
            proc = subprocess.run(argv, text=True, capture_output=True, env=self.env, check=False)
            code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        self.say(stdout.rstrip())
        if messages:
            self.say("\n".join(ln for ln in stderr.splitlines() if ln.startswith("reconcile:")))
        if code != expect:
            self.say(stderr.rstrip())
            raise LabError(f"[{host}] {shown}: exit {code}, expected {expect}")
        self.say(f"[{host}] exit code {code}")
        return stdout

    def by_hand(self, host: str, *argv: str) -> None:
        """Someone changes the host out of band."""
        self.say(f"\n[{host}] # out-of-band change by hand: {shlex.join(argv)}")
        _sh([*self._prefix(host), *argv])

    def show(self, host: str, *argv: str, grep: str | None = None) -> None:
        """Show what the standard tools say (optionally only lines containing ``grep``)."""
        self.say(f"\n[{host}] $ {shlex.join(argv)}" + (f" | grep {grep}" if grep else ""))
        out = _sh([*self._prefix(host), *argv]).stdout
        lines = [ln for ln in out.splitlines() if grep is None or grep in ln]
        self.say("\n".join(lines).rstrip())

    def story(self, host: str, desired: HostDesired) -> None:
        """dry-run → apply → converged → drift → detected → fixed, for one host."""
        where = "the lab VM" if self.in_vm else f"namespace {ns_name(host)}"
        self.say(f"\n=== host {host} ({where}) ===")
        self.reconcile(host, "--dry-run", "--detailed-exitcode", expect=2)
        self.reconcile(host, expect=0)
        self.reconcile(host, "--dry-run", "--detailed-exitcode", expect=0)
        self.show(host, "ipset", "save")
        self.show(host, "iptables", "-S", "INPUT")
        drift_nic = _drift_target(desired)
        if drift_nic:
            self.show(host, "ethtool", "-k", drift_nic[0], grep="segmentation")
        ring_nics = _ring_nics(desired, self._prefix(host))
        for nic in ring_nics:
            self.show(host, "ethtool", "-g", nic)
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
        if ring_nics:
            self.by_hand(host, "ethtool", "-G", ring_nics[0], "rx", "512")
        self.reconcile(host, "--dry-run", "--detailed-exitcode", expect=2)
        self.reconcile(host, expect=0)
        self.reconcile(host, "--dry-run", "--detailed-exitcode", expect=0)
        if desired.ipsets:
            self.show(host, "ipset", "list", sorted(desired.ipsets)[0])
        for nic in ring_nics:
            self.show(host, "ethtool", "-g", nic)

    def saved_plan_story(self, host: str, desired: HostDesired) -> None:
        """A reviewed plan (``--dry-run --out``) applied exactly (``--plan``); then one the
        live state moved under after the review, refused as stale with nothing applied."""
        name = sorted(desired.ipsets)[0]
        plan = str(self.workdir / host / "plan.json")
        self.say(f"\n=== host {host}: a saved plan applied, a stale one refused ===")
        self.by_hand(host, "ipset", "add", name, "198.18.0.1")
        self.reconcile(host, "--dry-run", "--out", plan, expect=0)
        self.reconcile(host, "--plan", plan, expect=0)
        if "198.18.0.1" in _members(self._prefix(host), name):
            raise LabError(f"[{host}] the saved plan was not applied")
        self.by_hand(host, "ipset", "add", name, "198.18.0.2")
        self.reconcile(host, "--dry-run", "--out", plan, expect=0)
        self.say("# reviewed; meanwhile the host changes again:")
        self.by_hand(host, "ipset", "add", name, "198.18.0.3")
        self.reconcile(host, "--plan", plan, expect=1, messages=True)
        if not {"198.18.0.2", "198.18.0.3"} <= _members(self._prefix(host), name):
            raise LabError(f"[{host}] the stale plan changed the host")
        self.say(f"# refused: {name} still holds both; a fresh run converges it")
        self.reconcile(host, expect=0)
        self.reconcile(host, "--dry-run", "--detailed-exitcode", expect=0)


def _members(prefix: list[str], name: str) -> set[str]:
    """The members of set ``name`` as ``ipset save`` prints them."""
    out = _sh([*prefix, "ipset", "save", name]).stdout
    return {ln.split()[2] for ln in out.splitlines() if ln.startswith("add ")}


def _drift_target(desired: HostDesired) -> tuple[str, str] | None:
    """A NIC and an ethtool short name that git wants off: something to switch on by hand."""
    for nic, spec in sorted(desired.nics.items()):
        for name, on in sorted(spec.offloads.items()):
            if not on and name in ("gso", "tso", "gro", "sg"):
                return nic, name
    return None


def _ring_nics(desired: HostDesired, prefix: list[str]) -> list[str]:
    """The NICs whose rings git sets: named ones, and the ports of bridges with ``ports:``."""
    out: list[str] = []
    for nic, spec in sorted(desired.nics.items()):
        if spec.rings is not None:
            out.append(nic)
        if spec.ports is not None and spec.ports.rings is not None:
            ports = Path(f"/sys/class/net/{nic}/brif")
            if not prefix and ports.is_dir():
                out += sorted(p.name for p in ports.iterdir())
    return out


def _preflight() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces: run it as root")
    tools = ("ip", "ipset", "iptables", "ip6tables", "ethtool")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (scripts/setup installs them)")


def namespace_stage(repo: Path, hosts: Sequence[str], keep: bool) -> None:
    """Run the story for ``hosts`` in network namespaces."""
    teardown(hosts)  # a previous lab that was interrupted
    try:
        _sh(["ip", "netns", "add", SWITCH])
        _in(SWITCH, "ip", "link", "add", "sw0", "type", "bridge")
        _in(SWITCH, "ip", "link", "set", "sw0", "up")
        with tempfile.TemporaryDirectory(prefix="reconcile-lab-") as tmp:
            lab = Lab(repo, Path(tmp))
            for host in hosts:
                d = load_host(repo, host)
                build_host(host, d.raw.get("nics") or {})
                links = _in(ns_name(host), "ip", "-br", "link").stdout.splitlines()
                names = [ln.split()[0].split("@")[0] for ln in links if ln.strip()]
                lab.say(f"\n# built {ns_name(host)} with links: {', '.join(names)}")
                lab.story(host, d)
            first = next((h for h in hosts if load_host(repo, h).ipsets), None)
            if first is not None:
                lab.saved_plan_story(first, load_host(repo, first))
    finally:
        if not keep:
            teardown(hosts)


GITOPS_NS = f"{PREFIX}-gitops"


def _follows_fleet_mgmt(repo: Path, host: str) -> bool:
    """Whether ``host`` has fleet.yaml's ``mgmt`` set (its own file does not redefine it):
    the GitOps stage commits changes to that one."""
    own = yaml.safe_load((repo / "hosts" / f"{host}.yaml").read_text()) or {}
    redefined = isinstance(own, dict) and "mgmt" in (own.get("ipsets") or {})
    return "mgmt" in load_host(repo, host).ipsets and not redefined


def gitops_stage(repo: Path, host: str, keep: bool) -> None:
    """The GitOps loop for ``host`` in its own namespace (:mod:`lab.gitops`)."""
    from lab import gitops

    print(f"\n=== GitOps: host {host} (namespace {GITOPS_NS}) follows a git remote ===")
    _sh(["ip", "netns", "delete", GITOPS_NS], check=False)
    if _sh(["ip", "netns", "add", SWITCH], check=False).returncode == 0:
        _in(SWITCH, "ip", "link", "add", "sw0", "type", "bridge")
        _in(SWITCH, "ip", "link", "set", "sw0", "up")
    try:
        build_host(host, load_host(repo, host).raw.get("nics") or {}, GITOPS_NS)
        with tempfile.TemporaryDirectory(prefix="reconcile-lab-gitops-") as tmp:
            prefix = ["ip", "netns", "exec", GITOPS_NS]
            say = functools.partial(print, flush=True)
            gitops.GitOpsStage(repo, Path(tmp), host, prefix, say).run()
    except gitops.StageError as e:
        raise LabError(f"GitOps stage: {e}") from None
    finally:
        if not keep:
            _sh(["ip", "netns", "delete", GITOPS_NS], check=False)
            _sh(["ip", "netns", "delete", SWITCH], check=False)


def vm_stage(repo: Path, hosts: Sequence[str]) -> None:
    """Boot the lab VM and run the story for ``hosts`` inside it, streaming its transcript."""
    from lab import testvm

    reason = testvm.vm_unavailable_reason()
    if reason is not None:
        raise LabError(f"cannot boot the lab VM for {', '.join(hosts)}: {reason}")
    print(f"\n# booting the lab VM (2 e1000 NICs) for {', '.join(hosts)}; under software "
          "emulation this takes a few minutes", flush=True)  # fmt: skip
    command = [sys.executable, "-m", "lab", "--inside-vm", "--repo", str(repo),
               *[f"--host={h}" for h in hosts]]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="reconciler-vm-") as tmp:
        argv = testvm.vng_command(command, nics=2, script_path=Path(tmp) / "guest.sh")
        env = dict(os.environ, PATH=testvm.search_path())
        # Relay the guest's transcript through a pipe: handed our stdout directly, the VM's
        # console reopens it and, when it is a file, writes over what the lab printed before.
        with subprocess.Popen(
            argv, env=env, cwd=testvm.REPO_ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        ) as proc:  # fmt: skip
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line.rstrip("\r\n").rstrip(), flush=True)
            code = proc.wait()
    if code != 0:
        raise LabError(f"the VM stage failed (exit {code})")


def inside_vm(repo: Path, hosts: Sequence[str]) -> int:
    """The VM stage's guest side: wire br0 over the second NIC, then run the story."""
    nics = [n for n in os.environ.get("RECONCILER_VM_NICS", "").split(",") if n]
    if len(nics) < 2:
        print("scripts/lab: --inside-vm needs two NICs in RECONCILER_VM_NICS", file=sys.stderr)
        return 1
    _sh(["ip", "link", "add", "br0", "type", "bridge"])
    _sh(["ip", "link", "set", nics[1], "master", "br0"])
    for dev in (*nics, "br0"):
        _sh(["ip", "link", "set", dev, "up"])
    with tempfile.TemporaryDirectory(prefix="reconcile-lab-") as tmp:
        lab = Lab(repo, Path(tmp), in_vm=True)
        lab.say(f"# in the VM: {nics[0]} (e1000), br0 with port {nics[1]} (e1000)")
        try:
            for host in hosts:
                lab.story(host, load_host(repo, host))
        except LabError as e:
            print(f"\nscripts/lab (in the VM): {e}", file=sys.stderr)
            return 1
    return 0


def _lab_backups(desired: HostDesired, tmp: Path) -> HostDesired:
    """``desired`` with its backup sets pointed into ``tmp``: a fresh restic repository, and
    a key and cache of its own for the tarsnap emulator (the lab's host configuration makes
    it the hosts' tarsnap). Paths to back up, schedules and keep policies stay as in git."""
    raw = dict(desired.raw)
    raw["tarsnap"] = {
        **(raw.get("tarsnap") or {}),
        "keyfile": str(tmp / "tarsnap.key"),
        "cachedir": str(tmp / "tarsnap-cache"),
    }
    backups = {}
    for name, spec in (raw.get("backups") or {}).items():
        spec = dict(spec)
        if spec["backend"] == "restic":
            spec["repository"] = str(tmp / f"restic-{desired.host}-{name}")
            spec["password_file"] = str(tmp / "restic.pass")
        backups[name] = spec
    raw["backups"] = backups
    return dataclasses.replace(desired, raw=raw)


def backup_stage(repo: Path, hosts: Sequence[str], days: int = 12) -> None:
    """Run every host's backup sets over ``days`` of simulated time, one run a day.

    Uses the engine, providers and text renderer of ``reconcile`` in-process with a simulated
    clock (the CLI has no clock of its own to fake), against a real restic repository and
    the tarsnap emulator (the commands of the lab's host configuration), and shows archives
    being created and expired by the keep policy.
    """
    from reconciler import engine, log
    from reconciler.kinds.backup.provider import BackupProvider
    from reconciler.render import text

    log.configure(level=logging.WARNING)  # the plans below already say what is applied

    with tempfile.TemporaryDirectory(prefix="reconcile-lab-backup-") as t:
        tmp = Path(t)
        (tmp / "restic.pass").write_text("lab password, not a secret\n")
        (tmp / "tarsnap.key").write_text("lab key\n")
        (tmp / "tarsnap.key").chmod(0o600)
        (tmp / "tarsnap-cache").mkdir()
        (tmp / "tarsnap-cache" / "directory").touch()
        os.environ["FAKE_TARSNAP_STATE"] = str(tmp / "tarsnap-state")
        now = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
        for host in hosts:
            desired = _lab_backups(load_host(repo, host), tmp)
            for name, spec in desired.raw["backups"].items():
                if spec["backend"] == "restic":
                    _sh(["restic", "init", "--repo", spec["repository"],
                         "--password-file", spec["password_file"]])  # fmt: skip
                print(f"\n=== host {host}: backup set {name} on {spec['backend']}, every "
                      f"{spec['every']}, keep {spec['keep']} ===", flush=True)  # fmt: skip
        clock = {"now": now}
        # The programs run are the host configuration's, as in `reconcile`.
        provider = BackupProvider(clock=lambda: clock["now"], commands=host_config().commands)
        for day in range(days):
            clock["now"] = now + timedelta(days=day)
            os.environ["FAKE_TARSNAP_NOW"] = str(int(clock["now"].timestamp()))
            for host in hosts:
                desired = _lab_backups(load_host(repo, host), tmp)
                plan, _ = engine.make_plan(desired, [provider])
                print(f"\n[{host}] simulated {clock['now']:%Y-%m-%d %H:%M} UTC: reconcile "
                      "--only backup", flush=True)  # fmt: skip
                print(text.render(plan.to_dict(), dry_run=False).rstrip(), flush=True)
                result = engine.apply_plan(desired, [provider], plan, None)
                if not result.ok:
                    raise LabError(f"[{host}] backup run failed: {result.errors}")
                live = provider.read(desired)
                for name, state in sorted(live.sets.items()):
                    ours = sorted(a for a in state.archives if a.startswith(f"{name}-"))
                    print(f"  {name}: {len(ours)} archive(s), oldest {ours[0] if ours else '-'}"
                          f", newest {ours[-1] if ours else '-'}", flush=True)  # fmt: skip


# Where the placement stage's libvirt nodes live: fixed, so that desired-state/vms.yaml can
# name their sockets (node kvm1's URI is qemu:///system?socket=<this>/kvm1/run/libvirt/...).
LIBVIRT_ROOT = Path("/run/reconciler-lab")


class _Placement:
    """The placement stage's transcript: virsh and ``reconcile`` runs, every exit code checked."""

    def __init__(self, repo: Path, workdir: Path, uris: dict[str, str], controller: str) -> None:
        self.repo = repo
        self.workdir = workdir
        self.uris = uris
        self.controller = controller
        # virsh and libvirtd speak the locale: keep their messages the ones checked below.
        self.env = dict(os.environ, LC_ALL="C", LANG="C")
        self.env.pop("SSH_CONNECTION", None)

    def virsh(
        self,
        node: str,
        *args: str,
        expect: int = 0,
        grep: str | None = None,
        save_as: str | None = None,
    ) -> str:
        """``virsh -c <node's URI> args`` in the work directory; print it and its output (only
        the lines containing ``grep``; none when it is saved to the file ``save_as``), check
        its exit code, return its output."""
        shown = f"virsh -c ${node} {shlex.join(args)}" + (f" | grep {shlex.quote(grep)}"
                if grep else "") + (f" > {save_as}" if save_as else "")  # fmt: skip
        print(f"\n[{self.controller}] $ {shown}", flush=True)
        proc = subprocess.run(["virsh", "-c", self.uris[node], *args], text=True,
                              capture_output=True, env=self.env, cwd=self.workdir,
                              check=False)  # fmt: skip
        out = proc.stdout + proc.stderr
        if save_as:
            (self.workdir / save_as).write_text(proc.stdout)
            out = proc.stderr
        lines = [ln for ln in out.splitlines() if ln.strip() and (grep is None or grep in ln)]
        if lines:
            print("\n".join(lines), flush=True)
        if proc.returncode != expect:
            raise LabError(f"{shown}: exit {proc.returncode}, expected {expect}")
        if expect != 0:
            print(f"[{self.controller}] exit code {proc.returncode}", flush=True)
        return out

    def reconcile(self, *args: str, expect: int) -> str:
        """The real CLI on the controller host, ``--only vm``; check its exit code."""
        cli_args = [
            "--repo", str(self.repo), "--host", self.controller, "--only", "vm",
            "--state-dir", str(self.workdir / "state"),
            "--lock-file", str(self.workdir / "lock"), "--log-format", "json",
            "--allow-dirty", *args,
        ]  # fmt: skip
        shown = f"reconcile --only vm --host {self.controller} {' '.join(args)}".strip()
        print(f"\n[{self.controller}] $ {shown}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "reconciler", *cli_args], text=True,
                              capture_output=True, env=self.env, check=False)  # fmt: skip
        print(proc.stdout.rstrip(), flush=True)
        if proc.returncode != expect:
            print(proc.stderr.rstrip(), flush=True)
            raise LabError(f"{shown}: exit {proc.returncode}, expected {expect}")
        print(f"[{self.controller}] exit code {proc.returncode}", flush=True)
        return proc.stdout


def _placement_scenario(vms: dict[str, Any]) -> tuple[str, str, str, str, int]:
    """(moved VM, its node before, its node in git, the VM there, their shared VNC port).

    The VM to move is the first running one with ``vnc_port: auto``; the VM it collides
    with is a running one on its target with a fixed port, which the moved VM had too.
    """
    specs: dict[str, dict[str, Any]] = vms["vms"]
    for moved, spec in sorted(specs.items()):
        if spec["vnc_port"] != "auto" or spec["state"] != "running":
            continue
        target = spec["node"]
        sources = [n for n in vms["nodes"] if n != target]
        occupants = [
            (name, other["vnc_port"])
            for name, other in sorted(specs.items())
            if other["node"] == target and isinstance(other["vnc_port"], int)
            and other["state"] == "running"
        ]  # fmt: skip
        if sources and occupants:
            return moved, sources[0], target, occupants[0][0], occupants[0][1]
    raise LabError(
        "vms.yaml has no VM for the placement story: one running with vnc_port auto, and a "
        "running VM with a fixed port on its node"
    )


def placement_stage(repo: Path, vms: dict[str, Any]) -> None:
    """Two real libvirt nodes: a move by hand hits the VNC port clash, the reconciler's does not.

    The nodes (libvirtd + virtlogd each, own mount/network/PID namespaces, QEMU under TCG)
    listen on the sockets vms.yaml names. They start with the cluster as it was before the
    commit that moves a VM; the move is tried by hand (and undone), then done by ``reconcile``.
    Every process and file of the nodes is removed at the end, also after a failure.
    """
    from lab import libvirtd

    nodes = sorted(vms["nodes"])
    moved, source, target, occupant, port = _placement_scenario(vms)
    specs: dict[str, dict[str, Any]] = vms["vms"]
    print(f"\n=== VM placement: libvirt nodes {', '.join(nodes)}, run from the controller "
          f"{vms['controller']} (vms.yaml) ===", flush=True)  # fmt: skip
    try:
        with (
            tempfile.TemporaryDirectory(prefix="reconcile-lab-vm-") as t,
            libvirtd.libvirt_daemons(nodes, root=LIBVIRT_ROOT) as started,
        ):
            tmp = Path(t)
            uris = {name: node.uri for name, node in started.items()}
            wrong = [n for n in nodes if vms["nodes"][n]["uri"] != uris[n]]
            if wrong:
                raise LabError(f"vms.yaml's URIs for {', '.join(wrong)} are not the lab's "
                               f"sockets ({', '.join(uris[n] for n in wrong)})")  # fmt: skip
            print("# started: one libvirtd + virtlogd per node, each in its own mount, network "
                  "and PID namespaces (its own 127.0.0.1), QEMU under software emulation",
                  flush=True)  # fmt: skip
            for name in nodes:
                print(f"#   {name}={uris[name]}", flush=True)
            lab = _Placement(repo, tmp, uris, vms["controller"])

            # The cluster before the commit: every VM on its node, except the one git now
            # moves, which runs on another node with the same VNC port (no clash there: a
            # different host).
            print(f"\n# the cluster before this commit: {moved} runs on {source} with VNC port "
                  f"{port}, {occupant} on {target} with VNC port {port}", flush=True)  # fmt: skip
            for name, spec in sorted(specs.items()):
                node = source if name == moved else spec["node"]
                if spec.get("definition"):
                    xml_file = str(repo / spec["definition"])
                else:
                    fixed = spec["vnc_port"] if isinstance(spec["vnc_port"], int) else None
                    xml_file = f"{name}.xml"  # in the work directory, where virsh runs
                    (tmp / xml_file).write_text(libvirtd.small_domain_xml(
                        name, vnc_port=port if name == moved else fixed))  # fmt: skip
                lab.virsh(node, "define", xml_file)
                if name in (moved, occupant) or spec["state"] == "running":
                    lab.virsh(node, "start", name)
            for name in nodes:
                lab.virsh(name, "list", "--all")

            # The move by hand, with shared storage: stop, copy the definition, start there.
            print(f"\n# moving {moved} from {source} to {target} by hand", flush=True)
            # The lab's VMs have no guest OS to honour `virsh shutdown`: destroy is the same here.
            lab.virsh(source, "destroy", moved)
            by_hand = f"{moved}-from-{source}.xml"
            lab.virsh(source, "dumpxml", "--inactive", moved, save_as=by_hand)
            graphics = [ln for ln in (tmp / by_hand).read_text().splitlines() if "<graphics" in ln]
            print(f"\n[{lab.controller}] $ grep '<graphics' {by_hand}\n" + "\n".join(graphics),
                  flush=True)  # fmt: skip
            lab.virsh(target, "define", by_hand)
            failed = lab.virsh(target, "start", moved, expect=1)
            if f"Failed to reserve port {port}" not in failed:
                raise LabError(f"starting {moved} on {target} by hand failed, but not on port "
                               f"{port}: {failed.strip()}")  # fmt: skip
            print(f"# {occupant} holds VNC port {port} on {target}: {moved} cannot start there. "
                  f"Undo: its definition goes back to {source} only (still shut off)",
                  flush=True)  # fmt: skip
            lab.virsh(target, "undefine", moved)

            # The reconciler's move: git says where it lives and lets it pick a free port.
            print(f"\n# git: {moved}: {_flow(specs[moved])}", flush=True)
            lab.reconcile("--dry-run", "--detailed-exitcode", expect=2)
            lab.reconcile(expect=0)
            for name in nodes:
                lab.virsh(name, "list", "--all")
            lab.virsh(target, "dumpxml", moved, grep="<graphics")
            _check_moved(started[source], started[target], moved, port, lab)
            lab.reconcile("--dry-run", "--detailed-exitcode", expect=0)
    except libvirtd.HarnessError as e:
        raise LabError(f"the libvirt nodes failed: {e}") from e


def _flow(spec: dict[str, Any]) -> str:
    """A VM's spec as a YAML flow mapping, as vms.yaml writes it."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"


def _check_moved(source: Any, target: Any, vm: str, old_port: int, lab: _Placement) -> None:
    """``vm`` is defined only on ``target``, runs there, and listens on a port other than
    ``old_port`` (``source``/``target``: :class:`lab.libvirtd.Node`)."""
    on_source = _sh(["virsh", "-c", source.uri, "list", "--all", "--name"]).stdout.split()
    if vm in on_source:
        raise LabError(f"{vm} is still defined on {source.name}")
    state = _sh(["virsh", "-c", target.uri, "domstate", vm]).stdout.strip()
    if state != "running":
        raise LabError(f"{vm} is {state!r} on {target.name}, expected running")
    display = _sh(["virsh", "-c", target.uri, "vncdisplay", vm]).stdout.strip()  # 127.0.0.1:N
    port = 5900 + int(display.rsplit(":", 1)[1])
    if port == old_port or ("127.0.0.1", port) not in target.tcp_listeners():
        raise LabError(f"{vm} on {target.name}: VNC port {port} (was {old_port}) not listening")
    print(f"\n# {vm}: only on {target.name}, running, VNC console on 127.0.0.1:{port}",
          flush=True)  # fmt: skip


def _run_placement(repo: Path, vms: dict[str, Any], skip: bool) -> None:
    """The placement stage, or the reason it is skipped."""
    from lab import libvirtd

    reason = "--no-libvirt" if skip else libvirtd.reason_unavailable()
    if reason is None and shutil.which("virsh") is None:
        reason = "missing: virsh (libvirt-clients); scripts/setup installs it"
    if reason is not None:
        print(f"\n# VM placement stage skipped: {reason}", flush=True)
        return
    placement_stage(repo, vms)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``./scripts/lab``; returns 0 when every step behaved as expected."""
    ap = argparse.ArgumentParser(prog="scripts/lab", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO,
                    help=f"desired-state directory (default: {DEFAULT_REPO})")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the namespaces afterwards")
    ap.add_argument("--no-vm", action="store_true",
                    help="skip hosts that need the VM (ring sizes)")  # fmt: skip
    ap.add_argument("--no-libvirt", action="store_true",
                    help="skip the VM placement stage (two libvirt nodes)")  # fmt: skip
    ap.add_argument("--inside-vm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--host", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repo: Path = args.repo.resolve()
    try:
        with lab_host_config() as config:
            if args.inside_vm:
                return inside_vm(repo, args.host)
            return _stages(args, repo, config)
    except HostConfigError as e:
        print(f"\nscripts/lab: {e}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def lab_host_config() -> Iterator[Path]:
    """The lab's host configuration (:func:`write_host_config`) in a temporary directory,
    named by ``RECONCILER_CONFIG`` for every ``reconcile`` the lab runs (in-process and in
    subprocesses) while the context lasts; the variable is restored afterwards."""
    old = os.environ.get(hostconfig.ENV_VAR)
    with tempfile.TemporaryDirectory(prefix="reconcile-lab-config-") as tmp:
        path = write_host_config(Path(tmp))
        os.environ[hostconfig.ENV_VAR] = str(path)
        try:
            host_config()  # a bad one fails here, before any stage
            yield path
        finally:
            if old is None:
                os.environ.pop(hostconfig.ENV_VAR, None)
            else:
                os.environ[hostconfig.ENV_VAR] = old


def _stages(args: argparse.Namespace, repo: Path, config: Path) -> int:
    """Every stage of the lab, in order, with the host configuration ``config``."""
    hosts = desired_mod.list_hosts(repo)
    try:
        _preflight()
        print(f"$ reconcile validate --repo {repo} --config {config}", flush=True)
        problems = desired_mod.validate_repo(repo, config=host_config())
        for p in problems:
            print(p)
        if problems:
            raise LabError("the desired state is invalid; nothing was applied")
        print(f"valid: {len(hosts)} host(s): {', '.join(hosts)}")
        vm_hosts = [h for h in hosts if needs_vm(load_host(repo, h))]
        ns_hosts = [h for h in hosts if h not in vm_hosts]
        if vm_hosts:
            print(f"# {', '.join(vm_hosts)}: ring sizes need real NIC drivers (veth has none): "
                  "run in the lab VM" + (" (skipped: --no-vm)" if args.no_vm else ""))  # fmt: skip
        namespace_stage(repo, ns_hosts, args.keep)
        from lab import importstage

        importstage.run(repo, ns_hosts)
        gitops_hosts = [h for h in ns_hosts if _follows_fleet_mgmt(repo, h)]
        if gitops_hosts:
            gitops_stage(repo, gitops_hosts[0], args.keep)
        backup_hosts = [h for h in hosts if load_host(repo, h).raw.get("backups")]
        if backup_hosts:
            backup_stage(repo, backup_hosts)
        vms = desired_mod.load_vms(repo, config=host_config())
        if vms is not None and vms["vms"]:
            _run_placement(repo, vms, args.no_libvirt)
        if vm_hosts and not args.no_vm:
            vm_stage(repo, vm_hosts)
        print("\nLab finished: every step behaved as expected.")
        return 0
    except (LabError, ValidationError) as e:
        print(f"\nscripts/lab: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
