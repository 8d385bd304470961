"""The kill suite (issue 14): the real command line, killed with SIGKILL at every op boundary
of every kind, and the next run must converge with nothing lost.

How: :mod:`tests.killsuite` runs ``reconcile`` through a ``python -c`` wrapper that patches the
kinds' I/O boundary methods (no product hooks) to count their calls and SIGKILL the process
before a chosen call, or right after it. One uninterrupted run per scenario counts the
boundaries; then each point is run on a fresh copy of the scenario's starting state, killed,
and judged:

* right after the kill: no set a rule uses is empty, members present before and after the
  change are present, nothing foreign is touched, every VM is defined on at least one node,
  no archive the keep policy keeps is gone;
* the next run (plain ``reconcile``) exits 0: it converged (it re-reads and verifies);
* nothing of ours is forgotten: every set it made is recorded as ours, and marking every set
  git ever named ``absent: true`` deletes them with their rules, leaving foreign ones alone.

Kinds and what a namespace allows: ipset (set create, member batches, swap, rename, destroy,
rule insert and delete) and nic offloads (veth) in network namespaces; nic ring writes need a
driver with rings, which no virtual device in a namespace has (veth, dummy, bridge, tap all
answer EOPNOTSUPP), so their points run inside the test VM on a real e1000, with this
harness (``tests/vm_inner/test_nic_ring_kills.py``, run by ``tests/lab/test_lab_vm.py`` in
its one boot). backup against the tarsnap emulator and a real restic repository, killed
before, during (the emulator dies mid-call; restic is killed once it holds its repository's
lock) and after; vm against two real libvirtd daemons when they can be started: with their
QEMU driver (under TCG) define, undefine, start and live migration (before, 0.3 s into it,
after) under kill; the graceful stop (a move with ``allow_stop`` and a VM stopped in place)
with the test driver the same daemons serve on the same sockets
(``test+unix:///default?socket=...``), because the QEMU test domains boot no OS and nothing
would answer the ACPI shutdown, while a test-driver guest stops at once. The number of
points per kind is asserted (README, "Crash safety").
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import hostcfg, killsuite
from tests.killsuite import Outcome, base_env, output, python_argv
from tests.netns import Netns, require_kernel_lab

HOST = "h1"


# ======================================================================================= ipset
@dataclass(frozen=True)
class IpsetCase:
    """One ipset scenario: git's sets before (``start``, applied by a plain run to make the
    starting state) and after (``change``); ``foreign`` commands make what is not ours (run
    after the start, in the namespace). Sets git names are given as YAML."""

    name: str
    start: str
    change: str
    foreign: tuple[tuple[str, ...], ...] = ()

    def sets(self, text: str) -> dict[str, dict[str, Any]]:
        """The ``ipsets:`` entries of ``text``."""
        return dict((yaml.safe_load(text) or {}).get("ipsets") or {})

    def git_names(self) -> set[str]:
        """Every set git names in either state."""
        return set(self.sets(self.start)) | set(self.sets(self.change))

    def tombstones(self) -> str:
        """git with every set it ever named marked absent."""
        return "ipsets:\n" + "".join(f"  {n}: {{absent: true}}\n" for n in sorted(self.git_names()))


FOREIGN = (
    ("ipset", "create", "theirs", "hash:net"),
    ("ipset", "add", "theirs", "10.0.0.0/8"),
    ("iptables", "-A", "INPUT", "-m", "set", "--match-set", "theirs", "src", "-j", "DROP"),
    ("ipset", "create", "mgmt~rnew", "hash:net"),  # our temporary name pattern, not ours
    ("ipset", "add", "mgmt~rnew", "10.8.0.0/16"),
)

IPSET_CASES = (
    IpsetCase(
        "create",
        start="ipsets: {}\n",
        change="""\
ipsets:
  mgmt:
    type: hash:net
    members: [192.0.2.0/24, 198.51.100.0/25, 203.0.113.0/26]
    firewall: {chain: INPUT, in_interface: "!eth0", target: ACCEPT}
  office:
    type: hash:net
    members: [198.51.100.128/25, 172.16.0.0/12]
    firewall: {chain: INPUT, in_interface: eth+, target: ACCEPT}
  blocked:
    type: hash:net
    family: inet6
    members: ["2001:db8:bad::/48"]
    firewall: {chain: INPUT, target: DROP}
""",
        foreign=(
            *FOREIGN,
            ("ipset", "create", "mgmt-rnew", "hash:net"),
            ("ipset", "add", "mgmt-rnew", "10.9.0.0/16"),
        ),
    ),
    IpsetCase(
        "update",
        start="""\
ipsets:
  mgmt:
    type: hash:net
    members: [192.0.2.0/24, 198.51.100.0/25]
    firewall: {chain: INPUT, target: ACCEPT}
  extra:
    type: hash:net
    members: [203.0.113.0/24]
    firewall: {chain: INPUT, target: ACCEPT}
  old:
    type: hash:net
    members: [10.20.0.0/16]
""",
        change="""\
