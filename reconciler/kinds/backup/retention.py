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
  united. A count of ``-1`` (``unlimited`` in the desired state, as on restic's command line
  since 0.16) never runs out: every bucket is kept ("-1 means keep all" in ``ApplyPolicy``).
* restic >= 0.16 also keeps the *oldest* candidate when a bucket rule still has counts left
  ("oldest daily snapshot"): a new set with 3 days of history under ``daily: 7`` keeps its
  first archive. The ``within_*`` rules do the same when the oldest candidate is inside their
  window. ``keep_oldest=False`` reproduces restic < 0.16 (e.g. Debian bookworm's 0.14).
* ``within: d`` keeps every archive strictly newer than ``latest - d``, where ``latest`` is the
  newest archive that is not in the future -- relative to the newest archive, *not* to ``now``
  (a host whose backups stopped a month ago keeps its last ``within`` window). If every
  archive is in the future, ``within`` keeps them all (restic's ``latest`` is then the zero
  time). ``d`` is restic's calendar duration (:class:`~.duration.KeepDuration`: ``1y2m3d4h``,
  ``m`` being months), subtracted as Go's ``AddDate`` does.
* ``within_hourly/daily/weekly/monthly/yearly: d`` keep the newest archive of every hour /
  day / ISO week / month / year bucket among the archives strictly newer than ``latest - d``,
  with no count.
* ``tags: [a, "b,c"]`` (restic backend only) keeps every archive whose snapshot carries all
  the tags of one of the entries (restic's ``--keep-tag``: an entry is a comma-separated tag
  list, the entries are alternatives). Tagged archives are not counted by the other rules.
* Archives dated after ``now`` take part in the buckets like any other (as in restic).

Extra rules (``docs/desired-state.md``), on top of restic's:

* only names ``<set>-YYYYMMDD-HHMMSS`` of exactly this set (a valid UTC date and time) are
  candidates; anything else (another set's archive, ``NAME.part`` from an interrupted tarsnap
  create, names with spaces, invalid dates) is reported as ``not-ours`` and never deleted;
* the newest archive, and the newest archive that is not in the future, are always kept
  (rule ``"newest"``);
* an archive dated after ``now`` is always kept (rule ``"future"``) and produces a warning;
* a policy that keeps nothing is refused with :class:`ValueError` (restic would keep all).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal, NamedTuple

from reconciler.kinds.backup.duration import KeepDuration

