"""Which archives of a backup set to keep and which to delete: restic's ``forget`` policy.

This module is pure: no I/O and no clock reads (``now`` is a parameter), so the same decision is
made by the tarsnap and the restic backend, by ``--dry-run`` and by the real run, and it is
tested without any backup service.

Semantics (``restic forget``, ``internal/data/snapshot_policy.go: ApplyPolicy`` in restic
0.16+, read at restic commit a80be147; the same code lived in
``internal/restic/snapshot_policy.go`` before):

* Candidates are sorted newest first. ``last: n`` keeps the n newest. ``hourly/daily/weekly/
  monthly/yearly: n`` walk the candidates newest first and keep the first (newest) archive of
  each new hour / day / ISO week / month / year bucket until n buckets have been kept; buckets
  are computed on the archive's UTC timestamp. Rules are independent and their keeps are
  united.
* restic >= 0.16 also keeps the *oldest* candidate when a bucket rule still has counts left
  ("oldest daily snapshot"): a new set with 3 days of history under ``daily: 7`` keeps its
  first archive. ``keep_oldest=False`` reproduces restic < 0.16 (e.g. Debian bookworm's 0.14).
* ``within: d`` keeps every archive strictly newer than ``latest - d``, where ``latest`` is the
  newest archive that is not in the future -- relative to the newest archive, *not* to ``now``
  (a host whose backups stopped a month ago keeps its last ``within`` window). If every
  archive is in the future, ``within`` keeps them all (restic's ``latest`` is then the zero
  time). restic's ``within`` also takes months and years (calendar arithmetic); ours is a
  :class:`~datetime.timedelta` (``parse_duration``: s/m/h/d/w), equal to restic's for hours
  and days because all our times are UTC.
* Archives dated after ``now`` take part in the buckets like any other (as in restic).

Extra rules (``docs/desired-state.md``), on top of restic's:

* only names ``<set>-YYYYMMDD-HHMMSS`` of exactly this set (a valid UTC date and time) are
  candidates; anything else (another set's archive, ``NAME.part`` from an interrupted tarsnap
  create, names with spaces, invalid dates) is reported as ``not-ours`` and never deleted;
* the newest archive, and the newest archive that is not in the future, are always kept
  (rule ``"newest"``);
* an archive dated after ``now`` is always kept (rule ``"future"``) and produces a warning;
* a policy that keeps nothing is refused with :class:`ValueError` (restic would keep all).

Counts are whole numbers >= 0; restic's ``-1`` (unlimited) is not offered.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, NamedTuple

from reconciler.kinds.backup.duration import parse_duration

__all__ = [
    "ARCHIVE_RE",
    "COUNT_RULES",
    "ArchiveDecision",
    "KeepPolicy",
    "RetentionDecision",
    "archive_name",
    "decide",
    "parse_archive_name",
]

#: Any archive name of the form ``<set>-YYYYMMDD-HHMMSS`` (use ``fullmatch``). The set part is
#: greedy, so ``etc-old-20240101-000000`` belongs to set ``etc-old``, never to ``etc``.
ARCHIVE_RE = re.compile(r"(?P<set>.+)-(?P<date>[0-9]{8})-(?P<time>[0-9]{6})")

#: The counted rules, in restic's order (which is also the order reasons are listed in).
COUNT_RULES: tuple[str, ...] = ("last", "hourly", "daily", "weekly", "monthly", "yearly")

_UNIT = {
    "last": "newest",
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "yearly": "year",
}

Action = Literal["keep", "delete", "not-ours"]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@functools.lru_cache(maxsize=256)
def _set_pattern(set_name: str) -> re.Pattern[str]:
    # [0-9], not \d: \d also matches other scripts' digits, which int() would then accept.
    return re.compile(re.escape(set_name) + r"-[0-9]{8}-[0-9]{6}")


def _stamp_to_datetime(stamp: str) -> datetime:
    """``YYYYMMDD-HHMMSS`` -> aware UTC datetime; ``ValueError`` for an impossible date."""
    # ISO 8601 basic format, parsed in C (and validated: no 30 February, no second 60).
    return datetime.fromisoformat(f"{stamp[:8]}T{stamp[9:]}+00:00")


def parse_archive_name(set_name: str, archive: str) -> datetime | None:
    """Return the UTC time of ``archive`` if it is an archive of set ``set_name``, else ``None``.

    Exactly ``<set_name>-YYYYMMDD-HHMMSS`` with a valid date and time matches; another set's
    archive (also one whose name merely starts with ``set_name``), ``NAME.part``, names with
    spaces or other extra characters, and impossible dates (``20240230``, second 60) do not.
    """
    if _set_pattern(set_name).fullmatch(archive) is None:
        return None
    try:
        return _stamp_to_datetime(archive[-15:])
    except ValueError:
        return None


def archive_name(set_name: str, when: datetime) -> str:
    """The archive name for a backup of ``set_name`` made at ``when`` (aware; stored as UTC)."""
    if when.tzinfo is None:
        raise ValueError("archive time must be timezone-aware")
    return f"{set_name}-{when.astimezone(UTC):%Y%m%d-%H%M%S}"


def _not_ours_reason(set_name: str, archive: str) -> str:
    if archive.endswith(".part"):
        return "left by an interrupted create (.part): not a finished archive of this set"
    m = ARCHIVE_RE.fullmatch(archive)
    if m is not None and m["set"] != set_name:
        return f"archive of another set ({m['set']!r})"
    if m is not None:
        return f"not a valid UTC date and time: {m['date']}-{m['time']}"
    return f"not named {set_name}-YYYYMMDD-HHMMSS"


@dataclass(frozen=True)
class KeepPolicy:
    """A keep policy, as ``backups.<set>.keep`` in the desired state.

    Counts are whole numbers >= 0 (0: rule not used); ``within`` is a positive duration or
    ``None`` (a zero duration counts as not set, as in restic). Construction raises
    ``ValueError`` for negative or non-integer counts and negative durations; a policy that
    keeps nothing can be built (it is the default) but :func:`decide` refuses it.
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None

    def __post_init__(self) -> None:
        for rule in COUNT_RULES:
            value: object = getattr(self, rule)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"keep.{rule} must be a whole number >= 0, got {value!r}")
        within: object = self.within
        if within is not None and (not isinstance(within, timedelta) or within < timedelta(0)):
            raise ValueError(f"keep.within must be a duration >= 0, got {within!r}")

    @classmethod
    def from_mapping(cls, keep: Mapping[str, Any]) -> KeepPolicy:
        """Build from the desired state's ``keep`` mapping (``within`` as ``"7d"`` or timedelta).

        Raises ``ValueError`` for unknown keys, bad counts and unparsable durations.
        """
        unknown = sorted(set(keep) - {*COUNT_RULES, "within"})
        if unknown:
            raise ValueError(f"unknown keep key(s): {', '.join(unknown)}")
        within = keep.get("within")
        if isinstance(within, str):
            within = parse_duration(within)
        counts = {rule: keep[rule] for rule in COUNT_RULES if rule in keep}
        return cls(**counts, within=within)

    @property
    def within_active(self) -> bool:
        """True when ``within`` is set to a positive duration."""
        return self.within is not None and self.within > timedelta(0)

    @property
    def keeps_nothing(self) -> bool:
        """True when no rule is active: such a policy would delete every archive."""
        return not self.within_active and all(getattr(self, r) == 0 for r in COUNT_RULES)

    def describe(self) -> str:
        """Human summary, e.g. ``last 3, daily 7, within 2d``."""
        parts = [f"{r} {getattr(self, r)}" for r in COUNT_RULES if getattr(self, r)]
        if self.within_active:
            assert self.within is not None
            parts.append(f"within {_format_duration(self.within)}")
        return ", ".join(parts) or "nothing"