ipsets:
  mgmt:
    type: hash:net
    members: [192.0.2.0/24, 203.0.113.128/25, 172.16.0.0/16]
    firewall: {chain: INPUT, target: ACCEPT}
  extra: {absent: true}
  fresh:
    type: hash:net
    members: [10.30.0.0/16]
    firewall: {chain: INPUT, in_interface: eth1, target: ACCEPT}
""",
        foreign=FOREIGN,
    ),
    IpsetCase(
        "rebuild",
        start="""\
ipsets:
  mgmt:
    type: hash:net
    maxelem: 1024
    members: [192.0.2.0/24, 198.51.100.0/24]
    firewall: {chain: INPUT, target: ACCEPT}
  mgmt-rnew:
    type: hash:net
    members: [10.40.0.0/16]
  full:
    type: hash:net
    maxelem: 4
    members: [10.1.0.0/16, 10.2.0.0/16, 10.3.0.0/16, 10.4.0.0/16]
    firewall: {chain: INPUT, target: ACCEPT}
  tight:
    type: hash:net
    maxelem: 2
    members: [10.50.0.0/16, 10.51.0.0/16]
    firewall: {chain: INPUT, target: ACCEPT}
  fam:
    type: hash:net
    members: [192.0.2.0/24]
""",
        change="""\
ipsets:
  mgmt:
    type: hash:net
    maxelem: 2048
    members: [192.0.2.0/24, 198.51.100.0/24]
    firewall: {chain: INPUT, target: ACCEPT}
  mgmt-rnew:
    type: hash:net
    members: [10.40.0.0/16]
  full:
    type: hash:net
    maxelem: 4
    members: [10.1.0.0/16, 10.2.0.0/16, 10.3.0.0/16, 10.5.0.0/16]
    firewall: {chain: INPUT, target: ACCEPT}
  tight:
    type: hash:net
    maxelem: 2
    members: [10.50.0.0/16, 10.51.1.0/24]
    firewall: {chain: INPUT, target: ACCEPT}
  fam:
    type: hash:net
    family: inet6
    members: ["2001:db8:fa::/48"]
""",
        foreign=FOREIGN,
    ),
)

#: Kill points per ipset scenario: every boundary before its call, after it too for set
#: creates and rule inserts (ownership is confirmed after those), and after the last.
IPSET_POINTS = {"create": 15, "update": 11, "rebuild": 18}


def _after_ipset(label: str) -> bool:
    return label.startswith(("ipset:create", "ipset:insert_rule"))


@dataclass
class Saved:
    """A namespace's kernel state and a state dir, to start each point from."""

    ipsets: str
    rules: dict[str, str]
    state: Path


def _live_sets(ns: Netns) -> dict[str, set[str]]:
    """Every set of the namespace -> its members, as ``ipset save`` prints them."""
    out: dict[str, set[str]] = {}
    for line in ns.run(["ipset", "save"]).stdout.splitlines():
        words = line.split()
        if words[:1] == ["create"]:
            out.setdefault(words[1], set())
        elif words[:1] == ["add"]:
            out.setdefault(words[1], set()).add(words[2])
    return out


def _set_lines(ns: Netns) -> dict[str, list[str]]:
    """``ipset save`` lines per set, the random initval removed."""
    out: dict[str, list[str]] = {}
    for line in ns.ipset_save().splitlines():
        out.setdefault(line.split()[1], []).append(line)
    return out


def _rules(ns: Netns) -> list[str]:
    """Every rule of both families that matches on a set (``iptables -S`` lines)."""
    return [
        f"{binary} {line}"
        for binary in ("iptables", "ip6tables")
        for line in ns.run([binary, "-S"]).stdout.splitlines()
        if "--match-set" in line
    ]


def _rule_of(name: str, spec: Mapping[str, Any]) -> str | None:
    """The ``iptables -S`` line of the rule git asks for ``name``, with its binary."""
    fw = spec.get("firewall")
    if fw is None:
        return None
    iface = fw.get("in_interface")
    where = ""
    if iface:
        where = f"! -i {iface[1:]} " if iface.startswith("!") else f"-i {iface} "
    binary = "ip6tables" if spec.get("family") == "inet6" else "iptables"
    return (
        f"{binary} -A {fw.get('chain', 'INPUT')} {where}-m set --match-set {name} src "
        f"-j {fw.get('target', 'ACCEPT')}"
    )


