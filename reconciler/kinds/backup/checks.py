"""Semantic checks of ``backups:`` beyond the schema."""

from __future__ import annotations

import urllib.parse
from datetime import timedelta
from typing import Any

from reconciler.errors import Problem
from reconciler.hostconfig import HostConfig, show
from reconciler.kinds.backup.duration import (
    DURATION,
    KEEP_DURATION,
    KeepDuration,
    parse_duration,
)
from reconciler.yamlsrc import YamlDoc, YPath

_KEEP_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_KEEP_DURATIONS = (
    "within",
    "within_hourly",
    "within_daily",
    "within_weekly",
    "within_monthly",
    "within_yearly",
)
#: Keys that only a restic set may have, at the top of a set and inside it.
_RESTIC_ONLY = (("repository",), ("password_file",), ("prune",), ("keep", "tags"),
                ("check", "read_data_subset"))  # fmt: skip


def check(doc: YamlDoc, name: str, spec: dict[str, Any]) -> list[Problem]:
    """Durations longer than zero, keep durations restic can read, a keep policy that keeps
    something, a check subset within (0, 100] %, no restic-only keys on a tarsnap set."""
    base: YPath = ("backups", name)
    out: list[Problem] = []
    for path in (("every",), ("check", "every")):
        val = _get(spec, path)
        if isinstance(val, str) and DURATION.match(val) and parse_duration(val) <= timedelta(0):
            out.append(doc.problem((*base, *path), f"must be longer than zero, got {val!r}"))
    keep = spec.get("keep")
    if isinstance(keep, dict):
        active = False
        for key in _KEEP_DURATIONS:
            val = keep.get(key)
            if not (isinstance(val, str) and KEEP_DURATION.match(val)):
                continue  # the schema reports it
            try:
                active = active or not KeepDuration.parse(val).zero
            except ValueError as e:
                out.append(doc.problem((*base, "keep", key), str(e)))
        counts = [keep.get(k, 0) for k in _KEEP_COUNTS]
        active = active or any(c == "unlimited" or (isinstance(c, int) and c) for c in counts)
        active = active or bool(keep.get("tags"))
        if not active and all(isinstance(c, int) or c == "unlimited" for c in counts):
            out.append(
                doc.problem(
                    (*base, "keep"),
                    "refusing a policy that keeps nothing: set last, hourly, daily, weekly, "
                    "monthly, yearly or within",
                    key=True,
                )
            )
    subset = _get(spec, ("check", "read_data_subset"))
    if isinstance(subset, str) and subset.endswith("%"):
        try:
            percent: float | None = float(subset[:-1])
        except ValueError:
            percent = None  # the schema reports it
        if percent is not None and not 0 < percent <= 100:
            out.append(
                doc.problem(
                    (*base, "check", "read_data_subset"),
                    f"must be above 0% and at most 100% (restic check --read-data-subset), "
                    f"got {subset!r}",
                )
            )
    if spec.get("backend") == "tarsnap":
        for path in _RESTIC_ONLY:
            if _get(spec, path) is not None:
                what = ".".join(path)
                why = {
                    "keep.tags": ": tarsnap archives carry no tags",
                    "check.read_data_subset": ": a tarsnap check lists the newest archive",
                }.get(what, "")
                out.append(
                    doc.problem(
                        (*base, *path), f"{what!r} only applies to backend restic{why}", key=True
                    )
                )
    return out


def _get(spec: dict[str, Any], path: tuple[str, ...]) -> Any:
    """``spec[path[0]][path[1]]...``, or None where a level is missing or not a mapping."""
    value: Any = spec
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


# ----------------------------------------------------------------------------- host policy
# What the repository asks of the host, checked against the host configuration
# (reconciler.hostconfig): the programs run come from the host, never from git; every host
# path the repository names must lie under allowed_dirs.

