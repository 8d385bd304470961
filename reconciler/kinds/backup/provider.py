"""The ``backup`` kind: one resource per backup set, addressed ``backup/<set>``.

A run makes a new archive ``<set>-YYYYMMDD-HHMMSS`` (UTC) when the newest archive of the set
is at least ``every`` old (or there is none), and deletes the archives the set's keep policy no
longer keeps, as decided by :func:`.retention.decide` -- the same decision for tarsnap and
restic. Safety rules (``docs/desired-state.md``):

* ``read`` reads the clock once and stores ``now`` in the live state, so ``diff`` is pure and a
  dry run plans exactly what the real run does. It writes nothing of ours (restic lists with
  ``--no-lock``);
* only names of exactly ``<set>-YYYYMMDD-HHMMSS`` are candidates; anything else is never
  deleted. The newest archive -- counting the one about to be created -- is never deleted;
* retention is decided as if the new archive already existed, and apply creates before it
  deletes: when the create fails, nothing is deleted;
* a set whose archive list cannot be read, whose paths are missing, or whose tarsnap key file
  is unsafe is an error for that set only: nothing is created or deleted for it, other sets
  still plan and apply;
* a backend that is busy (another tarsnap holds its cache lock, a restic repository is locked)
  fails that set only, with a message that the next run retries it;
* a set with ``check: {every: ...}`` is checked when its last check (recorded in the state
  dir, :mod:`.checkstate`) is at least ``every`` old, has failed, or never happened: ``restic
  check [--read-data-subset=N%]`` (op ``check_repository``) or ``tarsnap -t -f NEWEST`` (op
  ``check_archive``), after the create and before any deletion. A failed check is an error of
  that set, recorded as failed (so the next run checks again), and the set's deletions are not
  made: a check never deletes anything, and nothing is expired from a repository or an account
  that does not read back.
* an archive being created is recorded in the state dir (``ours.json``, kind ``backup``,
  keyed by the archive's name: ``{"set": S, "intent": "creating archive X of set S"}``)
  before the backend is called, and the record is dropped once the backend says it is made
  (its name then says whose it is). A run killed in between leaves the record, and the next
  run knows what it means: the archive itself (the create committed: the record is dropped),
  nothing (it never committed: dropped), or ``X.part`` -- a truncated archive tarsnap stores
  for a create interrupted after a checkpoint -- which is then ours: not a backup for the
  schedule nor for the keep policy (it holds part of the files), kept until a complete
  archive of the set newer than it exists (made by that run or one before), then deleted
  as superseded (``delete_archive`` with that reason; tarsnap's deduplication means the newer
  archive holds its blocks). A ``.part`` nobody recorded is never ours. A record whose set
  cannot be read this run is kept.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from reconciler.errors import ProviderError, ReconcilerError, StateError
from reconciler.hostconfig import Commands
from reconciler.kinds.backup import against, checkstate, restic, retention
from reconciler.kinds.backup.checkstate import CheckRecord
from reconciler.kinds.backup.common import BackendBusy
from reconciler.kinds.backup.duration import parse_duration
from reconciler.kinds.backup.restic import ResticBackend, ResticConfig
from reconciler.kinds.backup.tarsnap import (
    SequenceMismatch,
    TarsnapBackend,
    TarsnapConfig,
)
from reconciler.model import HostDesired
from reconciler.plan import Action, Change, Op, PlanError, PlanWarning
from reconciler.state import StateDir

KIND = "backup"
_T = TypeVar("_T")
DEFAULT_DELETE_BATCH = 500
"""Archives per deletion call (``tarsnap -d`` / ``restic forget``)."""

PART = ".part"
"""The suffix of the truncated archive tarsnap stores for an interrupted create."""

RETRY_NOTE = "skipped this run; it is retried on the next run"
CHECK_OPS = ("check_repository", "check_archive")
"""The ops that check a set's backups (restic: the repository; tarsnap: the newest archive)."""

