"""The restic backend: drives the ``restic`` command (argument vectors, never a shell string).

It offers what the tarsnap backend offers (list archives, create one, delete many), so both
backends obey the same retention decision (:mod:`.retention`); restic's own ``--keep-*``
policy is never used. How archives map onto restic snapshots:

* every snapshot we make carries the tags ``reconciler`` and the archive name
  ``<set>-YYYYMMDD-HHMMSS`` (one ``--tag`` each: restic splits a tag value on commas, and set
  names cannot hold commas or spaces, so a name is never split), its ``--time`` is the UTC time
  in that name and its ``--host`` is the desired state's host name;
* listing asks for snapshots tagged ``reconciler`` of this host only: another host's snapshots
  in a shared repository, and snapshots made by hand, are never seen and so never deleted.
  A ``reconciler`` snapshot without exactly one archive-name tag is listed under a name that
  no set's pattern matches, so retention reports it as not ours;
* deletion resolves names to snapshot IDs from a fresh listing and runs ``restic forget ID...``
  in bounded batches; after a failed call it re-lists, so it says exactly what is gone.

Listing runs with ``--no-lock``: it only reads, and a dry run must leave the repository as it
was (restic would otherwise write a lock file into it). ``TZ=UTC`` makes ``--time`` UTC.

A restic killed while it holds the repository's lock (a run killed mid-backup, the host losing
power) leaves its lock file behind, and restic does not skip it: every later ``forget``
(exclusive) says "repository is already locked" until someone runs ``restic unlock``, so
expired archives would never go. Every call that locks (backup, forget, check, prune) that
finds the repository locked runs ``restic unlock`` once -- which removes only the locks restic
itself judges stale: made on this host by a process that no longer exists, or not refreshed
for 30 minutes -- and retries once; a lock still held is :class:`ResticBusy`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.kinds.backup.common import (
    BackendBusy,
    BackendError,
    DeleteResult,
    run_backend,
)
from reconciler.kinds.backup.retention import ARCHIVE_RE

DEFAULT_BATCH = 200
"""Snapshot IDs per ``restic forget`` call (64 hex characters each: far below ARG_MAX)."""

_LOCKED = "repository is already locked"
"""What restic prints when another process holds the repository's lock."""

TAG = "reconciler"
"""The tag that marks a snapshot as made by reconciler."""

# Environment variables that would make restic use another repository or password than the
# desired state's (restic reads them in preference to, or together with, ours).
_FOREIGN_ENV = (
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_KEY_HINT",
)


class ResticError(BackendError):
    """restic failed for one backup set."""


class ResticBusy(ResticError, BackendBusy):
    """The repository is locked by another restic process: retry on a later run."""


@dataclass(frozen=True)
class ResticConfig:
    """How to reach one restic repository (``repository``/``password_file`` of a backup set).

    ``host`` is recorded with every snapshot (``--host``) and filters listings, so a repository
    shared by several hosts is safe; ``None`` leaves restic's default (the hostname) and lists
    every host's snapshots.
    """

    repository: str
    password_file: Path
    command: str = "restic"
    host: str | None = None
    extra_args: tuple[str, ...] = ()
    timeout: float | None = None
    """Seconds a single restic call may take before it is killed (``None``: a day,
    :data:`~reconciler.kinds.backup.common.DEFAULT_TIMEOUT`; backups can take hours)."""

    @classmethod
    def from_desired(
        cls, spec: Mapping[str, Any], *, host: str | None, command: str = "restic"
    ) -> ResticConfig:
        """Build from a validated ``backups.<set>`` mapping whose backend is restic."""
        return cls(
            repository=str(spec["repository"]),
            password_file=Path(spec["password_file"]),
            command=command,
            host=host,
        )


@dataclass(frozen=True, order=True)
class ArchiveInfo:
    """One archive (a restic snapshot): its name, UTC time, restic snapshot ID, paths and
    tags (``reconciler``, its name, and any added by hand, e.g. ``restic tag --add keep``:
    what ``keep.tags`` looks at)."""

    name: str
    created: datetime | None
    id: str = ""
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_time(text: str) -> datetime:
    """restic's RFC 3339 time (nanoseconds, ``Z`` or an offset) as an aware UTC datetime."""
    # Python keeps microseconds: cut nanoseconds so every Python version parses it.
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text)).astimezone(UTC)


def archive_of(tags: Sequence[str], short_id: str) -> str:
    """The archive name a snapshot with ``tags`` stands for.

    The single tag other than ``reconciler`` that looks like ``<set>-YYYYMMDD-HHMMSS``; without
    exactly one, a descriptive name with spaces (which no set's pattern matches, so retention
    never deletes the snapshot).
    """
    names = [t for t in tags if t != TAG and ARCHIVE_RE.fullmatch(t)]
    if len(names) == 1:
        return names[0]
    what = "no archive name tag" if not names else f"several archive name tags: {names}"
    return f"restic snapshot {short_id} ({what})"