#: The path-valued keys of the ``tarsnap:`` settings section (schema.json ``$defs.tarsnap``).
_TARSNAP_PATHS = ("keyfile", "cachedir")
#: The path-valued keys of a restic backup set (``$defs.backup``); ``repository`` is
#: checked by :func:`restic_repository_problem`.
_RESTIC_PATHS = ("password_file",)
#: Keys that would name a program, wherever the schema allows them now or later.
_COMMAND_KEYS = ("command",)

#: restic backends that start no program chosen by the repository (restic's documentation,
#: "Preparing a new repository", doc/030_preparing_a_new_repo.rst: REST server, Amazon S3
#: and S3-compatible, Backblaze B2, Azure Blob Storage, Google Cloud Storage, OpenStack
#: Swift). ``sftp`` runs the host's ``ssh`` (checked below); ``local`` is a host path.
_RESTIC_NETWORK_BACKENDS = ("rest", "s3", "b2", "azure", "gs", "swift")

#: restic options that choose a program (doc/030_preparing_a_new_repo.rst: ``-o
#: sftp.command`` "specify the command to be run" for the SFTP connection, ``-o sftp.args``
#: its arguments; ``-o rclone.program`` / ``-o rclone.args``: the program restic starts for
#: ``rclone:``). reconciler never passes ``-o``; a repository string naming one is refused
#: all the same, so no later change can route it through.
_RESTIC_PROGRAM_OPTIONS = ("sftp.command", "sftp.args", "rclone.program", "rclone.args")


def command_problem(value: Any, program: str, setting: str, host: HostConfig) -> str | None:
    """Why a repository value naming the command of ``program`` is refused: anything but
    exactly the host's command (``commands.<program>``); None when it equals it."""
    want = host.commands.get(program)
    if value == want:
        return None
    got = show(value) if isinstance(value, str) else repr(value)
    return (
        f"{got} is not the host's {program} command ({want}, "
        f"{host.origin(f'commands.{program}')}); remove it from the repository: the "
        f"program run comes from the host configuration, never from {setting}"
    )


def restic_repository_problem(repository: str, host: HostConfig) -> str | None:
    """Why restic repository location ``repository`` is refused (a backend that starts a
    program, a program option, a local path outside ``allowed_dirs``), else None.

    restic reads the location as ``<backend>:<rest>`` when the part before the first ``:``
    is a backend it knows, else as a local directory (restic's
    ``internal/backend/location/location.go``: ``Parse``); reconciler accepts only:

    * a local path, absolute (``/srv/restic``) or ``local:/srv/restic``, under
      ``allowed_dirs`` (resolved, no symlink out of them);
    * ``rest:``, ``s3:``, ``b2:``, ``azure:``, ``gs:``, ``swift:``: network clients inside
      restic, no program started;
    * ``sftp:user@host:/path`` / ``sftp://user@host/path``: restic runs the host's ``ssh``
      with the host name as an argument (``internal/backend/sftp/sftp.go``,
      ``buildSSHCommand``: ``ssh <host> [-p port] [-l user] -s sftp``), so a host or user
      starting with ``-`` (an ``ssh`` option such as ``-oProxyCommand=...``) is refused.

    Refused: ``rclone:`` (restic starts the program ``rclone``: "Restic takes care of
    starting and stopping rclone"), any ``sftp.command``/``sftp.args``/``rclone.program``/
    ``rclone.args`` in the string, relative paths (resolved against the working
    directory) and anything else.
    """
    value = show(repository)
    lowered = repository.lower()
    for option in _RESTIC_PROGRAM_OPTIONS:
        if option in lowered:
            return (
                f"{value} names the restic option {option}, which chooses a program to run; "
                "restic options come from the host, never from the repository"
            )
    if not repository.isprintable():
        return f"{value} holds control characters"
    if repository.startswith("/"):
        return _local(repository, host)
    scheme, colon, rest = repository.partition(":")
    if not colon:
        return (
            f"{value} is a relative path (restic would resolve it against its working "
            "directory): use an absolute path under the host's allowed_dirs"
        )
    scheme = scheme.lower()
    if scheme == "local":
        return _local(rest, host)
    if scheme == "rclone":
        return (
            f"{value}: restic's rclone backend starts the program rclone, which the "
            "repository may not do; serve the remote with 'rclone serve restic' on the host "
            "and use a rest: URL"
        )
    if scheme == "sftp":
        return _sftp(repository, rest)
    if scheme in _RESTIC_NETWORK_BACKENDS:
        return None
    allowed = ", ".join(f"{b}:" for b in ("local", "sftp", *_RESTIC_NETWORK_BACKENDS))
    return (
        f"{value}: {scheme}: is not a restic backend the host allows (allowed: an absolute "
        f"path, {allowed})"
    )


