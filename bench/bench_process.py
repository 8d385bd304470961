"""Whole processes, as a user runs them: ``reconcile`` against ``ipset restore`` / ``ipset save``.

Run as root: ``.venv/bin/python -m bench.bench_process`` (``--quick`` for fewer runs). It creates
one network namespace (deleted at the end, also on error) and runs every command inside it with
``ip netns exec``, ours and the standard tool alike, so both pay the same wrapper. Nothing on the
host's own network is touched.

Each row runs the two commands in turn (A B A B ...) and takes the median of the per-pair ratios,
so a drift in machine speed moves both. The package is byte-compiled first and the commands run
without ``PYTHONDONTWRITEBYTECODE``, as an installed package runs (pip compiles it). Peak memory
is each child's own maximum resident size (``wait4``), and its CPU time (user + sys, its own
child processes included) is shown beside the wall time: on a loaded machine it moves less.
The desired state is a committed git work tree (``--repo DIR``), as a host that pulls its
repository has it; its state dir is private to the benchmark.

Rows (issue 15's targets):

1. load 65,536 members from YAML (inline ``members:``) from nothing: ``reconcile`` (plan, apply,
   verify) vs ``ipset restore`` of a create line and 65,536 add lines; the set is destroyed
   before each run and the state dir is new, so nothing is cached (target <= 2);
2. no-op dry-run of the same, the timer run on an unchanged commit, vs ``ipset save NAME``
   (target <= 3); the same with nothing cached is shown beside it;
3. and 4. the same with 200,000 members from a ``members_from:`` list file (targets <= 1.5 and
   <= 2).

A benchmark is not a test: the exit status is 0 unless a command fails.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_ipset import _networks

SEED = 20261129
SET = "bench"
RECONCILE = str(Path(sys.executable).with_name("reconcile"))
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@dataclass
class Row:
    """One comparison: our command against the standard tool's, in pairs."""

    label: str
    ours: list[float]
    tool: list[float]
    ratios: list[float]
    peak_mb: float
    target: float | None
    #: CPU seconds (user + sys, the child processes included) of each run, ours and the tool's
    ours_cpu: list[float] = field(default_factory=list)
    tool_cpu: list[float] = field(default_factory=list)

    def line(self) -> str:
        """The row as printed: medians in ms, the median ratio, the target and a verdict,
        then the CPU medians (user + sys) in ms and their ratio, which a loaded machine
        moves less than the wall time."""
        ratio = statistics.median(self.ratios)
        verdict = "" if self.target is None else ("PASS" if ratio <= self.target else "MISS")
        target = f"<= {self.target:g}" if self.target else ""
        ours_cpu = statistics.median(self.ours_cpu)
        tool_cpu = statistics.median(self.tool_cpu)
        return (f"{self.label:<52} {statistics.median(self.ours) * 1000:9.1f} "
                f"{statistics.median(self.tool) * 1000:9.1f} {ratio:7.2f} {target:>7} "
                f"{self.peak_mb:8.1f} {ours_cpu * 1000:8.1f} {tool_cpu * 1000:8.1f} "
                f"{ours_cpu / tool_cpu if tool_cpu else float('inf'):6.2f}  {verdict}")  # fmt: skip


