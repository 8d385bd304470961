"""What ``reconcile import`` shares between kinds: the found resources, their YAML with
comments saying where each value came from, and the merge into a desired-state directory
(``-o DIR``) that never touches a resource already there.

Each kind's ``reconciler/kinds/<kind>/importer.py`` turns live state (read with its
provider's own read code) or a file people have today into :class:`Resource` records; this
module only writes them. Nothing here reads the host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from reconciler.atomicfile import write_atomic
from reconciler.errors import ReconcilerError
from reconciler.hostconfig import HostConfig
from reconciler.yamlsrc import read_bounded

HOST_FILE = "host"
VMS_FILE = "vms"

#: The sections of a host file, in the order a fresh one lists them.
HOST_SECTIONS: tuple[str, ...] = ("ipsets", "nics", "tarsnap", "backups")
#: The sections of vms.yaml that import adds to.
VMS_SECTIONS: tuple[str, ...] = ("nodes", "vms")
#: Settings sections: merged key by key (each key is a "resource" of its own here).
SETTINGS_SECTIONS = frozenset({"tarsnap"})
_ADDRESS_HEADS = {"ipsets": "ipset", "nics": "nic", "backups": "backup", "vms": "vm",
                  "nodes": "node"}  # fmt: skip


class ImportFailed(ReconcilerError):
    """Import cannot go on as a whole (an output file it cannot merge into)."""


@dataclass(frozen=True)
class Resource:
    """One resource to write: ``section.name`` = ``value`` (YAML-ready plain data) in the
    host file or vms.yaml (``file``), with comment lines (``notes``) saying where its values
    came from and what is a guess."""

    section: str
    name: str
    value: Any
    notes: tuple[str, ...] = ()
    file: str = HOST_FILE

    @property
    def address(self) -> str:
        """Its address as plans name it (``ipset/mgmt``, ``node/kvm1``); a setting is
        ``tarsnap.keyfile``."""
        kind = _ADDRESS_HEADS.get(self.section)
        return f"{kind}/{self.name}" if kind else f"{self.section}.{self.name}"


@dataclass(frozen=True)
class Skipped:
    """Something found on the host or in a file that import does not write, and why."""

    address: str
    reason: str


@dataclass
class Found:
    """What one kind's importer found: resources to write, what it cannot express
    (``skipped``), per-resource errors, and notes about its input (lines it ignored)."""

    resources: list[Resource] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[ReconcilerError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Found) -> None:
        """Add everything ``other`` found."""
        self.resources += other.resources
        self.skipped += other.skipped
        self.errors += other.errors
        self.notes += other.notes


@dataclass(frozen=True)
class ImportContext:
    """What every kind's importer is given: the host imported, the host configuration
    (which programs run, which URIs and files are allowed) and the moment of the import."""

    host: str
    config: HostConfig
    now: datetime

    @property
    def day(self) -> str:
        """The date import comments carry (``2026-11-29``)."""
        return self.now.strftime("%Y-%m-%d")


MAX_INPUT_BYTES = 256 * 1024 * 1024
"""The largest input file import reads (a 65,536-member ipset saves to about 2 MB)."""


def read_input(path: Path, shown: str, *, strict: bool = True) -> str:
    """The text of an input file (``--ipset-save``, ``--ifup-local``), at most
    :data:`MAX_INPUT_BYTES`; ReconcilerError naming ``shown`` when it cannot be read, is
    larger, or (``strict``) is not UTF-8. Without ``strict`` bad bytes become U+FFFD."""
    try:
        raw = read_bounded(path, MAX_INPUT_BYTES)
    except OSError as e:
        raise ReconcilerError(f"{shown}: cannot read it: {e.strerror or e}") from None
    if raw is None:
        raise ReconcilerError(
            f"{shown}: not a regular file, or larger than {MAX_INPUT_BYTES} bytes: refused"
        )
    try:
        return raw.decode("utf-8", "strict" if strict else "replace")
    except UnicodeDecodeError as e:
        raise ReconcilerError(f"{shown}: not UTF-8 text ({e})") from None


# ----------------------------------------------------------------------------------- YAML
class _Dumper(yaml.SafeDumper):
    """Block style with lists indented under their key (as the docs write them)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        """Never indentless: ``members:`` then ``  - 192.0.2.0/24``."""
        super().increase_indent(flow, False)


def _dump(value: Any) -> list[str]:
    text = yaml.dump(
        value,
        Dumper=_Dumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
        width=4096,
    )
    return text.splitlines()


