"""``reconcile import`` for NICs: the ring sizes and offloads of the NICs the user names,
bridge ports as ``ports:``, from this host (the provider's own read) or from the
``ethtool -G`` / ``ethtool -K`` lines of a shell script such as ``/sbin/ifup-local``.

A driver's defaults are not knowable in general (ethtool reports the current values and the
maxima, not what the driver started with), so a NIC is imported with its current values: the
ring sizes the driver has, and every offload the driver lets change. The pure parts are
:func:`from_live` and :func:`parse_script`.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import Problem, ReconcilerError, ValidationError
from reconciler.importing import Found, ImportContext, Resource, Skipped, read_input
from reconciler.kinds.nic.offloads import KERNEL_FEATURES, resolve_offload
from reconciler.kinds.nic.provider import NicLive, NicState, bridge_ports
from reconciler.kinds.nic.provider import _features_of as _features_of  # the diff's own count
from reconciler.model import RING_FIELDS

KIND = "nic"
#: ethtool's short offload names, written for a group whose changeable features agree.
SHORT_NAMES: tuple[str, ...] = (
    "rx", "tx", "sg", "tso", "ufo", "gso", "gro", "lro", "rxvlan", "txvlan", "ntuple", "rxhash",
)  # fmt: skip


# -------------------------------------------------------------------------- live, pure
def offloads_of(state: NicState, every_feature: bool = False) -> dict[str, bool]:
    """The offloads the driver lets change on this NIC with their current values: ethtool's
    short names (``gso``, ``tso`` ...), each for a group whose changeable features agree,
    else its features by kernel name; with ``every_feature``, also every other changeable
    kernel feature (``rx-udp-gro-forwarding`` ...). Fixed features are left out (git cannot
    change them). Pure."""
    out: dict[str, bool] = {}
    covered: set[str] = set()
    for short in SHORT_NAMES:
        present = [f for f in _features_of(short, state) if f in state.features]
        covered.update(present)
        changeable = [f for f in present if not state.features[f].fixed]
        values = {state.features[f].active for f in changeable}
        if len(values) == 1:
            out[short] = values.pop()
        else:
            out.update((f, state.features[f].active) for f in changeable)
    for f in sorted(state.features) if every_feature else ():
        if f not in covered and f in KERNEL_FEATURES and not state.features[f].fixed:
            out[f] = state.features[f].active
    return out


def rings_of(state: NicState) -> dict[str, int]:
    """The current ring sizes of the rings the driver has (maximum above 0). Pure."""
    if state.rings is None:
        return {}
    return {
        f: state.rings.current.get(f, 0)
        for f in RING_FIELDS
        if state.rings.maximum.get(f, 0) > 0 and state.rings.current.get(f, 0) > 0
    }


def _settings(state: NicState, every_feature: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rings = rings_of(state)
    if rings:
        out["rings"] = rings
    offloads = offloads_of(state, every_feature)
    if offloads:
        out["offloads"] = offloads
    return out


def _common(values: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The (key, value) pairs every mapping of ``values`` has alike."""
    first, *rest = values
    return {k: v for k, v in first.items() if all(k in o and o[k] == v for o in rest)}


def _flat(state: NicState, every_feature: bool) -> dict[str, Any]:
    """A NIC's settings as ``rings.rx`` / ``offloads.gso`` keys, to compare ports."""
    return {
        **{f"rings.{k}": v for k, v in rings_of(state).items()},
        **{f"offloads.{k}": v for k, v in offloads_of(state, every_feature).items()},
    }


def _minus(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in a.items() if k not in b}


