"""Durations as backup sets write them: ``30m``, ``1h``, ``1d``, ``2w`` or sums like ``1h30m``."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION = re.compile(r"^(?:[0-9]+[smhdw])+$")


def parse_duration(text: str) -> timedelta:
    """Parse ``30m``, ``1h``, ``1d``, ``2w`` or a sum like ``1h30m``; raise ``ValueError``."""
    if not isinstance(text, str) or not DURATION.match(text):
        raise ValueError(f"not a duration: {text!r}")
    seconds = sum(int(n) * DURATION_UNITS[u] for n, u in re.findall(r"([0-9]+)([smhdw])", text))
    return timedelta(seconds=seconds)