def resource_lines(r: Resource, indent: str) -> list[str]:
    """The lines of one resource inside its section, every line starting with ``indent``:
    its comments, then ``name: value``."""
    out = [f"{indent}# {note}" if note else f"{indent}#" for note in r.notes]
    out += [f"{indent}{line}" for line in _dump({r.name: r.value})]
    return out


def file_of(address: str) -> str:
    """The file (:data:`HOST_FILE` or :data:`VMS_FILE`) a resource address belongs in."""
    return VMS_FILE if address.startswith(("vm/", "node/")) else HOST_FILE


def _skipped_lines(skipped: Sequence[Skipped], indent: str = "") -> list[str]:
    return [f"{indent}# not imported: {s.address}: {s.reason}" for s in skipped]


def render(
    resources: Sequence[Resource],
    sections: Sequence[str],
    header: Sequence[str] = (),
    skipped: Sequence[Skipped] = (),
    top: Mapping[str, Any] | None = None,
) -> str:
    """A whole YAML file: ``header`` comments, ``top`` keys (vms.yaml's controller), then
    each section of ``sections`` that has resources, then what was not imported, as
    comments."""
    lines = [f"# {h}" for h in header]
    if top:
        lines += _dump(dict(top))
    for section in sections:
        mine = [r for r in resources if r.section == section]
        if not mine:
            continue
        lines.append(f"{section}:")
        for r in mine:
            lines += resource_lines(r, "  ")
    if not any(r.section in sections for r in resources) and not top:
        lines.append("{}")  # nothing found: still a valid (empty) file, not an empty document
    lines += _skipped_lines(skipped)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- merge
_TOP_KEY = re.compile(r"^([A-Za-z0-9_.-]+)\s*:(.*)$")