def from_live(
    names: Sequence[str], live: NicLive, origin: str, every_feature: bool = False
) -> Found:
    """The resources for the NICs ``names`` (as the user named them) from ``live``. Pure.

    A bridge gets its own offloads and, under ``ports:``, the settings all its physical
    ports share; what a port has of its own becomes that port's entry. A NIC that does not
    exist or could not be read is an error of that NIC.
    """
    found = Found()
    entries: dict[str, dict[str, Any]] = {}
    notes: dict[str, list[str]] = {}
    for name in names:
        address = f"{KIND}/{name}"
        link = live.links.get(name)
        if link is None:
            found.errors.append(
                ReconcilerError(f"no NIC named {name} on this host", address=address)
            )
            continue
        if name in live.errors or name not in live.nics:
            why = live.errors.get(name, "not read")
            found.errors.append(ReconcilerError(f"cannot read it: {why}", address=address))
            continue
        state = live.nics[name]
        value = _settings(state, every_feature)
        if link.kind == "bridge":
            value.pop("rings", None)  # a bridge has none of its own
            ports, skipped = bridge_ports(name, live.links)
            readable = [p for p, _ in ports if p in live.nics]
            for p, _ in ports:
                if p not in live.nics:
                    found.errors.append(
                        ReconcilerError(
                            f"cannot read port {p} of bridge {name}: {live.errors.get(p, '')}",
                            address=f"{KIND}/{p}",
                        )
                    )
            if readable:
                flat = {p: _flat(live.nics[p], every_feature) for p in readable}
                common = _common(list(flat.values()))
                ports_value = _unflatten(common)
                if ports_value:
                    value["ports"] = ports_value
                for p in readable:
                    if p in names:
                        continue  # named itself: its whole entry follows
                    own = _unflatten(_minus(flat[p], common))
                    if own:
                        entries.setdefault(p, {}).update(own)
                        notes.setdefault(p, []).append(
                            f"port of bridge {name}: what it does not share with the other "
                            f"ports ({origin})"
                        )
                notes.setdefault(name, []).append(
                    f"ports: {', '.join(readable)}"
                    + (f" (VM ports skipped: {', '.join(skipped)})" if skipped else "")
                )
        if name in entries:
            entries[name] = {**entries[name], **value}
        else:
            entries[name] = value
        notes.setdefault(name, []).insert(0, f"current values, {origin}")
    for name, value in entries.items():
        if not value:
            found.skipped.append(
                Skipped(f"{KIND}/{name}", "no ring or offload the driver lets change")
            )
            continue
        found.resources.append(Resource("nics", name, value, tuple(notes.get(name, ()))))
    return found


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(flat, key=lambda k: (not k.startswith("rings."), k)):
        group, _, sub = key.partition(".")
        out.setdefault(group, {})[sub] = flat[key]
    if "rings" in out:
        out["rings"] = {f: out["rings"][f] for f in RING_FIELDS if f in out["rings"]}
    return out


# -------------------------------------------------------------------- a script, pure
@dataclass
class _Nic:
    rings: dict[str, tuple[int, int]] = field(default_factory=dict)  # field -> (value, line)
    offloads: dict[str, tuple[bool, int]] = field(default_factory=dict)


_SEPARATORS = frozenset({";", "&&", "||", "|", "&", "(", ")", "{", "}"})
_PREFIXES = frozenset({"then", "do", "else", "elif", "if", "sudo", "exec", "command", "!"})
_RING_OPTS = frozenset({"-G", "--set-ring"})
_OFFLOAD_OPTS = frozenset({"-K", "--features", "--offload"})


def _commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line (split at ``;``, ``&&``, ``|`` ...), without
    comments."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|(){}")
    lex.whitespace_split = True
    lex.commenters = "#"
    out: list[list[str]] = [[]]
    for tok in lex:
        if tok in _SEPARATORS or set(tok) <= set(";&|(){}"):
            out.append([])
        else:
            out[-1].append(tok)
    return [c for c in out if c]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) with backslash continuations joined."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def parse_script(text: str, file: str) -> tuple[dict[str, _Nic], list[str]]:
    """The ring sizes and offloads an ``ifup-local``-style shell script sets with
    ``ethtool -G`` / ``ethtool -K`` (``--set-ring``, ``--features``, ``--offload``), by NIC,
    each with its line; later lines win, as the script runs. Other lines are ignored, and
    the notes say which: lines without ethtool, other ethtool options, and lines whose NIC
    or values are shell variables (``$1``), which only the running script knows.

    Raises ValidationError (``file:line``) for an ethtool -G/-K line that ethtool itself
    would refuse: a ring size that is no number, an unknown offload, a value that is not
    on/off, a name without a value.
    """
    nics: dict[str, _Nic] = {}
    problems: list[Problem] = []
    ignored: list[int] = []
    notes: list[str] = []
    for lineno, line in _logical_lines(text):
        try:
            commands = _commands(line)
        except ValueError as e:
            notes.append(f"{file}:{lineno}: ignored, the shell line cannot be split ({e})")
            continue
        used = False
        for words in commands:
            while words and (
                words[0] in _PREFIXES or ("=" in words[0] and not words[0].startswith("-"))
            ):
                words = words[1:]
            if not words or Path(words[0]).name != "ethtool":
                continue
            used = True
            opts = words[1:]
            if not opts or (opts[0] not in _RING_OPTS and opts[0] not in _OFFLOAD_OPTS):
                notes.append(
                    f"{file}:{lineno}: ignored, `ethtool {opts[0] if opts else ''}` is not a "
                    "ring (-G) or offload (-K) setting"
                )
                continue
            if len(opts) < 2:
                problems.append(Problem(file, lineno, 1, opts[0], "no interface named"))
                continue
            dev, pairs = opts[1], opts[2:]
            if any("$" in w or "`" in w for w in (dev, *pairs)):
                notes.append(
                    f"{file}:{lineno}: ignored, it uses a shell variable only the running "
                    "script knows"
                )
                continue
            if len(pairs) % 2 or not pairs:
                problems.append(
                    Problem(file, lineno, 1, f"ethtool {opts[0]} {dev}", "expects NAME VALUE pairs")
                )
                continue
            nic = nics.setdefault(dev, _Nic())
            for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                where = f"ethtool {opts[0]} {dev} {key}"
                if opts[0] in _RING_OPTS:
                    if key not in RING_FIELDS:
                        notes.append(
                            f"{file}:{lineno}: ring setting {key} ignored (git has "
                            f"{', '.join(RING_FIELDS)})"
                        )
                    elif not value.isdigit() or int(value) < 1:
                        problems.append(
                            Problem(file, lineno, 1, where, f"not a ring size: {value!r}")
                        )
                    else:
                        nic.rings[key] = (int(value), lineno)
                    continue
                try:
                    resolve_offload(key)
                except KeyError:
                    problems.append(Problem(file, lineno, 1, where, f"unknown offload {key!r}"))
                    continue
                if value not in ("on", "off"):
                    problems.append(
                        Problem(file, lineno, 1, where, f"expected on or off, got {value!r}")
                    )
                    continue
                for other in [o for o in nic.offloads if o != key]:
                    # A later line wins: drop an earlier name that switches the same features.
                    if set(resolve_offload(other)) & set(resolve_offload(key)):
                        del nic.offloads[other]
                nic.offloads[key] = (value == "on", lineno)
        if not used and line.strip() and not line.strip().startswith("#"):
            ignored.append(lineno)
    if problems:
        raise ValidationError(problems)
    if ignored:
        notes.insert(
            0, f"{file}: {len(ignored)} line(s) without ethtool ignored: {_ranges(ignored)}"
        )
    return {n: v for n, v in nics.items() if v.rings or v.offloads}, notes


