"""Live-state snapshots: a host's live state as a JSON file, for planning where it is unreachable.

``reconcile snapshot`` runs on a host, reads every provider's live state and writes it with
:func:`write_snapshot`; CI (which cannot reach hosts) reads the file back with
:func:`read_snapshot` and runs each provider's pure ``diff`` against it (``--dry-run``).

The live objects are frozen dataclasses of plain data, so one generic converter driven by
their declared field types does the (de)serialisation: adding a field to a ``*Live`` class
needs no change here, and a field of a type this module does not know fails loudly (a
``TypeError`` naming the type) in the round-trip tests instead of being silently dropped.

Encoding, by declared type: dataclass or NamedTuple -> object of its fields;
``Mapping[str, V]`` -> object; ``Mapping[K, V]`` with other keys -> list of ``[key, value]``
pairs; ``tuple``/``Sequence``/``list`` -> list; ``frozenset``/``set`` -> sorted list;
``datetime`` -> ISO 8601 text; enum -> its value; ``Any`` -> the value itself, which must be
JSON data. Decoding checks every value against its type and reports the JSON path of the
first bad one (``$.sets.mgmt.header``).
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import json
import math
import os
import re
import stat
import types
import typing
from collections import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler import atomicfile
from reconciler import kinds as registry
from reconciler.errors import SnapshotError
from reconciler.kinds.base import for_snapshot

FORMAT_VERSION = 1
SNAPSHOT_KINDS = registry.NAMES

_TOP_FIELDS = frozenset(
    {"format_version", "host", "created", "commit", "tool_version", "lives", "errors"}
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def _live_class(kind: str) -> type[Any]:
    """The live class of ``kind`` (its provider module is imported only now: the vm
    provider pulls in libvirt, which a caller that only handles snapshot files should not
    pay for before it needs it)."""
    try:
        return registry.get(kind).live_class()
    except KeyError:
        raise SnapshotError(
            f"unknown snapshot kind {kind!r} (known: {', '.join(SNAPSHOT_KINDS)})"
        ) from None


# ------------------------------------------------------------------------------ converter
class _TypeMismatch(Exception):
    """A value that does not fit its declared type, at a JSON path (internal)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _at(path: str, key: str | int) -> str:
    """The JSON path of ``key`` below ``path``: ``$.a.b``, ``$.a[3]``, ``$.a["bond0.5"]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENT.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def _what(value: Any) -> str:
    """A short description of a found value for error messages (never the whole value)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"string {json.dumps(text)}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_FIELDS: dict[type[Any], tuple[tuple[str, Any, bool], ...]] = {}


def _is_namedtuple(tp: type[Any]) -> bool:
    return issubclass(tp, tuple) and hasattr(tp, "_fields") and hasattr(tp, "_field_defaults")


def _fields(cls: type[Any]) -> tuple[tuple[str, Any, bool], ...]:
    """(name, resolved type, required) of each field of a record type: the init fields of
    a dataclass, or the fields of a NamedTuple (used for per-domain records, where a
    frozen dataclass costs three times as much to build). Cached: resolving the string
    annotations (``from __future__ import annotations``) is the slow part."""
    got = _FIELDS.get(cls)
    if got is None:
        hints = typing.get_type_hints(cls)
        if dataclasses.is_dataclass(cls):
            got = tuple(
                (
                    f.name,
                    hints[f.name],
                    f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                )
                for f in dataclasses.fields(cls)
                if f.init
            )
        else:
            got = tuple((n, hints[n], n not in cls._field_defaults) for n in cls._fields)
        _FIELDS[cls] = got
    return got


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _optional_inner(tp: Any, args: tuple[Any, ...]) -> Any:
    """The ``X`` of ``X | None``. Other unions are ambiguous to decode, so unsupported."""
    rest = [a for a in args if a is not type(None)]
    if len(rest) != 1:
        raise TypeError(f"snapshot: unsupported union type {tp!r} (only X | None)")
    return rest[0]


