"""A line-aware, strict, safe YAML loader.

:func:`load_yaml` turns one YAML file into plain Python data (``dict``, ``list``, ``str``,
``int``, ``bool``, ``None``; YAML 1.1 scalars are resolved exactly as ``yaml.safe_load`` would,
so ``gso: off`` is ``False``) and remembers where every value and every mapping key came from,
so later checks can report ``file:line:column: path: message``.

Unlike ``yaml.safe_load`` it refuses what would silently lose information: duplicate keys,
non-string keys. It never raises for bad input: every problem is returned in
:attr:`YamlDoc.problems`, and :attr:`YamlDoc.data` is ``None`` when the file could not be read
as a mapping at all (bad encoding, syntax error, empty file, top level not a mapping).

A *path* is a tuple of mapping keys and sequence indices, ``("ipsets", "mgmt", "members", 2)``,
rendered by :func:`format_path` as ``ipsets.mgmt.members[2]``.

The parsing itself, and PyYAML, live in :mod:`reconciler.yamlparse`, imported only when a
file is parsed: a run whose files all come from the desired-state cache loads no parser.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from reconciler.errors import Problem

PathKey = str | int
YPath = tuple[PathKey, ...]
Pos = tuple[int, int]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_:-]*$")


def format_path(path: YPath) -> str:
    """Render a path as ``ipsets.mgmt.members[2]`` (keys with odd characters are quoted)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


class YamlDoc:
    """One loaded YAML file.

    ``file`` is the display name used in problems; ``data`` the plain data (``None`` if the file
    could not be loaded); ``values`` maps each value's path to its 1-based ``(line, column)``;
    ``keys`` maps the path of each mapping entry to the position of its *key*; ``texts`` keeps
    the source text of scalars (to quote ``off`` rather than ``False`` in messages).

    A document made by :func:`parse_fast` (or rebuilt from the cache, :mod:`reconciler.cache`)
    knows only some positions (every mapping key, every value but a list's scalar items) and
    keeps its source bytes: the first question it cannot answer exactly (:meth:`pos` of a
    list item, ``values``, ``keys``, ``texts``) parses the source again with the line-aware
    loader, so every answer is the one :func:`parse_yaml` would have given.
    """

    def __init__(
        self,
        file: str,
        data: Any = None,
        *,
        values: dict[YPath, Pos] | None = None,
        keys: dict[YPath, Pos] | None = None,
        texts: dict[YPath, str] | None = None,
        problems: list[Problem] | None = None,
        source: bytes | None = None,
    ) -> None:
        """A document of ``file``. With ``source`` the positions given are partial (see the
        class) and the rest is parsed from ``source`` when first asked for."""
        self.file = file
        self.data = data
        self.problems: list[Problem] = problems if problems is not None else []
        #: Results of the checks that later steps reuse (e.g. an ipset's canonical members,
        #: so 5,000 CIDRs are not canonicalised twice), keyed by what they are about.
        self.derived: dict[tuple[str, ...], Any] = {}
        #: Other files of the repository the checks read (``members_from:`` lists), by
        #: path relative to the repository, with the SHA-256 (hex) of the bytes read: what
        #: was derived from this document is only as current as they are
        #: (:meth:`depends_on`; the cache checks them again before it trusts an entry).
        self.inputs: dict[str, str] = {}
        #: The repository the document belongs to, when a loader that knows it set it (the
        #: checks of a fleet or host file resolve repository paths against it).
        self.root: Path | None = None
        self._values: dict[YPath, Pos] = values if values is not None else {}
        self._keys: dict[YPath, Pos] = keys if keys is not None else {}
        self._texts: dict[YPath, str] = texts if texts is not None else {}
        self._source = source

    @property
    def values(self) -> dict[YPath, Pos]:
        """Every value's position, by path."""
        self._complete()
        return self._values

    @property
    def keys(self) -> dict[YPath, Pos]:
        """Every mapping entry's key position, by the entry's path."""
        self._complete()
        return self._keys

    @property
    def texts(self) -> dict[YPath, str]:
        """Every scalar's source text, by path."""
        self._complete()
        return self._texts

    @property
    def partial(self) -> bool:
        """Whether some positions are still to be parsed from the source."""
        return self._source is not None

    def known_positions(self) -> tuple[dict[YPath, Pos], dict[YPath, Pos]]:
        """(values, keys) as known now, without parsing anything: what a cache entry keeps."""
        return self._values, self._keys

    def depends_on(self, rel: str, content: bytes) -> None:
        """Record that a check read ``content`` from the repository file ``rel``."""
        self.inputs[rel] = hashlib.sha256(content).hexdigest()

    def _complete(self) -> None:
        source = self._source
        if source is None:
            return
        full = parse_yaml(source, self.file)
        self._source = None
        self._values, self._keys, self._texts = full._values, full._keys, full._texts

    def pos(self, path: YPath, *, key: bool = False) -> Pos:
        """Position of ``path`` (of its key with ``key=True``), else of its nearest ancestor."""
        if self._source is not None:
            # Partial positions hold every key, and the value of every path they hold: an
            # exact hit is the full answer; anything else needs the full positions.
            if key and path in self._keys:
                return self._keys[path]
            if path in self._values:
                return self._values[path]
            self._complete()
        p = path
        while True:
            if key and p in self._keys:
                return self._keys[p]
            if p in self._values:
                return self._values[p]
            if not p:
                return (1, 1)
            p = p[:-1]

    def problem(self, path: YPath, message: str, *, key: bool = False) -> Problem:
        """A :class:`Problem` in this file located at ``path`` (at its key with ``key=True``)."""
        line, col = self.pos(path, key=key)
        return Problem(self.file, line, col, format_path(path), message)