class ArchiveDecision(NamedTuple):
    """The decision about one archive name (a plain, immutable row).

    ``action`` is ``keep``, ``delete`` or ``not-ours``. ``rules`` names the rules that keep
    it (``last``, ``hourly`` ... ``yearly``, ``oldest <rule>`` for restic's oldest-archive
    rule, ``within``, ``newest``, ``future``), empty unless kept. ``reason`` explains the
    decision to a person: for a deletion, the rule that would have kept it otherwise.
    ``time`` is ``None`` for ``not-ours``.
    """

    archive: str
    action: Action
    time: datetime | None
    rules: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (time as ``YYYY-MM-DDTHH:MM:SSZ``)."""
        return {
            "archive": self.archive,
            "action": self.action,
            "time": None if self.time is None else f"{self.time:%Y-%m-%dT%H:%M:%SZ}",
            "rules": list(self.rules),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RetentionDecision:
    """The decision for one set: every archive name given, each exactly once.

    ``archives`` lists the candidates newest first, then the ``not-ours`` names sorted by
    name. ``warnings`` are for the run's log and plan (future-dated archives).
    """

    set_name: str
    policy: KeepPolicy
    now: datetime
    archives: tuple[ArchiveDecision, ...]
    warnings: tuple[str, ...]

    def _names(self, action: Action) -> tuple[str, ...]:
        return tuple(a.archive for a in self.archives if a.action == action)

    @property
    def keep(self) -> tuple[str, ...]:
        """Names of the archives kept, newest first."""
        return self._names("keep")

    @property
    def delete(self) -> tuple[str, ...]:
        """Names of the archives to delete, newest first."""
        return self._names("delete")

    @property
    def not_ours(self) -> tuple[str, ...]:
        """Names that are not archives of this set (never deleted), sorted."""
        return self._names("not-ours")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the plan and tests."""
        return {
            "set": self.set_name,
            "policy": self.policy.describe(),
            "now": f"{self.now:%Y-%m-%dT%H:%M:%SZ}",
            "archives": [a.to_dict() for a in self.archives],
            "warnings": list(self.warnings),
        }