def _category(tp: Any) -> str:
    """Which converter handles ``tp``; a TypeError for a type that is not plain data."""
    if tp is Any:
        return "any"
    if _union_args(tp) is not None:
        return "union"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "literal"
    if origin is not None:
        if origin in (abc.Mapping, abc.MutableMapping, dict):
            return "mapping"
        if origin is tuple:
            return "tuple"
        if origin in (abc.Sequence, abc.MutableSequence, list):
            return "list"
        if origin in (abc.Set, abc.MutableSet, frozenset, set):
            return "set"
    elif isinstance(tp, type):
        if dataclasses.is_dataclass(tp) or _is_namedtuple(tp):
            return "record"
        # bool before int: bool is a subclass of int, and True must not pass as 1.
        for scalar in (bool, str, int, float, datetime):
            if tp is scalar:
                return scalar.__name__
        if issubclass(tp, enum.Enum):
            return "enum"
        if tp is type(None):
            return "none"
    raise TypeError(f"snapshot: unsupported type {tp!r} in a live object (not plain data)")


def _sort_key(encoded: Any) -> str:
    # Sets and non-str-keyed mappings have no order of their own; sorting their encoded
    # elements makes the same state always give the same file (quiet diffs in git).
    return json.dumps(encoded, sort_keys=True)


def _encode(tp: Any, value: Any, path: str) -> Any:
    """``value`` (declared as ``tp``) as JSON data; _TypeMismatch if it does not fit ``tp``."""
    cat = _category(tp)
    if cat == "any":
        return _plain(value, path)
    if cat == "union":
        if value is None:
            if type(None) not in typing.get_args(tp):
                raise _TypeMismatch(path, f"expected {_type_name(tp)}, found null")
            return None
        return _encode(_optional_inner(tp, typing.get_args(tp)), value, path)
    if cat == "none":
        if value is not None:
            raise _TypeMismatch(path, f"expected null, found {_what(value)}")
        return None
    if cat == "literal":
        if value not in typing.get_args(tp):
            raise _TypeMismatch(
                path, f"expected one of {typing.get_args(tp)!r}, found {_what(value)}"
            )
        return value
    if cat == "record":
        if not isinstance(value, tp):
            raise _TypeMismatch(path, f"expected {tp.__name__}, found {_what(value)}")
        return {
            name: _encode(ftp, getattr(value, name), _at(path, name))
            for name, ftp, _ in _fields(tp)
        }
    if cat == "mapping":
        if not isinstance(value, Mapping):
            raise _TypeMismatch(path, f"expected a mapping, found {_what(value)}")
        ktp, vtp = _pair_types(tp)
        if ktp is str:
            out: dict[str, Any] = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise _TypeMismatch(path, f"expected string keys, found key {_what(k)}")
                out[k] = _encode(vtp, v, _at(path, k))
            return out
        # JSON object keys are strings only: other keys go as [key, value] pairs.
        pairs = [
            [_encode(ktp, k, _at(_at(path, i), 0)), _encode(vtp, v, _at(_at(path, i), 1))]
            for i, (k, v) in enumerate(value.items())
        ]
        return sorted(pairs, key=lambda p: _sort_key(p[0]))
    if cat in ("tuple", "list"):
        if not isinstance(value, list | tuple):
            raise _TypeMismatch(path, f"expected a sequence, found {_what(value)}")
        types_ = _item_types(tp, len(value), path)
        return [
            _encode(t, v, _at(path, i)) for i, (t, v) in enumerate(zip(types_, value, strict=True))
        ]
    if cat == "set":
        if not isinstance(value, frozenset | set):
            raise _TypeMismatch(path, f"expected a set, found {_what(value)}")
        (itp,) = typing.get_args(tp) or (Any,)
        return sorted((_encode(itp, v, path + "[]") for v in value), key=_sort_key)
    if cat == "datetime":
        if not isinstance(value, datetime):
            raise _TypeMismatch(path, f"expected a datetime, found {_what(value)}")
        return value.isoformat()
    if cat == "enum":
        if not isinstance(value, tp):
            raise _TypeMismatch(path, f"expected {tp.__name__}, found {_what(value)}")
        return _encode(type(value.value), value.value, path)
    return _scalar(cat, value, path)


