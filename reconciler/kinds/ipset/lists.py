"""Member lists: the files an ipset's ``members_from:`` names (``docs/desired-state.md``).

A list is a text file of the desired-state repository, the convention of FireHOL's
``.netset`` files: one network (or address) per line, ``#`` starting a comment (a whole line
or the rest of one), blank lines ignored. Its problems are located in the list file itself
(``lists/mgmt.txt:12:1``), with the set that reads it as their path.

What is read is the repository's, never the host's: the path is relative to the
desired-state root, without ``..``, ``.git`` or empty components, and every component is
opened through its parent's descriptor without following a symbolic link (a committed
state is materialised from git objects, which refuses links already, but a work tree may
hold one). Only a regular file of at most :data:`MAX_LIST_BYTES` bytes with one name is
read: a directory, a FIFO, a device or a hard link to another file is refused before its
content is looked at, and no refusal quotes content.

Parsing is pure (:func:`parse`) and cached by content: a list shared by every host of a
fleet, or unchanged between the two revisions of a CI dry-run, is parsed once per process.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import stat
from collections import OrderedDict
from pathlib import Path
from socket import AF_INET
from typing import NamedTuple

from reconciler import native
from reconciler.cidr import parse_network
from reconciler.yamlsrc import MAX_FILE_BYTES

#: The largest list read: the bound of every desired-state file (a 200,000-network list is
#: ~4 MiB).
MAX_LIST_BYTES = MAX_FILE_BYTES
#: Problems reported per list and set; past this one more line says how many were left out
#: (a wrong file, or a list of the other family, would otherwise print every line).
MAX_PROBLEMS = 100
#: Lists kept parsed (by content) in one process, and the networks they may hold together
#: (~90 bytes each: a million is ~90 MB; the newest list is kept whatever its size).
CACHE_ENTRIES = 32
CACHE_NETWORKS = 1_000_000
#: The longest text of a line quoted in a message.
QUOTE_CHARS = 80
#: IPv4 prefix lengths 1-32 as ipaddress writes them, and their masks.
_PREFIX4 = {str(p): p for p in range(1, 33)}
_MASK4 = [(0xFFFFFFFF << (32 - p)) & 0xFFFFFFFF for p in range(33)]


class ListError(Exception):
    """A list that cannot be read: ``message`` says why, naming the path, never content."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LineProblem(NamedTuple):
    """A problem of one line of a list: 1-based line and column, and the message."""

    line: int
    column: int
    message: str


class MemberList(NamedTuple):
    """One list, parsed: what does not depend on the set that reads it.

    ``members`` are the canonical networks by IP version (4, 6); ``problems`` those of
    the lines themselves (invalid, /0, host bits, the same network twice), at most
    :data:`MAX_PROBLEMS`, and ``more`` how many others there were.
    """

    members: dict[int, frozenset[str]]
    problems: tuple[LineProblem, ...]
    more: int


def invalid_message(text: str) -> str:
    """The problem of something that is not an IP network."""
    return f"not a valid IP network: {text!r}"


def zero_prefix_message(version: int) -> str:
    """The problem of a /0 member, which the kernel refuses in hash:net."""
    halves = "0.0.0.0/1 and 128.0.0.0/1" if version == 4 else "::/1 and 8000::/1"
    return f"the kernel rejects /0 in hash:net; split it into two /1 networks ({halves})"


def host_bits_message(text: str, host: str, network: str) -> str:
    """The problem of a member written with host bits set (``10.10.0.1/24``): a typo for a
    single address as often as for the network, so both are offered."""
    return f"{text}: host bits set; did you mean {host} or {network}?"


def wrong_family_message(version: int, text: str, family: str) -> str:
    """The problem of a member of the other IP version than its set's ``family``."""
    other = "inet6" if version == 6 else "inet"
    return f"IPv{version} network {text} in an {family} set; put it in a set with family: {other}"


def path_problem(rel: str) -> str | None:
    """Why ``rel`` cannot name a list (None when it can): a list is named by its path
    relative to the desired-state root, ``lists/mgmt.txt``; an absolute path, ``..``, an
    empty or ``.`` component, ``.git`` or a backslash would name something else, and a
    character that is not printable (a NUL, a terminal escape) is refused before any
    message shows the path unquoted."""
    if rel.startswith("/"):
        return f"{rel!r} is an absolute path: name a file of the repository, relative to its root"
    parts = rel.split("/")
    if not rel.isprintable():
        # Only ever shown quoted: a branch could write terminal escapes into a CI log.
        return f"{rel!r} has characters that are not printable: name the list plainly"
    if any(p in ("", ".", "..", ".git") for p in parts) or "\\" in rel:
        return (
            f"{rel!r} is not a plain path inside the repository (relative to its root, "
            "without '..', '.', '.git' or empty components)"
        )
    return None