Backend = TarsnapBackend | ResticBackend
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SetLive:
    """What was read for one backup set: every archive name the backend lists (all of them,
    also other sets' and foreign ones: retention sorts them out), the set's missing paths,
    the tags of its archives (restic, read only when ``keep.tags`` asks for them) and when
    it was last checked, and whether that check passed (None: never checked), and the
    truncated archives of interrupted creates that are ours (``partials``)."""

    archives: tuple[str, ...] = ()
    missing_paths: tuple[str, ...] = ()
    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    last_check: datetime | None = None
    last_check_ok: bool | None = None
    partials: tuple[str, ...] = ()
    """``X.part`` archives of this set whose creation the state dir records: ours."""


@dataclass(frozen=True)
class BackupLive:
    """Everything ``diff`` needs, read from the host. Plain data, so golden tests build it.

    ``now`` is the run's one clock reading (aware, UTC, whole seconds); ``sets`` the state per
    desired set; ``errors`` a read failure per set name (that set only).
    """

    now: datetime
    sets: Mapping[str, SetLive] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    checked: tuple[str, ...] = ()
    """The sets whose desired state has ``check:`` (their check records are kept)."""


class SetPlanError(Exception):
    """A reason one set cannot be planned (becomes a plan error for that set only)."""


def _listing_key(spec: Mapping[str, Any], desired: HostDesired) -> tuple[str, ...]:
    """Sets with the same key share one archive listing (one tarsnap account / repository)."""
    if spec["backend"] == "restic":
        return ("restic", str(spec["repository"]), str(spec["password_file"]), desired.host)
    t = desired.raw.get("tarsnap") or {}
    return ("tarsnap", str(t.get("keyfile")), str(t.get("cachedir")))


