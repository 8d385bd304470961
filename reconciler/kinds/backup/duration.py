"""Durations as backup sets write them.

Two notations, for two purposes:

* **Schedules** (``every``, ``check.every``): a number and a unit, ``s``, ``m`` (minutes),
  ``h``, ``d`` or ``w``, or a sum of them (``1h30m``): :func:`parse_duration`, a fixed
  :class:`~datetime.timedelta`.
* **Keep rules** (``keep.within`` and ``keep.within_hourly`` ... ``within_yearly``): restic's
  duration syntax, ``1y2m3d4h`` -- years, **months**, days and hours -- applied on the
  calendar as restic does (:class:`KeepDuration`). ``w`` (weeks, 7 days) is accepted too.

restic's parser (``internal/data/duration.go: ParseDuration``, read at restic commit
a80be147; ``internal/restic/duration.go`` before 0.17) reads ``<number><unit>`` pairs with
the units ``y``, ``m``, ``d``, ``h``; a unit given twice keeps the last number, and a number
may be negative. Ours is stricter, so what a file says is what it means: each unit at most
once, numbers >= 0, at most :data:`MAX_KEEP_NUMBER`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION = re.compile(r"^(?:[0-9]+[smhdw])+$")

#: A keep rule's duration: restic's units, plus ``w``; the order is free (as in restic).
KEEP_DURATION = re.compile(r"^(?:[0-9]+[ymwdh])+$")
#: The largest number one unit of a keep duration may carry (10,000 years is "forever").
MAX_KEEP_NUMBER = 1_000_000


def parse_duration(text: str) -> timedelta:
    """Parse ``30m``, ``1h``, ``1d``, ``2w`` or a sum like ``1h30m``; raise ``ValueError``."""
    if not isinstance(text, str) or not DURATION.match(text):
        raise ValueError(f"not a duration: {text!r}")
    seconds = sum(int(n) * DURATION_UNITS[u] for n, u in re.findall(r"([0-9]+)([smhdw])", text))
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class KeepDuration:
    """restic's ``Duration``: whole years, months, days and hours, measured on the calendar.

    ``3m`` back from 31 May is "31 February", which Go's ``time.AddDate`` (and so restic)
    normalises to 3 March (2 March in a leap year); :meth:`before` does the same.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        for unit in ("years", "months", "days", "hours"):
            value: object = getattr(self, unit)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"a keep duration's {unit} must be a whole number >= 0")

    @classmethod
    def parse(cls, text: str) -> KeepDuration:
        """Parse restic's ``1y2m3d4h`` (any order, each unit at most once; ``w`` adds 7 days
        to ``d``). Raises ``ValueError`` naming what is wrong."""
        if not isinstance(text, str) or not KEEP_DURATION.match(text):
            raise ValueError(
                f"not a keep duration: {text!r} (restic's syntax: a number and a unit, y, m "
                "(months), w, d or h, e.g. 1y6m, 30d, 36h)"
            )
        seen: dict[str, int] = {}
        for number, unit in re.findall(r"([0-9]+)([ymwdh])", text):
            if unit in seen:
                raise ValueError(f"not a keep duration: {text!r} gives the unit {unit!r} twice")
            value = int(number)
            if value > MAX_KEEP_NUMBER:
                raise ValueError(
                    f"not a keep duration: {text!r}: {value}{unit} is more than "
                    f"{MAX_KEEP_NUMBER}{unit}"
                )
            seen[unit] = value
        return cls(
            years=seen.get("y", 0),
            months=seen.get("m", 0),
            days=seen.get("d", 0) + 7 * seen.get("w", 0),
            hours=seen.get("h", 0),
        )

    @property
    def zero(self) -> bool:
        """True when every unit is 0: the rule is not used (restic's ``Duration.Zero``)."""
        return not (self.years or self.months or self.days or self.hours)

    def before(self, t: datetime) -> datetime | None:
        """``t`` minus this duration, as restic computes its limit:
        ``t.AddDate(-years, -months, -days).Add(-hours)``.

        Go normalises an impossible date by carrying the overflow (31 February is 3 March),
        which is what is done here. None when the result is before year 1 (no archive can be
        that old, so the rule's window holds every archive).
        """
        year = t.year - self.years
        month0 = t.month - 1 - self.months
        year += month0 // 12  # floor division: Go's normalisation of a month below 1
        month = month0 % 12 + 1
        try:
            first = date(year, month, 1)
            day = first + timedelta(days=t.day - 1 - self.days)
            return datetime.combine(day, t.timetz()) - timedelta(hours=self.hours)
        except (ValueError, OverflowError):
            return None

    def __str__(self) -> str:
        """restic's ``Duration.String``: ``1y2m3d4h``, units that are 0 left out."""
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"


def parse_keep_duration(text: str) -> KeepDuration:
    """:meth:`KeepDuration.parse`."""
    return KeepDuration.parse(text)
