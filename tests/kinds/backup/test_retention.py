"""Tests of the retention decision (reconciler/providers/backup/retention.py).

Unit cases for each rule, bucket ties, ISO week and year boundaries, names that are not ours,
future archives and the newest-always-kept rule; and a property-based test that ``decide``
agrees with the installed ``restic forget --dry-run --json`` on random snapshot histories.

restic is slow to create snapshots (each process derives its key with scrypt, ~0.9 s), so the
property test creates one real snapshot with ``restic backup --time`` and then writes the
random histories' snapshot files itself: the same JSON restic wrote, only the time changed,
encrypted with the repository's master key exactly as restic does (AES-256-CTR +
Poly1305-AES, repository format 1, so no compression). restic then reads them like its own;
a sanity test checks that ``restic snapshots`` lists the forged times.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reconciler.kinds.backup.duration import KeepDuration
from reconciler.kinds.backup.retention import (
    COUNT_RULES,
    UNLIMITED,
    WITHIN_RULES,
    KeepPolicy,
    RetentionDecision,
    archive_name,
    decide,
    parse_archive_name,
)

NOW = datetime(2024, 6, 15, 12, 0, 0, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def names(*times: str, set_name: str = "etc") -> list[str]:
    return [archive_name(set_name, at(t)) for t in times]


def kept(d: RetentionDecision) -> list[str]:
    return list(d.keep)


def rules_of(d: RetentionDecision, archive: str) -> tuple[str, ...]:
    return next(a.rules for a in d.archives if a.archive == archive)


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------


def test_parse_archive_name_accepts_only_this_sets_names() -> None:
    assert parse_archive_name("etc", "etc-20240101-235959") == at("2024-01-01 23:59:59")
    for bad in (
        "etc-old-20240101-000000",  # another set whose name starts with ours
        "etc-20240101-000000.part",  # interrupted tarsnap create
        "etc-20240101-000000 ",
        " etc-20240101-000000",
        "etc 20240101-000000",
        "etc-20240101 000000",
        "etc-2024010-1000000",
        "etc-20240230-000000",  # no such day
        "etc-20241301-000000",
        "etc-20240101-240000",
        "etc-20231231-235960",  # leap seconds are not datetimes
        "etc-00000101-000000",
        "etc-\uff12\uff10\uff12\uff140101-000000",  # fullwidth digits: \d would accept them
        "etc-20240101-000000\n",
        "etc",
        "",
    ):
        assert parse_archive_name("etc", bad) is None, bad
    assert parse_archive_name("etc.d", "etcxd-20240101-000000") is None  # '.' is literal
    assert parse_archive_name("etc-old", "etc-old-20240101-000000") == at("2024-01-01 00:00:00")


def test_not_ours_are_never_deleted_and_say_why() -> None:
    ours = names("2024-06-01 00:00:00", "2024-05-01 00:00:00")
    others = [
        "etc-old-20240101-000000",
        "etc-20240614-000000.part",
        "etc-20240230-000000",
        "etc 20240101-000000",
        "www-etc-20140716-1508",
    ]
    d = decide("etc", ours + others, KeepPolicy(last=1), NOW)
    assert d.delete == ("etc-20240501-000000",)
    assert d.not_ours == tuple(sorted(others))
    why = {a.archive: a.reason for a in d.archives if a.action == "not-ours"}
    assert "another set ('etc-old')" in why["etc-old-20240101-000000"]
    assert ".part" in why["etc-20240614-000000.part"]
    assert "date" in why["etc-20240230-000000"]
    assert "etc-YYYYMMDD-HHMMSS" in why["etc 20240101-000000"]
    # A .part newer than every archive does not count as "the newest archive".
    assert d.keep == ("etc-20240601-000000",)


def test_empty_and_only_foreign_lists() -> None:
    d = decide("etc", [], KeepPolicy(daily=7), NOW)
    assert d.archives == () and d.warnings == ()
    d = decide("etc", ["www-20240101-000000"], KeepPolicy(daily=7), NOW)
    assert d.keep == () and d.delete == () and d.not_ours == ("www-20240101-000000",)


def test_order_of_input_does_not_matter_and_duplicates_collapse() -> None:
    arch = names(*(f"2024-0{m}-0{d} 0{h}:00:00" for m in (1, 2) for d in (1, 2, 3) for h in (1, 5)))
    a = decide("etc", arch, KeepPolicy(last=2, daily=2, monthly=2), NOW)
    b = decide("etc", list(reversed(arch)) + arch[:3], KeepPolicy(last=2, daily=2, monthly=2), NOW)
    assert a == b
    stamps = [x.time for x in a.archives if x.time is not None]
    assert len(stamps) == len(a.archives) and stamps == sorted(stamps, reverse=True)


# --------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------


def test_last() -> None:
    arch = names(*(f"2024-01-01 0{h}:00:00" for h in range(6)))
    d = decide("etc", arch, KeepPolicy(last=3), NOW)
    assert kept(d) == names("2024-01-01 05:00:00", "2024-01-01 04:00:00", "2024-01-01 03:00:00")
    reason = next(a.reason for a in d.archives if a.archive == "etc-20240101-020000")
    assert reason == "last: 3 (this is the 4th newest)"


def test_hourly_keeps_the_newest_of_each_hour() -> None:
    arch = names("2024-01-01 10:59:59", "2024-01-01 10:00:00", "2024-01-01 09:30:00",
                 "2024-01-01 09:10:00", "2024-01-01 07:00:00")  # fmt: skip
    d = decide("etc", arch, KeepPolicy(hourly=2), NOW, keep_oldest=False)
    assert kept(d) == names("2024-01-01 10:59:59", "2024-01-01 09:30:00")
    # restic >= 0.16: the oldest is kept too while the count has room (here it has none).
    assert decide("etc", arch, KeepPolicy(hourly=2), NOW).keep == d.keep
    d3 = decide("etc", arch, KeepPolicy(hourly=3), NOW)
    assert kept(d3) == names("2024-01-01 10:59:59", "2024-01-01 09:30:00", "2024-01-01 07:00:00")


def test_daily_ties_in_a_bucket_keep_the_newest_and_explain() -> None:
    arch = names(*(f"2024-01-{day:02d} {h:02d}:00:00" for day in range(1, 11) for h in (1, 13)))
    d = decide("etc", arch, KeepPolicy(daily=7), NOW)
    assert kept(d) == names(*(f"2024-01-{day:02d} 13:00:00" for day in range(10, 3, -1)))
    reasons = {a.archive: a.reason for a in d.archives}
    assert reasons["etc-20240103-130000"] == "daily: 7 (this is the 8th day: 2024-01-03)"
    assert reasons["etc-20240110-010000"] == (
        "daily: day 2024-01-10 is kept as the newer archive etc-20240110-130000"
    )
    assert rules_of(d, "etc-20240110-130000") == ("daily", "newest")


def test_oldest_archive_is_kept_while_counts_remain_like_restic_0_16() -> None:
    # A young set: 3 days of history, daily: 7. restic >= 0.16 keeps the very first archive
    # ("oldest daily snapshot"); restic < 0.16 kept only the newest of each day.
    arch = names("2024-01-03 10:00:00", "2024-01-02 10:00:00", "2024-01-01 18:00:00",
                 "2024-01-01 06:00:00")  # fmt: skip
    new = decide("etc", arch, KeepPolicy(daily=7), NOW)
    old = decide("etc", arch, KeepPolicy(daily=7), NOW, keep_oldest=False)
    assert new.keep == tuple(arch) and rules_of(new, arch[-1]) == ("oldest daily",)
    assert old.keep == tuple(arch[:3])


def test_weekly_uses_iso_weeks_across_year_boundaries() -> None:
    # 2020 has an ISO week 53 (Mon 2020-12-28 .. Sun 2021-01-03); 2024-12-30 is 2025-W01.
    arch = names(
        "2021-01-04 00:00:00",  # 2021-W01
        "2021-01-03 23:59:59",  # 2020-W53
        "2021-01-01 12:00:00",  # 2020-W53
        "2020-12-28 00:00:00",  # 2020-W53
        "2020-12-27 23:59:59",  # 2020-W52
    )
    d = decide("etc", arch, KeepPolicy(weekly=3), NOW, keep_oldest=False)
    assert kept(d) == names("2021-01-04 00:00:00", "2021-01-03 23:59:59", "2020-12-27 23:59:59")
    arch = names("2025-01-05 10:00:00", "2024-12-30 10:00:00", "2024-12-29 10:00:00")
    d = decide("etc", arch, KeepPolicy(weekly=5), at("2025-06-01 00:00:00"))
    # 2025-01-05 and 2024-12-30 are both 2025-W01; 2024-12-29 is 2024-W52.
    assert kept(d) == names("2025-01-05 10:00:00", "2024-12-29 10:00:00")
    assert "2025-W01" in next(a.reason for a in d.archives if a.archive == "etc-20241230-100000")


def test_monthly_and_yearly() -> None:
    arch = names("2024-03-31 23:00:00", "2024-03-01 00:00:00", "2024-02-29 23:59:59",
                 "2023-12-31 23:59:59", "2023-01-01 00:00:00", "2022-06-01 00:00:00")  # fmt: skip
    d = decide("etc", arch, KeepPolicy(monthly=2), NOW, keep_oldest=False)
    assert kept(d) == names("2024-03-31 23:00:00", "2024-02-29 23:59:59")
    d = decide("etc", arch, KeepPolicy(yearly=2), NOW, keep_oldest=False)
    assert kept(d) == names("2024-03-31 23:00:00", "2023-12-31 23:59:59")
    d = decide("etc", arch, KeepPolicy(yearly=5), NOW)
    assert kept(d) == names("2024-03-31 23:00:00", "2023-12-31 23:59:59", "2022-06-01 00:00:00")


def test_rules_are_united() -> None:
    arch = names(*(f"2024-01-{day:02d} 12:00:00" for day in range(1, 32)))
    d = decide("etc", arch, KeepPolicy(last=2, weekly=2, monthly=1), NOW, keep_oldest=False)
    # last: 31st, 30th; weekly: 2024-W05 (31st), 2024-W04 (28th); monthly: January (31st).
    assert kept(d) == names("2024-01-31 12:00:00", "2024-01-30 12:00:00", "2024-01-28 12:00:00")
    assert rules_of(d, "etc-20240131-120000") == ("last", "weekly", "monthly", "newest")


def test_within_is_relative_to_the_newest_archive_not_now() -> None:
    arch = names("2024-01-10 12:00:00", "2024-01-09 12:00:01", "2024-01-09 12:00:00",
                 "2024-01-01 00:00:00")  # fmt: skip
    # Five months after the last backup everything would be outside "now - 1d"; restic
    # measures from the newest snapshot instead, and keeps the last day of history.
    d = decide("etc", arch, KeepPolicy(within=KeepDuration(days=1)), NOW)
    assert kept(d) == names("2024-01-10 12:00:00", "2024-01-09 12:00:01")  # strictly newer
    reason = next(a.reason for a in d.archives if a.archive == "etc-20240109-120000")
    assert reason == "within 1d: older than 2024-01-09 12:00:00 UTC"


def test_within_ignores_future_archives_when_finding_the_newest() -> None:
    arch = names("2024-06-20 00:00:00", "2024-06-15 11:00:00", "2024-06-14 12:00:00",
                 "2024-06-14 10:00:00")  # fmt: skip
    d = decide("etc", arch, KeepPolicy(within=KeepDuration(days=1)), NOW)
    assert kept(d) == names("2024-06-20 00:00:00", "2024-06-15 11:00:00", "2024-06-14 12:00:00")
    assert rules_of(d, "etc-20240620-000000") == ("within", "newest", "future")
    # Only future archives: restic's "latest" is the zero time, so within keeps them all.
    d = decide("etc", names("2030-01-01 00:00:00", "2029-01-01 00:00:00"),
               KeepPolicy(within=KeepDuration(hours=1)), NOW)  # fmt: skip
    assert d.delete == ()


def test_future_archives_are_kept_with_a_warning() -> None:
    arch = names("2099-01-01 00:00:00", "2024-06-15 12:00:01", "2024-06-15 12:00:00",
                 "2024-06-14 00:00:00")  # fmt: skip
    d = decide("etc", arch, KeepPolicy(last=1), NOW)
    assert kept(d) == names("2099-01-01 00:00:00", "2024-06-15 12:00:01", "2024-06-15 12:00:00")
    assert rules_of(d, "etc-20990101-000000") == ("last", "newest", "future")
    assert rules_of(d, "etc-20240615-120001") == ("future",)
    # The newest archive that is not in the future is protected too (the last real backup).
    assert rules_of(d, "etc-20240615-120000") == ("newest",)
    assert len(d.warnings) == 2 and "etc-20990101-000000" in d.warnings[0]


def test_newest_is_always_kept() -> None:
    arch = names("2024-06-01 00:00:00", "2024-05-01 00:00:00")
    d = decide("etc", arch, KeepPolicy(yearly=1), NOW)
    assert d.keep[0] == "etc-20240601-000000"
    d = decide("etc", names("2024-06-01 00:00:00"), KeepPolicy(within=KeepDuration(hours=1)), NOW)
    assert d.keep == ("etc-20240601-000000",)


def test_plain_data_round_trip() -> None:
    d = decide("etc", [*names("2024-06-01 00:00:00", "2024-05-01 00:00:00"), "x"],
               KeepPolicy(last=1, within=KeepDuration(hours=36)), NOW)  # fmt: skip
    data = d.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["policy"] == "last 1, within 36h"
    assert data["archives"][1] == {
        "archive": "etc-20240501-000000",
        "action": "delete",
        "time": "2024-05-01T00:00:00Z",
        "rules": [],
        "reason": (
            "last: 1 (this is the 2nd newest); within 36h: older than 2024-05-30 12:00:00 UTC"
        ),
    }


def test_keep_duration_syntax_is_restics() -> None:
    assert KeepDuration.parse("1y2m3d4h") == KeepDuration(1, 2, 3, 4)
    assert KeepDuration.parse("4h1y") == KeepDuration(years=1, hours=4)  # any order
    assert KeepDuration.parse("2w1d") == KeepDuration(days=15)  # w: our addition, 7 days
    assert str(KeepDuration.parse("36h")) == "36h" and str(KeepDuration(1, 0, 9, 0)) == "1y9d"
    for bad in ("1d2d", "30s", "1.5d", "-1d", "d", "", "1 d", "9999999y"):
        with pytest.raises(ValueError, match="not a keep duration"):
            KeepDuration.parse(bad)


def test_keep_duration_subtracts_like_go_add_date() -> None:
    # Go normalises "31 February" by carrying the overflow: 2024-02-31 is 2024-03-02.
    assert KeepDuration(months=1).before(at("2024-03-31 10:00:00")) == at("2024-03-02 10:00:00")
    assert KeepDuration(months=1).before(at("2023-03-31 10:00:00")) == at("2023-03-03 10:00:00")
    assert KeepDuration(years=1).before(at("2024-02-29 12:00:00")) == at("2023-03-01 12:00:00")
    assert KeepDuration(months=13).before(at("2024-01-15 00:00:00")) == at("2022-12-15 00:00:00")
    assert KeepDuration(days=1, hours=1).before(at("2024-03-01 00:30:00")) == at(
        "2024-02-28 23:30:00"
    )
    assert KeepDuration(years=5000).before(at("2024-01-01 00:00:00")) is None  # before year 1


def test_within_months_is_calendar_arithmetic() -> None:
    arch = names("2024-03-31 10:00:00", "2024-03-02 10:00:01", "2024-03-02 10:00:00",
                 "2024-02-29 10:00:00")  # fmt: skip
    d = decide("etc", arch, KeepPolicy.from_mapping({"within": "1m"}), NOW)
    # One month before 31 March is "31 February", 2 March: strictly newer ones are kept.
    assert kept(d) == names("2024-03-31 10:00:00", "2024-03-02 10:00:01")
    reason = next(a.reason for a in d.archives if a.archive == "etc-20240302-100000")
    assert reason == "within 1m: older than 2024-03-02 10:00:00 UTC"


def test_within_buckets_keep_one_per_bucket_inside_the_window() -> None:
    arch = names("2024-01-10 18:00:00", "2024-01-10 06:00:00", "2024-01-09 18:00:00",
                 "2024-01-09 06:00:00", "2024-01-08 18:00:00", "2024-01-01 12:00:00")  # fmt: skip
    policy = KeepPolicy.from_mapping({"within_daily": "2d"})
    d = decide("etc", arch, policy, NOW, keep_oldest=False)
    # The window is (2024-01-08 18:00, 2024-01-10 18:00]: 10th and 9th, newest of each day.
    assert kept(d) == names("2024-01-10 18:00:00", "2024-01-09 18:00:00")
    reasons = {a.archive: a.reason for a in d.archives}
    assert reasons["etc-20240110-180000"].startswith("within_daily 2d: 2024-01-10")
    assert reasons["etc-20240110-060000"] == (
        "within_daily 2d: day 2024-01-10 is kept as the newer archive etc-20240110-180000"
    )
    assert reasons["etc-20240108-180000"] == "within_daily 2d: older than 2024-01-08 18:00:00 UTC"
    # restic >= 0.16 also keeps the oldest archive when it is inside the window.
    wide = decide("etc", arch, KeepPolicy.from_mapping({"within_daily": "1y"}), NOW)
    assert rules_of(wide, "etc-20240101-120000") == ("within_daily",)
    both = arch[:2]
    d = decide("etc", both, KeepPolicy.from_mapping({"within_daily": "1y"}), NOW)
    assert rules_of(d, both[1]) == ("oldest within_daily",)


def test_unlimited_counts_keep_every_bucket() -> None:
    arch = names(*(f"2024-01-{day:02d} {h:02d}:00:00" for day in range(1, 21) for h in (1, 13)))
    d = decide("etc", arch, KeepPolicy.from_mapping({"daily": "unlimited"}), NOW)
    assert len(d.keep) == 20 + 1  # one per day, and the oldest archive (restic 0.16+)
    assert "daily: 2024-01-20, 1 of unlimited" in next(a.reason for a in d.archives)
    assert KeepPolicy.from_mapping({"last": -1}).describe() == "last unlimited"
    assert decide("etc", arch, KeepPolicy(last=UNLIMITED), NOW).delete == ()


def test_tags_keep_archives_carrying_every_tag_of_one_list() -> None:
    arch = names("2024-01-04 00:00:00", "2024-01-03 00:00:00", "2024-01-02 00:00:00",
                 "2024-01-01 00:00:00")  # fmt: skip
    tags = {arch[1]: {"reconciler", "keep"}, arch[2]: {"gold"}, arch[3]: {"gold", "x"}}
    policy = KeepPolicy.from_mapping({"last": 1, "tags": ["keep", "gold,x"]})
    d = decide("etc", arch, policy, NOW, tags=tags)
    assert kept(d) == [arch[0], arch[1], arch[3]]
    assert rules_of(d, arch[3]) == ("tags",)
    assert "tags: carries gold,x" in next(a.reason for a in d.archives if a.archive == arch[3])
    # Without the tags (tarsnap has none) the tag lists keep nothing.
    assert kept(decide("etc", arch, policy, NOW)) == [arch[0]]
    assert policy.describe() == "last 1, tags keep|gold,x"


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_policy_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="keeps nothing"):
        decide("etc", names("2024-01-01 00:00:00"), KeepPolicy(), NOW)
    with pytest.raises(ValueError, match="keeps nothing"):
        decide("etc", [], KeepPolicy(within=KeepDuration()), NOW)


@pytest.mark.parametrize(
    "kwargs",
    [{"daily": -2}, {"last": 1.5}, {"weekly": True}, {"within": timedelta(hours=1)},
     {"tags": (("",),)}, {"tags": ("keep",)}],
)
def test_bad_counts_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        KeepPolicy(**kwargs)


def test_from_mapping() -> None:
    assert KeepPolicy.from_mapping({"daily": 7, "within": "1d12h"}) == KeepPolicy(
        daily=7, within=KeepDuration(days=1, hours=12)
    )
    with pytest.raises(ValueError, match="unknown keep key"):
        KeepPolicy.from_mapping({"dayly": 7})
    with pytest.raises(ValueError, match="not a keep duration"):
        KeepPolicy.from_mapping({"within": "7 days"})


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide("etc", [], KeepPolicy(last=1), datetime(2024, 1, 1))


def test_large_set_is_fast_enough() -> None:
    start = datetime(2013, 1, 1, tzinfo=UTC)
    arch = [archive_name("etc", start + timedelta(minutes=53 * i)) for i in range(100_000)]
    d = decide("etc", arch, KeepPolicy(last=3, hourly=24, daily=7, weekly=4, monthly=12), NOW)
    assert len(d.keep) <= 3 + 24 + 7 + 4 + 12 + 1 and len(d.delete) == 100_000 - len(d.keep)


# --------------------------------------------------------------------------------------------
# restic itself decides: property test
# --------------------------------------------------------------------------------------------

_SBOX: list[int] = []


def _aes_sbox() -> list[int]:
    if not _SBOX:
        p = q = 1
        box = [0] * 256
        while True:  # the standard construction: multiplicative inverse + affine map
            p = p ^ ((p << 1) & 0xFF) ^ (0x1B if p & 0x80 else 0)
            q ^= q << 1
            q ^= q << 2
            q ^= q << 4
            q &= 0xFF
            if q & 0x80:
                q ^= 0x09
            x = q ^ (q << 1 | q >> 7) ^ (q << 2 | q >> 6) ^ (q << 3 | q >> 5) ^ (q << 4 | q >> 4)
            box[p] = (x ^ 0x63) & 0xFF
            if p == 1:
                break
        box[0] = 0x63
        _SBOX.extend(box)
    return _SBOX


def _xtime(a: int) -> int:
    return ((a << 1) ^ 0x1B) & 0xFF if a & 0x80 else a << 1


class _AES:
    """AES encryption of single blocks (128/256-bit keys): enough for restic's CTR and MAC."""

    def __init__(self, key: bytes) -> None:
        sbox = _aes_sbox()
        nk = len(key) // 4
        self.rounds = nk + 6
        words = [list(key[4 * i : 4 * i + 4]) for i in range(nk)]
        rcon = 1
        for i in range(nk, 4 * (self.rounds + 1)):
            t = list(words[i - 1])
            if i % nk == 0:
                t = [sbox[b] for b in t[1:] + t[:1]]
                t[0] ^= rcon
                rcon = _xtime(rcon)
            elif nk > 6 and i % nk == 4:
                t = [sbox[b] for b in t]
            words.append([a ^ b for a, b in zip(words[i - nk], t, strict=True)])
        self.round_keys = [
            [b for w in words[4 * r : 4 * r + 4] for b in w] for r in range(self.rounds + 1)
        ]

    def encrypt_block(self, block: bytes) -> bytes:
        sbox = _aes_sbox()
        s = [a ^ b for a, b in zip(block, self.round_keys[0], strict=True)]
        for r in range(1, self.rounds + 1):
            s = [sbox[b] for b in s]
            s = [s[(i + 4 * (i % 4)) % 16] for i in range(16)]  # ShiftRows (column-major)
            if r != self.rounds:
                mixed = []
                for c in range(4):
                    a = s[4 * c : 4 * c + 4]
                    t = a[0] ^ a[1] ^ a[2] ^ a[3]
                    mixed += [a[i] ^ t ^ _xtime(a[i] ^ a[(i + 1) % 4]) for i in range(4)]
                s = mixed
            s = [a ^ b for a, b in zip(s, self.round_keys[r], strict=True)]
        return bytes(s)