#: Bounds on what one file may make us build: an alias "bomb" (aliases of aliases) expands
#: exponentially, and a self-referencing alias never ends.
MAX_VALUES = 2_500_000
MAX_ALIASED = 100_000  # values built again through an alias
MAX_DEPTH = 64
#: The largest file read (a 200,000-network list is ~4 MiB).
MAX_FILE_BYTES = 32 * 1024 * 1024


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes, else
    None (a device such as /dev/zero, a FIFO, or a file too large to be desired state).
    Raises OSError when it cannot be opened."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = f.read(limit + 1)
    return None if len(data) > limit else data


def load_yaml(path: Path, display_name: str) -> YamlDoc:
    """Load ``path`` strictly; problems are named after ``display_name``.

    Never raises for bad content (an unreadable file raises ``OSError``). The returned
    :class:`YamlDoc` holds every problem found; ``data`` is a ``dict`` unless the file is not
    UTF-8, has a syntax error, is empty (or only comments), or its top level is not a mapping,
    in which case ``data`` is ``None``. Duplicate keys (the first one is kept) and non-string
    keys (dropped) are reported but do not prevent ``data``.
    """
    raw = read_bounded(path)
    if raw is None:
        doc = YamlDoc(file=display_name)
        doc.problems.append(
            Problem(display_name, 0, 0, "", "not a regular file, or larger than "
                    f"{MAX_FILE_BYTES} bytes: refused")
        )  # fmt: skip
        return doc
    return parse_yaml(raw, display_name)


def parse_yaml(raw: bytes, display_name: str) -> YamlDoc:
    """:func:`load_yaml` for bytes already read (a blob of a commit, for example)."""
    from reconciler import yamlparse

    return yamlparse.parse_yaml(raw, display_name)


def parse_fast(raw: bytes, display_name: str) -> YamlDoc | None:
    """The data :func:`parse_yaml` gives for ``raw``, read fast, or None: then only
    :func:`parse_yaml` can answer (:func:`reconciler.yamlparse.parse_fast`)."""
    from reconciler import yamlparse

    return yamlparse.parse_fast(raw, display_name)


def plain_copy(value: Any) -> Any:
    """A deep copy of YAML-loaded data (dicts, lists, scalars): ~4x faster than
    ``copy.deepcopy``, which a 1,000-host CI dry-run spent over a second in."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_copy(v) for v in value]
    return value