def _decode(tp: Any, data: Any, path: str) -> Any:
    """The value of type ``tp`` that :func:`_encode` turned into ``data``; _TypeMismatch if
    malformed."""
    cat = _category(tp)
    if cat == "any":
        return _plain(data, path)
    if cat == "union":
        if data is None:
            if type(None) not in typing.get_args(tp):
                raise _TypeMismatch(path, f"expected {_type_name(tp)}, found null")
            return None
        return _decode(_optional_inner(tp, typing.get_args(tp)), data, path)
    if cat == "none":
        if data is not None:
            raise _TypeMismatch(path, f"expected null, found {_what(data)}")
        return None
    if cat == "literal":
        if data not in typing.get_args(tp):
            raise _TypeMismatch(
                path, f"expected one of {typing.get_args(tp)!r}, found {_what(data)}"
            )
        return data
    if cat == "record":
        return _decode_record(tp, data, path)
    if cat == "mapping":
        ktp, vtp = _pair_types(tp)
        if ktp is str:
            if not isinstance(data, dict):
                raise _TypeMismatch(path, f"expected an object, found {_what(data)}")
            for k in data:
                if not isinstance(k, str):  # only possible for data that did not come from JSON
                    raise _TypeMismatch(path, f"expected string keys, found key {_what(k)}")
            return {k: _decode(vtp, v, _at(path, k)) for k, v in data.items()}
        if not isinstance(data, list):
            raise _TypeMismatch(path, f"expected a list of [key, value] pairs, found {_what(data)}")
        out: dict[Any, Any] = {}
        for i, pair in enumerate(data):
            here = _at(path, i)
            if not isinstance(pair, list) or len(pair) != 2:
                raise _TypeMismatch(here, f"expected a [key, value] pair, found {_what(pair)}")
            key = _decode(ktp, pair[0], _at(here, 0))
            if key in out:
                raise _TypeMismatch(_at(here, 0), f"duplicate key {_what(pair[0])}")
            out[key] = _decode(vtp, pair[1], _at(here, 1))
        return out
    if cat in ("tuple", "list"):
        if not isinstance(data, list):
            raise _TypeMismatch(path, f"expected a list, found {_what(data)}")
        types_ = _item_types(tp, len(data), path)
        items = [
            _decode(t, v, _at(path, i)) for i, (t, v) in enumerate(zip(types_, data, strict=True))
        ]
        # Sequence fields of the frozen live dataclasses hold tuples (immutable, hashable);
        # only a field declared ``list`` gets a list back.
        return items if typing.get_origin(tp) is list else tuple(items)
    if cat == "set":
        if not isinstance(data, list):
            raise _TypeMismatch(path, f"expected a list, found {_what(data)}")
        (itp,) = typing.get_args(tp) or (Any,)
        elements = [_decode(itp, v, _at(path, i)) for i, v in enumerate(data)]
        try:
            return set(elements) if typing.get_origin(tp) is set else frozenset(elements)
        except TypeError as e:  # an unhashable element, e.g. a list under ``frozenset[Any]``
            raise _TypeMismatch(path, f"set elements must be hashable: {e}") from None
    if cat == "datetime":
        if not isinstance(data, str):
            raise _TypeMismatch(path, f"expected an ISO 8601 date and time, found {_what(data)}")
        try:
            return datetime.fromisoformat(data)
        except ValueError:
            raise _TypeMismatch(
                path, f"expected an ISO 8601 date and time, found {_what(data)}"
            ) from None
    if cat == "enum":
        try:
            return tp(data)
        except (ValueError, TypeError):
            names = ", ".join(repr(m.value) for m in tp)
            raise _TypeMismatch(path, f"expected one of {names}, found {_what(data)}") from None
    return _scalar(cat, data, path)