def _poly1305(key: bytes, msg: bytes) -> bytes:
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    p = (1 << 130) - 5
    acc = 0
    for i in range(0, len(msg), 16):
        acc = (acc + int.from_bytes(msg[i : i + 16] + b"\x01", "little")) * r % p
    return ((acc + s) % (1 << 128)).to_bytes(16, "little")


def _restic_seal(master: dict[str, Any], plaintext: bytes, iv: bytes) -> bytes:
    """restic's crypto.Key.Seal with a fresh IV: IV || AES-256-CTR || Poly1305-AES MAC."""
    enc = _AES(base64.b64decode(master["encrypt"]))
    counter = int.from_bytes(iv, "big")
    stream = b"".join(
        enc.encrypt_block(((counter + i) % (1 << 128)).to_bytes(16, "big"))
        for i in range((len(plaintext) + 15) // 16)
    )
    ciphertext = bytes(a ^ b for a, b in zip(plaintext, stream, strict=False))
    mac_k = base64.b64decode(master["mac"]["k"])
    mac_r = base64.b64decode(master["mac"]["r"])
    mac = _poly1305(mac_r + _AES(mac_k).encrypt_block(iv), ciphertext)
    return iv + ciphertext + mac


def test_aes_matches_fips_197() -> None:
    key = bytes(range(32))
    block = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert _AES(key).encrypt_block(block).hex() == "8ea2b7ca516745bfeafc49904b496089"
    assert _AES(key[:16]).encrypt_block(block).hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"


@dataclass
class ResticRepo:
    path: Path
    env: dict[str, str]
    master: dict[str, Any]
    template: dict[str, Any]
    version: tuple[int, int]

    def run(self, *args: str) -> str:
        proc = subprocess.run(
            ["restic", "--no-cache", *args], env=self.env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def set_snapshots(
        self, times: list[datetime], tags: dict[datetime, tuple[str, ...]] | None = None
    ) -> None:
        """Replace every snapshot by one per time (as ``restic backup --time`` would write),
        each tagged ``etc`` plus its ``tags``."""
        snapdir = self.path / "snapshots"
        for old in snapdir.iterdir():
            old.unlink()
        for t in times:
            extra = (tags or {}).get(t, ())
            doc = dict(self.template, time=t.strftime("%Y-%m-%dT%H:%M:%SZ"), tags=["etc", *extra])
            data = _restic_seal(self.master, json.dumps(doc).encode(), os.urandom(16))
            (snapdir / hashlib.sha256(data).hexdigest()).write_bytes(data)

    def forget(self, policy: KeepPolicy, n: int) -> list[tuple[datetime, tuple[str, ...]]]:
        """restic's own decision for ``n`` snapshots: the kept snapshots' times with their
        reasons. An unlimited count is passed as ``unlimited`` where restic knows it (0.16+,
        -1 inside ``ApplyPolicy``), else as ``n``: restic never runs out of either
        (``ApplyPolicy`` does not decrement -1, and n snapshots cannot use up n counts before
        the oldest, so the oldest rule fires too)."""
        args = ["forget", "--dry-run", "--json", "--tag", "etc", "--group-by", "host"]
        for rule in COUNT_RULES:
            count = getattr(policy, rule)
            if count == UNLIMITED:
                count = "unlimited" if self.version >= (0, 16) else n
            if count:
                args += [f"--keep-{rule}", str(count)]
        for rule in ("within", *WITHIN_RULES):
            d = policy.duration(rule)
            if d is not None:
                args += [f"--keep-{rule.replace('_', '-')}", str(d)]
        for taglist in policy.tags:
            args += ["--keep-tag", ",".join(taglist)]
        groups = json.loads(self.run(*args))
        out = []
        for group in groups:
            for reason in group.get("reasons") or []:
                t = datetime.fromisoformat(reason["snapshot"]["time"].replace("Z", "+00:00"))
                matches = tuple(_restic_rule(m) for m in reason["matches"])
                out.append((t.astimezone(UTC), matches))
        return sorted(out, reverse=True)


def _restic_rule(match: str) -> str:
    """restic's reason text -> our rule name (``daily snapshot`` -> ``daily``, ``oldest
    hourly within 1d`` -> ``oldest within_hourly``, ``has tags [keep]`` -> ``tags`` ...)."""
    if match.startswith("has tags"):
        return "tags"
    if match.startswith("within "):
        return "within"
    oldest = match.startswith("oldest ")
    match = match.removeprefix("oldest ")
    m = re.fullmatch(r"(hourly|daily|weekly|monthly|yearly) within \S+", match)
    rule = f"within_{m[1]}" if m else match.removesuffix(" snapshot").replace("latest", "last")
    return f"oldest {rule}" if oldest else rule


@pytest.fixture(scope="module")
def restic_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResticRepo]:
    if shutil.which("restic") is None:
        pytest.skip("restic (Debian package restic, installed by scripts/setup) is missing")
    base = tmp_path_factory.mktemp("restic")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(base),
        "TZ": "UTC",  # restic buckets on the snapshot's stored zone: keep it UTC like ours
        "RESTIC_REPOSITORY": str(base / "repo"),
        "RESTIC_PASSWORD": "test",
    }
    version_out = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout
    m = re.search(r"restic (\d+)\.(\d+)", version_out)
    assert m, version_out
    version = (int(m[1]), int(m[2]))
    repo = ResticRepo(base / "repo", env, {}, {}, version)
    # Format 1: snapshot files are plain encrypted JSON (format 2 may compress them).
    repo.run("init", "--repository-version", "1")
    (base / "data.txt").write_text("retention test\n")
    repo.run("backup", "--time", "2020-02-29 23:59:59", "--host", "h", "--tag", "etc",
             str(base / "data.txt"))  # fmt: skip
    repo.master = json.loads(repo.run("cat", "masterkey"))
    snap_id = next((repo.path / "snapshots").iterdir()).name
    repo.template = json.loads(repo.run("cat", "snapshot", snap_id))
    assert repo.template["time"].startswith("2020-02-29T23:59:59")
    yield repo


