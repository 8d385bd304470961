"""``reconcile import`` for backups: sets from archive names ``<set>-YYYYMMDD-HHMMSS`` on a
tarsnap account or in a restic repository (listed with the backends' own reads), with the
paths of each set's newest archive and the schedule and keep policy its history fits best.

The schedule and keep policy are guesses, and say so in a comment. The keep policy is
checked with the provider's own plan (:func:`~.provider.diff_set`, the same retention
decision a run makes): the one written keeps every archive that exists, on the dry-run right
after the import too. The pure part is :func:`guess` and :func:`from_archives`.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.importing import Found, ImportContext, Resource, Skipped
from reconciler.kinds.backup import retention
from reconciler.kinds.backup.provider import SetLive, SetPlanError, diff_set
from reconciler.kinds.backup.tarsnap import TarsnapConfig

KIND = "backup"
_SET_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")

#: Schedules a guess is rounded to (``every``), shortest first.
SCHEDULES: tuple[tuple[str, timedelta], ...] = tuple(
    (text, delta)
    for text, delta in (
        ("15m", timedelta(minutes=15)), ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)), ("2h", timedelta(hours=2)), ("3h", timedelta(hours=3)),
        ("4h", timedelta(hours=4)), ("6h", timedelta(hours=6)), ("8h", timedelta(hours=8)),
        ("12h", timedelta(hours=12)), ("1d", timedelta(days=1)), ("2d", timedelta(days=2)),
        ("3d", timedelta(days=3)), ("1w", timedelta(weeks=1)), ("2w", timedelta(weeks=2)),
        ("30d", timedelta(days=30)),
    )
)  # fmt: skip

#: Count rules from the finest bucket up, with the gap between archives each one suits.
_CLASSES: tuple[tuple[str, timedelta], ...] = (
    ("last", timedelta(minutes=50)),
    ("hourly", timedelta(hours=20)),
    ("daily", timedelta(days=5)),
    ("weekly", timedelta(days=25)),
    ("monthly", timedelta(days=300)),
)
_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def _bucket(rule: str, t: datetime) -> object:
    if rule == "hourly":
        return (t.year, t.month, t.day, t.hour)
    if rule == "daily":
        return (t.year, t.month, t.day)
    if rule == "weekly":
        return t.isocalendar()[:2]
    if rule == "monthly":
        return (t.year, t.month)
    return t.year


def _rank(rule: str, times: Sequence[datetime], i: int) -> int:
    """How large a count ``rule`` needs to keep archive ``i`` (``times`` newest first):
    its position for ``last``, else the number of distinct buckets down to its own."""
    if rule == "last":
        return i + 1
    return len({_bucket(rule, t) for t in times[: i + 1]})


def _every(times: Sequence[datetime]) -> str:
    """The schedule the newest gaps suggest (their median, rounded to :data:`SCHEDULES`
    on a log scale); one day when there is one archive."""
    # The newest gaps: older archives of a rotated history are thinned out.
    gaps = [(a - b).total_seconds() for a, b in itertools.pairwise(times)][:3]
    gaps = [g for g in gaps if g > 0]
    if not gaps:
        return "1d"
    median = statistics.median(gaps)
    return min(SCHEDULES, key=lambda s: abs(math.log(s[1].total_seconds() / median)))[0]


@dataclass(frozen=True)
class Guess:
    """A set's guessed schedule and keep policy, and what to say about them."""

    every: str
    keep: dict[str, int]
    notes: tuple[str, ...]


def _classify(times: Sequence[datetime]) -> dict[str, int]:
    """Counts that keep a grandfather-father-son history: each archive is given the rule
    its gap to the next newer archive suits, and each rule counts down to its oldest."""
    keep: dict[str, int] = {}
    for i in range(len(times)):
        gap = times[i - 1] - times[i] if i else (times[0] - times[1] if len(times) > 1 else None)
        rule = "yearly"
        if gap is None:
            rule = "daily"
        else:
            for name, limit in _CLASSES:
                if gap < limit:
                    rule = name
                    break
        keep[rule] = max(keep.get(rule, 0), _rank(rule, times, i))
    return {r: keep[r] for r in _COUNTS if keep.get(r)}