def _decode_record(cls: type[Any], data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise _TypeMismatch(path, f"expected an object ({cls.__name__}), found {_what(data)}")
    known = _fields(cls)
    names = {name for name, _, _ in known}
    # An unknown field is refused rather than ignored: it would be state the writer's diff
    # used and this reader's diff cannot, i.e. a plan made on partial information.
    for k in data:
        if k not in names:
            raise _TypeMismatch(_at(path, k), f"unknown field of {cls.__name__}")
    kwargs: dict[str, Any] = {}
    for name, ftp, required in known:
        if name in data:
            kwargs[name] = _decode(ftp, data[name], _at(path, name))
        elif required:
            raise _TypeMismatch(_at(path, name), f"missing field of {cls.__name__}")
        # else: a field with a default that an older writer did not know takes its default.
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a __post_init__ refusing the values
        raise _TypeMismatch(path, f"invalid {cls.__name__}: {e}") from None


def _pair_types(tp: Any) -> tuple[Any, Any]:
    args = typing.get_args(tp)
    if len(args) != 2:
        raise TypeError(f"snapshot: mapping type without key and value types: {tp!r}")
    return args[0], args[1]


def _item_types(tp: Any, n: int, path: str) -> list[Any]:
    """The declared type of each of ``n`` items of a sequence type; _TypeMismatch on a length that a
    fixed-length tuple type does not allow."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(args) != n:
            raise _TypeMismatch(path, f"expected a list of {len(args)} items, found {n}")
        return list(args)
    return [args[0] if args else Any] * n


def _scalar(cat: str, value: Any, path: str) -> Any:
    if cat == "bool":
        ok = isinstance(value, bool)
    elif cat == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif cat == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise _TypeMismatch(path, f"expected a finite number, found {_what(value)}")
        value = float(value) if ok else value
    else:  # str
        ok = isinstance(value, str)
    if not ok:
        raise _TypeMismatch(path, f"expected {_SCALAR_NAMES[cat]}, found {_what(value)}")
    return value


_SCALAR_NAMES = {"bool": "a boolean", "int": "an integer", "float": "a number", "str": "a string"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _plain(value: Any, path: str) -> Any:
    """A value declared ``Any`` (e.g. an ownership record): must be JSON data already.

    Tuples come back as lists; that is the only change, and ``Any`` fields hold data read
    from JSON (the state dir) in the first place.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _TypeMismatch(path, f"expected a finite number, found {_what(value)}")
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, _at(path, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _TypeMismatch(path, f"expected string keys, found key {_what(k)}")
            out[k] = _plain(v, _at(path, k))
        return out
    raise _TypeMismatch(path, f"expected JSON data, found {_what(value)}")


# ------------------------------------------------------------------------- per kind API
def dump_live(kind: str, live: Any) -> Any:
    """JSON-able data for one provider's live object (no information lost that diff uses).

    ``kind`` is one of :data:`SNAPSHOT_KINDS` and ``live`` what that provider's ``read``
    returned. The result holds only dicts, lists, str, int, float, bool and None, and the
    same state always gives the same data (sets and non-string-keyed mappings are sorted).
    Exception: what a live state holds only for the process that read it is left out
    (``for_snapshot``: ``IpsetLive.ssh_client`` is written as null). Raises
    SnapshotError naming the kind and path of a value that does not fit its declared type,
    TypeError if ``live`` is not ``kind``'s live class.
    """
    cls = _live_class(kind)
    if not isinstance(live, cls):
        raise TypeError(f"dump_live({kind!r}): expected {cls.__name__}, got {type(live)}")
    live = for_snapshot(live)
    try:
        return _encode(cls, live, "$")
    except _TypeMismatch as e:
        raise SnapshotError(f"cannot snapshot {kind} live state: {e.path}: {e.message}") from None


def load_live(kind: str, data: Any) -> Any:
    """Inverse of dump_live; raises SnapshotError (reconciler.errors) naming the kind and the
    JSON path of the bad value on malformed data — never a KeyError/TypeError traceback.

    Returns an object equal to the one dumped (``ssh_client`` aside), so the provider's pure
    ``diff`` plans exactly what it would have planned on the host. Every value is checked
    against its declared type; unknown fields are refused, missing ones take the field's
    default when it has one (a snapshot written before the field existed).
    """
    return _load_live(kind, data, "$")


def _load_live(kind: str, data: Any, root: str) -> Any:
    cls = _live_class(kind)
    try:
        return _decode(cls, data, root)
    except _TypeMismatch as e:
        raise SnapshotError(f"bad {kind} live state at {e.path}: {e.message}") from None
    except RecursionError:
        raise SnapshotError(f"bad {kind} live state at {root}: nested too deeply") from None


# ------------------------------------------------------------------------------- snapshot
@dataclass(frozen=True)
class Snapshot:
    """One host's live state as read at ``created``.

    ``lives`` holds the live object of each kind that was read, ``errors`` the read error
    of each kind that could not be (a kind is in at most one of them; a kind in neither was
    not read at all). ``commit`` is the commit applied on the host when the snapshot was
    taken (None when unknown), ``tool_version`` the reconciler version that took it.
    ``created`` must be timezone-aware; it is stored in UTC.
    """

    host: str
    created: datetime
    commit: str | None
    tool_version: str
    lives: dict[str, Any]
    errors: dict[str, str]

    def __post_init__(self) -> None:
        if self.created.tzinfo is None or self.created.utcoffset() is None:
            raise ValueError("Snapshot.created must be timezone-aware")
        # Normalised here so that equality and the file never depend on the writer's zone.
        object.__setattr__(self, "created", self.created.astimezone(UTC))
        for kind in (*self.lives, *self.errors):
            if kind not in SNAPSHOT_KINDS:
                raise ValueError(f"unknown snapshot kind {kind!r}")
        both = sorted(set(self.lives) & set(self.errors))
        if both:
            raise ValueError(f"kinds both read and failed: {', '.join(both)}")

    def age(self, now: datetime | None = None) -> timedelta:
        """How long ago the snapshot was taken, as of ``now`` (aware; default: the current
        time). Negative when ``now`` is earlier than ``created`` (clock skew)."""
        return (now if now is not None else datetime.now(UTC)) - self.created


def write_snapshot(path: Path, snap: Snapshot) -> None:
    """Atomic (temp file in the same dir + fsync + rename), JSON with "format_version": 1,
    sorted keys, indented 1 space (diffs well in git).

    Readers see the old file or the new one, never a partial one; on failure no temporary
    file is left behind and an existing file is untouched. Raises SnapshotError when a live
    object cannot be serialised (naming kind and path) or the file cannot be written.
    """
    doc = {
        "format_version": FORMAT_VERSION,
        "host": snap.host,
        "created": snap.created.isoformat(),
        "commit": snap.commit,
        "tool_version": snap.tool_version,
        "lives": {kind: dump_live(kind, live) for kind, live in snap.lives.items()},
        "errors": dict(snap.errors),
    }
    text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        # A snapshot is meant to be copied and committed, and holds nothing secret: it gets
        # the permissions of an ordinary file.
        atomicfile.write_atomic(path, text, mode=0o644)
    except OSError as e:
        raise SnapshotError(f"cannot write snapshot {path}: {e.strerror or e}") from e


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of duplicate keys silently; in a hand-edited or badly merged
    # snapshot that would hide half of the state, so it is an error instead.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


#: The largest snapshot read (5,000 VMs or a 65,536-member set are a few MiB).
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024


def _read_file(path: Path) -> bytes:
    """The bytes of a snapshot file: a regular file, not through a symlink (the snapshots
    directory is repository content in CI), at most MAX_SNAPSHOT_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SnapshotError(f"snapshot {path} is a symbolic link: refused") from None
        raise SnapshotError(f"cannot read snapshot {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotError(f"snapshot {path} is not a regular file: refused")
        data = f.read(MAX_SNAPSHOT_BYTES + 1)
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"snapshot {path} is larger than {MAX_SNAPSHOT_BYTES} bytes: refused")
    return data


def read_snapshot(path: Path, *, host: str | None = None) -> Snapshot:
    """Raises SnapshotError with a clear message for: missing/unreadable file; not JSON (say
    line/col); not an object; a format_version newer than FORMAT_VERSION ("written by a newer
    reconciler (format N); this version reads format 1: upgrade reconciler in CI");
    missing/invalid fields; host given and != snapshot host ("snapshot <path> is of host X,
    not Y"); unknown kind names.

    Otherwise returns the snapshot as written: ``read_snapshot(p) == snap`` after
    ``write_snapshot(p, snap)`` (``ssh_client`` aside, see :func:`dump_live`).
    """
    raw = _read_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SnapshotError(f"snapshot {path} is not UTF-8 text (byte {e.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        # A snapshot is one object written whole; one that stops before its closing brace
        # was cut short (a failed copy, a full disk on a non-atomic transfer).
        end = text.rstrip()
        cut = end.startswith("{") and not end.endswith("}")
        raise SnapshotError(
            f"snapshot {path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
            + ("; the file ends early: truncated?" if cut else "")
        ) from None
    except _DuplicateKey as e:
        raise SnapshotError(f"snapshot {path} has the key {e.args[0]!r} twice") from None
    except RecursionError:
        raise SnapshotError(f"snapshot {path} is nested too deeply") from None
    if not isinstance(doc, dict):
        raise SnapshotError(f"snapshot {path} is not a JSON object (found {_what(doc)})")

    def bad(key: str, message: str) -> SnapshotError:
        return SnapshotError(f"snapshot {path}: {_at('$', key)}: {message}")

    def need(key: str, check: Callable[[Any], bool], expected: str) -> Any:
        if key not in doc:
            raise bad(key, "missing field")
        if not check(doc[key]):
            raise bad(key, f"expected {expected}, found {_what(doc[key])}")
        return doc[key]

    # The version first: a newer format may have changed anything else.
    version = need(
        "format_version", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"
    )
    if version > FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot {path} was written by a newer reconciler (format {version}); this "
            f"version reads format {FORMAT_VERSION}: upgrade reconciler in CI"
        )
    if version < 1:
        raise bad("format_version", f"no such format {version}")
    snap_host = need("host", lambda v: isinstance(v, str) and v != "", "a host name")
    # Then the host: planning one host against another's state is the mistake to catch,
    # whatever else may be wrong with the file.
    if host is not None and snap_host != host:
        raise SnapshotError(f"snapshot {path} is of host {snap_host}, not {host}")
    unknown = sorted(set(doc) - _TOP_FIELDS)
    if unknown:
        raise bad(unknown[0], "unknown field")
    created_text = need("created", lambda v: isinstance(v, str), "an ISO 8601 date and time")
    try:
        created = datetime.fromisoformat(created_text)
    except ValueError:
        raise bad(
            "created", f"expected an ISO 8601 date and time, found {_what(created_text)}"
        ) from None
    if created.utcoffset() is None:
        raise bad("created", "expected a time with a UTC offset, found a naive one")
    commit = need("commit", lambda v: v is None or isinstance(v, str), "a string or null")
    tool_version = need("tool_version", lambda v: isinstance(v, str), "a string")
    lives_data = need("lives", lambda v: isinstance(v, dict), "an object")
    errors = need("errors", lambda v: isinstance(v, dict), "an object")
    for where, kinds in (("lives", lives_data), ("errors", errors)):
        for kind in kinds:
            if kind not in SNAPSHOT_KINDS:
                raise SnapshotError(
                    f"snapshot {path}: unknown kind {kind!r} in {_at('$', where)} "
                    f"(known: {', '.join(SNAPSHOT_KINDS)})"
                )
    for kind, message in errors.items():
        if not isinstance(message, str):
            raise SnapshotError(
                f"snapshot {path}: {_at(_at('$', 'errors'), kind)}: "
                f"expected a string, found {_what(message)}"
            )
        if kind in lives_data:
            raise SnapshotError(f"snapshot {path}: kind {kind!r} is both in lives and errors")
    lives: dict[str, Any] = {}
    for kind, data in lives_data.items():
        try:
            lives[kind] = _load_live(kind, data, _at(_at("$", "lives"), kind))
        except SnapshotError as e:
            raise SnapshotError(f"snapshot {path}: {e.message}") from None
    return Snapshot(snap_host, created, commit, tool_version, lives, dict(errors))