def test_forged_snapshots_are_read_by_restic(restic_repo: ResticRepo) -> None:
    times = [at("2021-01-03 23:59:59"), at("2020-12-28 00:00:00")]
    restic_repo.set_snapshots(times)
    listed = json.loads(restic_repo.run("snapshots", "--json"))
    got = sorted(datetime.fromisoformat(s["time"].replace("Z", "+00:00")) for s in listed)
    assert got == sorted(times)
    restic_repo.run("check")


def test_restic_agrees_on_month_ends_and_window_edges(restic_repo: ResticRepo) -> None:
    """The calendar cases of test_within_months_is_calendar_arithmetic, asked of restic."""
    times = [at("2024-03-31 10:00:00"), at("2024-03-02 10:00:01"), at("2024-03-02 10:00:00"),
             at("2024-02-29 10:00:00")]  # fmt: skip
    restic_repo.set_snapshots(times)
    policy = KeepPolicy.from_mapping({"within": "1m", "within_daily": "1m"})
    want = restic_repo.forget(policy, len(times))
    assert [t for t, _ in want] == times[:2]
    d = decide("etc", [archive_name("etc", t) for t in times], policy, datetime.now(UTC),
               keep_oldest=restic_repo.version >= (0, 16))  # fmt: skip
    assert [a.time for a in d.archives if a.action == "keep"] == times[:2]


