"""The cache of validated desired state, keyed by content (``docs/cache.md``).

A timer run on an unchanged commit, or a CI dry-run of a commit that changed one host file,
would otherwise parse and validate the same files again: 65,536 members of a set cost
seconds of YAML, schema and CIDR work. An entry holds what validating one ``fleet.yaml`` or
``hosts/<host>.yaml`` produced: its plain data, the positions of its mapping keys and values
(for the ``source`` of what is planned; the rest is parsed again from the unchanged file
when a message needs it), the results later steps reuse (an ipset's canonical members) and
the digests of the other repository files the checks read (``members_from:`` lists).

Beside each entry a small *verdict* (``<key>.valid``, :meth:`DesiredCache.get_verdict`) says
the content was found valid and keeps only what the checks made on every load read, not the
members: what a CI dry-run reads for a host it does not plan.

Keys: SHA-256 of the file's bytes, the file's role (``fleet.yaml`` or a host file: the
checks differ), the schema version (a hash of the composed host schema) and the reconciler
version (``__version__`` and a hash of the package's source files, so a development change
misses too). Only a file with no problem at all is stored, so the cache never changes what
is valid; what depends on the host (its configuration, key files named by ``verify``) is
checked on every load, hit or not.

Safety: entries are JSON (never pickle: a CI cache may have been written by an untrusted
branch); each holds its own key and the SHA-256 of its payload, and the payload's shape is
checked when read. A corrupt, truncated, foreign (another key) or tampered entry, a symlink
or a directory in place of an entry, is a miss: the file is validated afresh and the entry
rewritten. The directory is opened without following a symlink and must be private (owned
by us, writable by us only), as the state dir is (:mod:`reconciler.safefs`); entries are
created ``0600`` through the directory's descriptor, never through a symlink. A cache that
cannot be used is never an error of the run: it is not used.

What the integrity check cannot do: someone who can write the directory can write a
well-formed entry. The state dir's cache is root's; a CI cache must be one that untrusted
branches cannot write into for trusted ones (``docs/cache.md``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.errors import StateError
from reconciler.safefs import check_private_dir
from reconciler.yamlsrc import Pos, YamlDoc, YPath

FORMAT = "reconciler-desired-cache/3"
#: The small entry that says a file is valid, without its members (see ``get_verdict``).
VERDICT_FORMAT = "reconciler-desired-verdict/1"
#: The name of the cache directory inside the state dir.
STATE_SUBDIR = "cache"
#: An entry larger than this is not read (a 200,000-member set is ~15 MiB).
MAX_ENTRY_BYTES = 64 * 1024 * 1024
#: Entries kept; past this the least recently used tenth is removed when one is written.
MAX_ENTRIES = 10_000
#: The directory is listed to count its entries at least every this many writes.
RECOUNT_EVERY = 256
#: A hit refreshes its entry's time (what pruning goes by) when it is older than this.
TOUCH_AFTER = 3600.0

#: The file name of an entry is its key and this suffix.
_SUFFIX = {FORMAT: ".json", VERDICT_FORMAT: ".valid"}

FLEET_ROLE = "fleet"
HOST_ROLE = "host"


def _package_files() -> list[str]:
    """The package's source and schema files, by path relative to it, in a fixed order: its
    Python, its schemas, and its C extension's source and built module (they check and
    canonicalise members too)."""
    root = os.path.dirname(os.path.abspath(__file__))
    out = []
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(top, root)
        out += [os.path.join(rel, f) for f in sorted(files)
                if f.endswith((".py", ".json", ".c", ".so"))]  # fmt: skip
    return out


@functools.cache
def reconciler_version() -> str:
    """``__version__`` and the SHA-256 of the package's source and schema files: a change
    to the code that validates or canonicalises, released or not, makes every entry miss."""
    h = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for rel in _package_files():
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        name = rel.encode()
        h.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big") + data)
    return f"{__version__}+{h.hexdigest()[:32]}"


@functools.cache
def schema_version() -> str:
    """The SHA-256 of the composed host schema (:func:`reconciler.schema.host_schema`)."""
    from reconciler.schema import host_schema

    text = json.dumps(host_schema(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def entry_key(role: str, content: bytes) -> str:
    """The key of the entry for a file of ``role`` (:data:`FLEET_ROLE` or
    :data:`HOST_ROLE`) holding ``content``, under this schema and reconciler version."""
    return _key(FORMAT, role, hashlib.sha256(content).hexdigest())


def verdict_key(role: str, content: bytes) -> str:
    """The key of the *verdict* entry of the same file (:meth:`DesiredCache.get_verdict`):
    made like :func:`entry_key`, under another format name, so the two never collide."""
    return _key(VERDICT_FORMAT, role, hashlib.sha256(content).hexdigest())


def _key(fmt: str, role: str, digest: str) -> str:
    h = hashlib.sha256()
    for part in (fmt, role, digest, schema_version(), reconciler_version()):
        b = part.encode()
        h.update(len(b).to_bytes(8, "big") + b)
    return h.hexdigest()


# ------------------------------------------------------------------ payload (plain JSON)
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` survives JSON unchanged (type and value): dicts with string keys,
    lists, strings, ints, floats, booleans, None (exactly those types, not subclasses)."""
    if depth > 200:
        return False
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return True
    if kind is list:
        if set(map(type, value)) <= _SCALAR_TYPES:
            return True  # a list of scalars (65,536 members): checked in C
        return all(_plain(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    return False


#: A list of at least this many strings is stored as one string of lines (:func:`_lines`),
#: outside the JSON, after it (a *blob*): reading it back is a slice and a split, where
#: JSON decodes 65,536 short strings, or scans one long one, character by character.
PACK_MIN = 256


def _lines(items: Any) -> str | None:
    """``items``, a list or frozenset of at least :data:`PACK_MIN` strings none of which
    holds a newline, as those strings joined by newlines (``split("\n")`` gives them back
    exactly); else None."""
    if len(items) < PACK_MIN or not set(map(type, items)) <= {str}:
        return None
    text = "\n".join(items)
    return text if text.count("\n") == len(items) - 1 else None


def _pack(
    value: Any,
    path: list[Any],
    packed: list[list[Any]],
    blobs: list[bytes],
    lists: dict[int, list[str]],
) -> Any:
    """``value`` (plain data) with every long list of strings replaced by the index of its
    :func:`_lines` in ``blobs`` (appended there, encoded, and the list kept in ``lists``
    by that index), each replaced list's path appended to ``packed``; ``value`` itself is
    not changed."""
    if isinstance(value, dict):
        return {k: _pack(v, [*path, k], packed, blobs, lists) for k, v in value.items()}
    if isinstance(value, list):
        text = _lines(value)
        if text is not None:
            packed.append(path)
            blobs.append(text.encode())
            lists[len(blobs) - 1] = value
            return len(blobs) - 1
        return [_pack(v, [*path, i], packed, blobs, lists) for i, v in enumerate(value)]
    return value


def _unpack(data: Any, packed: Any, blobs: list[str], split: dict[int, list[str]]) -> None:
    """Undo :func:`_pack` in ``data``, in place; ValueError when ``packed`` does not name
    blob indexes in ``data`` (an entry that cannot be trusted)."""
    if not isinstance(packed, list):
        raise ValueError("packed")
    for path in packed:
        if not isinstance(path, list) or not path:
            raise ValueError("packed path")
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        # A copy: the same blob may be a frozenset of the derived results too.
        parent[path[-1]] = list(_blob_lines(blobs, parent[path[-1]], split))


def _blob_lines(blobs: list[str], index: Any, split: dict[int, list[str]]) -> list[str]:
    """The lines of blob ``index``, split once per read (``split`` keeps them): a set's
    canonical members that are its ``members:`` as written share their strings."""
    if type(index) is not int or not 0 <= index < len(blobs):
        raise ValueError("blob index")
    lines = split.get(index)
    if lines is None:
        lines = split[index] = blobs[index].split("\n")
    return lines


def _split_blobs(region: bytes, sizes: Any) -> list[str]:
    """The blobs stored after an entry's JSON (``sizes``: their lengths in bytes, which
    must add up to the region's); ValueError otherwise."""
    if not isinstance(sizes, list) or not all(type(n) is int and n >= 0 for n in sizes):
        raise ValueError("blob sizes")
    if sum(sizes) != len(region):
        raise ValueError("blob region")
    out: list[str] = []
    at = 0
    for n in sizes:
        out.append(region[at : at + n].decode("utf-8"))
        at += n
    return out


def _encode_derived(
    derived: dict[tuple[str, ...], Any], blobs: list[bytes], lists: dict[int, list[str]]
) -> list[Any] | None:
    """The derived results that JSON can carry (a frozenset of strings, plain data; a long
    frozenset as a blob: the blob of a packed list of the data (``lists``, by index) that
    holds exactly its strings, else one appended to ``blobs``), or None when one cannot be
    carried: then the document is not stored (its later steps would need what the entry
    lacks)."""
    out: list[Any] = []
    for key, value in derived.items():
        if not all(isinstance(k, str) for k in key):
            return None
        same = None
        if type(value) is frozenset:
            same = next(
                (i for i, items in lists.items() if len(items) == len(value) == len(set(items))
                 and value.issuperset(items)),
                None,
            )  # fmt: skip
        if same is not None:
            out.append([list(key), "lines", same])  # a set's members as written: one blob
        elif type(value) is frozenset and (text := _lines(value)) is not None:
            blobs.append(text.encode())
            out.append([list(key), "lines", len(blobs) - 1])
        elif type(value) is frozenset and set(map(type, value)) <= {str}:
            out.append([list(key), "frozenset", list(value)])
        elif _plain(value):
            out.append([list(key), "plain", value])
        else:
            return None
    return out


def _decode_derived(
    items: Any, blobs: list[str], split: dict[int, list[str]]
) -> dict[tuple[str, ...], Any]:
    if not isinstance(items, list):
        raise ValueError("derived")
    out: dict[tuple[str, ...], Any] = {}
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], list)):
            raise ValueError("derived item")
        key, how, value = item
        if not key or not all(isinstance(k, str) for k in key):
            raise ValueError("derived key")
        if how == "lines":
            out[tuple(key)] = frozenset(_blob_lines(blobs, value, split))
        elif how == "frozenset":
            if not (isinstance(value, list) and set(map(type, value)) <= {str}):
                raise ValueError("derived frozenset")
            out[tuple(key)] = frozenset(value)
        elif how == "plain":
            out[tuple(key)] = value
        else:
            raise ValueError("derived kind")
    return out


