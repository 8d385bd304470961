"""The lab's adoption stage: one of the example's hosts set up by hand, the way it is before
reconciler (``ipset restore`` of a rules file, an ``iptables -I``, ``ethtool -K`` lines in an
``ifup-local`` script), then adopted with ``reconcile import`` into an empty desired-state
directory, validated, and dry-run: the plan is empty (exit 0 with ``--detailed-exitcode``).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab import stages
from reconciler.kinds.ipset import firewall
from reconciler.model import HostDesired

IMPORT_NS = f"{stages.PREFIX}-import"


class _ImportLab(stages.Lab):
    """The story's runner, in the adoption stage's own namespace."""

    def _prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", IMPORT_NS]


def _save_file(desired: HostDesired) -> str:
    """What ``ipset save`` of the host's sets prints, as a host set up by hand keeps it."""
    lines = []
    for name, spec in sorted(desired.ipsets.items()):
        lines.append(f"create {name} hash:net family {spec.family} hashsize 1024 maxelem "
                     f"{spec.maxelem or 65536}")  # fmt: skip
        lines += [f"add {name} {m}" for m in sorted(spec.members)]
    return "\n".join(lines) + "\n"


def _pairs(offloads: dict[str, Any]) -> str:
    return " ".join(f"{k} {'on' if v in (True, 'on') else 'off'}" for k, v in offloads.items())


def _script(nics: dict[str, Any]) -> str:
    """An ``ifup-local`` that sets the host's offloads with ethtool, bridge ports included."""
    out = ["#!/bin/bash", "# /sbin/ifup-local, kept by hand before reconciler", 'case "$1" in']
    for name, cfg in sorted(nics.items()):
        pairs = _pairs(cfg.get("offloads") or {})
        if pairs:
            out.append(f"  {name}) /usr/sbin/ethtool -K {name} {pairs} ;;")
        ports = (cfg.get("ports") or {}).get("offloads") or {}
        if ports:
            port = f"{name}p0"[:15]
            pairs = _pairs(ports)
            out.append(f"  {port}) ethtool -K {port} {pairs} ;;")
    out += ["esac", 'echo "ifup-local: $1 is up"']
    return "\n".join(out) + "\n"


def import_stage(repo: Path, host: str) -> None:
    """Set ``host`` up by hand in its own namespace, adopt it with ``reconcile import``,
    and show that the dry-run of what was imported is empty."""
    desired = stages.load_host(repo, host)
    nics = _nics(desired)
    print(f"\n=== adopting host {host} (namespace {IMPORT_NS}), set up by hand ===", flush=True)
    subprocess.run(["ip", "netns", "delete", IMPORT_NS], check=False, capture_output=True)
    made_switch = subprocess.run(["ip", "netns", "add", stages.SWITCH], check=False,
                                 capture_output=True).returncode == 0  # fmt: skip
    if made_switch:
        stages._in(stages.SWITCH, "ip", "link", "add", "sw0", "type", "bridge")
        stages._in(stages.SWITCH, "ip", "link", "set", "sw0", "up")
    try:
        stages.build_host(host, nics, IMPORT_NS)
        with tempfile.TemporaryDirectory(prefix="reconcile-lab-import-") as tmp:
            work = Path(tmp)
            lab = _ImportLab(work / "adopted", work, sys.stdout)  # the stdout of now
            rules, script = work / "ipset.rules", work / "ifup-local"
            rules.write_text(_save_file(desired))
            script.write_text(_script(nics))
            lab.say(f"\n[{host}] # {rules}, restored at boot:\n{rules.read_text().rstrip()}")
            lab.by_hand(host, "ipset", "restore", "-file", str(rules))
            for name, spec in sorted(desired.ipsets.items()):
                if spec.firewall is not None:
                    rule = firewall.rule_spec(name, spec.firewall)
                    binary = firewall.binary_for(spec.family)
                    lab.by_hand(host, binary, "-I", spec.firewall.chain, *rule)
            lab.say(f"\n[{host}] # {script}:\n{script.read_text().rstrip()}")
            for nic in [
                *sorted(nics),
                *(f"{n}p0"[:15] for n in sorted(nics) if "ports" in nics[n]),
            ]:
                lab.by_hand(host, "bash", str(script), nic)
            adopted = work / "adopted"
            (adopted / "hosts").mkdir(parents=True)
            argv = ["import", "--host", host, "-o", str(adopted), "--only", "ipset,nic",
                    "--ifup-local", str(script)]  # fmt: skip
            lab.say(f"\n[{host}] $ reconcile {shlex.join(argv)}")
            proc = subprocess.run(
                [*lab._prefix(host), sys.executable, "-m", "reconciler", *argv],
                text=True, capture_output=True, env=lab.env, check=False,
            )  # fmt: skip
            lab.say(proc.stderr.rstrip())
            if proc.returncode != 0:
                raise stages.LabError(f"[{host}] reconcile import: exit {proc.returncode}")
            host_file = adopted / "hosts" / f"{host}.yaml"
            lab.say(f"\n[{host}] $ cat {host_file}\n{host_file.read_text().rstrip()}")
            imported = stages.load_host(adopted, host)
            for name, spec in desired.ipsets.items():
                got = imported.ipsets.get(name)
                if got is None or got.members != spec.members or got.firewall != spec.firewall:
                    raise stages.LabError(f"[{host}] import: set {name} is not what the host has")
            lab.reconcile(host, "--dry-run", "--detailed-exitcode", expect=0)
            lab.say(f"# {host} adopted: the imported desired state plans no change")
    finally:
        subprocess.run(["ip", "netns", "delete", IMPORT_NS], check=False, capture_output=True)
        if made_switch:
            subprocess.run(["ip", "netns", "delete", stages.SWITCH], check=False,
                           capture_output=True)  # fmt: skip


def _nics(desired: HostDesired) -> dict[str, Any]:
    nics: dict[str, Any] = desired.raw.get("nics") or {}
    return nics


def _has_ports(cfg: Any) -> bool:
    return isinstance(cfg, dict) and "ports" in cfg


def run(repo: Path, hosts: Sequence[str]) -> None:
    """The adoption stage for one of ``hosts``: one with ipsets, a bridge first (the most
    to import); nothing when none has ipsets."""
    loaded = {h: stages.load_host(repo, h) for h in hosts}
    with_sets = [h for h in hosts if loaded[h].ipsets]
    bridged = [h for h in with_sets if any(_has_ports(c) for c in _nics(loaded[h]).values())]
    if with_sets:
        import_stage(repo, (bridged or with_sets)[0])
