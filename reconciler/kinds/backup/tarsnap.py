"""The tarsnap backend: drives the ``tarsnap`` command (argument vectors, never a shell string).

What tarsnap really does, from its manual page and sources (see ``lab/fake_tarsnap/README.md``):

* ``--list-archives -v --null-output`` prints records separated by one NUL and fields by two
  NULs; the creation time is ``strftime("%F %T", localtime())``, so we run it with ``TZ=UTC``.
  The order is the server's storage order (hashes of names), never chronological.
* ``-d -f A -f B ...`` deletes archives one transaction at a time, in order; it stops at the
  first failure, and exits 2 ("Data on server was modified, but it might not be exactly what
  you requested") when some deletions were committed before it. We pass ``--keep-going`` so an
  archive that is already gone is skipped instead of stopping the batch.
* ``-c`` refuses a name when ``NAME`` or ``NAME.part`` exists ("An archive already exists with
  the name"); a path that cannot be stat'ed is a warning and the archive is still committed
  without it (exit 2), so we check our paths before calling tarsnap.
* tarsnap holds ``lockf`` on ``<cachedir>/lockf`` for each write transaction and prints
  "Transaction already in progress" when another tarsnap holds it: :class:`TarsnapBusy`.
* "Sequence number mismatch: Run --fsck" needs ``tarsnap --fsck``, which we only run when the
  caller allows it.

Our own calls are serialised with an ``flock`` on a lock file of ours (by default
``<cachedir>.reconciler.lock``), so two reconciler runs never interleave tarsnap calls; it is
deliberately not tarsnap's own ``lockf`` file, whose semantics belong to tarsnap.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.errors import CommandError
from reconciler.kinds.backup.common import (
    BackendBusy,
    BackendError,
    DeleteResult,
    run_backend,
)

DEFAULT_BATCH = 500
"""Archives per ``tarsnap -d`` call: bounded so one argv stays far below ARG_MAX."""

_DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_EXISTS = re.compile(r'An archive already exists with the name "(.*)"$', re.MULTILINE)
_NOT_EXIST = re.compile(r"^[^:\n]*: Archive does not exist: (.*)$", re.MULTILINE)


class TarsnapError(BackendError):
    """tarsnap failed for one backup set."""


class TarsnapBusy(TarsnapError, BackendBusy):
    """Another tarsnap (or another reconciler run) holds the cache: retry later.

    Not a failure of the whole run: the set is skipped this time and retried on the next run.
    """


class SequenceMismatch(TarsnapError):
    """The cache is out of step with the server; ``tarsnap --fsck`` rebuilds it."""


class ArchiveExists(TarsnapError):
    """``tarsnap -c`` refused the name because ``NAME`` or ``NAME.part`` already exists."""

    def __init__(self, message: str, *, name: str, address: str | None, stderr: str) -> None:
        super().__init__(message, address=address, stderr=stderr)
        self.name = name


@dataclass(frozen=True)
class TarsnapConfig:
    """How to run tarsnap on this host (the ``tarsnap:`` section of the desired state)."""

    command: str = "tarsnap"
    keyfile: Path = Path("/root/tarsnap.key")
    cachedir: Path = Path("/usr/local/tarsnap-cache")
    extra_args: tuple[str, ...] = ()
    lock_file: Path | None = None
    """Our own serialisation lock; ``None`` means ``<cachedir>.reconciler.lock``."""
    lock_wait: float = 0.0
    """Seconds to wait for another reconciler run's tarsnap calls before :class:`TarsnapBusy`."""
    timeout: float | None = None
    """Seconds a single tarsnap call may take before it is killed (``None``: a day,
    :data:`~reconciler.kinds.backup.common.DEFAULT_TIMEOUT`; creates can take hours)."""
    allow_fsck: bool = False
    """``tarsnap.allow_fsck`` in git: on "Sequence number mismatch", run ``--fsck`` and retry."""

    @classmethod
    def from_desired(cls, raw: Mapping[str, Any]) -> TarsnapConfig:
        """Build from the validated ``tarsnap`` mapping (``command``, ``keyfile``, ``cachedir``)."""
        base = cls()
        return cls(
            command=str(raw.get("command", base.command)),
            keyfile=Path(raw.get("keyfile", base.keyfile)),
            cachedir=Path(raw.get("cachedir", base.cachedir)),
            allow_fsck=bool(raw.get("allow_fsck", False)),
        )

    @property
    def lock_path(self) -> Path:
        """The file our ``flock`` is taken on."""
        if self.lock_file is not None:
            return self.lock_file
        return self.cachedir.with_name(self.cachedir.name + ".reconciler.lock")