__all__ = [
    "ARCHIVE_RE",
    "COUNT_RULES",
    "UNLIMITED",
    "WITHIN_RULES",
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

#: The bucket rules with a time window instead of a count, in restic's order, each with the
#: counted rule whose buckets it uses.
WITHIN_RULES: dict[str, str] = {
    "within_hourly": "hourly",
    "within_daily": "daily",
    "within_weekly": "weekly",
    "within_monthly": "monthly",
    "within_yearly": "yearly",
}

#: A count that never runs out (``unlimited`` in the desired state, restic's ``-1``).
UNLIMITED = -1

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

    Counts are whole numbers >= 0 (0: rule not used) or :data:`UNLIMITED` (-1). ``within``
    and the ``within_*`` rules are :class:`~.duration.KeepDuration` or ``None`` (a zero
    duration counts as not set, as in restic). ``tags`` holds restic ``--keep-tag`` tag
    lists: an archive is kept when it carries every tag of one of them. Construction raises
    ``ValueError`` for bad counts, durations or tags; a policy that keeps nothing can be
    built (it is the default) but :func:`decide` refuses it.
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: KeepDuration | None = None
    within_hourly: KeepDuration | None = None
    within_daily: KeepDuration | None = None
    within_weekly: KeepDuration | None = None
    within_monthly: KeepDuration | None = None
    within_yearly: KeepDuration | None = None
    tags: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        for rule in COUNT_RULES:
            value: object = getattr(self, rule)
            if isinstance(value, bool) or not isinstance(value, int) or value < UNLIMITED:
                raise ValueError(
                    f"keep.{rule} must be a whole number >= 0 or unlimited (-1), got {value!r}"
                )
        for rule in ("within", *WITHIN_RULES):
            within: object = getattr(self, rule)
            if within is not None and not isinstance(within, KeepDuration):
                raise ValueError(f"keep.{rule} must be a keep duration, got {within!r}")
        tags: object = self.tags
        if not isinstance(tags, tuple) or not all(
            isinstance(t, tuple) and t and all(isinstance(x, str) and x for x in t) for t in tags
        ):
            raise ValueError(f"keep.tags must be non-empty tag lists, got {tags!r}")

    @classmethod
    def from_mapping(cls, keep: Mapping[str, Any]) -> KeepPolicy:
        """Build from the desired state's ``keep`` mapping: counts as numbers or
        ``"unlimited"``, durations as restic's ``"1y2m3d4h"`` (or :class:`KeepDuration`),
        ``tags`` as a list of ``"tag"`` / ``"tag1,tag2"``.

        Raises ``ValueError`` for unknown keys, bad counts, unparsable durations and tags.
        """
        unknown = sorted(set(keep) - {*COUNT_RULES, "within", *WITHIN_RULES, "tags"})
        if unknown:
            raise ValueError(f"unknown keep key(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {r: _count(r, keep[r]) for r in COUNT_RULES if r in keep}
        for rule in ("within", *WITHIN_RULES):
            value = keep.get(rule)
            kwargs[rule] = KeepDuration.parse(value) if isinstance(value, str) else value
        return cls(**kwargs, tags=parse_tags(keep.get("tags") or ()))

    def duration(self, rule: str) -> KeepDuration | None:
        """The duration of ``within`` or a ``within_*`` rule when it is set and not zero."""
        d: KeepDuration | None = getattr(self, rule)
        return d if d is not None and not d.zero else None

    @property
    def within_active(self) -> bool:
        """True when ``within`` is set to a duration that is not zero."""
        return self.duration("within") is not None

    @property
    def keeps_nothing(self) -> bool:
        """True when no rule is active: such a policy would delete every archive."""
        return (
            all(getattr(self, r) == 0 for r in COUNT_RULES)
            and all(self.duration(r) is None for r in ("within", *WITHIN_RULES))
            and not self.tags
        )

    def describe(self) -> str:
        """Human summary, e.g. ``last 3, daily unlimited, within 2d, within_daily 1m, tags
        keep|a,b``."""
        parts = [
            f"{r} {'unlimited' if getattr(self, r) == UNLIMITED else getattr(self, r)}"
            for r in COUNT_RULES
            if getattr(self, r)
        ]
        parts += [f"{r} {d}" for r in ("within", *WITHIN_RULES) if (d := self.duration(r))]
        if self.tags:
            parts.append("tags " + "|".join(",".join(t) for t in self.tags))
        return ", ".join(parts) or "nothing"


def _count(rule: str, value: object) -> int:
    """A count as the desired state writes it: a number, or ``unlimited`` for -1."""
    if value == "unlimited":
        return UNLIMITED
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"keep.{rule} must be a whole number or unlimited, got {value!r}")
    return value


def parse_tags(tags: Iterable[object]) -> tuple[tuple[str, ...], ...]:
    """``keep.tags`` entries (``"keep"``, ``"weekly,keep"``) as tag lists, as restic splits
    a ``--keep-tag`` value on commas. Raises ``ValueError`` for an empty tag."""
    out: list[tuple[str, ...]] = []
    for entry in tags:
        if not isinstance(entry, str):
            raise ValueError(f"keep.tags entries are strings, got {entry!r}")
        parts = tuple(entry.split(","))
        if not all(parts):
            raise ValueError(f"keep.tags: {entry!r} holds an empty tag")
        out.append(parts)
    return tuple(out)


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
    tags: Mapping[str, Collection[str]] | None = None,
) -> RetentionDecision:
    """Decide, for each name in ``archives``, keep, delete or not-ours (see the module doc).

    ``tags`` gives the tags of each archive (restic snapshots; tarsnap archives have none),
    for ``policy.tags``. Promises: every distinct input name appears exactly once in the
    result; only candidates (``<set_name>-YYYYMMDD-HHMMSS``, valid UTC time) are ever
    ``delete``; the newest candidate and every candidate dated after ``now`` are kept; the
    result depends only on the arguments (names in any order give the same result).
    ``keep_oldest`` selects restic >= 0.16 (True, the default) or < 0.16 (False) behaviour
    for the oldest archive. O(n log n).

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
    window_covered: dict[int, list[tuple[str, int]]] = {}  # within_* rule, newer in bucket

    def keep(i: int, rule: str, reason: str) -> None:
        rules.setdefault(i, []).append(rule)
        reasons.setdefault(i, []).append(reason)

    if policy.tags:
        _apply_tags(policy.tags, names, tags or {}, keep)

    # restic: within is measured back from the newest archive that is not in the future.
    latest_index = next((i for i, t in enumerate(times) if t <= now), None)
    latest = times[latest_index] if latest_index is not None else None
    windows: dict[str, tuple[KeepDuration, datetime | None]] = {}
    for rule in ("within", *WITHIN_RULES):
        d = policy.duration(rule)
        if d is not None:
            # None: no archive is old enough to fall outside (no latest, or before year 1).
            windows[rule] = (d, None if latest is None else d.before(latest))

    if "within" in windows:
        d, threshold = windows["within"]
        for i, t in enumerate(times):
            if threshold is not None and t <= threshold:
                break  # sorted newest first: all older ones are outside too
            keep(i, "within", f"within {d} of the newest archive")

    for rule in COUNT_RULES:
        count: int = getattr(policy, rule)
        if count:
            _apply_count_rule(rule, count, stamps, keep_oldest, keep, opened, covered)

    for rule, base_rule in WITHIN_RULES.items():
        if rule in windows:
            d, threshold = windows[rule]
            _apply_window_rule(
                rule, base_rule, d, threshold, stamps, times, keep_oldest, keep, window_covered
            )

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

    # Why an archive outside a window is not kept, once per window rule.
    outside = {
        rule: f"{rule} {d}: older than {threshold:%Y-%m-%d %H:%M:%S} UTC"
        for rule, (d, threshold) in windows.items()
        if threshold is not None
    }
    rows: list[ArchiveDecision] = []
    for i in range(n):
        if i in rules:
            rows.append(
                ArchiveDecision(names[i], "keep", times[i], tuple(rules[i]), "; ".join(reasons[i]))
            )
            continue
        why = [_why_not(policy, stamps, names, i, opened.get(i), covered.get(i))]
        in_window = dict(window_covered.get(i, ()))
        for rule, text in outside.items():
            if rule in in_window:
                base = WITHIN_RULES[rule]
                label = f"{_UNIT[base]} {_bucket_label(base, stamps[i])}"
                why.append(
                    f"{rule} {windows[rule][0]}: {label} is kept as the newer archive "
                    f"{names[in_window[rule]]}"
                )
            else:
                why.append(text)
        reason = "; ".join(w for w in why if w) or "no rule keeps it"
        rows.append(ArchiveDecision(names[i], "delete", times[i], (), reason))
    for name in sorted(not_ours):
        rows.append(ArchiveDecision(name, "not-ours", None, (), not_ours[name]))
    return RetentionDecision(set_name, policy, now, tuple(rows), tuple(warnings))


def _apply_tags(
    taglists: tuple[tuple[str, ...], ...],
    names: list[str],
    tags: Mapping[str, Collection[str]],
    keep: Callable[[int, str, str], None],
) -> None:
    """restic's ``--keep-tag``: an archive carrying every tag of one of ``taglists``."""
    for i, name in enumerate(names):
        have = set(tags.get(name, ()))
        for taglist in taglists:
            if have.issuperset(taglist):
                keep(i, "tags", f"tags: carries {','.join(taglist)}")