class BackupProvider:
    """read / pure diff / apply for backup sets (``backups:`` in the desired state).

    ``clock`` returns the current time (aware); tests pass a controllable one to simulate
    years. ``delete_batch`` bounds the archives per deletion call. ``commands`` are the
    host's tarsnap and restic programs (path or name on PATH; the host configuration's
    ``commands``): they are what runs, whatever the desired state's ``tarsnap.command`` says
    (validation refuses one that differs). ``state`` is the state dir, where the last check
    of each set is recorded (None: checks are remembered by this object only).
    """

    kind = KIND

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        delete_batch: int = DEFAULT_DELETE_BATCH,
        commands: Commands | None = None,
        state: StateDir | None = None,
    ) -> None:
        self.clock: Clock = clock or _utc_now
        self.delete_batch = delete_batch
        self.commands = commands or Commands()
        self.state = state
        # Checks this object ran, so the verify read sees them even without a state dir.
        self._checks: dict[str, CheckRecord] = {}
        # Backends of the sets of the last read, for apply (a Change carries no credentials:
        # a restic repository URL may hold a password and must not appear in the plan).
        self._backends: dict[str, Backend] = {}
        # The engine re-reads after apply to verify. That read must judge the plan's moment:
        # with the clock read again, a backup that took longer than ``every`` would look due
        # again and be reported as "did not converge". So apply pins the last read's ``now``
        # for the next read only.
        self._last_now: datetime | None = None
        self._pinned_now: datetime | None = None

    # --------------------------------------------------------------------------- backends
    def backend_for(self, name: str, spec: Mapping[str, Any], desired: HostDesired) -> Backend:
        """The backend object for set ``name`` (constructing it does no I/O)."""
        address = f"{KIND}/{name}"
        if spec["backend"] == "restic":
            cfg = ResticConfig.from_desired(spec, host=desired.host, command=self.commands.restic)
            return ResticBackend(cfg, address=address)
        tcfg = TarsnapConfig.from_desired(desired.raw.get("tarsnap") or {})
        # The host's tarsnap, never a command named in the repository.
        tcfg = replace(tcfg, command=self.commands.tarsnap)
        return TarsnapBackend(tcfg, address=address)

    # ------------------------------------------------------------------------------- read
    def read(self, desired: HostDesired) -> BackupLive:
        """Read the clock once (the read right after an apply reuses the previous read's
        time, so verification judges the moment that was planned), and per set: the
        backend's checks (tarsnap key file, restic password file), its archive list and which
        paths are missing.

        Writes nothing of ours. Every failure is recorded for its set only; sets sharing an
        account or repository share one listing.
        """
        if self._pinned_now is not None:
            now, self._pinned_now = self._pinned_now, None
        else:
            now = self.clock().astimezone(UTC).replace(microsecond=0)
        self._last_now = now
        backups: Mapping[str, Any] = desired.raw.get("backups") or {}
        sets: dict[str, SetLive] = {}
        errors: dict[str, str] = {}
        listings: dict[tuple[str, ...], _Listing | ReconcilerError] = {}
        self._backends = {}
        checked = tuple(n for n in sorted(backups) if backups[n].get("check"))
        records: dict[str, CheckRecord] = {}
        records_error = None
        if checked:
            try:
                records = self._check_records()
            except StateError as e:
                records_error = f"reading the check records: {e.message}"
        try:
            creating = self._creating()
        except StateError as e:
            creating = {}
            for name in backups:
                errors[name] = f"reading the records of archives being created: {e.message}"
        for name in sorted(backups):
            spec = backups[name]
            backend = self.backend_for(name, spec, desired)
            if name in errors:
                continue
            self._backends[name] = backend
            if name in checked and records_error is not None:
                errors[name] = records_error
                continue
            try:
                if isinstance(backend, TarsnapBackend):
                    backend.check_keyfile()
                else:
                    backend.check_password_file()
                key = _listing_key(spec, desired)
                if key not in listings:
                    try:
                        listings[key] = _listing(backend)
                    except ReconcilerError as e:
                        listings[key] = e
                listed = listings[key]
                if isinstance(listed, ReconcilerError):
                    raise listed
            except ReconcilerError as e:
                errors[name] = _with_retry_note(e)
                continue
            missing = tuple(p for p in spec["paths"] if not os.path.lexists(p))
            tags: dict[str, tuple[str, ...]] = {}
            if (spec.get("keep") or {}).get("tags"):
                tags = {
                    a: t for a, t in listed if t and retention.parse_archive_name(name, a)
                }  # fmt: skip
            rec = records.get(name)
            listed_names = {a for a, _ in listed}
            sets[name] = SetLive(
                tuple(a for a, _ in listed),
                missing,
                tags,
                rec.at if rec is not None else None,
                rec.ok if rec is not None else None,
                tuple(
                    sorted(
                        part
                        for x, s in creating.items()
                        if s == name and (part := x + PART) in listed_names
                    )
                ),
            )
        return BackupLive(now, sets, errors, checked)

    def _creating(self) -> dict[str, str]:
        """The archives whose creation the state dir records, name -> set (records that are
        not of that shape, or whose name is not an archive name of their set, are left out:
        they are never taken as ours). Raises StateError when ``ours.json`` is corrupt."""
        if self.state is None:
            return {}
        out: dict[str, str] = {}
        for archive, record in self.state.ours(KIND).items():
            set_name = record.get("set")
            if isinstance(set_name, str) and retention.parse_archive_name(set_name, archive):
                out[archive] = set_name
        return out

    def _intend_create(self, set_name: str, archive: str) -> None:
        """Record, before the backend is called, that ``archive`` of ``set_name`` is being
        created (ProviderError when it cannot be written: then it is not created)."""
        if self.state is None:
            return
        try:
            self.state.intend(
                KIND, archive, f"creating archive {archive} of set {set_name}", {"set": set_name}
            )
        except StateError as e:
            raise ProviderError(
                f"archive {archive} not created: its creation could not be recorded as ours "
                f"({e.message})",
                address=f"{KIND}/{set_name}",
            ) from e

    def _created(self, archive: str) -> None:
        """The backend made ``archive``: its name says whose it is, the record goes."""
        if self.state is not None:
            self.state.forget(KIND, archive)

    def _check_records(self) -> dict[str, CheckRecord]:
        """The last check of every set: the state dir's record, updated by the checks this
        object ran. Raises StateError when the record cannot be read."""
        records = checkstate.load(self.state.path) if self.state is not None else {}
        records.update(self._checks)
        return records

    def forget_vanished(self, live: BackupLive) -> None:
        """Drop the check records of sets that no longer have ``check:`` (left git, or their
        check was removed), so no metric reports a check that is not made any more."""
        self._checks = {n: r for n, r in self._checks.items() if n in live.checked}
        if self.state is None:
            return
        self._settle_creating(live)
        try:
            records = checkstate.load(self.state.path)
        except StateError:
            return  # the read reported it, for every set with check:
        kept = {n: r for n, r in records.items() if n in live.checked}
        if kept != records:
            checkstate.save(self.state.path, kept)

    def _settle_creating(self, live: BackupLive) -> None:
        """Drop the records of archives being created that this read settles: the archive
        exists (made), or neither it nor its ``.part`` does (never committed). Kept: a
        ``.part`` of ours (until it is deleted) and records of sets not read this run."""
        try:
            creating = self._creating()
        except StateError:
            return  # the read reported it, for every set
        for archive, set_name in creating.items():
            seen = live.sets.get(set_name)
            if seen is None or set_name in live.errors:
                continue
            if archive + PART not in seen.archives:
                self.state.forget(KIND, archive)  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------- diff
    def diff(self, desired: HostDesired, live: BackupLive) -> tuple[list[Change], list[PlanError]]:
        """One change per set that needs a new archive or has archives to expire. Pure."""
        changes: list[Change] = []
        errors: list[PlanError] = []
        backups: Mapping[str, Any] = desired.raw.get("backups") or {}
        for name in sorted(backups):
            address = f"{KIND}/{name}"
            if name in live.errors:
                errors.append(PlanError(address, live.errors[name]))
                continue
            state = live.sets.get(name)
            if state is None:
                errors.append(PlanError(address, "no live state was read for this set"))
                continue
            try:
                ch = diff_set(name, backups[name], state, live.now)
            except SetPlanError as e:
                errors.append(PlanError(address, str(e)))
                continue
            if ch is not None:
                changes.append(ch)
        return changes, errors

    def notices(self, desired: HostDesired, live: BackupLive) -> list[PlanWarning]:
        """Pure: the future-dated archives of every set that was read, so they are shown
        even when the set has nothing to do (a set's change carries the same warnings)."""
        out: list[PlanWarning] = []
        backups: Mapping[str, Any] = desired.raw.get("backups") or {}
        for name in sorted(backups):
            state = live.sets.get(name)
            if state is None or name in live.errors:
                continue
            future = sorted(
                (t, a)
                for a in state.archives
                if (t := retention.parse_archive_name(name, a)) is not None and t > live.now
            )
            out += [
                PlanWarning(f"{KIND}/{name}", retention.future_warning(name, a, t, live.now))
                for t, a in reversed(future)  # newest first, as the change lists them
            ]
        return out

    def from_snapshot(
        self, desired: HostDesired, live: BackupLive
    ) -> tuple[HostDesired, BackupLive, list[Change]]:
        """A set added since the snapshot has no archive list in it: ``diff`` would call
        that an error, but it is a new set, planned as created from git (its settings)."""
        backups: Mapping[str, Any] = desired.raw.get("backups") or {}
        new = {n: s for n, s in backups.items() if n not in live.sets and n not in live.errors}
        if not new:
            return desired, live, []
        old = {n: s for n, s in backups.items() if n not in new}
        created = against.changes(
            HostDesired(host=desired.host), replace(desired, raw={**desired.raw, "backups": new})
        )
        return replace(desired, raw={**desired.raw, "backups": old}), live, created

    # ------------------------------------------------------------------------------ apply
    def apply(self, change: Change) -> list[Op]:
        """Execute ``change``: the ``create_archive`` op first, then the check
        (``check_repository`` / ``check_archive``), then ``delete_archive`` ops in batches of
        ``delete_batch``, then ``prune_repository`` (restic). Returns the ops executed.

        Raises ProviderError (with the set's address) on the first failure; a create or a
        check that fails stops the deletions. A busy backend's error says the next run
        retries.
        """
        backend = self._backends.get(change.name)
        if backend is None:
            raise ProviderError(
                "apply before read: no backend for this set", address=change.address
            )
        self._pinned_now = self._last_now  # the verify read judges the plan's moment
        done: list[Op] = []
        creates = [op for op in change.ops if op.op == "create_archive"]
        checks = [op for op in change.ops if op.op in CHECK_OPS]
        deletes = [op for op in change.ops if op.op == "delete_archive"]
        prunes = [op for op in change.ops if op.op == "prune_repository"]
        try:
            for op in creates:
                self._intend_create(change.name, op.args["archive"])
                _with_fsck(backend, functools.partial(_create, backend, change.name, op))
                self._created(op.args["archive"])
                done.append(op)
            for op in checks:
                self._check(backend, change, op, held=len(deletes))
                done.append(op)
            if deletes:
                names = [op.args["archive"] for op in deletes]
                result = _with_fsck(backend, lambda: backend.delete(names, batch=self.delete_batch))
                gone = set(result.deleted) | set(result.missing)
                done += [op for op in deletes if op.args["archive"] in gone]
            for op in prunes:
                if not isinstance(backend, ResticBackend):  # a plan from elsewhere: never guess
                    raise ProviderError(f"{op.op} is a restic operation", address=change.address)
                backend.prune()
                done.append(op)
        except ReconcilerError as e:
            raise ProviderError(_with_retry_note(e), address=change.address) from e
        return done

    def _check(self, backend: Backend, change: Change, op: Op, *, held: int) -> None:
        """Run one check op and record its outcome (a busy backend is not an outcome: the
        check did not run, and the next run retries it). Raises ProviderError when the
        check fails, saying which deletions wait."""
        if op.op == "check_repository" and isinstance(backend, ResticBackend):
            subset: str | None = op.args.get("read_data_subset")
            what = "restic check" + (f" --read-data-subset={subset}" if subset else "")
            run: Callable[[], str] = functools.partial(backend.check, subset)
        elif op.op == "check_archive" and isinstance(backend, TarsnapBackend):
            archive: str = op.args["archive"]
            what = f"tarsnap -t -f {archive}"

            def run() -> str:
                return f"{archive}: {backend.list_contents(archive)} member(s) listed"
        else:  # a plan from elsewhere: never guess
            raise ProviderError(
                f"{op.op} does not apply to this set's backend", address=change.address
            )
        every = str(op.args.get("every", ""))
        try:
            summary = run()
        except BackendBusy:
            raise
        except ReconcilerError as e:
            wait = f"; {held} expired archive(s) are kept until a check passes" if held else ""
            message = (
                f"check failed ({what}): {e.message}{wait}; nothing was deleted, and the next "
                "run checks again"
            )
            self._record_check(change, CheckRecord(self._moment(), False, what, e.message, every))
            raise ProviderError(message, address=change.address) from e
        self._record_check(change, CheckRecord(self._moment(), True, what, summary, every))

    def _moment(self) -> datetime:
        """The time the plan was made (what the check record says; the verify read judges
        the same moment)."""
        return self._last_now if self._last_now is not None else _utc_now()

    def _record_check(self, change: Change, record: CheckRecord) -> None:
        """Remember ``record`` and write it to the state dir (ProviderError if it cannot be
        written: the next run would not know the check ran)."""
        self._checks[change.name] = record
        if self.state is None:
            return
        try:
            records = checkstate.load(self.state.path)
            records[change.name] = record
            checkstate.save(self.state.path, records)
        except StateError as e:
            raise ProviderError(
                f"the check ran ({'passed' if record.ok else 'failed'}) but could not be "
                f"recorded: {e.message}",
                address=change.address,
            ) from e