class IpsetScenario:
    """One point's copy of an :class:`IpsetCase`: a namespace restored from ``saved``."""

    kind = "ipset"

    def __init__(self, case: IpsetCase, saved: Saved, root: Path) -> None:
        self.case = case
        self.root = root
        self.repo = root / "repo"
        (self.repo / "hosts").mkdir(parents=True)
        (self.repo / "hosts" / f"{HOST}.yaml").write_text("{}\n")
        self.state = root / "state"
        shutil.copytree(saved.state, self.state)
        self.ns = Netns("rkill")
        self.ns.run(["ipset", "restore"], input=saved.ipsets)
        for binary, text in saved.rules.items():
            self.ns.run([f"{binary}-restore"], input=text)
        self.foreign_sets = {n: ls for n, ls in _set_lines(self.ns).items() if self._foreign(n)}
        self.foreign_rules = [r for r in _rules(self.ns) if "--match-set theirs " in r]
        self.start = {n: set(s["members"]) for n, s in case.sets(case.start).items()}
        self.write(case.change)

    def _foreign(self, name: str) -> bool:
        return name not in self.case.git_names()

    def write(self, text: str) -> None:
        (self.repo / "fleet.yaml").write_text(text)

    def run(self, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        args = killsuite.cli_args(self.repo, self.root, "ipset")
        return self.ns.run([*python_argv(env), *args], check=False, env=base_env(env))

    def _foreign_intact(self) -> list[str]:
        problems = []
        now = _set_lines(self.ns)
        for name, lines in self.foreign_sets.items():
            if now.get(name) != lines:
                problems.append(f"foreign set {name} changed: {lines} -> {now.get(name)}")
        rules = _rules(self.ns)
        for rule in self.foreign_rules:
            if rules.count(rule) != 1:
                problems.append(f"foreign rule {rule!r} changed")
        return problems

    def check_killed(self) -> list[str]:
        problems = self._foreign_intact()
        sets = _live_sets(self.ns)
        for rule in _rules(self.ns):
            used = rule.split("--match-set ")[1].split()[0]
            if not sets.get(used):
                problems.append(f"set {used} is empty or missing while a rule uses it: {rule}")
        want = {n: set(s["members"]) for n, s in self.case.sets(self.case.change).items()
                if not s.get("absent")}  # fmt: skip
        for name, before in self.start.items():
            kept = before & want.get(name, set())
            if kept and not kept <= sets.get(name, set()):
                problems.append(f"set {name} lost {sorted(kept - sets.get(name, set()))}, "
                                "present before and after the change")  # fmt: skip
        return problems

    def _ours(self) -> dict[str, dict[str, Any]]:
        data = json.loads((self.state / "ours.json").read_text())
        ours: dict[str, dict[str, Any]] = data.get("ipset", {})
        return ours

    def check_converged(self) -> list[str]:
        problems = self._foreign_intact()
        sets = _live_sets(self.ns)
        rules = _rules(self.ns)
        change = self.case.sets(self.case.change)
        for name, spec in change.items():
            if spec.get("absent"):
                if name in sets:
                    problems.append(f"set {name}, marked absent, still exists")
                continue
            if sets.get(name) != set(spec["members"]):
                problems.append(f"set {name} is {sets.get(name)}, git says {spec['members']}")
            rule = _rule_of(name, spec)
            if rule is not None and rules.count(rule) != 1:
                problems.append(f"rule {rule!r} is there {rules.count(rule)} times, not once")
        for name in set(self.start) - set(change):
            if name in sets:
                problems.append(f"set {name} left git (ours, no rule) but was not pruned")
        leftovers = [n for n in sets if "~" in n and n not in self.foreign_sets]
        if leftovers:
            problems.append(f"temporary sets left behind: {leftovers}")
        ours = self._ours()
        for name in sets:
            if not self._foreign(name) and name not in ours:
                problems.append(f"set {name}, made by reconciler, is not recorded as ours")
        for name, record in ours.items():
            if self._foreign(name):
                problems.append(f"foreign set {name} is recorded as ours: {record}")
            if "intent" in record:
                problems.append(f"record of {name} keeps an unconfirmed intent: {record}")
        return problems

    def check_ours_kept(self) -> list[str]:
        """Every set git ever named marked absent: all of them go, with their rules."""
        self.write(self.case.tombstones())
        proc = self.run()
        if proc.returncode != 0:
            return [f"deleting git's sets with tombstones failed: {output(proc)}"]
        problems = self._foreign_intact()
        left = [n for n in _live_sets(self.ns) if not self._foreign(n)]
        if left:
            problems.append(f"sets of ours kept after tombstones: {left}")
        rules = [r for r in _rules(self.ns) if r not in self.foreign_rules]
        if rules:
            problems.append(f"rules of ours kept after tombstones: {rules}")
        if self._ours():
            problems.append(f"ownership records left: {self._ours()}")
        return problems

    def close(self) -> None:
        self.ns.delete()


def _save_start(case: IpsetCase, root: Path) -> Saved:
    """Apply ``case.start`` with a plain run in a namespace, add the foreign objects, and
    keep the kernel state and the state dir."""
    repo = root / "repo"
    (repo / "hosts").mkdir(parents=True)
    (repo / "hosts" / f"{HOST}.yaml").write_text("{}\n")
    (repo / "fleet.yaml").write_text(case.start)
    ns = Netns("rkill")
    try:
        proc = ns.run(
            [*python_argv(None), "--repo", str(repo), "--host", HOST, "--state-dir",
             str(root / "state"), "--lock-file", str(root / "lock"), "--log-format", "json",
             "--only", "ipset"], check=False, env=base_env(),
        )  # fmt: skip
        assert proc.returncode == 0, output(proc)
        for argv in case.foreign:
            ns.run(list(argv))
        return Saved(
            ipsets=ns.run(["ipset", "save"]).stdout,
            rules={b: ns.run([f"{b}-save"]).stdout for b in ("iptables", "ip6tables")},
            state=root / "state",
        )
    finally:
        ns.delete()


@pytest.mark.kernel
@pytest.mark.parametrize("case", IPSET_CASES, ids=[c.name for c in IPSET_CASES])
def test_ipset_killed_at_every_boundary(case: IpsetCase, tmp_path: Path) -> None:
    require_kernel_lab()
    saved = _save_start(case, tmp_path / "start")

    @contextmanager
    def fresh(root: Path) -> Iterator[killsuite.Scenario]:
        scenario = IpsetScenario(case, saved, root)
        try:
            yield scenario
        finally:
            scenario.close()

    outcome = killsuite.exercise(fresh, tmp_path, after=_after_ipset)
    _report("ipset", case.name, outcome)
    assert outcome.problems == [], "\n".join(outcome.problems)
    assert len(outcome.points) == IPSET_POINTS[case.name], outcome.labels


# ========================================================================================= nic
NIC_FLEET = """\
nics:
  v0:
    offloads: {gso: off, gro: on}
  v1:
    offloads: {tso: off, gso: off}
"""
#: The features the offloads above switch, by ethtool -k's names, and their wanted values.
NIC_WANT = {
    "v0": {"generic-segmentation-offload": "off", "generic-receive-offload": "on"},
    "v1": {"tcp-segmentation-offload": "off", "generic-segmentation-offload": "off"},
}
NIC_POINTS = 4


def _features(ns: Netns, ifname: str) -> dict[str, str]:
    """``ethtool -k IFNAME`` in the namespace: feature -> on/off."""
    return killsuite.ethtool_features(ns.run(["ethtool", "-k", ifname]).stdout)


class NicScenario:
    """veth pairs in a namespace: v0 and v1 in git, vx (the same driver) not."""

    kind = "nic"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        (self.repo / "hosts").mkdir(parents=True)
        (self.repo / "hosts" / f"{HOST}.yaml").write_text("{}\n")
        (self.repo / "fleet.yaml").write_text(NIC_FLEET)
        self.ns = Netns("rkill")
        for ifname in ("v0", "v1", "vx"):
            self.ns.run(["ip", "link", "add", ifname, "type", "veth", "peer", "name", f"{ifname}p"])
        self.foreign = _features(self.ns, "vx")

    def run(self, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        args = killsuite.cli_args(self.repo, self.root, "nic")
        return self.ns.run([*python_argv(env), *args], check=False, env=base_env(env))

    def check_killed(self) -> list[str]:
        if _features(self.ns, "vx") != self.foreign:
            return ["vx, a NIC git does not name, changed"]
        return []

    def check_converged(self) -> list[str]:
        problems = self.check_killed()
        for ifname, want in NIC_WANT.items():
            have = _features(self.ns, ifname)
            wrong = {k: have.get(k) for k, v in want.items() if have.get(k) != v}
            if wrong:
                problems.append(f"{ifname}: {wrong}, git says {want}")
        return problems

    def check_ours_kept(self) -> list[str]:
        """No needless write: a converged host gets no ethtool write at all."""
        return killsuite.no_writes(self, self.root / "noop.log")

    def close(self) -> None:
        self.ns.delete()


@pytest.mark.kernel
def test_nic_offloads_killed_at_every_boundary(tmp_path: Path) -> None:
    """Offload writes on veth (ring writes: in the test VM, see the module doc)."""
    require_kernel_lab(("ip", "ethtool"))

    @contextmanager
    def fresh(root: Path) -> Iterator[killsuite.Scenario]:
        scenario = NicScenario(root)
        try:
            yield scenario
        finally:
            scenario.close()

    outcome = killsuite.exercise(fresh, tmp_path, after=lambda label: True)
    _report("nic", "offloads", outcome)
    assert outcome.problems == [], "\n".join(outcome.problems)
    assert len(outcome.points) == NIC_POINTS, outcome.labels


# ====================================================================================== backup
FAKE_TARSNAP = killsuite.PROJECT_ROOT / "lab" / "fake_tarsnap" / "tarsnap"
KEEP_LAST = 2
BACKUP_POINTS = 11


def _stamp(when: datetime) -> str:
    return f"{when:%Y%m%d-%H%M%S}"


@dataclass
class BackupTemplate:
    """What every point of the backup scenario starts from: a restic repository with four
    old snapshots of set ``web`` and one of another set (made once: ``restic init`` is slow),
    and the names of the seeded archives of both sets."""

    root: Path
    seeded: dict[str, list[str]] = field(default_factory=dict)
    foreign: dict[str, list[str]] = field(default_factory=dict)


def _restic_env(repo: Path, password: Path, cache: Path) -> dict[str, str]:
    return {**base_env(), "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(password),
            "RESTIC_CACHE_DIR": str(cache)}  # fmt: skip


def _backup_template(root: Path) -> BackupTemplate:
    now = datetime.now(UTC).replace(microsecond=0)
    t = BackupTemplate(root)
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.conf").write_text("a\n")
    (root / "restic.pass").write_text("kill suite\n")
    (root / "restic.pass").chmod(0o600)
    env = _restic_env(root / "restic", root / "restic.pass", root / "restic-cache")
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    days = [now - timedelta(days=d) for d in (1, 2, 3, 4)]
    t.seeded = {s: [f"{s}-{_stamp(d)}" for d in days] for s in ("etc", "web")}
    t.foreign = {"etc": ["etc-by-hand", "other-" + _stamp(days[0])],
                 "web": ["other-" + _stamp(days[0])]}  # fmt: skip
    for name, when in [*zip(t.seeded["web"], days, strict=True), (t.foreign["web"][0], days[0])]:
        subprocess.run(
            ["restic", "backup", "--tag", "reconciler", "--tag", name, "--host", HOST,
             "--time", f"{when:%Y-%m-%d %H:%M:%S}", "--", str(root / "data")],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
    archives = {n: {"ctime": int(d.timestamp()), "argv": ["tarsnap", "-c", "-f", n],
                    "files": []} for n, d in zip(t.seeded["etc"], days, strict=True)}  # fmt: skip
    for name in t.foreign["etc"]:
        archives[name] = {"ctime": int(days[0].timestamp()), "argv": [], "files": []}
    (root / "tarsnap-state").mkdir()
    (root / "tarsnap-state" / "state.json").write_text(
        json.dumps({"archives": archives, "seq_mismatch": False})
    )
    return t


class BackupScenario:
    """Set ``etc`` on the tarsnap emulator, set ``web`` on a real restic repository, each with
    four old archives and some that are not ours, keep ``last: 2``, a new archive due."""

    kind = "backup"

    def __init__(self, template: BackupTemplate, root: Path) -> None:
        self.t = template
        self.root = root
        shutil.copytree(template.root, root)
        self.during = ""  # the label of the call this copy is killed during, if any
        (root / "tarsnap.key").write_text("# START OF TARSNAP KEY FILE\nkill suite\n")
        (root / "tarsnap.key").chmod(0o600)
        (root / "tarsnap-cache").mkdir()
        (root / "tarsnap-cache" / "directory").touch()
        self.config = hostcfg.write(root / "host", tarsnap=str(FAKE_TARSNAP), restic="restic",
                                    allowed_dirs=[root])  # fmt: skip
        self.repo = root / "repo"
        (self.repo / "hosts").mkdir(parents=True)
        (self.repo / "hosts" / f"{HOST}.yaml").write_text(yaml.safe_dump({
            "tarsnap": {"keyfile": str(root / "tarsnap.key"),
                        "cachedir": str(root / "tarsnap-cache")},
            "backups": {
                "etc": {"backend": "tarsnap", "paths": [str(root / "data")], "every": "1h",
                        "keep": {"last": KEEP_LAST}},
                "web": {"backend": "restic", "repository": str(root / "restic"),
                        "password_file": str(root / "restic.pass"),
                        "paths": [str(root / "data")], "every": "1h",
                        "keep": {"last": KEEP_LAST}},
            },
        }))  # fmt: skip

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return base_env(
            {
                **hostcfg.env_with(self.config, {}),
                "FAKE_TARSNAP_STATE": str(self.root / "tarsnap-state"),
                "RESTIC_CACHE_DIR": str(self.root / "restic-cache"),
                **(extra or {}),
            }
        )

    def run(self, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        args = killsuite.cli_args(self.repo, self.root, "backup")
        return subprocess.run(
            [*python_argv(env), *args], cwd=killsuite.PROJECT_ROOT, env=self.env(env),
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    def archives(self) -> dict[str, set[str]]:
        """The archive names of both sets' backends, as the backends list them."""
        doc = json.loads((self.root / "tarsnap-state" / "state.json").read_text())
        snaps = subprocess.run(
            ["restic", "snapshots", "--json", "--no-lock"], capture_output=True, text=True,
            env=_restic_env(self.root / "restic", self.root / "restic.pass",
                            self.root / "restic-cache"), check=True,
        ).stdout  # fmt: skip
        tags = [t for snap in json.loads(snaps) for t in snap.get("tags") or []]
        tags = [t for t in tags if t != "reconciler"]
        return {"etc": set(doc["archives"]), "web": set(tags)}

    def creating(self) -> dict[str, str]:
        """The archives the state dir records as being created: name -> set."""
        path = self.root / "state" / "ours.json"
        records = json.loads(path.read_text()).get("backup", {}) if path.exists() else {}
        return {a: r.get("set") for a, r in records.items()}

    def during_env(self, label: str) -> dict[str, str]:
        """tarsnap (the emulator) dies mid-way by itself; restic is killed, with us, as soon
        as it has taken its repository's lock (it is then writing)."""
        self.during = label
        if "TarsnapBackend" in label:
            return {"KILL_DURING_ENV": json.dumps({"FAKE_TARSNAP_INTERRUPT": "kill"})}
        return {"KILL_DURING_GLOB": str(self.root / "restic" / "locks" / "*")}

    def _judge(self, *, converged: bool) -> list[str]:
        problems = []
        creating = self.creating()
        for set_name, names in self.archives().items():
            seeded = self.t.seeded[set_name]
            foreign = set(self.t.foreign[set_name])
            if not foreign <= names:
                problems.append(f"{set_name}: archives not ours deleted: {foreign - names}")
            parts = {n for n in names if n.endswith(".part")}
            unrecorded = {p for p in parts if creating.get(p.removesuffix(".part")) != set_name}
            if unrecorded:
                problems.append(f"{set_name}: truncated archives not recorded as ours: "
                                f"{unrecorded} (records: {creating})")  # fmt: skip
            if converged and parts:
                problems.append(f"{set_name}: truncated archives left: {parts}")
            ours = names - foreign - parts
            new = ours - set(seeded)
            if len(new) > 1:
                problems.append(f"{set_name}: more than one new archive: {new}")
            # keep last 2: the newest seeded archive is never deleted, the others only once
            # the new archive exists.
            if seeded[0] not in names:
                problems.append(f"{set_name}: {seeded[0]}, which the policy keeps, was deleted")
            if not new and set(seeded) - names:
                problems.append(f"{set_name}: {set(seeded) - names} deleted before the new archive")
            if converged and ours != {seeded[0], *new} | set():
                problems.append(f"{set_name}: archives {sorted(ours)}, expected the new one and "
                                f"{seeded[0]}")  # fmt: skip
            if converged and len(new) != 1:
                problems.append(f"{set_name}: {len(new)} new archives, expected 1")
        return problems

    def check_killed(self) -> list[str]:
        problems = self._judge(converged=False)
        parts = [n for n in self.archives()["etc"] if n.endswith(".part")]
        if "TarsnapBackend" in self.during and ":create" in self.during and not parts:
            problems.append("killed during tarsnap -c, yet no truncated archive was stored")
        if parts:
            # The next run's archive would have the same name if it ran in the same second
            # (it then waits for the next one): a real timer runs much later.
            time.sleep(1.0)
        return problems

    def check_converged(self) -> list[str]:
        problems = self._judge(converged=True)
        if self.creating():
            problems.append(f"records of archives being created left: {self.creating()}")
        # restic's lock files are named by their 64-hex ID (a "-tmp-" file is one restic
        # was writing when it was killed: never read as a lock).
        locks = [p.name for p in (self.root / "restic" / "locks").iterdir()
                 if re.fullmatch(r"[0-9a-f]{64}", p.name)]  # fmt: skip
        if locks:
            problems.append(f"restic locks left in the repository: {locks}")
        return problems

    def check_ours_kept(self) -> list[str]:
        """Nothing left to do: a dry-run right after plans nothing."""
        dry = subprocess.run(
            [*python_argv(None), "--repo", str(self.repo), "--host", HOST, "--state-dir",
             str(self.root / "state"), "--lock-file", str(self.root / "lock"), "--only", "backup",
             "--dry-run", "--detailed-exitcode"],
            cwd=killsuite.PROJECT_ROOT, env=self.env(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        return [] if dry.returncode == 0 else [f"not converged: the dry-run plans: {output(dry)}"]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")
def test_backup_killed_at_every_boundary(tmp_path: Path) -> None:
    """Archive create and delete on both backends (tarsnap: its emulator)."""
    template = _backup_template(tmp_path / "template")

    @contextmanager
    def fresh(root: Path) -> Iterator[killsuite.Scenario]:
        scenario = BackupScenario(template, root)
        try:
            yield scenario
        finally:
            scenario.close()

    outcome = killsuite.exercise(
        fresh, tmp_path, after=lambda label: ":create" in label, during=lambda label: True
    )
    _report("backup", "tarsnap+restic", outcome)
    assert outcome.problems == [], "\n".join(outcome.problems)
    assert len(outcome.points) == BACKUP_POINTS, outcome.labels


# ========================================================================================== vm
VM_NODES = ("kvm1", "kvm2")
WEB_UUID = "6b1d0e2a-4c3f-4e7b-9a10-1f2e3d4c5b6a"
MAIL_UUID = "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
LEGACY_UUID = "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716"
DB_UUID = "3a2b1c0d-9e8f-4a7b-8c6d-5e4f3a2b1c0d"
#: move: mail defined from its file; web moved from kvm1 to kvm2 (define, undefine, start).
#: migrate: web running on kvm1, live-migrated to kvm2 (killed before, during and after).
#: stop: on the same daemons' test driver, whose guests shut down at once: web running on
#: kvm1 moved to kvm2 with allow_stop (graceful shutdown, define, undefine, start) and db
#: running on kvm2 stopped (shutdown), killed before and after each shutdown.
VM_POINTS = {"move": 7, "migrate": 3, "stop": 9}


def libvirt_running() -> int:
    """libvirt's VIR_DOMAIN_RUNNING (imported late: libvirt is optional for the other kinds)."""
    import libvirt

    return int(libvirt.VIR_DOMAIN_RUNNING)


@pytest.fixture(scope="module")
def vm_nodes() -> Iterator[dict[str, Any]]:
    """Two real libvirtd daemons for the module (lab/libvirtd.py), or a skip saying why."""
    from tests.libvirtnodes import started_nodes

    with started_nodes(VM_NODES) as started:
        yield started


def _link_nodes(nodes: Mapping[str, Any]) -> str:
    """A veth link between the nodes' network namespaces for live-migration data; its URI."""
    kvm1, kvm2 = nodes["kvm1"], nodes["kvm2"]
    probe = subprocess.run(kvm1.nsenter_net(["ip", "link", "show", "kmig1"]),
                           capture_output=True, check=False)  # fmt: skip
    if probe.returncode != 0:
        subprocess.run(["ip", "link", "add", "kmig1", "netns", str(kvm1.init_pid), "type",
                        "veth", "peer", "name", "kmig2", "netns", str(kvm2.init_pid)],
                       check=True)  # fmt: skip
        for node, dev, addr in ((kvm1, "kmig1", "10.251.0.1/24"), (kvm2, "kmig2", "10.251.0.2/24")):
            subprocess.run(node.nsenter_net(["ip", "addr", "add", addr, "dev", dev]), check=True)
            subprocess.run(node.nsenter_net(["ip", "link", "set", dev, "up"]), check=True)
    return "tcp://10.251.0.2"


def _node_uri(node: Any, variant: str) -> str:
    """The URI the scenario names for ``node``: its QEMU driver, or for ``stop`` the test
    driver the same daemon serves over the same socket. The QEMU domains here boot no OS,
    so nothing would answer a graceful shutdown; the test driver's guests stop at once."""
    if variant == "stop":
        return f"test+unix:///default?socket={node.socket}"
    return str(node.uri)


def _clear(conn: Any, timeout: float = 30.0) -> None:
    """Remove every domain of a node. A domain may vanish or be busy while it is removed
    (the incoming copy of a migration a kill cut short is torn down by libvirt when the
    killed run's connection closes): retried until the node is empty."""
    import libvirt

    deadline = time.monotonic() + timeout
    while True:
        try:
            for dom in conn.listAllDomains():
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
            if not conn.listAllDomains():
                return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


class VmScenario:
    """Placement on the two nodes, each point from the same starting domains."""

    kind = "vm"

    def __init__(self, nodes: Mapping[str, Any], root: Path, variant: str) -> None:
        import libvirt

        from lab.libvirtd import small_domain_xml

        self.nodes = nodes
        self.root = root
        self.variant = variant
        uris = {n: _node_uri(node, variant) for n, node in nodes.items()}
        # The scenario's connections stay open until close(): the test driver keeps a
        # daemon's domains only while some connection to it is open.
        self.conns = {n: libvirt.open(uri) for n, uri in uris.items()}
        for conn in self.conns.values():
            _clear(conn)
        k1, k2 = self.conns["kvm1"], self.conns["kvm2"]
        k1.defineXML(small_domain_xml("legacy", vnc_port=5920, domain_uuid=LEGACY_UUID))
        self.legacy_xml = k1.lookupByUUIDString(LEGACY_UUID).XMLDesc(0)
        web = k1.defineXML(small_domain_xml("web", vnc_port=5901, domain_uuid=WEB_UUID))
        self.repo = root / "repo"
        (self.repo / "vms").mkdir(parents=True)
        (self.repo / "hosts").mkdir()
        (self.repo / "fleet.yaml").write_text("{}\n")
        (self.repo / "hosts" / "master.yaml").write_text("{}\n")
        self.config = hostcfg.write(root, allowed_dirs=[n.root for n in nodes.values()],
                                    allow_test_driver=variant == "stop")  # fmt: skip
        doc: dict[str, Any] = {
            "controller": "master",
            "storage": "shared",
            "nodes": {n: {"uri": uri} for n, uri in uris.items()},
        }
        if variant == "move":
            k2.defineXML(small_domain_xml("db", vnc_port=5901))
            (self.repo / "vms" / "mail.xml").write_text(
                small_domain_xml("mail", vnc_port=5910, domain_uuid=MAIL_UUID)
            )
            doc["vms"] = {
                "db": {"node": "kvm2", "vnc_port": 5901, "state": "shutoff"},
                "web": {"node": "kvm2", "vnc_port": "auto", "state": "running"},
                "mail": {"node": "kvm1", "vnc_port": 5910, "state": "shutoff",
                         "definition": "vms/mail.xml"},
            }  # fmt: skip
        elif variant == "stop":
            web.create()
            k2.defineXML(small_domain_xml("db", vnc_port=5902, domain_uuid=DB_UUID)).create()
            doc["vms"] = {
                "web": {"node": "kvm2", "vnc_port": "auto", "state": "running",
                        "allow_stop": True},
                "db": {"node": "kvm2", "vnc_port": 5902, "state": "shutoff"},
            }  # fmt: skip
        else:
            doc["nodes"]["kvm2"]["migration_uri"] = _link_nodes(nodes)
            web.create()
            doc["vms"] = {"web": {"node": "kvm2", "vnc_port": "auto", "state": "running",
                                  "live_migrate": True}}  # fmt: skip
        (self.repo / "vms.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def _args(self) -> list[str]:
        return ["--repo", str(self.repo), "--host", "master", "--only", "vm", "--state-dir",
                str(self.root / "state"), "--lock-file", str(self.root / "lock"),
                "--log-format", "json", "--config", str(self.config)]  # fmt: skip

    def run(self, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*python_argv(env), *self._args()], cwd=killsuite.PROJECT_ROOT,
                              env=base_env(env), capture_output=True, text=True, check=False,
                              timeout=300)  # fmt: skip

    def where(self) -> dict[str, dict[str, tuple[str, bool]]]:
        """VM name -> node -> (UUID, running), for the persistent domains."""
        out: dict[str, dict[str, tuple[str, bool]]] = {}
        for node, conn in self.conns.items():
            for dom in conn.listAllDomains():
                if dom.isPersistent():
                    out.setdefault(dom.name(), {})[node] = (dom.UUIDString(), bool(dom.isActive()))
        return out

    def check_killed(self) -> list[str]:
        problems = []
        found = self.where()
        web = found.get("web", {})
        if not web:
            problems.append("web is defined on no node")
        if any(uuid != WEB_UUID for uuid, _ in web.values()):
            problems.append(f"web changed UUID: {web}")
        running = [n for n, conn in self.conns.items() for dom in conn.listAllDomains()
                   if dom.name() == "web" and dom.state()[0] == libvirt_running()]  # fmt: skip
        if len(running) > 1:
            problems.append(f"web is running on {running}")
        if self.variant != "migrate" and set(found.get("db", {})) != {"kvm2"}:
            problems.append(f"db moved or vanished: {found.get('db')}")
        if len(found.get("mail", {})) > 1:
            problems.append(f"mail is defined on two nodes: {found['mail']}")
        legacy = self.conns["kvm1"].lookupByUUIDString(LEGACY_UUID)
        if legacy.XMLDesc(0) != self.legacy_xml or set(found.get("legacy", {})) != {"kvm1"}:
            problems.append("legacy, a domain git does not name, was touched")
        return problems

    def during_env(self, label: str) -> dict[str, str]:
        """A migration runs in the daemons: the run is killed a moment into it (mostly
        while memory is copied; sometimes before it starts or after it ended)."""
        return {"KILL_DURING_DELAY": "0.3"}

    def check_converged(self) -> list[str]:
        problems = self.check_killed()
        path = self.root / "state" / "ours.json"
        moving = json.loads(path.read_text()).get("vm") if path.exists() else None
        if moving:
            problems.append(f"records of moves in flight left: {moving}")
        found = self.where()
        if found.get("web") != {"kvm2": (WEB_UUID, True)}:
            problems.append(f"web is {found.get('web')}, expected running on kvm2 only")
        if self.variant == "move" and found.get("mail") != {"kvm1": (MAIL_UUID, False)}:
            problems.append(f"mail is {found.get('mail')}, expected defined on kvm1, shut off")
        if self.variant == "stop" and found.get("db") != {"kvm2": (DB_UUID, False)}:
            problems.append(f"db is {found.get('db')}, expected defined on kvm2, shut off")
        return problems

    def check_ours_kept(self) -> list[str]:
        """Nothing left to do: a dry-run right after plans nothing."""
        dry = subprocess.run(
            [*python_argv(None), *self._args(), "--dry-run", "--detailed-exitcode"],
            cwd=killsuite.PROJECT_ROOT, env=base_env(), capture_output=True, text=True,
            check=False, timeout=300,
        )  # fmt: skip
        return [] if dry.returncode == 0 else [f"not converged: {output(dry)}"]

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


@pytest.mark.parametrize("variant", ["move", "migrate", "stop"])
def test_vm_killed_at_every_boundary(
    vm_nodes: dict[str, Any], tmp_path: Path, variant: str
) -> None:
    """define / undefine / start (a move, a definition from git), a live migration, and
    graceful shutdowns (a move with allow_stop, a VM stopped in place; the daemons' test
    driver) on two real libvirtd daemons; the points run one at a time (the nodes are
    shared)."""

    @contextmanager
    def fresh(root: Path) -> Iterator[killsuite.Scenario]:
        scenario = VmScenario(vm_nodes, root, variant)
        try:
            yield scenario
        finally:
            scenario.close()

    outcome = killsuite.exercise(
        fresh,
        tmp_path,
        after=lambda label: ":define" in label or ":shutdown" in label,
        during=lambda label: ":migrate_live" in label,
        workers=1,
    )
    _report("vm", variant, outcome)
    assert outcome.problems == [], "\n".join(outcome.problems)
    assert len(outcome.points) == VM_POINTS[variant], outcome.labels


# ====================================================================================== shared
def _report(kind: str, scenario: str, outcome: Outcome) -> None:
    """Print the boundaries and points of a scenario (``pytest -s`` shows them)."""
    n, points = len(outcome.labels), len(outcome.points)
    print(f"\n{kind}/{scenario}: {n} boundaries, {points} kill points")
    for point in outcome.points:
        print(f"  {point}")