def _bucket_label(rule: str, stamp: str) -> str:
    """How a bucket is shown to a person: ``2024-01-05 13h``, ``2024-W01``, ``2024-01`` ..."""
    if rule == "hourly":
        return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}h"
    if rule == "daily":
        return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}"
    if rule == "weekly":
        iso = date(int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8])).isocalendar()
        return f"{iso[0]}-W{iso[1]:02d}"
    if rule == "monthly":
        return f"{stamp[0:4]}-{stamp[4:6]}"
    return stamp[0:4]


def _bucket_keys(rule: str, stamps: list[str]) -> list[Any]:
    """One bucket key per stamp (``YYYYMMDD-HHMMSS``, newest first); equal keys share a bucket.

    Keys are cut from the stamp itself (the UTC time); only ISO weeks need a calendar.
    """
    if rule == "last":
        return list(range(len(stamps)))
    if rule == "hourly":
        return [s[:11] for s in stamps]
    if rule == "daily":
        return [s[:8] for s in stamps]
    if rule == "monthly":
        return [s[:6] for s in stamps]
    if rule == "yearly":
        return [s[:4] for s in stamps]
    # ISO week: (ISO year, week), so 2021-01-03 is 2020-W53 and 2024-12-30 is 2025-W01, as
    # Go's Time.ISOWeek() in restic's yw(). Archives are sorted, so a day's week is reused.
    keys: list[Any] = []
    last_day = ""
    week: tuple[int, int] = (0, 0)
    for s in stamps:
        day = s[:8]
        if day != last_day:
            iso = date(int(day[0:4]), int(day[4:6]), int(day[6:8])).isocalendar()
            week = (iso[0], iso[1])
            last_day = day
        keys.append(week)
    return keys