_Listing = tuple[tuple[str, tuple[str, ...]], ...]
"""What a backend lists: each archive's name and tags (tarsnap archives have none)."""


def _listing(backend: Backend) -> _Listing:
    """Every archive ``backend`` lists, with its tags."""
    return tuple(
        (a.name, a.tags if isinstance(a, restic.ArchiveInfo) else ())
        for a in backend.list_archives()
    )


def _with_fsck(backend: Backend, call: Callable[[], _T]) -> _T:
    """Run ``call``; on tarsnap's "Sequence number mismatch", when git allows it
    (``tarsnap.allow_fsck: true``), run ``tarsnap --fsck`` once and retry. Otherwise the
    error, which names the fix, reaches the operator."""
    try:
        return call()
    except SequenceMismatch:
        if not (isinstance(backend, TarsnapBackend) and backend.config.allow_fsck):
            raise
        backend.fsck(allow_fsck=True)
        return call()


def _with_retry_note(e: ReconcilerError) -> str:
    if isinstance(e, BackendBusy):
        return f"{e.message}; {RETRY_NOTE}"
    return e.message


def _create(backend: Backend, set_name: str, op: Op) -> None:
    name: str = op.args["archive"]
    paths: list[str] = list(op.args["paths"])
    exclude: list[str] = list(op.args.get("exclude") or [])
    if isinstance(backend, ResticBackend):
        # The snapshot's time is the time in its name, so restic's listing and ours agree.
        backend.create(name, paths, exclude, when=retention.parse_archive_name(set_name, name))
    else:
        backend.create(name, paths, exclude)


