"""The YAML parsing behind :mod:`reconciler.yamlsrc`: everything that needs PyYAML.

Kept apart so that importing :mod:`reconciler.yamlsrc` (``YamlDoc``, paths, bounds) costs
no PyYAML import (~40 ms): a run whose files all come from the desired-state cache
(:mod:`reconciler.cache`) parses no YAML and need not load the parser. Use it through
:func:`reconciler.yamlsrc.parse_yaml`, :func:`~reconciler.yamlsrc.load_yaml` and
:func:`~reconciler.yamlsrc.parse_fast`.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from reconciler import native
from reconciler.errors import Problem
from reconciler.yamlsrc import (
    MAX_ALIASED,
    MAX_DEPTH,
    MAX_VALUES,
    Pos,
    YamlDoc,
    YPath,
    format_path,
)


def _mark_pos(mark: Any) -> Pos:
    if mark is None:
        return (0, 0)
    return (mark.line + 1, mark.column + 1)


# libyaml's parser (CSafeLoader) is ~20x faster than the pure-Python one on large member
# lists (65,536 CIDRs: seconds, not tens of seconds) and gives the same nodes and marks.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


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


_TAG_NAMES = {
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
}


class _TooBig(Exception):
    """The document exceeds MAX_VALUES or MAX_DEPTH at ``node``, or has a value there that
    cannot be built (internal)."""

    def __init__(self, node: yaml.Node, message: str, path: YPath = ()) -> None:
        super().__init__(message)
        self.node = node
        self.message = message
        self.path = path


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
        self.doc._values[path] = _mark_pos(node.start_mark)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        self.doc._texts[path] = node.value
        if node.tag == _STR:
            return node.value  # what SafeConstructor.construct_yaml_str returns
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, OverflowError) as e:
            # A plain scalar resolved to a type it is no valid value of: 2024-13-45 is read
            # as a date (YAML 1.1) and month 13 cannot be built.
            what = _TAG_NAMES.get(node.tag, node.tag)
            raise _TooBig(
                node,
                f"{node.value!r} is read as {what} but is not a valid one ({e}); quote it if "
                "it is text",
                path,
            ) from e

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
                first = self.doc._keys[kpath]
                self.doc.problems.append(
                    self._at(
                        knode, kpath, f"duplicate key {key!r} (first defined on line {first[0]})"
                    )
                )
                continue
            self.doc._keys[kpath] = _mark_pos(knode.start_mark)
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
                    self.doc._keys[kpath] = _mark_pos(knode.start_mark)
                    result[key] = self.build(vnode, kpath)
        return result


def _describe_top(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


def parse_yaml(raw: bytes, display_name: str) -> YamlDoc:
    """:func:`reconciler.yamlsrc.parse_yaml`."""
    doc = YamlDoc(file=display_name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        why = f"not UTF-8: byte 0x{raw[e.start]:02x} cannot be decoded; save the file as UTF-8"
        doc.problems.append(Problem(display_name, line, col, "", why))
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
            why = f"expected a mapping (key: value) at the top level, got {_describe_top(node)}"
            doc.problems.append(Problem(display_name, line, col, "", why))
            return doc
        doc.data = _Builder(doc, loader).build(node, ())
    except _TooBig as e:
        line, col = _mark_pos(e.node.start_mark)
        doc.problems.append(Problem(display_name, line, col, format_path(e.path), e.message))
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


class _Bail(Exception):
    """The fast parser met something only the line-aware loader handles (internal)."""


_MAP_START = yaml.MappingStartEvent
_SEQ_START = yaml.SequenceStartEvent
_SCALAR = yaml.ScalarEvent
_MAP_END = yaml.MappingEndEvent
_SEQ_END = yaml.SequenceEndEvent


#: A run of block-sequence items that are plain network strings, one per line at one
#: indentation: a CIDR (any text of hex digits, dots and colons, a ``/`` and a prefix
#: length: a string by :class:`_Loader`'s rule) or a dotted quad (never an int, float or
#: date by YAML 1.1's patterns, so a string too), nothing else on the line.
_ITEM = r"(?:[0-9A-Fa-f:.]+/[0-9]+|[0-9]{1,3}(?:\.[0-9]{1,3}){3})"
_MIN_RUN = 64
_RUN = re.compile(rf"^( *)- {_ITEM}[ \t]*\n(?:\1- {_ITEM}[ \t]*\n){{{_MIN_RUN - 1},}}", re.M)


def run_spans(text: str) -> list[tuple[int, int, int, list[str]]]:
    """``(start, end, indent, items)`` of each match of :data:`_RUN` in ``text``, ``items``
    the item of each of its lines: found in C when the extension is built (the regex and
    the splitting take ~50 ms over 65,536 lines), else in Python."""
    fast = native.netfast
    found: list[tuple[int, int, int, list[str]]] | None = (
        fast.runs(text, _MIN_RUN) if fast is not None else None
    )
    if found is not None:
        return found
    out = []
    for m in _RUN.finditer(text):
        indent = m.group(1)
        # Every line is ``indent- ITEM``, maybe with trailing blanks: C-speed string work.
        body = m.group(0)[len(indent) + 2 : -1].replace(f"\n{indent}- ", "\n")
        items = body.split("\n")
        if " " in body or "\t" in body:
            items = [item.rstrip(" \t") for item in items]
        out.append((m.start(), m.end(), len(indent), items))
    return out


def _fold_runs(text: str) -> tuple[str, dict[str, list[str]]]:
    """``text`` with each run of at least 64 network items (:data:`_RUN`) replaced by one
    item, a placeholder, followed by a comment line per item folded (so every later line
    keeps its number), and the items of each placeholder. libyaml then makes one event for
    the run instead of one per item (65,536 CIDRs: ~0.1 s of Python objects).
    :func:`_events_to_data` splices the items back where it meets the placeholder as a
    plain sequence item, and bails when a placeholder is met anywhere else (a run inside
    a block scalar's text) or not at all."""
    runs: dict[str, list[str]] = {}
    if "- " not in text:
        return text, runs
    prefix = f"/reconciler-run/{os.urandom(8).hex()}/"
    if prefix in text:
        return text, runs
    parts: list[str] = []
    at = 0
    for start, end, width, items in run_spans(text):
        token = f"{prefix}{len(runs)}"
        runs[token] = items
        parts += [text[at:start], f"{' ' * width}- {token}\n", "#\n" * (len(items) - 1)]
        at = end
    if not runs:
        return text, runs
    parts.append(text[at:])
    return "".join(parts), runs


def parse_fast(raw: bytes, display_name: str) -> YamlDoc | None:
    """The data :func:`parse_yaml` gives for ``raw``, built straight from libyaml's events
    (no nodes, positions for mapping keys and values only), or None: then only
    :func:`parse_yaml` can answer, with the problems it finds.

    For a list of 65,536 CIDRs this is about 3x faster than :func:`parse_yaml`, which
    builds a node with two marks for every item, and records a position and a source text
    per item. None for anything but the common case, so that whatever is unusual goes
    through the one loader that reports it: a syntax or encoding error, an empty file, a
    top level that is not a mapping, anchors and aliases, merge keys, explicit tags,
    non-string or duplicate keys, nesting near :data:`MAX_DEPTH`, more than
    :data:`MAX_VALUES` values, a scalar the safe constructor refuses. Scalars are resolved
    by the same loader's rules (``off`` is ``False``, a date is a date, anything with a
    ``/`` is a string). The document returned is partial (:class:`YamlDoc`): a position
    it does not hold is parsed from ``raw`` when asked for.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    folded, runs = _fold_runs(text.removeprefix("\ufeff"))
    loader: Any = _Loader(folded)
    try:
        data, values, keys = _events_to_data(loader, runs)
    except (_Bail, yaml.YAMLError, ValueError, TypeError, OverflowError):
        return None
    finally:
        loader.dispose()
    return YamlDoc(file=display_name, data=data, values=values, keys=keys, source=raw)


def _resolved(ev: Any, resolve: Any, construct: Any) -> Any:
    """The value of scalar event ``ev`` as the composer and constructor make it: its tag
    resolved by the loader's rules, the string itself for a string."""
    tag = resolve(yaml.ScalarNode, ev.value, ev.implicit)
    if tag == _STR:
        return ev.value
    return construct(
        yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style), deep=True
    )