@dataclass(frozen=True, order=True)
class ArchiveInfo:
    """One archive as ``--list-archives -v`` reports it.

    ``created`` is timezone-aware UTC; ``None`` only for archives tarsnap stored without a
    creation time (it then prints the name alone).
    """

    name: str
    created: datetime | None


@dataclass(frozen=True)
class _Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str


def parse_archive_list(data: bytes) -> list[ArchiveInfo]:
    """Parse ``--list-archives -v --null-output`` output (run with ``TZ=UTC``).

    Records end with one NUL; within a record, fields are separated by two NULs (tarsnap's
    ``print_separator()``). Names may hold spaces, tabs and newlines (only NUL is impossible),
    so nothing is ever split on whitespace. A record without a date (archive stored without a
    creation time) is a name followed directly by the record NUL. Storage order is kept.
    """
    text = data.decode("utf-8", "surrogateescape")
    tokens = text.split("\0")
    if tokens and tokens[-1] == "":
        tokens.pop()  # the last record's terminator
    out: list[ArchiveInfo] = []
    i = 0
    while i < len(tokens):
        name = tokens[i]
        # "name\0\0date\0" splits into [name, "", date]; the empty token is the second NUL
        # of the field separator.
        if i + 2 < len(tokens) and tokens[i + 1] == "" and _DATE.fullmatch(tokens[i + 2]):
            created = datetime.strptime(tokens[i + 2], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            out.append(ArchiveInfo(name, created))
            i += 3
        else:
            out.append(ArchiveInfo(name, None))
            i += 1
    return out


class TarsnapBackend:
    """Runs tarsnap for one backup set; every error carries that set's ``address``."""

    def __init__(self, config: TarsnapConfig, *, address: str) -> None:
        self.config = config
        self.address = address
        self._lock_fd: int | None = None
        self._lock_depth = 0

    # --- checks and locking -------------------------------------------------------------

    def check_keyfile(self) -> None:
        """The key file exists, we can read it, and group/other cannot (it holds every key)."""
        kf = self.config.keyfile
        try:
            st = kf.stat()
        except FileNotFoundError:
            raise TarsnapError(
                f"tarsnap key file {kf} does not exist (create it with tarsnap-keygen)",
                address=self.address,
            ) from None
        except OSError as e:
            raise TarsnapError(
                f"cannot stat tarsnap key file {kf}: {e.strerror}", address=self.address
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise TarsnapError(f"tarsnap key file {kf} is not a regular file", address=self.address)
        if not os.access(kf, os.R_OK):
            raise TarsnapError(
                f"tarsnap key file {kf} is not readable by uid {os.geteuid()}",
                address=self.address,
            )
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TarsnapError(
                f"tarsnap key file {kf} is accessible by group or other (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {kf}",
                address=self.address,
            )

    @contextmanager
    def session(self) -> Iterator[None]:
        """Hold our own lock across several calls (re-entrant within this object).

        ``flock`` is released by the kernel if we die, so a crash leaves no stale lock.
        """
        if self._lock_depth == 0:
            path = self.config.lock_path
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            deadline = time.monotonic() + self.config.lock_wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    os.close(fd)
                    raise TarsnapBusy(
                        f"another reconciler run is using tarsnap (lock {path}); retry later",
                        address=self.address,
                    ) from None
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # --- running tarsnap ----------------------------------------------------------------

    def _argv(self, *args: str) -> list[str]:
        c = self.config
        # --no-default-config: a host's tarsnap.conf / ~/.tarsnaprc (e.g. humanize-numbers,
        # print-stats, another keyfile) must not change what we parse or which account we use.
        return [
            c.command,
            "--no-default-config",
            "--keyfile",
            str(c.keyfile),
            "--cachedir",
            str(c.cachedir),
            *c.extra_args,
            *args,
        ]

    def _tarsnap(self, args: Sequence[str], *, lock: bool = True) -> _Result:
        """Run ``tarsnap <our options> args`` (under our lock unless ``lock`` is False)."""
        env = dict(os.environ)
        env["TZ"] = "UTC"  # --list-archives prints local time; make local time UTC
        env["LC_ALL"] = "C"  # messages we match are untranslated anyway; dates stay ASCII
        argv = self._argv(*args)
        # Reads take no lock (tarsnap's listing takes none either): creating our lock file
        # would be a write, and a dry-run must write nothing.
        with self.session() if lock else contextlib.nullcontext():
            proc = run_backend(
                argv,
                env=env,
                timeout=self.config.timeout,
                error=TarsnapError,
                address=self.address,
                name="tarsnap",
                what=" ".join(args),
            )
        return _Result(
            tuple(argv), proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")
        )

    def _raise_known(self, res: _Result, what: str, *, deleted: Sequence[str] = ()) -> None:
        """Turn the messages tarsnap really prints into errors that say what to do."""
        err = res.stderr
        c = self.config
        if "Transaction already in progress" in err:
            raise TarsnapBusy(
                f"{what}: another tarsnap holds the cache directory {c.cachedir} "
                "(Transaction already in progress); retry later",
                address=self.address,
                stderr=err,
                deleted=deleted,
            )
        if "Sequence number mismatch" in err:
            raise SequenceMismatch(
                f"{what}: the tarsnap cache {c.cachedir} is out of step with the server "
                f"(Sequence number mismatch); fix: run `{c.command} --fsck --keyfile {c.keyfile} "
                f"--cachedir {c.cachedir}` (reconciler runs it only when fsck is allowed)",
                address=self.address,
                stderr=err,
                deleted=deleted,
            )
        if "Cannot read key file" in err:
            line = next(ln for ln in err.splitlines() if "Cannot read key file" in ln)
            raise TarsnapError(
                f"{what}: tarsnap cannot read key file {c.keyfile} ({line.strip()})",
                address=self.address,
                stderr=err,
                deleted=deleted,
            )
        if "Cache directory must already exist" in err:
            raise TarsnapError(
                f"{what}: the tarsnap cache directory {c.cachedir} is missing or empty; fix: run "
                f"`{c.command} --fsck --keyfile {c.keyfile} --cachedir {c.cachedir}`",
                address=self.address,
                stderr=err,
                deleted=deleted,
            )

    def _fail(self, res: _Result, what: str, *, deleted: Sequence[str] = ()) -> TarsnapError:
        self._raise_known(res, what, deleted=deleted)
        tail = "; ".join(ln.strip() for ln in res.stderr.splitlines()[-4:] if ln.strip())
        err = CommandError(
            f"{what}: tarsnap exited {res.returncode}: {tail or 'no message'}",
            address=self.address,
        )
        # Wrapped so that callers catch one type; CommandError is kept as the cause.
        wrapped = TarsnapError(
            err.message, address=self.address, stderr=res.stderr, deleted=deleted
        )
        wrapped.__cause__ = err
        return wrapped

    # --- operations ---------------------------------------------------------------------

    def list_archives(self) -> list[ArchiveInfo]:
        """Every archive on the account, in tarsnap's (storage) order, times in UTC."""
        res = self._tarsnap(["--list-archives", "-v", "--null-output"], lock=False)
        if res.returncode != 0:
            raise self._fail(res, "listing archives")
        return parse_archive_list(res.stdout)

    def create(
        self, name: str, paths: Sequence[str], exclude: Sequence[str] = (), *, dry_run: bool = False
    ) -> None:
        """``tarsnap -c -f NAME [--exclude P]... -- PATH...``.

        Paths are checked first: tarsnap would warn "Cannot stat", store the archive without
        them and exit 2, leaving a half backup under a good-looking name.
        """
        if not paths:
            raise TarsnapError(f"archive {name}: no paths to back up", address=self.address)
        missing = [p for p in paths if not os.path.lexists(p)]
        if missing:
            raise TarsnapError(
                f"archive {name}: path(s) do not exist: {', '.join(missing)}", address=self.address
            )
        for p in paths:
            # tarsnap treats operands "-C dir" and "@archive" specially; absolute paths are
            # never mistaken for those (the schema requires them too).
            if not p.startswith("/"):
                raise TarsnapError(
                    f"archive {name}: path {p!r} is not absolute", address=self.address
                )
        args = ["-c", "-f", name]
        for pat in exclude:
            args += ["--exclude", pat]
        if dry_run:
            args.append("--dry-run")
        args += ["--", *paths]
        res = self._tarsnap(args)
        if res.returncode == 0:
            return
        m = _EXISTS.search(res.stderr)
        if m:
            taken = m.group(1)
            hint = (
                f"; {taken} is a truncated archive left by an interrupted create"
                if taken.endswith(".part")
                else ""
            )
            raise ArchiveExists(
                f"archive {name}: tarsnap says an archive already exists with the name "
                f"{taken!r}{hint}; not overwriting",
                name=taken,
                address=self.address,
                stderr=res.stderr,
            )
        if res.returncode == 2:
            # Something was committed despite the error (e.g. a path vanished mid-run).
            raise self._fail(res, f"archive {name} was stored but is incomplete")
        raise self._fail(res, f"creating archive {name}")

    def delete(self, names: Sequence[str], *, batch: int = DEFAULT_BATCH) -> DeleteResult:
        """Delete ``names`` with ``-d -f A -f B ...``, ``batch`` archives per call.

        Stops at the first failing call. After a failure the account is re-listed so that the
        error's ``deleted`` (and the result) say exactly which archives are gone: with exit
        code 2 some deletions of that call were committed, and we never guess which.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        result = DeleteResult()
        todo = list(dict.fromkeys(names))  # order kept, duplicates dropped
        with self.session():
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                args = ["-d", "--keep-going"]
                for n in chunk:
                    args += ["-f", n]
                res = self._tarsnap(args)
                result.calls += 1
                gone_before = set(_NOT_EXIST.findall(res.stderr))
                if res.returncode == 0:
                    result.missing += [n for n in chunk if n in gone_before]
                    result.deleted += [n for n in chunk if n not in gone_before]
                    continue
                # Failure: find out what really happened to this chunk.
                try:
                    present = {a.name for a in self.list_archives()}
                except TarsnapError:
                    present = set(chunk)  # cannot tell: claim nothing for this chunk
                result.missing += [n for n in chunk if n in gone_before]
                result.deleted += [n for n in chunk if n not in present and n not in gone_before]
                what = (
                    f"deleting archives (call {result.calls} of "
                    f"{math.ceil(len(todo) / batch)}; {len(result.deleted)} deleted so far)"
                )
                raise self._fail(res, what, deleted=result.deleted)
        return result

    def list_contents(self, name: str) -> int:
        """``tarsnap -t -f NAME``: read archive ``name`` back and list its members; returns
        how many there are.

        tarsnap fetches and verifies the archive's metadata, its index and every member's
        header (each chunk it reads is authenticated); file data is skipped, not downloaded.
        A missing archive, one that does not verify, or an empty listing raises
        :class:`TarsnapError`. Runs under our lock, so another reconciler run's deletions
        cannot remove the archive while it is read.
        """
        return len(self.members(name))

    def members(self, name: str, *, lock: bool = True) -> list[str]:
        """``tarsnap -t -f NAME``: the member names of archive ``name`` as tarsnap lists
        them (no leading ``/``); errors as :meth:`list_contents`. ``lock=False`` (a read
        that must write nothing, as ``reconcile import``) runs without our lock file."""
        res = self._tarsnap(["-t", "-f", name], lock=lock)
        if res.returncode != 0:
            raise self._fail(res, f"listing archive {name}")
        members = [m for m in res.stdout.split(b"\n") if m]
        if not members:
            raise TarsnapError(
                f"listing archive {name}: tarsnap listed no members", address=self.address
            )
        return [m.decode("utf-8", "surrogateescape") for m in members]

    def fsck(self, *, allow_fsck: bool = False) -> str:
        """Run ``tarsnap --fsck`` (rebuilds the cache from the server) only when allowed."""
        if not allow_fsck:
            c = self.config
            raise TarsnapError(
                f"tarsnap --fsck is needed but not allowed for this run; run it by hand: "
                f"`{c.command} --fsck --keyfile {c.keyfile} --cachedir {c.cachedir}`",
                address=self.address,
            )
        res = self._tarsnap(["--fsck"])
        if res.returncode != 0:
            raise self._fail(res, "tarsnap --fsck")
        return res.stdout.decode("utf-8", "replace")

    @staticmethod
    def leftover_parts(archives: Sequence[ArchiveInfo], prefix: str) -> list[str]:
        """``NAME.part`` archives (interrupted creates) whose name starts with ``prefix``.

        Reported, never deleted here: a truncated archive still holds data and its blocks make
        the next backup cheaper; whether it expires is the retention policy's decision.
        """
        return [a.name for a in archives if a.name.endswith(".part") and a.name.startswith(prefix)]