def guess(set_name: str, archives: Sequence[str], now: datetime) -> Guess:
    """The schedule and keep policy ``archives`` (this set's names, any order) fit best,
    checked with the provider's own plan at ``now``: the policy keeps every archive there
    is, also when the run right after the import creates a new one. Pure.

    When the counts fitted to the history would still delete one (an irregular history), a
    rule's count is raised until none is deleted; ``last`` covering every archive is the
    last resort."""
    times = sorted(
        (t for a in archives if (t := retention.parse_archive_name(set_name, a)) is not None),
        reverse=True,
    )
    every = _every(times)
    keep = _classify(times) or {"last": max(1, len(times))}
    notes = [
        f"every {every} and keep: guessed from {len(times)} archive(s), "
        f"{times[-1]:%Y-%m-%d} to {times[0]:%Y-%m-%d}; check them before committing"
    ]
    raised = False
    if _deleted(set_name, archives, every, keep, now):
        # Most often the new archive the next run makes opens a new bucket of each rule,
        # which would push the oldest one out: one more of each.
        raised = True
        keep = {r: n + 1 for r, n in keep.items()}
    for _ in range(16):
        deleted = _deleted(set_name, archives, every, keep, now)
        if not deleted:
            break
        raised = True
        for archive in deleted:
            t = retention.parse_archive_name(set_name, archive)
            i = times.index(t) if t is not None else len(times) - 1
            rule = _cheapest_rule(times, i, keep)
            keep[rule] = max(keep.get(rule, 0), _rank(rule, times, i) + 1)
    if _deleted(set_name, archives, every, keep, now):
        keep = {"last": len(times) + 1}
    keep = {r: keep[r] for r in _COUNTS if keep.get(r)}
    if raised:
        notes.append("counts raised so that no existing archive is deleted by the next run")
    newest = times[0]
    due = now - newest
    if due >= _delta(every):
        notes.append(
            f"the newest archive is {_age(due)} old: the next run creates one (every {every})"
        )
    return Guess(every, keep, tuple(notes))


def _cheapest_rule(times: Sequence[datetime], i: int, keep: Mapping[str, int]) -> str:
    """The rule to raise so archive ``i`` is kept: of the rules it is the newest of its
    bucket in, the one whose count grows least (a rule the policy lacks grows from 0);
    ``last`` when there is none."""
    rules = [
        r for r in _COUNTS[1:]
        if all(_bucket(r, t) != _bucket(r, times[i]) for t in times[:i])
    ]  # fmt: skip
    if not rules:
        return "last"
    return min(rules, key=lambda r: (_rank(r, times, i) + 1 - keep.get(r, 0), r not in keep))


def _delta(every: str) -> timedelta:
    return dict(SCHEDULES).get(every, timedelta(days=1))


def _age(d: timedelta) -> str:
    if d >= timedelta(days=2):
        return f"{d.days} days"
    return f"{int(d.total_seconds() // 3600)} hours"


def _deleted(
    set_name: str, archives: Sequence[str], every: str, keep: Mapping[str, int], now: datetime
) -> list[str]:
    """The archives the provider's plan at ``now`` deletes under this policy."""
    spec = {"every": every, "keep": dict(keep), "paths": ["/"]}
    try:
        change = diff_set(set_name, spec, SetLive(tuple(archives)), now)
    except SetPlanError:
        return []
    if change is None:
        return []
    return [o.args["archive"] for o in change.ops if o.op == "delete_archive"]


def group_archives(names: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Archive names ``<set>-YYYYMMDD-HHMMSS`` by set, and the names that are none."""
    sets: dict[str, list[str]] = {}
    other: list[str] = []
    for name in names:
        m = retention.ARCHIVE_RE.fullmatch(name)
        if m is None or retention.parse_archive_name(m.group("set"), name) is None:
            other.append(name)
            continue
        sets.setdefault(m.group("set"), []).append(name)
    return sets, other


def roots(members: Sequence[str]) -> list[str]:
    """The paths an archive was made of, from its member names as tarsnap lists them
    (``etc``, ``etc/passwd``: no leading ``/``): each member whose parent is not listed,
    as an absolute path."""
    names = {m.rstrip("/") for m in members if m.rstrip("/")}
    out = []
    for m in sorted(names):
        parent = m.rsplit("/", 1)[0] if "/" in m else None
        if parent is None or parent not in names:
            out.append("/" + m.lstrip("/"))
    return out


def from_archives(
    sets: Mapping[str, Sequence[str]],
    paths: Mapping[str, Sequence[str]],
    base: Mapping[str, Any],
    origin: str,
    now: datetime,
) -> Found:
    """The resources of the sets ``sets`` (set -> its archive names) with the paths of
    their newest archives (``paths``), ``base`` the backend's keys (``backend``,
    ``repository`` ...). Pure."""
    found = Found()
    for name in sorted(sets):
        address = f"{KIND}/{name}"
        if not 1 <= len(name) <= 64 or not set(name) <= _SET_OK or not name[0].isalnum():
            found.skipped.append(
                Skipped(address, "git names sets with 1-64 letters, digits, '_' or '.'")
            )
            continue
        if name not in paths:
            continue  # its error is reported by the read
        g = guess(name, sets[name], now)
        newest = max(sets[name], key=lambda a: retention.parse_archive_name(name, a))  # type: ignore[arg-type,return-value]
        value = {**base, "paths": list(paths[name]), "every": g.every, "keep": g.keep}
        notes = (
            f"{origin}; paths of the newest archive, {newest}",
            f"GUESS: {g.notes[0]}",
            *g.notes[1:],
            "exclude patterns are not recorded in an archive: add them if you use any",
        )
        found.resources.append(Resource("backups", name, value, notes))
    return found


# ---------------------------------------------------------------------------- read part
def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--tarsnap``, ``--tarsnap-keyfile``, ``--tarsnap-cachedir``, ``--restic REPOSITORY``
    and ``--restic-password-file FILE``."""
    d = TarsnapConfig()
    p.add_argument("--tarsnap", action="store_true", help="import backup sets from tarsnap")
    p.add_argument("--tarsnap-keyfile", metavar="FILE", default=str(d.keyfile),
                   help=f"tarsnap key file (default {d.keyfile})")  # fmt: skip
    p.add_argument("--tarsnap-cachedir", metavar="DIR", default=str(d.cachedir),
                   help=f"tarsnap cache directory (default {d.cachedir})")  # fmt: skip
    p.add_argument("--restic", metavar="REPOSITORY",
                   help="import backup sets from this restic repository")  # fmt: skip
    p.add_argument("--restic-password-file", metavar="FILE",
                   help="the restic repository's password file (with --restic)")  # fmt: skip