def _why_not(
    policy: KeepPolicy,
    stamps: list[str],
    names: list[str],
    i: int,
    opened: tuple[str, int, int] | None,
    covered: tuple[str, int, bool] | None,
) -> str:
    """The counted rule that would have kept archive ``i`` otherwise, in words."""
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
    """restic's bucket loop for one counted rule: keeps via ``keep``, records why-nots.

    ``count`` is :data:`UNLIMITED` or > 0. An unlimited count is one that cannot run out:
    more than there are archives (restic does not decrement -1).
    """
    keys = _bucket_keys(rule, stamps)
    n = len(keys)
    unlimited = count == UNLIMITED
    shown = "unlimited" if unlimited else str(count)
    remaining = n + 1 if unlimited else count
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
                keep(i, rule, f"{rule}: {what}, {seen} of {shown}")
            else:
                keep(i, f"oldest {rule}", f"{rule}: {what}, the oldest archive, kept while "
                     "counts remain")  # fmt: skip
        elif new_bucket:
            opened[i] = (rule, count, seen)  # later (coarser) rules overwrite: wanted
        elif i not in covered:
            covered[i] = (rule, first_of_bucket, unlimited or seen <= count)


def _apply_window_rule(
    rule: str,
    base_rule: str,
    duration: KeepDuration,
    threshold: datetime | None,
    stamps: list[str],
    times: list[datetime],
    keep_oldest: bool,
    keep: Callable[[int, str, str], None],
    covered: dict[int, list[tuple[str, int]]],
) -> None:
    """restic's ``bucketsWithin`` loop for one ``within_*`` rule: among the archives strictly
    newer than ``threshold`` (None: all of them), the newest of each bucket of ``base_rule``
    (and, restic >= 0.16, the oldest archive of all when it is inside the window)."""
    keys = _bucket_keys(base_rule, stamps)
    n = len(keys)
    previous: Any = object()
    first_of_bucket = -1
    for i, key in enumerate(keys):
        if threshold is not None and times[i] <= threshold:
            break  # sorted newest first: every older archive is outside the window too
        new_bucket = key != previous
        if new_bucket:
            first_of_bucket = i
            previous = key
        label = _bucket_label(base_rule, stamps[i])
        if new_bucket:
            keep(i, rule, f"{rule} {duration}: {label}")
        elif keep_oldest and i == n - 1:
            keep(i, f"oldest {rule}", f"{rule} {duration}: {label}, the oldest archive")
        else:
            covered.setdefault(i, []).append((rule, first_of_bucket))
