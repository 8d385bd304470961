"""A settable clock for providers that read the time (simulated time in tests)."""

from __future__ import annotations

from datetime import datetime


class Clock:
    """Callable returning ``now``; tests move ``now`` forward to simulate days or years."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
