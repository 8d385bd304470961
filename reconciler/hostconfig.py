"""The host configuration: what this host allows the desired state to ask for
(``docs/host-config.md``).

Everything in the desired-state repository is untrusted input. The host decides which
programs run (``commands``), which host files the repository may name (``allowed_dirs``) and
whether libvirt's ``test`` driver may be used (``libvirt.allow_test_driver``). The file is
``/etc/reconciler/config.yaml``, or the one named by ``--config FILE`` / ``RECONCILER_CONFIG``;
it is never read from the repository. A missing default file means the fixed defaults (the
zero value of :class:`HostConfig`); a missing file named explicitly is an error::

    commands: {tarsnap: /usr/local/bin/tarsnap, restic: /usr/bin/restic}
    allowed_dirs: [/etc/reconciler, /var/lib/reconciler]
    libvirt: {allow_test_driver: false}

:func:`load` reads it strictly (unknown keys, wrong types: :class:`HostConfigError` naming
the file, line and key); :meth:`HostConfig.path_problem` is the ``allowed_dirs`` rule the
kinds' host checks (``check_host`` in ``reconciler/kinds/<kind>/checks.py``) apply to every
path the repository names.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from reconciler.errors import HostConfigError, Problem
from reconciler.yamlsrc import YamlDoc, YPath, format_path, load_yaml

#: Where the host configuration is read from when neither ``--config`` nor
#: ``RECONCILER_CONFIG`` names a file.
DEFAULT_PATH = Path("/etc/reconciler/config.yaml")

#: The environment variable naming the host configuration file (``--config``'s default).
ENV_VAR = "RECONCILER_CONFIG"

#: The directories the repository may name files in when the host configuration does not
#: set ``allowed_dirs``.
DEFAULT_ALLOWED_DIRS: tuple[str, ...] = ("/etc/reconciler", "/var/lib/reconciler")

#: The largest host configuration file read.
MAX_SIZE = 1024 * 1024

_PROGRAMS = ("tarsnap", "restic")


class Commands(NamedTuple):
    """The program each backend runs: an absolute path, or a bare name looked up on the
    host's ``PATH``. Never taken from the repository."""

    tarsnap: str = "tarsnap"
    restic: str = "restic"

    def get(self, program: str) -> str:
        """The command for ``program`` (``tarsnap`` or ``restic``); KeyError otherwise."""
        if program not in _PROGRAMS:
            raise KeyError(program)
        value: str = getattr(self, program)
        return value


class LibvirtPolicy(NamedTuple):
    """What the host allows in libvirt node URIs beyond the safe transports."""

    #: ``test:///...`` URIs (libvirt's in-process test driver, which reads a host file).
    allow_test_driver: bool = False


@dataclass(frozen=True)
class HostConfig:
    """The host configuration. The zero value is the safe default: ``tarsnap`` and
    ``restic`` from ``PATH``, files only under :data:`DEFAULT_ALLOWED_DIRS`, no libvirt test
    driver, and no file read (``file`` None)."""

    commands: Commands = field(default_factory=Commands)
    #: absolute, normalised directory paths (as written; resolved when checked).
    allowed_dirs: tuple[str, ...] = DEFAULT_ALLOWED_DIRS
    libvirt: LibvirtPolicy = field(default_factory=LibvirtPolicy)
    #: the file this was read from; None: the fixed defaults, no file.
    file: str | None = None
    #: the settings the file sets explicitly (``commands.tarsnap``, ``allowed_dirs`` ...).
    explicit: frozenset[str] = frozenset()

    def origin(self, key: str) -> str:
        """Where the value of setting ``key`` comes from, for messages: ``set in FILE KEY``,
        or why it is the default."""
        if self.file is None:
            return f"the default: {DEFAULT_PATH} does not exist"
        if key in self.explicit:
            return f"set in {self.file} {key}"
        return f"the default: {self.file} does not set {key}"

    def path_problem(self, value: str, *, also: tuple[str, ...] = ()) -> str | None:
        """Why the repository may not name the host path ``value``: it is relative, or it
        (as written, or what its symlinks resolve to) lies outside every ``allowed_dirs``
        entry (and every directory in ``also``); None when it may. Reads the file system
        (``os.path.realpath``), never the file itself."""
        roots = (*self.allowed_dirs, *also)
        where = f"allowed_dirs is {_list(self.allowed_dirs)} ({self.origin('allowed_dirs')})"
        if also:
            where += f"; also allowed here: {_list(also)}"
        if not value.isprintable():
            return f"{show(value)} holds control characters: not a path the host allows"
        if not value.startswith("/"):
            return (
                f"{show(value)} is not an absolute path: the repository may only name host "
                f"files under the directories the host allows: {where}"
            )
        lexical = os.path.normpath(value)
        try:
            resolved = _realpath(value)
        except (OSError, ValueError) as e:
            return f"{show(value)} cannot be resolved ({e}): not a path the host allows"
        real_roots = [_realpath(r) for r in roots]
        if not any(_under(lexical, r) for r in (*roots, *real_roots)):
            return f"{show(value)} is outside the directories the host allows: {where}"
        if not any(_under(resolved, r) for r in real_roots):
            return (
                f"{show(value)} resolves to {show(resolved)}, outside the directories the "
                f"host allows (a symbolic link leaves them): {where}"
            )
        return None