def _splice(folded: list[str], container: list[Any], count: int) -> int:
    """Append a folded run's items to the sequence ``container`` in place of its
    placeholder (already counted in ``count``); the new count, _Bail past MAX_VALUES."""
    count += len(folded) - 1
    if count > MAX_VALUES:
        raise _Bail
    container.extend(folded)
    return count


def _events_to_data(
    loader: Any, runs: dict[str, list[str]]
) -> tuple[dict[str, Any], dict[YPath, Pos], dict[YPath, Pos]]:
    """(data, values, keys) of a single-document stream whose top level is a mapping;
    _Bail for anything :func:`parse_fast` leaves to the line-aware loader. ``runs``: the
    items folded by :func:`_fold_runs`, by placeholder (consumed here)."""
    get = loader.get_event
    resolve = loader.resolve
    construct = loader.construct_object
    scalar_node = yaml.ScalarNode
    if not isinstance(get(), yaml.StreamStartEvent) or not isinstance(
        get(), yaml.DocumentStartEvent
    ):
        raise _Bail
    ev: Any = get()
    if type(ev) is not _MAP_START or ev.tag not in (None, "!") or ev.anchor is not None:
        raise _Bail
    root: dict[str, Any] = {}
    values: dict[YPath, Pos] = {(): _mark_pos(ev.start_mark)}
    keys: dict[YPath, Pos] = {}
    # One frame per open collection: [container, its path, is a mapping, the pending key].
    stack: list[list[Any]] = [[root, (), True, None]]
    count = 1
    held: Any = None  # an event the list loop below read and handed back
    while stack:
        if held is None:
            ev = get()
        else:
            ev, held = held, None
        cls = type(ev)
        frame = stack[-1]
        container, path, is_map, pending = frame
        if is_map and pending is None:
            if cls is _MAP_END:
                stack.pop()
                continue
            if cls is not _SCALAR or ev.tag not in (None, "!") or ev.anchor is not None:
                raise _Bail  # a collection or alias as a key, an explicit tag, an anchor
            key = ev.value
            if "/" not in key and resolve(scalar_node, key, ev.implicit) != _STR:
                raise _Bail  # not a string (true, 1, null), or a merge key
            if key in container:
                raise _Bail  # a duplicate: the loader reports it
            kpath = (*path, key)
            mark = ev.start_mark
            keys[kpath] = (mark.line + 1, mark.column + 1)
            frame[3] = kpath
            continue
        if cls is _SEQ_END and not is_map:
            stack.pop()
            continue
        count += 1
        if count > MAX_VALUES:
            raise _Bail
        if getattr(ev, "anchor", None) is not None:
            raise _Bail  # the composer checks anchors (a duplicate one is an error)
        if cls is _SCALAR:
            tag = ev.tag
            if tag is not None and tag != "!":
                raise _Bail
            value = ev.value
            if "/" not in value:  # with a "/" it is a string (_Loader.resolve)
                value = _resolved(ev, resolve, construct)
            elif runs and value in runs:
                if is_map or ev.style or len(path) >= MAX_DEPTH:
                    raise _Bail  # a placeholder anywhere but as a plain item
                count = _splice(runs.pop(value), container, count)
                continue
            if is_map:
                mark = ev.start_mark
                values[pending] = (mark.line + 1, mark.column + 1)
                container[pending[-1]] = value
                frame[3] = None
            else:
                if len(path) >= MAX_DEPTH:
                    raise _Bail
                container.append(value)
            continue
        if (cls is not _MAP_START and cls is not _SEQ_START) or ev.tag not in (None, "!"):
            raise _Bail  # an alias, an explicit tag
        if is_map:
            vpath = pending
            frame[3] = None
        else:
            vpath = (*path, len(container))
        if len(vpath) >= MAX_DEPTH:
            raise _Bail
        new: Any = {} if cls is _MAP_START else []
        if is_map:
            container[vpath[-1]] = new
        else:
            container.append(new)
        mark = ev.start_mark
        values[vpath] = (mark.line + 1, mark.column + 1)
        stack.append([new, vpath, cls is _MAP_START, None])
        if cls is _SEQ_START:
            # The common big list, plain scalars one after another, appended here without
            # the dispatch above (65,536 CIDRs: ~15% of the parse); anything else goes back.
            append = new.append
            ev = get()
            while type(ev) is _SCALAR and ev.tag is None and ev.anchor is None:
                count += 1
                if count > MAX_VALUES:
                    raise _Bail
                value = ev.value
                if "/" not in value:
                    value = _resolved(ev, resolve, construct)
                elif runs and value in runs:
                    if ev.style:  # quoted or a block scalar ("" or None: plain)
                        raise _Bail
                    count = _splice(runs.pop(value), new, count)
                    ev = get()
                    continue
                append(value)
                ev = get()
            held = ev
    if not isinstance(get(), yaml.DocumentEndEvent) or not isinstance(get(), yaml.StreamEndEvent):
        raise _Bail  # a second document: the loader says so
    if runs:
        raise _Bail  # a folded run was not a sequence's items (it was inside a text)
    return root, values, keys