def diff_set(name: str, spec: Mapping[str, Any], state: SetLive, now: datetime) -> Change | None:
    """The change for one set at ``now``, or None when nothing is due. Pure.

    Raises :class:`SetPlanError` for missing paths, an unparsable ``every`` or ``keep``, or a
    policy that keeps nothing.
    """
    if state.missing_paths:
        raise SetPlanError(
            f"path(s) do not exist on this host: {', '.join(state.missing_paths)}; nothing "
            "is created or deleted for this set until they exist (or leave the desired state)"
        )
    try:
        every = parse_duration(spec["every"])
        policy = retention.KeepPolicy.from_mapping(spec["keep"])
    except ValueError as e:
        raise SetPlanError(str(e)) from None
    if every <= timedelta(0):
        raise SetPlanError(f"every must be longer than zero, got {spec['every']!r}")

    partials = set(state.partials)
    archives = [a for a in state.archives if a not in partials]
    times = {a: t for a in archives if (t := retention.parse_archive_name(name, a)) is not None}
    # The schedule counts from the newest archive that is not in the future: a future-dated
    # archive (a host clock that was wrong) must not stop backups until that date.
    past = [(t, a) for a, t in times.items() if t <= now]
    newest_any = max((t, a) for a, t in times.items())[1] if times else None
    new_name = retention.archive_name(name, now)
    # The name of a partial of ours is taken too (tarsnap refuses it): wait for the next
    # second rather than fail (a run right after the one that was killed).
    due = (
        (not past or now - max(past)[0] >= every)
        and new_name not in times
        and new_name + PART not in partials
    )
    names = [*archives, new_name] if due else archives
    try:
        decision = retention.decide(name, names, policy, now, tags=state.tags)
        check = _check_op(name, spec, state, now, past, new_name if due else None)
    except ValueError as e:
        raise SetPlanError(str(e)) from None

    ops: list[Op] = []
    if due:
        ops.append(
            Op(
                "create_archive",
                {
                    "archive": new_name,
                    "paths": list(spec["paths"]),
                    "exclude": list(spec.get("exclude") or []),
                },
            )
        )
    if check is not None:
        ops.append(check)  # after the create, before any deletion
    rows = {row.archive: row for row in decision.archives}
    deleted = 0
    # Oldest first: if a run stops halfway, what is left is the newer history.
    for archive in reversed(decision.delete):
        if archive == new_name:  # impossible (decide keeps the newest); never delete it
            continue
        ops.append(Op("delete_archive", {"archive": archive, "reason": rows[archive].reason}))
        deleted += 1
    ops += _superseded_partials(name, partials, times, now, due)
    if deleted and spec.get("prune"):
        # Frees the data of what was just forgotten (restic only; the schema checks).
        ops.append(Op("prune_repository", {"repository": spec["repository"]}))
    if not ops:
        return None
    action: Action = "create" if not times else "update"
    before = None if not times else {"archives": len(times), "newest": newest_any}
    after = {
        "archives": len(times) + (1 if due else 0) - deleted,
        "newest": new_name if due else newest_any,
        "every": spec["every"],
        "keep": policy.describe(),
    }
    return Change(KIND, name, action, tuple(ops), before, after, warnings=tuple(decision.warnings))