#: ``os.path.realpath`` answers while :func:`paths_resolved_once` is active (else None).
_RESOLVED: dict[str, str] | None = None


def _realpath(path: str) -> str:
    memo = _RESOLVED
    if memo is None:
        return os.path.realpath(path)
    found = memo.get(path)
    if found is None:
        found = memo[path] = os.path.realpath(path)
    return found


@contextlib.contextmanager
def paths_resolved_once() -> Iterator[None]:
    """Within the block, :meth:`HostConfig.path_problem` resolves each path once (its
    symlinks as they were the first time): for one run that checks the same host paths for
    many files (the CI dry-run: ``allowed_dirs`` and a password file for every host)."""
    global _RESOLVED
    outer = _RESOLVED
    _RESOLVED = {} if outer is None else outer
    try:
        yield
    finally:
        _RESOLVED = outer


def show(value: str) -> str:
    """``value`` as a message shows it: as is when printable, else quoted with escapes, so
    a message is always one line."""
    return value if value.isprintable() else repr(value)


def _list(roots: tuple[str, ...]) -> str:
    return ", ".join(roots) if roots else "none"


def _under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both absolute and normalised)."""
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root.rstrip("/") + "/")


# --------------------------------------------------------------------------------- loading
def default_path() -> Path | None:
    """The file named by ``RECONCILER_CONFIG`` (an explicit choice: it must exist), else
    None (meaning :data:`DEFAULT_PATH`, which may be missing)."""
    value = os.environ.get(ENV_VAR, "")
    return Path(value) if value else None


def load(path: Path | None) -> HostConfig:
    """Read the host configuration from ``path``; with None from :data:`DEFAULT_PATH`, where
    a missing file means the defaults (``HostConfig()``). Raises :class:`HostConfigError`
    for a missing explicit file, an unreadable, unsafe (writable by others than its owner
    root) or invalid one, naming the file, line and key."""
    explicit = path is not None
    where = path if path is not None else DEFAULT_PATH
    try:
        st = os.stat(where)
    except FileNotFoundError:
        if explicit:
            raise HostConfigError(f"host configuration {where} does not exist") from None
        return HostConfig()
    except OSError as e:
        raise HostConfigError(f"cannot read host configuration {where}: {e.strerror}") from e
    _check_file(where, st)
    try:
        doc = load_yaml(where, str(where))
    except OSError as e:
        raise HostConfigError(f"cannot read host configuration {where}: {e.strerror}") from e
    if doc.data is None and all(p.message == "file is empty" for p in doc.problems):
        return HostConfig(file=str(where))
    problems = list(doc.problems)
    config = None
    if isinstance(doc.data, dict):
        config, more = _parse(doc, str(where))
        problems += more
    if problems or config is None:
        raise HostConfigError(
            "invalid host configuration:\n" + "\n".join(str(p) for p in sorted(problems))
        )
    return config


def _check_file(path: Path, st: os.stat_result) -> None:
    """Refuse a configuration that is not a regular file of root's (or ours), too large, or
    writable by group or others: whoever can write it chooses the programs root runs."""
    if not stat.S_ISREG(st.st_mode):
        raise HostConfigError(f"host configuration {path} is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise HostConfigError(
            f"refusing host configuration {path}: it is owned by uid {st.st_uid}, not root: "
            f"chown root {path}"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(st.st_mode)
        raise HostConfigError(
            f"refusing host configuration {path}: it is writable by group or others (mode "
            f"{mode:04o}): chmod go-w {path}"
        )
    if st.st_size > MAX_SIZE:
        raise HostConfigError(
            f"host configuration {path} is {st.st_size} bytes, more than {MAX_SIZE}"
        )


def _parse(doc: YamlDoc, file: str) -> tuple[HostConfig | None, list[Problem]]:
    """The configuration in ``doc`` (a mapping), and every problem found in it."""
    out: list[Problem] = []
    data: dict[str, Any] = doc.data
    explicit: set[str] = set()

    def bad(path: YPath, message: str, *, key: bool = False) -> None:
        out.append(doc.problem(path, message, key=key))

    _unknown_keys(doc, (), data, ("commands", "allowed_dirs", "libvirt"), bad)

    commands = Commands()
    raw_commands = data.get("commands", {})
    if not isinstance(raw_commands, dict):
        bad(("commands",), f"expected a mapping (program: command), got {_kind(raw_commands)}")
    else:
        _unknown_keys(doc, ("commands",), raw_commands, _PROGRAMS, bad)
        values: dict[str, str] = {}
        for program in _PROGRAMS:
            if program not in raw_commands:
                continue
            value = raw_commands[program]
            path = ("commands", program)
            if not isinstance(value, str) or not value:
                bad(path, f"expected an absolute path or a program name, got {_kind(value)}")
            elif not value.isprintable():
                bad(path, f"{show(value)} holds control characters")
            elif "/" in value and not value.startswith("/"):
                bad(path, f"expected an absolute path or a program name (looked up on PATH), "
                          f"got the relative path {value}")  # fmt: skip
            else:
                values[program] = value
                explicit.add(format_path(path))
        commands = Commands(**values)

    allowed = DEFAULT_ALLOWED_DIRS
    if "allowed_dirs" in data:
        raw_dirs = data["allowed_dirs"]
        if not isinstance(raw_dirs, list):
            bad(("allowed_dirs",), f"expected a list of directories, got {_kind(raw_dirs)}")
        else:
            dirs: list[str] = []
            for i, d in enumerate(raw_dirs):
                if not isinstance(d, str) or not d.startswith("/") or not d.isprintable():
                    got = show(d) if isinstance(d, str) else _kind(d)
                    bad(("allowed_dirs", i), f"expected an absolute directory path, got {got}")
                else:
                    dirs.append(os.path.normpath(d))
            allowed = tuple(dirs)
            explicit.add("allowed_dirs")

    libvirt = LibvirtPolicy()
    raw_libvirt = data.get("libvirt", {})
    if not isinstance(raw_libvirt, dict):
        bad(("libvirt",), f"expected a mapping, got {_kind(raw_libvirt)}")
    else:
        _unknown_keys(doc, ("libvirt",), raw_libvirt, ("allow_test_driver",), bad)
        if "allow_test_driver" in raw_libvirt:
            value = raw_libvirt["allow_test_driver"]
            path = ("libvirt", "allow_test_driver")
            if not isinstance(value, bool):
                bad(path, f"expected true or false, got {doc.texts.get(path) or _kind(value)}")
            else:
                libvirt = LibvirtPolicy(allow_test_driver=value)
                explicit.add("libvirt.allow_test_driver")

    if out:
        return None, out
    return (
        HostConfig(
            commands=commands,
            allowed_dirs=allowed,
            libvirt=libvirt,
            file=file,
            explicit=frozenset(explicit),
        ),
        out,
    )


def _unknown_keys(
    doc: YamlDoc, path: YPath, data: dict[str, Any], known: tuple[str, ...], bad: Any
) -> None:
    for key in data:
        if key not in known:
            bad((*path, key), f"unknown key {key!r} (allowed: {', '.join(known)})", key=True)


def _kind(value: Any) -> str:
    """What ``value`` is, the way a message says it."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return repr(value)
    return f"{value!r} (a {type(value).__name__})"