def _encode_positions(positions: dict[YPath, Pos]) -> list[Any]:
    return [[list(path), line, col] for path, (line, col) in positions.items()]


def _decode_positions(items: Any) -> dict[YPath, Pos]:
    if not isinstance(items, list):
        raise ValueError("positions")
    out: dict[YPath, Pos] = {}
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], list)):
            raise ValueError("position")
        path, line, col = item
        if not all(isinstance(p, str) or (isinstance(p, int) and not isinstance(p, bool))
                   for p in path):  # fmt: skip
            raise ValueError("position path")
        if not (type(line) is int and type(col) is int):
            raise ValueError("position value")
        out[tuple(path)] = (line, col)
    return out


class DesiredCache:
    """A directory of validated desired-state files (see the module's docstring).

    Never raises for what is in the directory: :meth:`get` answers None for anything it
    cannot trust, :meth:`put` gives up silently when it cannot write (a read-only state
    dir). ``hits``, ``misses`` and ``written`` count what happened, for logs and tests.
    """

    def __init__(self, path: Path, *, create: bool = True, read_only: bool = False) -> None:
        """Open the cache directory ``path`` (created ``0700`` with ``create``, with its
        parents). StateError when it cannot be used: it is a symlink, not a
        directory, not ours or writable by others, or cannot be created or opened.
        ``read_only``: entries are read, nothing is written or touched (a dry-run's use of
        the state dir, which it never writes to); the directory is never created then."""
        self.path = path
        self.read_only = read_only
        self.hits = 0
        self.misses = 0
        self.written = 0
        # Entry files at the last listing (None: not listed yet), and writes since.
        self._known: int | None = None
        self._since_count = 0
        if create and not read_only:
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                raise StateError(f"cannot create cache directory {path}: {e.strerror}") from e
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StateError(
                    f"cache directory {path} is a symbolic link or not a directory: "
                    "refusing to use it"
                ) from e
            raise StateError(f"cannot open cache directory {path}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise StateError(
                    f"refusing cache directory {path}: it must be owned by uid "
                    f"{os.geteuid()} and writable by its owner only"
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @classmethod
    def in_state_dir(cls, state_dir: Path, *, read_only: bool = False) -> DesiredCache | None:
        """The cache ``<state_dir>/cache`` when the state dir exists and may be used (it is
        never created for this: a local desired state is validated before the state dir is
        touched), else None. ``read_only`` (a dry-run): only an existing cache is read."""
        try:
            check_private_dir(state_dir)
            if state_dir.is_symlink():
                return None
            return cls(state_dir / STATE_SUBDIR, read_only=read_only)
        except StateError:
            return None

    def close(self) -> None:
        """Close the directory (the object is unusable afterwards)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.close()

    # ------------------------------------------------------------------------- reading
    def get(self, role: str, content: bytes, file: str, root: Path | None) -> YamlDoc | None:
        """The validated document of a ``role`` file holding ``content``, named ``file`` in
        messages, or None (a miss: nothing stored, or nothing that can be trusted). Its
        positions are partial (:class:`~reconciler.yamlsrc.YamlDoc`): the rest is parsed
        from ``content`` when asked for. ``root`` is the repository: the other files the
        entry was derived from are checked there (a changed ``members_from:`` list is a
        miss)."""
        return self._answer(self._read(entry_key(role, content), content, file), root)

    def get_verdict(
        self, role: str, content: bytes, file: str, root: Path | None
    ) -> YamlDoc | None:
        """The *verdict* on a ``role`` file holding ``content``: a document that says the
        file was found valid, holding only the part of its data ``put`` was given as
        ``verdict`` (what the checks made on every load read: the host policy's sections),
        no position and nothing derived; None (a miss) as :meth:`get`. Its positions are
        parsed from ``content`` when a message needs one. It is not the file's full
        document: use it only to answer "valid?", never to plan."""
        key = verdict_key(role, content)
        doc = None
        found = self._payload(key, VERDICT_FORMAT)
        if found is not None and not found[1]:
            payload = found[0]
            inputs = _inputs(payload)
            if inputs is not None and isinstance(payload.get("data"), dict):
                doc = YamlDoc(file, payload["data"], source=content)
                doc.inputs = inputs
        return self._answer(doc, root)

    def _answer(self, doc: YamlDoc | None, root: Path | None) -> YamlDoc | None:
        """``doc`` read from an entry, counted as a hit, when the files it was derived from
        are unchanged in ``root``; else None, counted as a miss."""
        if doc is not None and root is not None and not _inputs_current(root, doc.inputs):
            doc = None
        if doc is None:
            self.misses += 1
            return None
        doc.root = root
        self.hits += 1
        return doc

    def _payload(self, key: str, fmt: str) -> tuple[dict[str, Any], bytes] | None:
        """The payload of entry ``key`` when its header (``fmt``, the key, the payload's size
        and SHA-256) checks out and it is a JSON object, else None; with the bytes after
        the JSON (the blobs, when the header's ``json`` says where the JSON ends)."""
        raw = self._read_entry(f"{key}{_SUFFIX[fmt]}")
        if raw is None:
            return None
        try:
            header_bytes, _, payload_bytes = raw.partition(b"\n")
            header = json.loads(header_bytes)
            if not (
                isinstance(header, dict)
                and header.get("format") == fmt
                and header.get("key") == key
                and header.get("size") == len(payload_bytes)
                and header.get("sha256") == hashlib.sha256(payload_bytes).hexdigest()
            ):
                return None
            end = header.get("json", len(payload_bytes))
            if type(end) is not int or not 0 <= end <= len(payload_bytes):
                return None
            payload = json.loads(payload_bytes[:end])
        except (ValueError, TypeError, RecursionError):
            return None
        return (payload, payload_bytes[end:]) if isinstance(payload, dict) else None

    def _read(self, key: str, content: bytes, file: str) -> YamlDoc | None:
        found = self._payload(key, FORMAT)
        if found is None:
            return None
        payload, region = found
        try:
            blobs = _split_blobs(region, payload.get("blobs", []))
            if not isinstance(payload.get("data"), dict):
                return None
            inputs = _inputs(payload)
            if inputs is None:
                return None
            split: dict[int, list[str]] = {}
            _unpack(payload["data"], payload.get("packed", []), blobs, split)
            doc = YamlDoc(
                file,
                payload["data"],
                values=_decode_positions(payload.get("values")),
                keys=_decode_positions(payload.get("keys")),
                source=content,
            )
            doc.derived = _decode_derived(payload.get("derived"), blobs, split)
            doc.inputs = inputs
        except (ValueError, TypeError, LookupError, RecursionError, UnicodeDecodeError):
            return None
        return doc

    def _read_entry(self, name: str) -> bytes | None:
        """The bytes of entry ``name`` if it is a regular file of ours of sane size."""
        if self._fd < 0:
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError:
            return None  # missing, a symlink (ELOOP), unreadable
        try:
            st = os.fstat(fd)
            if (
                not stat.S_ISREG(st.st_mode)
                or st.st_nlink != 1
                or st.st_uid != os.geteuid()
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                or st.st_size > MAX_ENTRY_BYTES
            ):
                return None
            data = _read_fd(fd)
            if data is not None and not self.read_only and time.time() - st.st_mtime > TOUCH_AFTER:
                os.utime(fd)
            return data
        except OSError:
            return None
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------- writing
    def put(
        self, role: str, content: bytes, doc: YamlDoc, verdict: dict[str, Any] | None = None
    ) -> bool:
        """Store ``doc``, the validated document of a ``role`` file holding ``content``.
        Only a document with no problem may be stored (ValueError otherwise); one whose
        data or derived results JSON cannot carry unchanged (a YAML date) is not stored.
        With ``verdict`` (part of ``doc.data``), a verdict entry holding it is stored too
        (:meth:`get_verdict`), once the full entry is. Returns whether an entry was
        written."""
        if doc.problems:
            raise ValueError("DesiredCache.put: a document with problems is never cached")
        if self.read_only or self._fd < 0 or not isinstance(doc.data, dict):
            return False
        if not _plain(doc.data):
            return False
        blobs: list[bytes] = []
        lists: dict[int, list[str]] = {}
        packed: list[list[Any]] = []
        data = _pack(doc.data, [], packed, blobs, lists)
        derived = _encode_derived(doc.derived, blobs, lists)
        if derived is None:
            return False
        values, keys = doc.known_positions()
        payload = json.dumps(
            {
                "data": data,
                "packed": packed,
                "values": _encode_positions(values),
                "keys": _encode_positions(keys),
                "derived": derived,
                "inputs": doc.inputs,
                "blobs": [len(b) for b in blobs],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        entry = payload + b"".join(blobs)
        if not self._put_entry(FORMAT, entry_key(role, content), entry, json_size=len(payload)):
            return False
        self.written += 1  # entries of documents: a verdict goes with its entry
        if verdict is not None and _plain(verdict):
            small = {"data": verdict, "inputs": doc.inputs}
            text = json.dumps(small, ensure_ascii=False, separators=(",", ":")).encode()
            self._put_entry(VERDICT_FORMAT, verdict_key(role, content), text)
        return True

    def _put_entry(
        self, fmt: str, key: str, payload: bytes, *, json_size: int | None = None
    ) -> bool:
        """Write entry ``key``: a header (``fmt``, the key, the payload's size and SHA-256,
        and with ``json_size`` where the payload's JSON ends and its blobs begin), a
        newline, the payload."""
        head: dict[str, Any] = {
            "format": fmt,
            "key": key,
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        if json_size is not None:
            head["json"] = json_size
        header = json.dumps(head).encode()
        if self._write_entry(f"{key}{_SUFFIX[fmt]}", header + b"\n" + payload):
            self._prune()
            return True
        return False

    def _write_entry(self, name: str, data: bytes) -> bool:
        """Write ``name`` whole or not at all: a temp file created ``0600`` in the
        directory, renamed over whatever is there (a symlink is replaced, never followed;
        a directory is removed first). No fsync: a torn entry fails its check."""
        if len(data) > MAX_ENTRY_BYTES:
            return False
        tmp = f".{name}.{os.getpid()}.tmp"
        try:
            self._remove_dir_entry(name)
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self._fd,
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._fd)
            return False

    def _remove_dir_entry(self, name: str) -> None:
        """Remove ``name`` when it is a directory (a rename cannot replace one)."""
        try:
            st = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            import shutil

            # rmtree works through descriptors and never follows a symlink inside.
            shutil.rmtree(name, dir_fd=self._fd)

    def _prune(self) -> None:
        """Keep at most :data:`MAX_ENTRIES` entries: past that, remove the tenth least
        recently used (by modification time, which a hit refreshes). The directory is
        listed again only every :data:`RECOUNT_EVERY` writes or when this process's count
        (the last listing plus its writes since) passes the limit, not on every write (a
        cold CI run writes 2,000 entries: listing a growing directory each time was
        quadratic); other processes' writes are seen at the next listing."""
        self._since_count += 1
        if (
            self._known is not None
            and self._known + self._since_count <= MAX_ENTRIES
            and self._since_count < RECOUNT_EVERY
        ):
            return
        try:
            names = [n for n in os.listdir(self._fd) if n.endswith(tuple(_SUFFIX.values()))]
            self._known, self._since_count = len(names), 0
            if len(names) <= MAX_ENTRIES:
                return
            aged = []
            for n in names:
                try:
                    aged.append((os.stat(n, dir_fd=self._fd, follow_symlinks=False).st_mtime, n))
                except OSError:
                    continue
            aged.sort()
            for _, n in aged[: len(aged) - MAX_ENTRIES + MAX_ENTRIES // 10]:
                with contextlib.suppress(OSError):
                    os.unlink(n, dir_fd=self._fd)
            self._known = None  # listed afresh at the next write
        except OSError:
            return


def _read_fd(fd: int) -> bytes | None:
    """Everything ``fd`` holds, None past :data:`MAX_ENTRY_BYTES` (it may have grown)."""
    chunks = []
    size = 0
    while chunk := os.read(fd, 1 << 22):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ENTRY_BYTES:
            return None
    return b"".join(chunks)


def _inputs(payload: dict[str, Any]) -> dict[str, str] | None:
    """A payload's ``inputs`` (path -> SHA-256), None when it is not that shape."""
    inputs = payload.get("inputs")
    if not isinstance(inputs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()
    ):
        return None
    return dict(inputs)


def _inputs_current(root: Path, inputs: dict[str, str]) -> bool:
    """Whether every other file an entry was derived from still has the digest recorded."""
    for rel, digest in inputs.items():
        content = _read_in(root, rel)
        if content is None or hashlib.sha256(content).hexdigest() != digest:
            return False
    return True


def _read_in(root: Path, rel: str) -> bytes | None:
    """The bytes of the regular file ``rel`` below ``root``, each component opened through
    its parent's descriptor without following a symlink; None for anything else (a
    symlink, ``..``, a missing file, one larger than an entry may be)."""
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        nxt = os.open(parts[-1], flags, dir_fd=fd)
        os.close(fd)
        fd = nxt
        return _read_fd(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


__all__ = [
    "FLEET_ROLE",
    "HOST_ROLE",
    "DesiredCache",
    "entry_key",
    "reconciler_version",
    "schema_version",
    "verdict_key",
]
