"""The one way reconciler runs an external command (iptables, tarsnap, restic, gpg, tar ...).

:func:`run` always

* passes an argument list, never a shell string, so names from git are never re-parsed;
* gives the command ``/dev/null`` as stdin unless ``input`` or ``stdin`` is passed: a tool
  that wants to prompt gets end-of-file instead of waiting for a terminal nobody watches;
* captures stdout and stderr;
* bounds it with a timeout (required, in seconds): past it the command is killed.

A program that is not installed raises :class:`~reconciler.errors.CommandNotFound`, one that
cannot be started otherwise (not executable ...) :class:`~reconciler.errors.CommandError`, one
that runs past its timeout :class:`~reconciler.errors.CommandTimeout`; each names the command
and carries ``address`` when the caller has a resource address. The exit status is left to the
caller (nothing is raised for a non-zero exit), so each module words its own errors for them.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Literal, overload

from reconciler.errors import CommandError, CommandNotFound, CommandTimeout

_SHOWN_MAX = 200
"""Characters of a command line quoted in messages (a batch of archive names can be long)."""


def describe(argv: Sequence[str]) -> str:
    """``argv`` as a shell-quoted line for messages, shortened when it is very long."""
    line = shlex.join(argv)
    return line if len(line) <= _SHOWN_MAX else line[: _SHOWN_MAX - 4] + " ..."


@overload
def run(
    argv: Sequence[str],
    *,
    timeout: float,
    text: Literal[True],
    input: str | None = None,
    stdin: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    address: str | None = None,
) -> subprocess.CompletedProcess[str]: ...


@overload
def run(
    argv: Sequence[str],
    *,
    timeout: float,
    text: Literal[False] = False,
    input: bytes | None = None,
    stdin: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    address: str | None = None,
) -> subprocess.CompletedProcess[bytes]: ...


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    text: bool = False,
    input: str | bytes | None = None,
    stdin: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    address: str | None = None,
) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return its exit status and captured output (str when ``text``).

    ``input`` is written to its stdin; ``stdin`` is an open file (e.g. the read end of
    another process's stdout, for a pipe) to read instead; with neither, stdin is
    ``/dev/null``. ``env`` replaces the environment (its ``PATH`` is searched for the
    program). Raises CommandNotFound, CommandError or CommandTimeout (killed after
    ``timeout`` seconds), all for ``address``; never for a non-zero exit.
    """
    argv = list(argv)
    if not argv:
        raise ValueError("run: empty argument list")
    if timeout <= 0:
        raise ValueError(f"run: timeout must be positive, got {timeout!r}")
    if input is not None and stdin is not None:
        raise ValueError("run: pass input or stdin, not both")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else stdin or subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=text,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    except FileNotFoundError as e:
        # Also raised for a missing cwd; say which is missing.
        if cwd is not None and not Path(cwd).is_dir():
            raise CommandError(
                f"cannot run {describe(argv)}: directory {cwd} does not exist", address=address
            ) from e
        raise CommandNotFound(
            f"{argv[0]} is not installed (cannot run {describe(argv)})",
            program=argv[0],
            address=address,
        ) from e
    except OSError as e:
        raise CommandError(
            f"cannot run {describe(argv)}: {e.strerror or e}", address=address
        ) from e
    # The timeout is a timer that kills the command, not communicate(timeout=...): that
    # waits for the exit by polling with sleeps, ~1.3 ms more per command (README,
    # Performance), and a run starts several.
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        out, err = proc.communicate(input)
    finally:
        timer.cancel()
        if proc.poll() is None:  # interrupted (KeyboardInterrupt ...): leave no child behind
            proc.kill()
            proc.wait()
    if expired.is_set():
        raise CommandTimeout(
            f"{describe(argv)} did not finish within {timeout:g} s and was killed",
            timeout=timeout,
            address=address,
        )
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