def _superseded_partials(
    name: str, partials: set[str], times: Mapping[str, datetime], now: datetime, created: bool
) -> list[Op]:
    """``delete_archive`` for each partial of ours (``X.part``) older than a complete archive
    of the set that is not in the future: one that exists, or the one this run creates at
    ``now`` (``created``; apply deletes only after it is made). Pure."""
    complete = [t for t in times.values() if t <= now] + ([now] if created else [])
    if not complete:
        return []
    newest = max(complete)
    ops = []
    for part in sorted(partials):
        t = retention.parse_archive_name(name, part.removesuffix(PART))
        if t is not None and t < newest:
            reason = (
                f"truncated archive of an interrupted create (recorded as ours), superseded "
                f"by {retention.archive_name(name, newest)}"
            )
            ops.append(Op("delete_archive", {"archive": part, "reason": reason}))
    return ops


def _check_op(
    name: str,
    spec: Mapping[str, Any],
    state: SetLive,
    now: datetime,
    past: list[tuple[datetime, str]],
    created: str | None,
) -> Op | None:
    """The set's check when it is due at ``now``, else None. Pure.

    Due when the set has ``check:`` and was never checked, its last check failed (checked
    again on every run until one passes), its last check is dated after ``now`` (a clock
    that was wrong), or the last check is at least ``check.every`` old. restic checks the
    repository; tarsnap reads back the newest archive that is not in the future, counting
    the one this run creates (``created``). Raises ValueError for a bad ``every``.
    """
    check: Mapping[str, Any] | None = spec.get("check")
    if not check:
        return None
    every = parse_duration(check["every"])
    if every <= timedelta(0):
        raise ValueError(f"check.every must be longer than zero, got {check['every']!r}")
    last, ok = state.last_check, state.last_check_ok
    stamp = f"{last:%Y-%m-%d %H:%M:%S} UTC" if last is not None else ""
    if last is None:
        reason = "never checked"
    elif ok is False:
        reason = f"the last check ({stamp}) failed: checked on every run until one passes"
    elif last > now:
        reason = f"the last check is dated {stamp}, after now: checked again"
    elif now - last >= every:
        reason = f"last checked {stamp}, every {check['every']}"
    else:
        return None
    if spec["backend"] == "restic":
        args: dict[str, Any] = {"every": check["every"], "reason": reason}
        if check.get("read_data_subset"):
            args = {"read_data_subset": check["read_data_subset"], **args}
        return Op("check_repository", args)
    candidates = [*past, *([(now, created)] if created is not None else [])]
    if not candidates:  # unreachable: with no archive in the past, a create is due
        return None
    newest = max(candidates)[1]
    return Op("check_archive", {"archive": newest, "every": check["every"], "reason": reason})


__all__ = [
    "DEFAULT_DELETE_BATCH",
    "KIND",
    "BackupLive",
    "BackupProvider",
    "SetLive",
    "SetPlanError",
    "diff_set",
]