_BASES = [at(t) for t in ("2020-12-27 00:00:00", "2024-12-28 00:00:00", "2021-02-27 22:00:00",
                          "2019-06-01 00:00:00")]  # fmt: skip
#: Newest archives where calendar arithmetic bites: month ends (Go's AddDate turns
#: "31 February" into 3 March), leap days, the turn of a year.
_ANCHORS = [at(t) for t in ("2024-03-31 10:00:00", "2023-05-31 00:00:00", "2024-02-29 12:30:00",
                            "2021-01-01 00:00:00", "2023-12-31 23:59:59")]  # fmt: skip
_OFFSETS = st.one_of(
    st.integers(0, 6 * 3600),  # several per hour
    st.integers(0, 20 * 86400),  # several per day and week, ISO week 53 / week 1
    st.integers(0, 3 * 366 * 86400),  # months and years
    st.integers(0, 24 * 800).map(lambda h: h * 3600),  # whole hours: on a window's edge
)
_TAGS = ("keep", "gold", "x")


@dataclass(frozen=True)
class History:
    """Snapshot times, newest first, and the extra tags of some of them."""

    times: list[datetime]
    tags: dict[datetime, tuple[str, ...]]


@st.composite
def histories(draw: st.DrawFn) -> History:
    offsets = draw(st.sets(_OFFSETS, min_size=1, max_size=50))
    if draw(st.booleans()):
        base = draw(st.sampled_from(_BASES))
        times = sorted((base + timedelta(seconds=o) for o in offsets), reverse=True)
    else:  # the newest archive on an anchor, the others before it
        anchor = draw(st.sampled_from(_ANCHORS))
        times = sorted({anchor - timedelta(seconds=o) for o in offsets} | {anchor}, reverse=True)
    tags = {
        t: tuple(sorted(chosen))
        for t in times
        if (chosen := draw(st.sets(st.sampled_from(_TAGS), max_size=2)))
    }
    return History(times, tags)


