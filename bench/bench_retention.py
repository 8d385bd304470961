"""Benchmark: retention planning for one backup set with 100,000 archives.

Compares :func:`reconciler.kinds.backup.retention.decide` with tarsnapper's ``expire()``
on the same archive list in the same run (target: ours <= 0.5x tarsnapper's time). The two
policies are comparable, not identical: tarsnapper keeps the backup nearest to each step of
free-form generations (``1h 1d 7d 30d 360d``: hourly for a day, daily for a week, weekly for
a month, monthly for 360 days), restic's rules keep the newest archive of each calendar
bucket (``hourly 24, daily 7, weekly 4, monthly 12``).

Run: ``.venv/bin/python -m bench.bench_retention``. Needs ``pip install tarsnapper`` for the
comparison (not a project dependency); without it only our time is printed. Exits 0 always.
"""

from __future__ import annotations

import importlib
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.kinds.backup.retention import KeepPolicy, archive_name, decide

N_ARCHIVES = 100_000
SET = "www-etc"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = KeepPolicy(hourly=24, daily=7, weekly=4, monthly=12)
TARSNAPPER_DELTAS = "1h 1d 7d 30d 360d"


def make_archives(n: int) -> dict[str, datetime]:
    """n archives about an hour apart (with jitter), the newest just before NOW."""
    rng = random.Random(4)
    out: dict[str, datetime] = {}
    t = NOW - timedelta(minutes=5)
    while len(out) < n:
        out[archive_name(SET, t)] = t
        t -= timedelta(seconds=3600 + rng.randint(-300, 300))
    return out


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times = []
    result: Any = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> int:
    archives = make_archives(N_ARCHIVES)
    names = list(archives)
    random.Random(1).shuffle(names)  # listings are not chronological (tarsnap's is not)

    ours_s, decision = best_of(lambda: decide(SET, names, POLICY, NOW), 5)
    ours_med = statistics.median(best_of(lambda: decide(SET, names, POLICY, NOW), 1)[0]
                                 for _ in range(3))  # fmt: skip
    rows = [
        ("reconciler decide()", ours_s, len(decision.keep), f"restic rules: {POLICY.describe()}")
    ]

    ratio_text = "n/a"
    try:
        # Imported by name: tarsnapper is untyped and optional (benchmark only).
        parse_deltas: Any = importlib.import_module("tarsnapper.config").parse_deltas
        expire: Any = importlib.import_module("tarsnapper.expire").expire
    except ImportError as exc:
        print(f"tarsnapper is not installed ({exc}): `.venv/bin/pip install tarsnapper`")
    else:
        # tarsnapper's expire() takes {name: naive datetime} and sorts them itself.
        backups = {n: archives[n].replace(tzinfo=None) for n in names}
        theirs_s, kept = best_of(lambda: expire(backups, parse_deltas(TARSNAPPER_DELTAS)), 1)
        rows.append(("tarsnapper expire()", theirs_s, len(kept), f"deltas: {TARSNAPPER_DELTAS}"))
        ratio_text = f"{ours_s / theirs_s:.4f}x (target <= 0.5x)"

    print(f"retention planning, one set, {N_ARCHIVES:,} archives (shuffled input)")
    print("policies are comparable, not identical (calendar buckets vs tarsnapper's deltas)")
    print(f"{'implementation':<22} {'seconds':>9} {'kept':>5}  policy")
    for name, secs, n_kept, policy in rows:
        print(f"{name:<22} {secs:>9.3f} {n_kept:>5}  {policy}")
    print(f"ours: best of 5 {ours_s:.3f} s, median of 3 more {ours_med:.3f} s")
    print(f"ratio ours/tarsnapper: {ratio_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
