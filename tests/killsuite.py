"""The kill suite's harness: run the real command line, SIGKILL it at an op boundary, judge.

No product hooks: the command line runs through :data:`WRAPPER` (``python -c``), which patches
the I/O boundary methods of the kinds named in ``$KILL_TARGETS`` (:data:`BOUNDARIES`) to count
their calls and, at call ``$KILL_AT``, send the process SIGKILL *before* the call
(``$KILL_WHEN=before``), right *after* it returned (``after``), or *during* it (``during``):
the call runs with ``$KILL_DURING_ENV`` (a JSON object) added to the environment its commands
inherit (the tarsnap emulator's ``FAKE_TARSNAP_INTERRUPT=kill``: the command dies mid-way by
itself), and, with ``$KILL_DURING_GLOB``, a watcher SIGKILLs the process's children and then
the process as soon as a file matching that pattern exists (a restic lock file: restic is
writing to its repository), or ``$KILL_DURING_DELAY`` seconds into the call (a libvirt
migration, which runs in the daemons) -- a service killed as a whole (its cgroup) while its
command runs. Whatever the call did, the process is killed when it returns. Then it runs
:func:`reconciler.cli.main`. With ``$KILL_LOG`` every boundary call reached is appended to
that file as one line (``kind:method detail``).

:func:`exercise` drives one scenario: one uninterrupted run counts the boundaries (and must
converge), then for each chosen kill point a fresh copy of the scenario's starting state is
run to that point and killed, the state the kill left is checked, the next (plain) run must
converge, and what was ours must still be ours. Every problem is collected with the point it
was seen at, so a failure names them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKERS = max(2, min(4, os.cpu_count() or 1))
"""Kill points run at a time."""

#: kind -> (module, class or None for module functions, the methods that write to the host)
BOUNDARIES: dict[str, tuple[tuple[str, str | None, tuple[str, ...]], ...]] = {
    "ipset": (
        ("reconciler.kinds.ipset.netlink", "IpsetClient",
         ("create", "destroy", "swap", "rename", "add_members", "delete_members")),
        ("reconciler.kinds.ipset.firewall", None, ("insert_rule", "delete_rule")),
    ),
    "nic": (("reconciler.kinds.nic.ethtool", "EthtoolIO", ("set_rings", "set_features")),),
    "backup": (
        ("reconciler.kinds.backup.tarsnap", "TarsnapBackend", ("create", "delete")),
        ("reconciler.kinds.backup.restic", "ResticBackend", ("create", "delete")),
    ),
    "vm": (
        ("reconciler.kinds.vm.libvirtio", "NodeIO",
         ("define", "undefine", "start", "migrate_live", "shutdown", "resume", "destroy")),
    ),
}  # fmt: skip

WRAPPER = textwrap.dedent(
    """
    import glob, importlib, json, os, re, signal, sys, threading, time

    BOUNDARIES = json.loads(os.environ["KILL_BOUNDARIES"])
    KILL_AT = int(os.environ.get("KILL_AT", "0"))
    WHEN = os.environ.get("KILL_WHEN", "before")
    LOG = os.environ.get("KILL_LOG")
    calls = [0]

    def detail(owner, args):
        words = []
        if owner is not None and args and hasattr(args[0], "name"):
            words.append(str(args[0].name))  # a NodeIO's node
        for a in args[1 if owner is not None else 0:]:
            if isinstance(a, str) and a.lstrip().startswith("<"):  # libvirt XML: its name
                found = re.search(r"<name>([^<]*)</name>", a)
                words.append(f"<{found.group(1) if found else 'xml'}>")
            elif isinstance(a, str):
                a = " ".join(a.split())
                words.append(a if len(a) < 40 else a[:37] + "...")
            elif isinstance(a, (list, tuple)) and a and all(isinstance(x, str) for x in a):
                words.append(f"[{len(a)}]")
        return " ".join(words[:4])

    def kill_all():
        me = str(os.getpid())
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:  # ppid: a child of ours (tarsnap, restic)
                try:
                    os.kill(int(stat.split("/")[2]), signal.SIGKILL)
                except OSError:
                    pass
        os.kill(os.getpid(), signal.SIGKILL)

    def watch(pattern, delay):
        start = time.monotonic()
        while time.monotonic() < start + 60:
            if (pattern and glob.glob(pattern)) or (delay and time.monotonic() >= start + delay):
                kill_all()
            time.sleep(0.005)

    def during(original, args, kwargs):
        os.environ.update(json.loads(os.environ.get("KILL_DURING_ENV", "{}")))
        pattern = os.environ.get("KILL_DURING_GLOB")
        delay = float(os.environ.get("KILL_DURING_DELAY", "0"))
        if pattern or delay:
            threading.Thread(target=watch, args=(pattern, delay), daemon=True).start()
        try:
            original(*args, **kwargs)
        finally:
            kill_all()

    def wrap(kind, module, owner, name):
        target = owner if owner is not None else module
        original = getattr(target, name)

        def boundary(*args, **kwargs):
            calls[0] += 1
            n = calls[0]
            if LOG:
                with open(LOG, "a") as f:
                    f.write(f"{kind}:{name} {detail(owner, args)}".rstrip() + "\\n")
            if n == KILL_AT and WHEN == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            if n == KILL_AT and WHEN == "during":
                during(original, args, kwargs)
            result = original(*args, **kwargs)
            if n == KILL_AT and WHEN == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(target, name, boundary)

    for kind, entries in BOUNDARIES.items():
        for module_name, class_name, methods in entries:
            module = importlib.import_module(module_name)
            owner = getattr(module, class_name) if class_name else None
            for method in methods:
                wrap(kind, module, owner, method)

    from reconciler.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def wrapper_env(
    kinds: Sequence[str],
    *,
    kill_at: int = 0,
    when: str = "before",
    log: Path | None = None,
    during: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment that makes :data:`WRAPPER` patch ``kinds`` and kill at ``kill_at``
    (0: never) ``when`` (before, during or after the call), logging calls to ``log``;
    ``during`` adds ``KILL_DURING_ENV``/``KILL_DURING_GLOB`` for a kill during the call."""
    import json

    env = {
        "KILL_BOUNDARIES": json.dumps({k: BOUNDARIES[k] for k in kinds}),
        "KILL_AT": str(kill_at),
        "KILL_WHEN": when,
        "PYTHONPATH": str(PROJECT_ROOT),
        **(during or {}),
    }
    if log is not None:
        env["KILL_LOG"] = str(log)
    return env


def killed(proc: subprocess.CompletedProcess[str]) -> bool:
    """True when the process died of SIGKILL (directly, or as a shell reports it)."""
    return proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    """A process's exit code and output, for assertion messages (the tail of each)."""
    return (
        f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n"
        f"--- stderr ---\n{proc.stderr[-3000:]}"
    )


@dataclass(frozen=True)
class Point:
    """A kill point: before or after the ``index``-th boundary call (1-based)."""

    index: int
    when: str
    label: str

    def __str__(self) -> str:
        return f"#{self.index} {self.when} {self.label}"


def choose_points(
    labels: Sequence[str],
    after: Callable[[str], bool],
    during: Callable[[str], bool] = lambda label: False,
) -> list[Point]:
    """Every boundary killed *before* its call, *during* it where ``during(label)`` (a
    command that writes while it runs: an archive being made), and *after* it where
    ``after(label)`` (where bookkeeping follows the call: ownership confirmed, a definition
    verified) and after the last call (everything applied; the verification and the journal
    not done)."""
    points: list[Point] = []
    for i, label in enumerate(labels, 1):
        points.append(Point(i, "before", label))
        if during(label):
            points.append(Point(i, "during", label))
        if after(label) or i == len(labels):
            points.append(Point(i, "after", label))
    return points


class Scenario(Protocol):
    """One kill-suite scenario: a starting state, a change to make, and its checks.

    ``run`` runs the command line (through the wrapper when ``env`` asks) and returns the
    process; each check returns the problems it found (empty when all is well).
    """

    kind: str

    def run(self, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]: ...

    def check_killed(self) -> list[str]: ...

    def check_converged(self) -> list[str]: ...

    def check_ours_kept(self) -> list[str]: ...


@runtime_checkable
class KilledDuring(Protocol):
    """A scenario with points *during* a call: the environment that makes the call's
    command die mid-way, or the file whose appearance says it is writing (see the module
    doc)."""

    def during_env(self, label: str) -> dict[str, str]: ...


@dataclass
class Outcome:
    """What :func:`exercise` found: the boundaries counted, the points killed, problems."""

    labels: list[str] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def exercise(
    fresh: Callable[[Path], AbstractContextManager[Scenario]],
    root: Path,
    *,
    after: Callable[[str], bool] = lambda label: False,
    during: Callable[[str], bool] = lambda label: False,
    workers: int = WORKERS,
) -> Outcome:
    """Count the boundaries of one uninterrupted run, then kill a run at every point
    (:func:`choose_points`) of a fresh copy of the scenario each, and check each outcome.

    ``fresh(directory)`` is a context manager that yields the scenario in its starting state,
    with its files under ``directory``, and removes what it made on exit. ``workers`` points
    run at a time (each in its own copy: its own namespace, state dir, repository).
    """
    out = Outcome()
    log = root / "count.log"
    with fresh(root / "count") as s:
        proc = s.run(wrapper_env([s.kind], log=log))
        if proc.returncode != 0:
            out.problems.append(f"uninterrupted run failed: {output(proc)}")
            return out
        out.labels = log.read_text().splitlines() if log.exists() else []
        out.problems += [f"uninterrupted: {p}" for p in s.check_converged()]
        out.problems += [f"uninterrupted: {p}" for p in s.check_ours_kept()]
    out.points = choose_points(out.labels, after, during)

    def one(n: int, point: Point) -> list[str]:
        with fresh(root / f"p{n}") as s:
            extra = None
            if point.when == "during" and isinstance(s, KilledDuring):
                extra = s.during_env(point.label)
            env = wrapper_env([s.kind], kill_at=point.index, when=point.when, during=extra)
            proc = s.run(env)
            if not killed(proc):
                return [f"{point}: the run was not killed there: {output(proc)}"]
            problems = [f"{point}: after the kill: {p}" for p in s.check_killed()]
            again = s.run()
            if again.returncode != 0:
                return [*problems, f"{point}: the next run failed: {output(again)}"]
            problems += [f"{point}: after the next run: {p}" for p in s.check_converged()]
            problems += [f"{point}: {p}" for p in s.check_ours_kept()]
            return problems

    # Points are independent (each has its own copy of the starting state), so they run
    # side by side: the runs wait on the kernel, on restic or on libvirt as much as on CPU.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for problems in pool.map(one, range(len(out.points)), out.points):
            out.problems += problems
    return out


def python_argv(env: Mapping[str, str] | None) -> list[str]:
    """``python -c WRAPPER`` when ``env`` asks for the wrapper, else ``python -m reconciler``."""
    if env is not None and "KILL_BOUNDARIES" in env:
        return [sys.executable, "-c", WRAPPER]
    return [sys.executable, "-m", "reconciler"]


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without an SSH client and metrics, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_CONNECTION", "KILL_AT")}
    env["RECONCILER_METRICS_FILE"] = ""
    return {**env, **(extra or {})}


def cli_args(repo: Path, root: Path, kind: str, host: str = "h1") -> list[str]:
    """The command line of a run of ``host`` limited to ``kind``, its state under ``root``."""
    return [
        "--repo", str(repo), "--host", host, "--state-dir", str(root / "state"),
        "--lock-file", str(root / "lock"), "--log-format", "json", "--only", kind,
    ]  # fmt: skip


def no_writes(scenario: Scenario, log: Path) -> list[str]:
    """No needless write: a run through the wrapper on the converged host (``log`` lists
    its boundary calls) succeeds and makes no call at all."""
    proc = scenario.run(wrapper_env([scenario.kind], log=log))
    if proc.returncode != 0:
        return [f"a run on the converged host failed: {output(proc)}"]
    if log.exists() and log.read_text().strip():
        return [f"a run on the converged host wrote: {log.read_text().split()}"]
    return []


def ethtool_features(text: str) -> dict[str, str]:
    """``ethtool -k IFNAME``'s output as feature -> on/off (``[fixed]`` dropped)."""
    out: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        name, _, value = line.strip().partition(": ")
        if value:
            out[name] = value.split()[0]
    return out


def lines_of(text: str) -> Iterator[str]:
    """Non-empty lines."""
    return (ln for ln in text.splitlines() if ln.strip())