def parse_snapshots(data: str) -> list[ArchiveInfo]:
    """Parse ``restic snapshots --json`` output into archives (restic's order is kept)."""
    doc = json.loads(data or "[]")
    if doc is None:  # restic 0.9 printed null for an empty repository
        return []
    if not isinstance(doc, list):
        raise ValueError("restic snapshots --json did not print a list")
    out: list[ArchiveInfo] = []
    for snap in doc:
        sid = str(snap["id"])
        tags = [str(t) for t in snap.get("tags") or []]
        out.append(
            ArchiveInfo(
                name=archive_of(tags, str(snap.get("short_id") or sid[:8])),
                created=_parse_time(snap["time"]) if snap.get("time") else None,
                id=sid,
                paths=tuple(str(p) for p in snap.get("paths") or []),
                tags=tuple(tags),
            )
        )
    return out


class ResticBackend:
    """Runs restic against one repository for one backup set; errors carry ``address``."""

    def __init__(self, config: ResticConfig, *, address: str) -> None:
        self.config = config
        self.address = address

    # --- checks -------------------------------------------------------------------------

    def check_password_file(self) -> None:
        """The password file exists and is readable (restic's own message is less clear)."""
        pf = self.config.password_file
        if not pf.exists():
            raise ResticError(f"restic password file {pf} does not exist", address=self.address)
        if not pf.is_file():
            raise ResticError(
                f"restic password file {pf} is not a regular file", address=self.address
            )
        if not os.access(pf, os.R_OK):
            raise ResticError(
                f"restic password file {pf} is not readable by uid {os.geteuid()}",
                address=self.address,
            )

    # --- running restic -----------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
        env["RESTIC_REPOSITORY"] = self.config.repository
        env["RESTIC_PASSWORD_FILE"] = str(self.config.password_file)
        env["TZ"] = "UTC"  # --time is read, and times are printed, in local time: make it UTC
        env["LC_ALL"] = "C"
        return env

    def _restic(self, args: Sequence[str]) -> _Result:
        """Run ``restic <extra args> args`` against this repository."""
        argv = [self.config.command, *self.config.extra_args, *args]
        proc = run_backend(
            argv,
            env=self._env(),
            timeout=self.config.timeout,
            error=ResticError,
            address=self.address,
            name="restic",
            what=" ".join(args[:1]),
        )
        return _Result(
            tuple(argv),
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )

    def _locking(self, args: Sequence[str]) -> _Result:
        """Run a restic command that locks the repository; when the repository is locked,
        ``restic unlock`` (stale locks only, by restic's own test) and one retry."""
        res = self._restic(args)
        locked = res.returncode != 0 and _LOCKED in res.stderr
        if locked and self._restic(["unlock"]).returncode == 0:
            res = self._restic(args)
        return res

    def _fail(self, res: _Result, what: str, *, deleted: Sequence[str] = ()) -> ResticError:
        """Turn what restic really prints into an error that says what to do."""
        err = res.stderr
        repo = self.config.repository
        kw: dict[str, Any] = {"address": self.address, "stderr": err, "deleted": deleted}
        if _LOCKED in err:
            holder = next((ln for ln in err.splitlines() if "already locked" in ln), "")
            return ResticBusy(
                f"{what}: repository {repo} is locked by another restic process "
                f"({holder.strip()}); retry later (if no restic is running, `restic unlock` "
                "removes a stale lock)",
                **kw,
            )
        if "wrong password" in err:
            return ResticError(
                f"{what}: wrong password for repository {repo} "
                f"(password file {self.config.password_file})",
                **kw,
            )
        if "Resolving password failed" in err or "reading password" in err.lower():
            return ResticError(
                f"{what}: restic cannot read the password file {self.config.password_file}",
                **kw,
            )
        if "Is there a repository at the following location" in err or (
            "unable to open config file" in err
        ):
            return ResticError(
                f"{what}: no restic repository at {repo}; create it with `restic init` "
                "(reconciler never initialises repositories)",
                **kw,
            )
        tail = "; ".join(ln.strip() for ln in err.splitlines()[-4:] if ln.strip())
        return ResticError(f"{what}: restic exited {res.returncode}: {tail or 'no message'}", **kw)

    # --- operations ---------------------------------------------------------------------

    def list_archives(self) -> list[ArchiveInfo]:
        """Every reconciler snapshot of this host in the repository, times in UTC.

        Read-only (``--no-lock``). Raises :class:`ResticError` when the repository is missing,
        the password is wrong or the output cannot be parsed.
        """
        args = ["snapshots", "--json", "--no-lock", "--tag", TAG]
        if self.config.host is not None:
            args += ["--host", self.config.host]
        res = self._restic(args)
        if res.returncode != 0:
            raise self._fail(res, "listing snapshots")
        try:
            return parse_snapshots(res.stdout)
        except (ValueError, KeyError, TypeError) as e:
            raise ResticError(
                f"listing snapshots: cannot parse restic's JSON output ({e})",
                address=self.address,
                stderr=res.stderr,
            ) from None

    def create(
        self,
        name: str,
        paths: Sequence[str],
        exclude: Sequence[str] = (),
        *,
        when: datetime | None = None,
    ) -> str:
        """``restic backup --json --tag reconciler --tag NAME --time WHEN ... -- PATH...``.

        ``when`` (aware) becomes the snapshot's time; ``None`` leaves restic's clock. Paths
        are checked first: restic skips a missing path with a warning and still exits 0,
        which would store a partial backup under a good-looking name. Returns the snapshot ID.
        """
        if not paths:
            raise ResticError(f"archive {name}: no paths to back up", address=self.address)
        missing = [p for p in paths if not os.path.lexists(p)]
        if missing:
            raise ResticError(
                f"archive {name}: path(s) do not exist: {', '.join(missing)}", address=self.address
            )
        bad = [p for p in paths if not p.startswith("/")]
        if bad:
            raise ResticError(
                f"archive {name}: path(s) not absolute: {', '.join(bad)}", address=self.address
            )
        args = ["backup", "--json", "--tag", TAG, "--tag", name]
        if self.config.host is not None:
            args += ["--host", self.config.host]
        if when is not None:
            if when.tzinfo is None:
                raise ValueError("when must be timezone-aware")
            args += ["--time", f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S}"]
        for pat in exclude:
            args += ["--exclude", pat]
        args += ["--", *paths]
        res = self._locking(args)
        snapshot_id = _summary_snapshot(res.stdout)
        if res.returncode == 0 and snapshot_id:
            return snapshot_id
        if res.returncode == 3 and snapshot_id:
            # restic: "snapshot created, but some source files could not be read".
            what = (
                f"archive {name} was stored (snapshot {snapshot_id}) but is incomplete: "
                "some files could not be read"
            )
            raise self._fail(res, what)
        if res.returncode == 0:
            raise ResticError(
                f"creating archive {name}: restic printed no snapshot ID",
                address=self.address,
                stderr=res.stderr,
            )
        raise self._fail(res, f"creating archive {name}")

    def delete(self, names: Sequence[str], *, batch: int = DEFAULT_BATCH) -> DeleteResult:
        """Forget the snapshots of ``names`` with ``restic forget ID...``, ``batch`` per call.

        Only snapshots this backend lists (ours, this host's) are resolved, so nothing else is
        ever touched; a name held by several snapshots forgets them all. Stops at the first
        failing call and re-lists, so the error's ``deleted`` says exactly what is gone.
        ``forget`` only drops snapshots; their data is freed by :meth:`prune`, which runs
        only for sets with ``prune: true`` (it rewrites packs and can take hours).
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        result = DeleteResult()
        todo = list(dict.fromkeys(names))  # order kept, duplicates dropped
        if not todo:
            return result
        ids: dict[str, list[str]] = {}
        for a in self.list_archives():
            ids.setdefault(a.name, []).append(a.id)
        result.missing = [n for n in todo if n not in ids]
        present = [n for n in todo if n in ids]
        # Batches of names (all of a name's IDs in one call), so a name is either gone or not.
        chunks: list[list[str]] = []
        for n in present:
            if not chunks or sum(len(ids[x]) for x in chunks[-1]) + len(ids[n]) > batch:
                chunks.append([])
            chunks[-1].append(n)
        for chunk in chunks:
            res = self._locking(["forget", *(i for n in chunk for i in ids[n])])
            result.calls += 1
            if res.returncode == 0:
                result.deleted += chunk
                continue
            try:
                still = {a.name for a in self.list_archives()}
            except ResticError:
                still = set(chunk)  # cannot tell: claim nothing for this chunk
            result.deleted += [n for n in chunk if n not in still]
            what = (
                f"forgetting snapshots (call {result.calls} of {len(chunks)}; "
                f"{len(result.deleted)} archive(s) deleted so far)"
            )
            raise self._fail(res, what, deleted=result.deleted)
        return result

    def check(self, read_data_subset: str | None = None) -> str:
        """``restic check [--read-data-subset=N%]``: the repository's structure (indexes,
        packs, snapshots, trees) and, with a subset, that much of its data read back and
        verified. Returns restic's verdict line; raises :class:`ResticError` when restic
        finds errors (its messages in the error) and :class:`ResticBusy` when the
        repository is locked (restic check locks it exclusively).
        """
        args = ["check"]
        if read_data_subset is not None:
            args.append(f"--read-data-subset={read_data_subset}")
        res = self._locking(args)
        if res.returncode != 0:
            raise self._fail(res, f"restic {' '.join(args)}")
        lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
        return lines[-1] if lines else "no errors were found"

    def prune(self) -> None:
        """``restic prune``: free the data no snapshot references any more (after a forget).

        Repository-wide and exclusive: restic locks the repository for its duration, and a
        lock held by another process is BackendBusy (retried next run), like a backup's.
        """
        res = self._locking(["prune"])
        if res.returncode != 0:
            raise self._fail(res, "pruning the repository (snapshots were forgotten)")


def _summary_snapshot(stdout: str) -> str | None:
    """The ``snapshot_id`` of the ``summary`` line of ``restic backup --json``, if any."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("message_type") == "summary":
            sid = msg.get("snapshot_id")
            return str(sid) if sid else None
    return None