def _tarsnap(args: argparse.Namespace, ctx: ImportContext) -> Found:
    from reconciler.kinds.backup.tarsnap import TarsnapBackend

    found = Found()
    d = TarsnapConfig()
    cfg = TarsnapConfig(
        command=ctx.config.commands.tarsnap,
        keyfile=Path(args.tarsnap_keyfile),
        cachedir=Path(args.tarsnap_cachedir),
    )
    backend = TarsnapBackend(cfg, address=KIND)
    try:
        backend.check_keyfile()
        listed = [a.name for a in backend.list_archives()]
    except ReconcilerError as e:
        found.errors.append(e)
        return found
    sets, _other = group_archives(listed)
    paths: dict[str, list[str]] = {}
    for name, archives in sets.items():
        newest = max(archives, key=lambda a: retention.parse_archive_name(name, a))  # type: ignore[arg-type,return-value]
        try:
            paths[name] = roots(backend.members(newest, lock=False))
        except ReconcilerError as e:
            found.errors.append(ReconcilerError(e.message, address=f"{KIND}/{name}"))
    origin = f"from tarsnap --list-archives on host {ctx.host}, {ctx.day}"
    found.extend(from_archives(sets, paths, {"backend": "tarsnap"}, origin, ctx.now))
    if found.resources:
        for key, value, default in (
            ("keyfile", cfg.keyfile, d.keyfile),
            ("cachedir", cfg.cachedir, d.cachedir),
        ):
            if value != default:
                found.resources.append(
                    Resource("tarsnap", key, str(value), (f"--tarsnap-{key} of the import",))
                )
    return found


def _restic(args: argparse.Namespace, ctx: ImportContext) -> Found:
    from reconciler.kinds.backup.restic import ResticBackend, ResticConfig

    found = Found()
    if not args.restic_password_file:
        found.errors.append(
            ReconcilerError("--restic needs --restic-password-file FILE", address=KIND)
        )
        return found
    cfg = ResticConfig(
        repository=args.restic,
        password_file=Path(args.restic_password_file),
        command=ctx.config.commands.restic,
        host=ctx.host,
    )
    backend = ResticBackend(cfg, address=KIND)
    try:
        backend.check_password_file()
        listed = backend.list_archives()
    except ReconcilerError as e:
        found.errors.append(e)
        return found
    sets, _other = group_archives([a.name for a in listed])
    by_name = {a.name: a for a in listed}
    paths = {}
    for name, archives in sets.items():
        newest = max(archives, key=lambda a: retention.parse_archive_name(name, a))  # type: ignore[arg-type,return-value]
        paths[name] = list(by_name[newest].paths)
    base = {
        "backend": "restic",
        "repository": args.restic,
        "password_file": args.restic_password_file,
    }
    origin = f"from restic snapshots (tag reconciler, host {ctx.host}), {ctx.day}"
    found.extend(from_archives(sets, paths, base, origin, ctx.now))
    return found


def collect(args: argparse.Namespace, ctx: ImportContext) -> Found:
    """What ``reconcile import`` writes for backups: the sets of ``--tarsnap`` and of
    ``--restic``; nothing without them."""
    found = Found()
    if args.tarsnap:
        found.extend(_tarsnap(args, ctx))
    if args.restic:
        found.extend(_restic(args, ctx))
    return found