def _ranges(lines: Sequence[int]) -> str:
    out: list[str] = []
    for n in lines:
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def from_script(nics: Mapping[str, _Nic], file: str) -> Found:
    """The resources of a parsed script (:func:`parse_script`). Pure."""
    found = Found()
    for name in sorted(nics):
        nic = nics[name]
        value: dict[str, Any] = {}
        notes = []
        if nic.rings:
            value["rings"] = {f: nic.rings[f][0] for f in RING_FIELDS if f in nic.rings}
            lines = sorted({ln for _, ln in nic.rings.values()})
            notes.append(f"rings from {file}:{','.join(map(str, lines))}")
        if nic.offloads:
            value["offloads"] = {k: v for k, (v, _) in nic.offloads.items()}
            lines = sorted({ln for _, ln in nic.offloads.values()})
            notes.append(f"offloads from {file}:{','.join(map(str, lines))}")
        found.resources.append(Resource("nics", name, value, tuple(notes)))
    return found


def from_script_file(path: Path, shown: str) -> Found:
    """:func:`parse_script` of a file, as resources; ValidationError for a malformed
    ethtool line, ReconcilerError when the file cannot be read."""
    nics, notes = parse_script(read_input(path, shown, strict=False), shown)
    found = from_script(nics, shown)
    found.notes += notes
    return found


# ------------------------------------------------------------------------- the CLI part
def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--nic NAME`` (repeatable) and ``--ifup-local FILE``."""
    p.add_argument(
        "--nic",
        action="append",
        default=[],
        metavar="NAME",
        help="import this NIC's ring sizes and offloads (a bridge: its ports too); repeatable",
    )
    p.add_argument(
        "--all-offloads",
        action="store_true",
        help="with --nic: every offload the driver lets change, not only ethtool's short names",
    )
    p.add_argument(
        "--ifup-local",
        metavar="FILE",
        help="import the `ethtool -G`/`-K` lines of this shell script",
    )


def collect(args: argparse.Namespace, ctx: ImportContext) -> Found:
    """What ``reconcile import`` writes for NICs: ``--ifup-local``'s settings, then the live
    settings of each ``--nic`` (read with the provider's own read, bridge ports included)."""
    found = Found()
    if args.ifup_local:
        found.extend(from_script_file(Path(args.ifup_local), args.ifup_local))
    if args.nic:
        from reconciler.kinds.nic.provider import NicProvider
        from reconciler.model import HostDesired, NicSpec

        names = list(dict.fromkeys(args.nic))
        scope = HostDesired(host=ctx.host, nics={n: NicSpec(n, ports=NicSpec(n)) for n in names})
        provider = NicProvider()
        try:
            live = provider.read(scope)
        except OSError as e:
            found.errors.append(ReconcilerError(f"reading NICs: {e}", address=KIND))
            return found
        finally:
            provider.close()
        have = {r.name for r in found.resources}
        live_found = from_live(
            names, live, f"from ethtool on host {ctx.host}, {ctx.day}", args.all_offloads
        )
        for r in live_found.resources:
            if r.name in have:
                found.skipped.append(
                    Skipped(f"{KIND}/{r.name}", f"--ifup-local {args.ifup_local} already sets it")
                )
            else:
                found.resources.append(r)
        found.skipped += live_found.skipped
        found.errors += live_found.errors
    return found