def _plain(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise ImportFailed(f"{where}: cannot merge into it, it is not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ImportFailed(f"{where}: cannot merge into it, its top level is not a mapping")
    return data


def present_names(data: Mapping[str, Any], section: str) -> set[str]:
    """The names a loaded file already has in ``section`` (keys of the mapping)."""
    value = data.get(section)
    return {str(k) for k in value} if isinstance(value, dict) else set()


def _section_span(lines: list[str], section: str) -> tuple[int, int] | None:
    """(index of the ``section:`` line, index after its block) of a top-level key."""
    start = None
    for i, line in enumerate(lines):
        m = _TOP_KEY.match(line)
        if m is None:
            continue
        if start is not None:
            end = i
            # Comment lines just above the next key belong to it.
            while end > start + 1 and (
                lines[end - 1].startswith("#") or not lines[end - 1].strip()
            ):
                end -= 1
            return start, end
        if m.group(1) == section:
            start = i
    if start is None:
        return None
    end = len(lines)
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return start, end


def _child_indent(lines: list[str], start: int, end: int) -> str:
    for line in lines[start + 1 : end]:
        stripped = line.lstrip(" ")
        if stripped and not stripped.startswith("#"):
            return line[: len(line) - len(stripped)]
    return "  "


def merge_text(text: str, where: str, section: str, resources: Sequence[Resource]) -> str:
    """``text`` (a YAML file) with ``resources`` added at the end of its top-level
    ``section`` (created at the end of the file when missing). Nothing already in the file
    changes: only lines are added, or an empty ``section: {}`` / ``section:`` line is
    opened into a block. ImportFailed when the section is written in flow style with
    entries (``ipsets: {a: ...}``), which lines cannot be added to."""
    if not resources:
        return text
    lines = text.splitlines()
    span = _section_span(lines, section)
    if span is None:
        while lines and not lines[-1].strip():
            lines.pop()
        if lines == ["{}"]:
            lines = []
        new = [f"{section}:"]
        for r in resources:
            new += resource_lines(r, "  ")
        return "\n".join([*lines, *new]) + "\n"
    start, end = span
    head = _TOP_KEY.match(lines[start])
    assert head is not None
    rest = head.group(2).split("#", 1)[0].strip()
    if rest in ("{}", "null", "~"):
        lines[start] = f"{section}:"
    elif rest:
        raise ImportFailed(
            f"{where}: cannot add to {section}: it is written in flow style ({section}: {{...}}); "
            "write it as a block mapping (one key per line), or use import without -o"
        )
    indent = _child_indent(lines, start, end)
    new = []
    for r in resources:
        new += resource_lines(r, indent)
    return "\n".join([*lines[:end], *new, *lines[end:]]) + "\n"


@dataclass
class MergeResult:
    """What a merge into ``-o DIR`` wrote (files), added and skipped (already there)."""

    written: list[Path] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _read(path: Path, top: Path) -> str | None:
    """The text of an output file to merge into, None when it does not exist. A symlink
    as the file or as a directory between ``top`` and it is refused: import writes only
    regular files inside the directory it was given."""
    p = path
    while p != top and p != p.parent:
        if p.is_symlink():
            raise ImportFailed(f"{p}: a symlink; import writes only regular files in {top}")
        p = p.parent
    if not path.exists():
        return None
    if not path.is_file():
        raise ImportFailed(f"{path}: not a regular file")
    return read_input(path, str(path))


def _new_resources(
    resources: Iterable[Resource],
    sections: Sequence[str],
    have: Mapping[str, Any],
    fleet: Mapping[str, Any],
    shown: str,
    result: MergeResult,
) -> dict[str, list[Resource]]:
    """The resources not already in the file (``have``) or in fleet.yaml (``fleet``), by
    section; the others are recorded as skipped."""
    out: dict[str, list[Resource]] = {}
    for r in resources:
        if r.section not in sections:
            continue
        if r.name in present_names(have, r.section):
            result.skipped.append(Skipped(r.address, f"already in {shown}; left as it is"))
            continue
        if r.name in present_names(fleet, r.section):
            why = (
                "the fleet sets it" if r.section in SETTINGS_SECTIONS
                else "the host file's entry would replace the fleet's"
            )  # fmt: skip
            result.skipped.append(
                Skipped(r.address, f"already in fleet.yaml ({why}); left as it is")
            )
            continue
        out.setdefault(r.section, []).append(r)
    return out


def merge_into(
    out_dir: Path,
    host: str,
    resources: Sequence[Resource],
    header: Sequence[str],
    vms_top: Mapping[str, Any],
    skipped: Sequence[Skipped] = (),
) -> MergeResult:
    """Merge ``resources`` into the desired-state directory ``out_dir``: host-file ones
    into ``hosts/<host>.yaml``, vm ones into ``vms.yaml`` (made with ``vms_top`` when it
    does not exist). A resource already in the file, or in ``fleet.yaml``, is skipped and
    reported; nothing already written changes. What could not be imported (``skipped``)
    is added as ``# not imported:`` comments at the end, each once. Files are replaced
    atomically, and only when something is added."""
    result = MergeResult()
    fleet_text = _read(out_dir / "fleet.yaml", out_dir)
    fleet = _plain(fleet_text, "fleet.yaml") if fleet_text is not None else {}
    targets = (
        (HOST_FILE, out_dir / "hosts" / f"{host}.yaml", f"hosts/{host}.yaml", HOST_SECTIONS),
        (VMS_FILE, out_dir / "vms.yaml", "vms.yaml", VMS_SECTIONS),
    )
    plans: list[tuple[Path, str]] = []
    for kind, path, shown, sections in targets:
        mine = [r for r in resources if r.file == kind]
        notes = [s for s in skipped if file_of(s.address) == kind]
        text = _read(path, out_dir)
        have = _plain(text, shown) if text is not None else {}
        new = _new_resources(mine, sections, have, fleet if kind == HOST_FILE else {}, shown,
                             result)  # fmt: skip
        if not new:
            continue
        if text is None:
            fresh = [r for s in sections for r in new.get(s, [])]
            top = vms_top if kind == VMS_FILE else None
            text = render(fresh, sections, header, notes, top=top)
        else:
            for section in sections:
                text = merge_text(text, shown, section, new.get(section, []))
            old = set(text.splitlines())
            text += "".join(f"{ln}\n" for ln in _skipped_lines(notes) if ln not in old)
        check = _plain(text, shown)
        for section, rs in new.items():
            missing = [r.name for r in rs if r.name not in present_names(check, section)]
            if missing:  # a merge bug must never write a file that lost what it added
                raise ImportFailed(f"{shown}: merging {section} failed for {', '.join(missing)}")
        plans.append((path, text))
        result.added += [r.address for s in sections for r in new.get(s, [])]
    for path, text in plans:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomic(path, text, mode=0o644)
        except OSError as e:
            raise ImportFailed(f"{path}: cannot write it: {e.strerror or e}") from None
        result.written.append(path)
    return result