def _timed(argv: Sequence[str], ok: Sequence[int] = (0,)) -> tuple[float, float, float]:
    """Run ``argv`` to completion; return (wall seconds, the child's peak RSS in MB, its CPU
    seconds: user + sys, its own children included)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_ENV)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err.decode()[-800:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def _pairs(
    label: str,
    ours: Sequence[str],
    tool: Sequence[str],
    runs: int,
    target: float | None,
    *,
    before_ours: Callable[[], object] = lambda: None,
    before_tool: Callable[[], object] = lambda: None,
    ok: Sequence[int] = (0,),
) -> Row:
    """Run ours and the tool in turn ``runs`` times (after one unrecorded warm-up pair)."""
    row = Row(label, [], [], [], 0.0, target)
    for i in range(runs + 1):
        before_ours()
        t_ours, peak, cpu_ours = _timed(ours, ok)
        before_tool()
        t_tool, _, cpu_tool = _timed(tool)
        if i == 0:
            continue
        row.ours.append(t_ours)
        row.tool.append(t_tool)
        row.ours_cpu.append(cpu_ours)
        row.tool_cpu.append(cpu_tool)
        row.ratios.append(t_ours / t_tool)
        row.peak_mb = max(row.peak_mb, peak)
    return row


def _git_repo(path: Path, files: dict[str, str]) -> None:
    """A committed git work tree holding ``files`` (relative path -> text)."""
    path.mkdir(parents=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org"}  # fmt: skip
    for argv in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(argv, cwd=path, check=True, env=env)


def _case(
    ns: str,
    tmp: Path,
    name: str,
    members: list[str],
    *,
    from_list: bool,
    runs: int,
    targets: tuple[float, float],
) -> list[Row]:
    """The load and no-op rows for one desired set of ``members``."""
    maxelem = 1 << max(16, (len(members) - 1).bit_length())
    spec = f"ipsets:\n  {SET}:\n    type: hash:net\n    maxelem: {maxelem}\n"
    files = {"hosts/bench.yaml": "{}\n"}
    if from_list:
        spec += "    members_from: lists/bench.netset\n"
        files["lists/bench.netset"] = "# benchmark list\n" + "".join(f"{m}\n" for m in members)
    else:
        spec += "    members:\n" + "".join(f"      - {m}\n" for m in members)
    files["fleet.yaml"] = spec
    repo = tmp / f"repo-{name}"
    _git_repo(repo, files)
    restore = tmp / f"restore-{name}.txt"
    restore.write_text(
        f"create {SET} hash:net family inet maxelem {maxelem}\n"
        + "".join(f"add {SET} {m}\n" for m in members)
    )
    wrap = ["ip", "netns", "exec", ns]
    state = tmp / f"state-{name}"

    def reconcile(*extra: str, state_dir: Path = state) -> list[str]:
        return [*wrap, RECONCILE, *extra, "--repo", str(repo), "--host", "bench",
                "--state-dir", str(state_dir), "--lock-file", str(tmp / "lock"),
                "--metrics-file", "", "--log-format", "json"]  # fmt: skip

    def destroy() -> None:
        subprocess.run([*wrap, "ipset", "destroy", SET], stderr=subprocess.DEVNULL, check=False)

    def fresh_state() -> None:
        destroy()
        shutil.rmtree(state, ignore_errors=True)

    count = f"{len(members):,}"
    source = "a members_from list" if from_list else "YAML"
    rows = [
        _pairs(f"load {count} from {source} vs ipset restore", reconcile(),
               [*wrap, "ipset", "restore", "-f", str(restore)], runs, targets[0],
               before_ours=fresh_state, before_tool=destroy),
    ]  # fmt: skip
    # Converged, as a timer leaves it: the first run creates the set and the state dir, the
    # second (its state dir now there) fills the desired-state cache a dry-run reads.
    fresh_state()
    _timed(reconcile())
    _timed(reconcile())
    noop = reconcile("--dry-run", "--detailed-exitcode")
    save = [*wrap, "ipset", "save", SET]
    rows.append(_pairs(f"no-op dry-run, {count} ({source}) vs ipset save", noop, save,
                       runs, targets[1]))  # fmt: skip
    cold_state = tmp / f"cold-{name}"

    def cold() -> None:
        # A state dir with the ownership record but nothing cached: copy it without cache/.
        shutil.rmtree(cold_state, ignore_errors=True)
        shutil.copytree(state, cold_state, ignore=shutil.ignore_patterns("cache", "*.lock"))

    rows.append(_pairs("  the same, nothing cached", reconcile("--dry-run", "--detailed-exitcode",
                       state_dir=cold_state), save, runs, None, before_ours=cold))  # fmt: skip
    destroy()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rows and print them; exit 0 (a benchmark is not a test)."""
    parser = argparse.ArgumentParser(prog="bench_process", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 pairs a row instead of 7")
    parser.add_argument("--only", choices=["yaml", "list"], help="run one case only")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_process: needs root (it creates a network namespace)", file=sys.stderr)
        return 0
    runs = 3 if args.quick else 7
    import reconciler

    package = str(Path(reconciler.__file__).parent)
    subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=True, env=_ENV)
    rng = random.Random(SEED)
    load_before = os.getloadavg()[0]
    ns = f"bench-proc-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-process-"))
    os.chmod(tmp, 0o700)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rows: list[Row] = []
    try:
        if args.only in (None, "yaml"):
            members = _networks(rng, 65_536, set())
            rows += _case(ns, tmp, "yaml", members, from_list=False, runs=runs, targets=(2.0, 3.0))
        if args.only in (None, "list"):
            members = _networks(rng, 200_000, set())
            rows += _case(ns, tmp, "list", members, from_list=True, runs=runs, targets=(1.5, 2.0))
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nwhole processes, medians of {runs} pairs (ip netns exec for both), seed {SEED}")
    print(f"{'case':<52} {'ours ms':>9} {'tool ms':>9} {'ratio':>7} {'target':>7} "
          f"{'peak MB':>8} {'ours cpu':>8} {'tool cpu':>8} {'cpu x':>6}")  # fmt: skip
    print(f"(cpu: user + sys ms, child processes included; 1-minute load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after)")  # fmt: skip
    for row in rows:
        print(row.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