def read(root: Path, rel: str) -> bytes:
    """The bytes of list ``rel`` of the repository at ``root``; ListError saying why not.

    ``rel`` must pass :func:`path_problem`. Each directory on the way and the file itself
    are opened relative to the previous one with ``O_NOFOLLOW``: a symbolic link anywhere
    below ``root`` is refused, so the file read is inside ``root`` by construction. The
    file is looked at (``lstat``) before it is opened, so a FIFO or a device is never
    opened; it must be a regular file with one link and at most :data:`MAX_LIST_BYTES`.
    """
    why = path_problem(rel)
    if why is not None:
        raise ListError(why)
    parts = rel.split("/")
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ListError(f"{rel}: cannot open the repository: {e.strerror}") from e
    try:
        for i, part in enumerate(parts[:-1]):
            where = "/".join(parts[: i + 1])
            _check_entry(fd, part, where, directory=True)
            dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                nfd = os.open(part, dir_flags, dir_fd=fd)
            except OSError as e:
                raise ListError(_open_failure(where, e, directory=True)) from e
            os.close(fd)
            fd = nfd
        st = _check_entry(fd, parts[-1], rel, directory=False)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            ffd = os.open(parts[-1], flags, dir_fd=fd)
        except OSError as e:
            raise ListError(_open_failure(rel, e, directory=False)) from e
        try:
            fst = os.fstat(ffd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
                raise ListError(f"{rel} changed while it was opened: refused")
            return _read_bounded(ffd, rel)
        finally:
            os.close(ffd)
    finally:
        os.close(fd)


def _check_entry(dir_fd: int, name: str, where: str, *, directory: bool) -> os.stat_result:
    """The ``lstat`` of ``name`` in ``dir_fd``, when it is what a list path may hold there:
    a directory (``directory``) or a regular file with one link and at most
    :data:`MAX_LIST_BYTES` bytes; ListError otherwise."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        raise ListError(_open_failure(where, e, directory=directory)) from e
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        raise ListError(
            f"{where} is a symbolic link: refused (a list is read from the repository only)"
        )
    if directory:
        if not stat.S_ISDIR(mode):
            raise ListError(f"{where} is not a directory")
        return st
    if stat.S_ISDIR(mode):
        raise ListError(f"{where} is a directory, not a list file")
    if not stat.S_ISREG(mode):
        raise ListError(f"{where} is not a regular file: refused")
    if st.st_nlink > 1:
        raise ListError(
            f"{where} has {st.st_nlink} hard links: refused (it could be any file of the host)"
        )
    if st.st_size > MAX_LIST_BYTES:
        raise ListError(f"{where} is {st.st_size} bytes (at most {MAX_LIST_BYTES} are read)")
    return st


def _open_failure(where: str, e: OSError, *, directory: bool) -> str:
    if e.errno == errno.ENOENT:
        return f"no such {'directory' if directory else 'file'} in the repository: {where}"
    if e.errno == errno.ELOOP:
        return f"{where} is a symbolic link: refused (a list is read from the repository only)"
    if e.errno == errno.ENOTDIR:
        return f"{where}: a component of the path is not a directory"
    return f"cannot read {where}: {e.strerror}"


def _read_bounded(fd: int, rel: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, 1 << 22):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_LIST_BYTES:
            raise ListError(f"{rel} grew past {MAX_LIST_BYTES} bytes while being read: refused")
    return b"".join(chunks)


def digest(data: bytes) -> str:
    """The SHA-256 (hex) of a list's bytes: what its parse is cached by."""
    return hashlib.sha256(data).hexdigest()


_CACHE: OrderedDict[str, MemberList] = OrderedDict()


def parse_cached(data: bytes, key: str | None = None) -> MemberList:
    """:func:`parse` of ``data``, from the process's cache when the same bytes were parsed
    before (``key``: their :func:`digest`, if known)."""
    key = key or digest(data)
    found = _CACHE.get(key)
    if found is not None:
        _CACHE.move_to_end(key)
        return found
    parsed = _CACHE[key] = parse(data)
    while len(_CACHE) > 1 and (
        len(_CACHE) > CACHE_ENTRIES
        or sum(len(m.members[4]) + len(m.members[6]) for m in _CACHE.values()) > CACHE_NETWORKS
    ):
        _CACHE.popitem(last=False)
    return parsed


def _quote(text: str) -> str:
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"


def parse(data: bytes) -> MemberList:
    """The networks of a list and the problems of its lines.

    UTF-8 (a byte-order mark is allowed); lines end with ``\\n`` (a ``\\r`` before it is
    dropped); ``#`` starts a comment; surrounding white space is ignored; what is left of
    a line must be one network, written as in ``members:``: refused when invalid, ``/0``
    or with host bits set, and when it is the same network as an earlier line once
    canonical. Content that is not UTF-8 is one problem, at its line, and no member.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        bad = LineProblem(line, col, f"not UTF-8 text (byte 0x{data[e.start]:02x}): not read")
        return MemberList({4: frozenset(), 6: frozenset()}, (bad,), 0)
    lines = text.removeprefix("\ufeff").split("\n")
    seen4: dict[str, int] = {}
    seen6: dict[str, int] = {}
    problems: list[LineProblem] = []
    more = 0
    pton = socket.inet_pton
    from_bytes = int.from_bytes

    def one(lineno: int, raw: str) -> None:
        nonlocal more
        item = raw.partition("#")[0].strip() if "#" in raw else raw.strip()
        if not item:
            return
        # The commonest lines, IPv4 networks without host bits, inline; every other line
        # (and any problem) through parse_network.
        if "/" not in item:
            addr, prefix, canon = item, 32, item + "/32"
        else:
            addr, _, plen = item.partition("/")
            prefix = _PREFIX4.get(plen, 0)  # 0: not a prefix as ipaddress writes it, or /0
            canon = item
        if prefix:
            try:
                packed = pton(AF_INET, addr)  # exactly the dotted quads ipaddress accepts
            except (OSError, ValueError):
                pass
            else:
                value = from_bytes(packed, "big")
                if value & _MASK4[prefix] == value and canon not in seen4:
                    seen4[canon] = lineno
                    return
        message = _line_problem(item, lines, seen4, seen6, lineno)
        if message is None:
            return
        if len(problems) < MAX_PROBLEMS:
            problems.append(LineProblem(lineno, _column(raw, item), message))
        else:
            more += 1

    fast = native.netfast
    if fast is not None:  # the common lines in C, the rest (in order) through one()
        fast.scan(lines, 1, seen4, seen6, True, one)
    else:
        for lineno, raw in enumerate(lines, 1):
            one(lineno, raw)
    return MemberList({4: frozenset(seen4), 6: frozenset(seen6)}, tuple(problems), more)


def _line_problem(
    item: str, lines: list[str], seen4: dict[str, int], seen6: dict[str, int], lineno: int
) -> str | None:
    """Record ``item`` of line ``lineno`` in ``seen4``/``seen6`` (canonical network -> its
    line) and return None, or return its problem."""
    try:
        version, prefixlen, canon, host = parse_network(item)
    except ValueError:
        message = invalid_message(_quote(item))
        if len(item.split(None, 1)) > 1:  # C-level: a line may be megabytes long
            message += " (one network per line)"
        return message
    if prefixlen == 0:
        return zero_prefix_message(version)
    if host is not None:
        return host_bits_message(item, host, canon)
    seen = seen4 if version == 4 else seen6
    j = seen.get(canon)
    if j is not None:
        earlier = lines[j - 1].partition("#")[0].strip()
        return f"{item} is the same network as {earlier} on line {j} (both are {canon})"
    seen[canon] = lineno
    return None


def entries(
    data: bytes, parsed: MemberList, version: int, limit: int = MAX_PROBLEMS
) -> list[tuple[int, int, str]]:
    """``(line, column, text)`` of the first ``limit`` members of IP ``version`` of a
    list (``parsed`` is its :func:`parse`), each once: what a set of the other family
    names in its problems."""
    out: list[tuple[int, int, str]] = []
    members = parsed.members[version]
    named: set[str] = set()
    text = data.decode("utf-8").removeprefix("\ufeff")
    for lineno, raw in enumerate(text.split("\n"), 1):
        item = raw.partition("#")[0].strip()
        if not item:
            continue
        try:
            _, _, canon, host = parse_network(item)
        except ValueError:
            continue
        if host is None and canon in members and canon not in named:
            named.add(canon)
            out.append((lineno, _column(raw, item), item))
            if len(out) >= limit:
                break
    return out


def _column(raw: str, item: str) -> int:
    return raw.find(item) + 1
