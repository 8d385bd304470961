"""Benchmark the ``nic`` kind's dry-run against ``ethtool -g`` + ``ethtool -k`` per NIC.

Run as root: ``.venv/bin/python -m bench.bench_nic``. It creates its own network namespace
with 64 veth NICs (deleted at the end, also on error), never touching the host's.

Rows (medians; the target is ours <= 0.5x the standard way):

* standard: ``ethtool -g nN`` and ``ethtool -k nN`` once per NIC (128 processes), started from
  this process with its thread inside the namespace (so no ``ip netns exec`` overhead);
* ours, warm: ``NicProvider.read`` + ``diff`` for the 64 NICs with offloads desired that
  already match (an empty plan), in-process after import, opening the I/O layer each time;
* pyroute2 import: a fresh interpreter's ``import pyroute2`` minus a bare interpreter start,
  reported separately because the warm row does not pay it;
* ours, cold: a whole new process (interpreter start + imports + read + diff), the cost of a
  ``reconcile --dry-run --only nic`` minus its git and YAML work.

Then a no-op apply over the 64 NICs (engine apply + re-read) must issue zero ethtool writes
(the I/O layer's counter). A benchmark is not a test: the exit status is always 0.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_NICS = 64
RUNS = 7
TARGET = 0.5
FLEET_NIC = "  {name}:\n    offloads: {{gso: on, tso: on, gro: off, sg: on, rx: on}}\n"


def _median(fn: object, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _python_start(code: str, runs: int = 5) -> float:
    return _median(lambda: subprocess.run([sys.executable, "-c", code], check=True), runs)


COLD = """
import sys
from pathlib import Path
from reconciler.desired import load_host
from reconciler.kinds.nic.provider import NicProvider
desired = load_host(Path(sys.argv[1]), "bench")
p = NicProvider()
changes, errors = p.diff(desired, p.read(desired))
assert not changes and not errors, (changes, errors)
"""


def main() -> int:
    """Run the benchmark and print the table; always returns 0."""
    if os.geteuid() != 0:
        print("bench_nic: needs root (it creates a network namespace); skipped")
        return 0
    from tests.netns import Netns

    ns = Netns("rbench")
    try:
        return _bench_in(ns)
    finally:
        ns.delete()


def _bench_in(ns: object) -> int:
    """Create the veth NICs in ``ns``, measure every row and print the table."""
    from tests.netns import Netns

    assert isinstance(ns, Netns)
    names = [f"n{i:02d}" for i in range(N_NICS)]
    batch = "".join(f"link add {n} type veth peer name {n}p\nlink set {n} up\n" for n in names)
    ns.run(["ip", "-batch", "-"], input=batch)

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        (repo / "fleet.yaml").write_text(
            "nics:\n" + "".join(FLEET_NIC.format(name=n) for n in names)
        )

        t_bare = _python_start("pass")
        t_pr2 = _python_start("import pyroute2") - t_bare

        from reconciler import engine
        from reconciler.desired import load_host
        from reconciler.kinds.nic.provider import NicProvider

        desired = load_host(repo, "bench")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

        with ns.entered():

            def standard() -> None:
                for n in names:
                    # ethtool -g exits 1 on veth (no rings): that is its normal answer here.
                    subprocess.run(["ethtool", "-g", n], capture_output=True, check=False)
                    subprocess.run(["ethtool", "-k", n], capture_output=True, check=True)

            def ours() -> None:
                p = NicProvider()
                changes, errors = p.diff(desired, p.read(desired))
                assert not changes and not errors, (changes, errors)
                p.close()

            def cold() -> None:
                subprocess.run([sys.executable, "-c", COLD, str(repo)], check=True, env=env)

            ours()  # warm-up (first import, page cache)
            t_std = _median(standard)
            t_ours = _median(ours)
            t_cold = _median(cold, 5)

            # No-op apply: plan, apply (nothing), re-read; count the write syscalls.
            p = NicProvider()
            plan, _ = engine.make_plan(desired, [p])
            result = engine.apply_plan(desired, [p], plan, None)
            writes = p.io.writes
            p.close()

    rows = [
        ("ethtool -g + -k per NIC (standard)", t_std, None),
        ("ours: read + diff, warm", t_ours, t_ours / t_std),
        ("pyroute2 import (not in the warm row)", t_pr2, None),
        ("ours: whole new process, cold", t_cold, t_cold / t_std),
    ]
    print(f"nic dry-run over {N_NICS} veth NICs, offloads desired and already matching")
    print(f"{'':42} {'median':>10} {'vs standard':>12}")
    for label, t, ratio in rows:
        r = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"{label:42} {t * 1000:8.1f} ms {r:>12}")
    verdict = "meets" if t_ours / t_std <= TARGET else "MISSES"
    print(f"target: warm ours <= {TARGET}x standard: {verdict} ({t_ours / t_std:.2f}x)")
    ok = not plan.changes and not plan.errors and result.ok and writes == 0
    print(
        f"no-op apply over {N_NICS} NICs: {len(plan.changes)} changes, {writes} ethtool writes"
        f" -> {'OK' if ok else 'FAILED: a no-op run must write nothing'}"
    )
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a benchmark reports, it does not fail the caller
        print(f"bench_nic: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(0)