_DURATIONS = st.builds(
    KeepDuration,
    years=st.sampled_from([0, 0, 0, 1]),
    months=st.sampled_from([0, 0, 1, 2, 13]),
    days=st.sampled_from([0, 0, 1, 3, 10, 45]),
    hours=st.sampled_from([0, 0, 1, 5, 36]),
)
_COUNTS = st.one_of(st.integers(0, 6), st.just(UNLIMITED))


@st.composite
def policies(draw: st.DrawFn) -> KeepPolicy:
    counts = {r: draw(_COUNTS) for r in ("hourly", "daily", "weekly", "monthly")}
    counts["last"] = draw(st.sampled_from([0, 0, 1, 3, UNLIMITED]))
    counts["yearly"] = draw(st.sampled_from([0, 0, 1, 2, UNLIMITED]))
    # Each duration rule is used in about one example out of three.
    durations = {
        rule: draw(st.one_of(st.none(), st.none(), _DURATIONS))
        for rule in ("within", *WITHIN_RULES)
    }
    tags = draw(st.sampled_from([(), (), (("keep",),), (("gold", "x"),), (("keep",), ("x",))]))
    kwargs: dict[str, Any] = {**counts, **durations}
    policy = KeepPolicy(**kwargs, tags=tags)
    assume(not policy.keeps_nothing)
    return policy


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories(), policy=policies())
def test_decide_matches_restic_forget(
    restic_repo: ResticRepo, history: History, policy: KeepPolicy
) -> None:
    """On histories entirely in the past (our future-archive rule (docs/desired-state.md) is
    not restic's), ``decide`` keeps exactly the snapshots restic keeps, for the same rules:
    counts (unlimited included), ``within`` and the ``within_*`` rules with restic's calendar
    durations, and ``tags``; the installed restic's version picks the oldest-archive
    behaviour (``keep_oldest`` for 0.16+)."""
    now = datetime.now(UTC)
    times = history.times
    restic_repo.set_snapshots(times, history.tags)
    want = restic_repo.forget(policy, len(times))
    tags = {archive_name("etc", t): {"etc", *history.tags.get(t, ())} for t in times}
    d = decide("etc", list(tags), policy, now, keep_oldest=restic_repo.version >= (0, 16),
               tags=tags)  # fmt: skip
    # Our own rules (the newest archive is always kept) are not restic's: compare what the
    # shared rules keep. (Only a tags-only policy can leave restic keeping nothing at all.)
    got = [
        (a.time, rules)
        for a in d.archives
        if a.action == "keep"
        and (rules := tuple(r for r in a.rules if r not in ("newest", "future")))
    ]
    assert d.keep[0] == archive_name("etc", times[0])
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [set(r) for _, r in got] == [set(r) for _, r in want]