def _local(path: str, host: HostConfig) -> str | None:
    why = host.path_problem(path)
    return None if why is None else f"a local restic repository: {why}"


def _sftp(repository: str, rest: str) -> str | None:
    """restic's two sftp forms (``internal/backend/sftp/config.go``, ``ParseConfig``):
    ``sftp://user@host:port/path`` and ``sftp:user@host:path``."""
    if rest.startswith("//"):  # a URL: Go's url.Parse unescapes the user name
        userhost = urllib.parse.unquote(rest[2:].split("/", 1)[0])
    else:
        userhost = rest.split(":", 1)[0]
    user, at, hostname = userhost.rpartition("@")
    for what, part in (("host", hostname), ("user", user if at else "")):
        if part.startswith("-"):
            return (
                f"{show(repository)}: the sftp {what} {show(part)} starts with '-': restic "
                "passes it to ssh, which would read it as an option (-oProxyCommand=... runs "
                "a program)"
            )
    if not hostname:
        return f"{show(repository)}: no sftp host"
    return None


def check_host_file(doc: YamlDoc, host: HostConfig) -> list[Problem]:
    """The ``tarsnap:`` settings section of a fleet or host file against the host
    configuration: ``command`` must be the host's tarsnap command (or absent), ``keyfile``
    and ``cachedir`` must lie under ``allowed_dirs``."""
    data = doc.data
    out: list[Problem] = []
    if not isinstance(data, dict) or not isinstance(data.get("tarsnap"), dict):
        return out
    section: dict[str, Any] = data["tarsnap"]
    for key in _COMMAND_KEYS:
        if key in section:
            why = command_problem(section[key], "tarsnap", f"tarsnap.{key}", host)
            if why is not None:
                out.append(doc.problem(("tarsnap", key), why))
    for key in _TARSNAP_PATHS:
        value = section.get(key)
        if isinstance(value, str):
            why = host.path_problem(value)
            if why is not None:
                out.append(doc.problem(("tarsnap", key), why))
    return out


def check_host(doc: YamlDoc, name: str, spec: dict[str, Any], host: HostConfig) -> list[Problem]:
    """One backup set against the host configuration: no command of its own unless it is
    the host's, its password file under ``allowed_dirs``, its restic repository a backend
    that starts no program (:func:`restic_repository_problem`)."""
    base: YPath = ("backups", name)
    out: list[Problem] = []
    backend = spec.get("backend")
    program = backend if backend in ("tarsnap", "restic") else "restic"
    for key in _COMMAND_KEYS:
        if key in spec:
            why = command_problem(spec[key], str(program), f"backups.{name}.{key}", host)
            if why is not None:
                out.append(doc.problem((*base, key), why))
    for key in _RESTIC_PATHS:
        value = spec.get(key)
        if isinstance(value, str):
            why = host.path_problem(value)
            if why is not None:
                out.append(doc.problem((*base, key), why))
    repository = spec.get("repository")
    if isinstance(repository, str) and repository:
        why = restic_repository_problem(repository, host)
        if why is not None:
            out.append(doc.problem((*base, "repository"), why))
    return out