def future_warning(set_name: str, archive: str, when: datetime, now: datetime) -> str:
    """The warning for an archive of ``set_name`` dated ``when``, after ``now`` (it is
    kept: a host clock was wrong, and deleting by a wrong date could lose real backups)."""
    return (
        f"backup set {set_name!r}: archive {archive} is dated {when:%Y-%m-%d %H:%M:%S} UTC, "
        f"after now ({now:%Y-%m-%d %H:%M:%S} UTC): kept; check the clock of the host "
        "that made it"
    )


def decide(
    set_name: str,
    archives: Iterable[str],
    policy: KeepPolicy,
    now: datetime,
    *,
    keep_oldest: bool = True,
) -> RetentionDecision:
    """Decide, for each name in ``archives``, keep, delete or not-ours (see the module doc).

    Promises: every distinct input name appears exactly once in the result; only candidates
    (``<set_name>-YYYYMMDD-HHMMSS``, valid UTC time) are ever ``delete``; the newest candidate
    and every candidate dated after ``now`` are kept; the result depends only on the
    arguments (names in any order give the same result). ``keep_oldest`` selects restic >= 0.16
    (True, the default) or < 0.16 (False) behaviour for the oldest archive. O(n log n).

    Raises ``ValueError`` for a policy that keeps nothing or a naive ``now``.
    """
    if policy.keeps_nothing:
        raise ValueError(
            f"backup set {set_name!r}: refusing a keep policy that keeps nothing (it would "
            "delete every archive): set last, hourly, daily, weekly, monthly, yearly or within"
        )
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    now = now.astimezone(UTC)

    pattern = _set_pattern(set_name)
    by_stamp: dict[str, str] = {}
    not_ours: dict[str, str] = {}
    for name in archives:
        if pattern.fullmatch(name) is None:
            not_ours[name] = _not_ours_reason(set_name, name)
        else:
            # For a matching name the set part is fixed, so the 15-character stamp identifies
            # the archive and sorts chronologically as text: one sort, no datetime needed.
            by_stamp[name[-15:]] = name

    stamps: list[str] = []
    times: list[datetime] = []
    for stamp in sorted(by_stamp, reverse=True):
        try:
            times.append(_stamp_to_datetime(stamp))
        except ValueError:
            name = by_stamp[stamp]
            not_ours[name] = _not_ours_reason(set_name, name)
            continue
        stamps.append(stamp)
    names = [by_stamp[s] for s in stamps]
    n = len(stamps)

    # Only kept archives get rule lists; for the others, the why-nots are recorded compactly
    # and turned into text once, at the end.
    rules: dict[int, list[str]] = {}
    reasons: dict[int, list[str]] = {}
    opened: dict[int, tuple[str, int, int]] = {}  # coarsest rule whose new bucket it opens
    covered: dict[int, tuple[str, int, bool]] = {}  # finest rule whose bucket has a newer one

    def keep(i: int, rule: str, reason: str) -> None:
        rules.setdefault(i, []).append(rule)
        reasons.setdefault(i, []).append(reason)

    # restic: within is measured back from the newest archive that is not in the future.
    latest_index = next((i for i, t in enumerate(times) if t <= now), None)
    threshold: datetime | None = None
    within_text = ""
    if policy.within_active:
        assert policy.within is not None
        within_text = f"within {_format_duration(policy.within)}"
        if latest_index is not None:
            threshold = times[latest_index] - policy.within
        for i, t in enumerate(times):
            if threshold is not None and t <= threshold:
                break  # sorted newest first: all older ones are outside too
            keep(i, "within", f"{within_text} of the newest archive")

    for rule in COUNT_RULES:
        count: int = getattr(policy, rule)
        if count:
            _apply_count_rule(rule, count, stamps, keep_oldest, keep, opened, covered)

    warnings: list[str] = []
    # docs/desired-state.md: the newest archive is never deleted. The newest not in the future is
    # protected too: it is the last real backup, even when a future-dated one exists.
    protected = {0, latest_index} if latest_index is not None else ({0} if n else set())
    for i in sorted(protected):
        keep(i, "newest", "the newest archive is always kept")
    for i, t in enumerate(times):
        if t <= now:
            break  # sorted newest first: no more future archives
        keep(i, "future", "dated in the future: kept")
        warnings.append(future_warning(set_name, names[i], t, now))

    within_why = ""
    if policy.within_active and threshold is not None:
        within_why = f"{within_text}: older than {threshold:%Y-%m-%d %H:%M:%S} UTC"
    rows: list[ArchiveDecision] = []
    for i in range(n):
        if i in rules:
            rows.append(
                ArchiveDecision(names[i], "keep", times[i], tuple(rules[i]), "; ".join(reasons[i]))
            )
            continue
        why = [_why_not(policy, stamps, names, i, opened.get(i), covered.get(i)), within_why]
        reason = "; ".join(w for w in why if w) or "no rule keeps it"
        rows.append(ArchiveDecision(names[i], "delete", times[i], (), reason))
    for name in sorted(not_ours):
        rows.append(ArchiveDecision(name, "not-ours", None, (), not_ours[name]))
    return RetentionDecision(set_name, policy, now, tuple(rows), tuple(warnings))


