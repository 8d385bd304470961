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
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import Problem

PathKey = str | int
YPath = tuple[PathKey, ...]
Pos = tuple[int, int]

_MERGE_TAG = "tag:yaml.org,2002:merge"
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


@dataclass
class YamlDoc:
    """One loaded YAML file.

    ``file`` is the display name used in problems; ``data`` the plain data (``None`` if the file
    could not be loaded); ``values`` maps each value's path to its 1-based ``(line, column)``;
    ``keys`` maps the path of each mapping entry to the position of its *key*; ``texts`` keeps
    the source text of scalars (to quote ``off`` rather than ``False`` in messages).
    """

    file: str
    data: Any = None
    values: dict[YPath, Pos] = field(default_factory=dict)
    keys: dict[YPath, Pos] = field(default_factory=dict)
    texts: dict[YPath, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    #: Results of the checks that later steps reuse (e.g. an ipset's canonical members,
    #: so 5,000 CIDRs are not canonicalised twice), keyed by what they are about.
    derived: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def pos(self, path: YPath, *, key: bool = False) -> Pos:
        """Position of ``path`` (of its key with ``key=True``), else of its nearest ancestor."""
        p = path
        while True:
            if key and p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
            if not p:
                return (1, 1)
            p = p[:-1]

    def problem(self, path: YPath, message: str, *, key: bool = False) -> Problem:
        """A :class:`Problem` in this file located at ``path`` (at its key with ``key=True``)."""
        line, col = self.pos(path, key=key)
        return Problem(self.file, line, col, format_path(path), message)


def _mark_pos(mark: yaml.Mark | None) -> Pos:
    if mark is None:
        return (0, 0)
    return (mark.line + 1, mark.column + 1)


# libyaml's parser (CSafeLoader) is ~20x faster than the pure-Python one on large member
# lists (65,536 CIDRs: seconds, not tens of seconds) and gives the same nodes and marks.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"


class _Loader(_BaseLoader):  # type: ignore[misc]
    """The safe loader with one shortcut in tag resolution.

    PyYAML resolves every plain scalar's tag in Python, trying the int, float and timestamp
    patterns in turn (a third of the time of loading a 5,000-CIDR list). None of YAML's
    implicit types (bool, int, float, null, timestamp, merge, value) can contain a ``/``,
    so a scalar with one is a string: every CIDR with a prefix length takes that path.
    """

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and "/" in value:
            return _STR
        return super().resolve(kind, value, implicit)


#: Bounds on what one file may make us build: an alias "bomb" (aliases of aliases) expands
#: exponentially, and a self-referencing alias never ends.
MAX_VALUES = 2_500_000
MAX_ALIASED = 100_000  # values built again through an alias
MAX_DEPTH = 64
#: The largest file read (a 200,000-network list is ~4 MiB).
MAX_FILE_BYTES = 32 * 1024 * 1024


class _TooBig(Exception):
    """The document exceeds MAX_VALUES or MAX_DEPTH at ``node`` (internal)."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


class _Builder:
    """Builds plain data from composed nodes, recording positions and problems."""

    def __init__(self, doc: YamlDoc, loader: Any) -> None:
        self.doc = doc
        self.loader = loader
        self.count = 0
        self.aliased = 0
        self.seen: set[int] = set()

    def build(self, node: yaml.Node, path: YPath) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooBig(
                node,
                f"more than {MAX_VALUES} values (aliases expanding aliases?): refused",
            )
        if len(path) > MAX_DEPTH:
            raise _TooBig(node, f"nested more than {MAX_DEPTH} levels deep: refused")
        if isinstance(node, yaml.CollectionNode):
            if id(node) in self.seen:
                self.aliased += len(node.value) + 1
                if self.aliased > MAX_ALIASED:
                    raise _TooBig(
                        node, f"aliases expand to more than {MAX_ALIASED} values: refused"
                    )
            self.seen.add(id(node))
        self.doc.values[path] = _mark_pos(node.start_mark)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        self.doc.texts[path] = node.value
        if node.tag == _STR:
            return node.value  # what SafeConstructor.construct_yaml_str returns
        return self.loader.construct_object(node, deep=True)

    def _key(self, knode: yaml.Node, path: YPath) -> str | None:
        if not isinstance(knode, yaml.ScalarNode):
            self.doc.problems.append(
                self._at(knode, path, "a mapping key must be a plain string, not a collection")
            )
            return None
        key = self.loader.construct_object(knode)
        if not isinstance(key, str):
            self.doc.problems.append(
                self._at(
                    knode,
                    path,
                    f"mapping key {knode.value!r} is not a string (YAML reads it as "
                    f"{key!r}); quote it",
                )
            )
            return None
        return key

    def _at(self, node: yaml.Node, path: YPath, message: str) -> Problem:
        line, col = _mark_pos(node.start_mark)
        return Problem(self.doc.file, line, col, format_path(path), message)

    def _mapping(self, node: yaml.MappingNode, path: YPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merges: list[yaml.Node] = []
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                merges.append(vnode)
                continue
            key = self._key(knode, path)
            if key is None:
                continue
            kpath = (*path, key)
            if key in result:
                first = self.doc.keys[kpath]
                self.doc.problems.append(
                    self._at(
                        knode, kpath, f"duplicate key {key!r} (first defined on line {first[0]})"
                    )
                )
                continue
            self.doc.keys[kpath] = _mark_pos(knode.start_mark)
            result[key] = self.build(vnode, kpath)
        # YAML merge keys (<<: *anchor): merged entries never override explicit ones.
        for mnode in merges:
            sources = mnode.value if isinstance(mnode, yaml.SequenceNode) else [mnode]
            for src in sources:
                if not isinstance(src, yaml.MappingNode):
                    self.doc.problems.append(
                        self._at(
                            src, path, "a merge key (<<) needs a mapping or a list of mappings"
                        )
                    )
                    continue
                for knode, vnode in src.value:
                    key = self._key(knode, path)
                    if key is None or key in result:
                        continue
                    kpath = (*path, key)
                    self.doc.keys[kpath] = _mark_pos(knode.start_mark)
                    result[key] = self.build(vnode, kpath)
        return result


def _describe_top(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


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
    doc = YamlDoc(file=display_name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        doc.problems.append(
            Problem(
                display_name,
                line,
                col,
                "",
                f"not UTF-8: byte 0x{raw[e.start]:02x} cannot be decoded; save the file as UTF-8",
            )
        )
        return doc
    text = text.removeprefix("\ufeff")
    loader: Any = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None or (
            isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null") and not node.value
        ):
            doc.problems.append(Problem(display_name, 0, 0, "", "file is empty"))
            return doc
        if not isinstance(node, yaml.MappingNode):
            line, col = _mark_pos(node.start_mark)
            doc.problems.append(
                Problem(
                    display_name,
                    line,
                    col,
                    "",
                    f"expected a mapping (key: value) at the top level, got {_describe_top(node)}",
                )
            )
            return doc
        doc.data = _Builder(doc, loader).build(node, ())
    except _TooBig as e:
        line, col = _mark_pos(e.node.start_mark)
        doc.problems.append(Problem(display_name, line, col, "", e.message))
        doc.data = None
    except RecursionError:
        doc.problems.append(Problem(display_name, 0, 0, "", "nested too deeply: refused"))
        doc.data = None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = _mark_pos(mark)
        msg = e.problem or "invalid YAML"
        if e.context:
            context = e.context
            if e.context_mark is not None and e.context_mark.line != (mark.line if mark else -1):
                context += f" (started on line {e.context_mark.line + 1})"
            msg = f"{context}, {msg}"
        doc.problems.append(Problem(display_name, line, col, "", f"YAML syntax error: {msg}"))
        doc.data = None
    except yaml.YAMLError as e:  # ReaderError (control characters) and friends
        line, col = 0, 0
        position = getattr(e, "position", None)
        if isinstance(position, int):
            line = text.count("\n", 0, position) + 1
            col = position - (text.rfind("\n", 0, position) + 1) + 1
        char = getattr(e, "character", None)
        what = str(e)
        if isinstance(char, int):
            what = f"control character U+{char:04X} is not allowed in YAML"
        doc.problems.append(Problem(display_name, line, col, "", f"unreadable YAML: {what}"))
        doc.data = None
    finally:
        if loader is not None:
            loader.dispose()
    return doc


def plain_copy(value: Any) -> Any:
    """A deep copy of YAML-loaded data (dicts, lists, scalars): ~4x faster than
    ``copy.deepcopy``, which a 1,000-host CI dry-run spent over a second in."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_copy(v) for v in value]
    return value