def _why_not(
    policy: KeepPolicy,
    stamps: list[str],
    names: list[str],
    i: int,
    opened: tuple[str, int, int] | None,
    covered: tuple[str, int, bool] | None,
) -> str:
    """The rule that would have kept archive ``i`` otherwise, in words."""
    if opened is not None:
        rule, count, seen = opened
        if rule == "last":
            return f"last: {count} (this is the {_ordinal(i + 1)} newest)"
        label = _bucket_label(rule, stamps[i])
        return f"{rule}: {count} (this is the {_ordinal(seen)} {_UNIT[rule]}: {label})"
    if covered is not None:
        rule, first, bucket_kept = covered
        label = f"{_UNIT[rule]} {_bucket_label(rule, stamps[i])}"
        if bucket_kept:
            return f"{rule}: {label} is kept as the newer archive {names[first]}"
        return f"{rule}: {getattr(policy, rule)} ({label} is past the count)"
    return ""


def _apply_count_rule(
    rule: str,
    count: int,
    stamps: list[str],
    keep_oldest: bool,
    keep: Callable[[int, str, str], None],
    opened: dict[int, tuple[str, int, int]],
    covered: dict[int, tuple[str, int, bool]],
) -> None:
    """restic's bucket loop for one counted rule: keeps via ``keep``, records why-nots."""
    keys = _bucket_keys(rule, stamps)
    n = len(keys)
    remaining = count
    seen = 0  # distinct buckets met so far, also past the count (for "this is the 8th day")
    previous: Any = object()
    first_of_bucket = -1
    for i, key in enumerate(keys):
        new_bucket = key != previous
        if new_bucket:
            seen += 1
            first_of_bucket = i
            previous = key
        if remaining > 0 and (new_bucket or (keep_oldest and i == n - 1)):
            # Sorted newest first, so "differs from the previous archive's bucket" is restic's
            # "differs from the last kept bucket" while counts remain.
            remaining -= 1
            what = f"{_ordinal(i + 1)} newest" if rule == "last" else _bucket_label(rule, stamps[i])
            if new_bucket:
                keep(i, rule, f"{rule}: {what}, {seen} of {count}")
            else:
                keep(i, f"oldest {rule}", f"{rule}: {what}, the oldest archive, kept while "
                     "counts remain")  # fmt: skip
        elif new_bucket:
            opened[i] = (rule, count, seen)  # later (coarser) rules overwrite: wanted
        elif i not in covered:
            covered[i] = (rule, first_of_bucket, seen <= count)


def _format_duration(d: timedelta) -> str:
    """``7d``, ``36h``, ``90m`` ... (the desired state's notation, largest exact unit)."""
    seconds = int(d.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s" if d == timedelta(seconds=seconds) else str(d)
