"""``reconcile import`` for ipsets: ``hash:net`` sets with their members and the rule that
uses each, from the kernel (the provider's own read: one netlink dump, ``iptables-save``) or
from an ``ipset save`` / ``ipset restore`` file.

The pure part, :func:`from_sets`, turns sets (:class:`~.netlink.LiveSet`, whether read from
the kernel or parsed from a file by :func:`parse_save`) and rules into resources; what the
schema cannot express (another type, a timeout, ``nomatch`` entries, ``skbinfo``, a name git
cannot give) is listed with the reason instead.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.cidr import parse_network, sort_networks
from reconciler.errors import Problem, ReconcilerError, ValidationError
from reconciler.importing import Found, ImportContext, Resource, Skipped, read_input
from reconciler.kinds.ipset import firewall
from reconciler.kinds.ipset.netlink import LiveSet, SetHeader
from reconciler.kinds.ipset.provider import KERNEL_MAXELEM, TEMP_SUFFIX
from reconciler.model import FirewallRule, HostDesired

KIND = "ipset"
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_CHAIN_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


# ------------------------------------------------------------------------------ the rules
def _name_ok(text: str) -> bool:
    return 1 <= len(text) <= 28 and set(text) <= _CHAIN_OK


def _expressible(name: str, rule: firewall.Rule) -> FirewallRule | None:
    """The ``firewall:`` that writes exactly ``rule`` (``[[!] -i IF] -m set --match-set
    NAME src -j TARGET`` in the filter table), or None when the schema cannot say it."""
    if rule.table != "filter" or rule.target is None:
        return None
    words = rule.words()
    iface = None
    if words[:1] == ["-i"] and len(words) > 1:
        iface, words = words[1], words[2:]
    elif words[:2] == ["!", "-i"] and len(words) > 2:
        iface, words = "!" + words[2], words[3:]
    if words != ["-m", "set", "--match-set", name, "src", "-j", rule.target]:
        return None
    if not _name_ok(rule.chain) or not _name_ok(rule.target):
        return None
    return FirewallRule(chain=rule.chain, target=rule.target, in_interface=iface)


def _firewall(
    name: str, family: str, rules: Sequence[firewall.Rule]
) -> tuple[FirewallRule | None, firewall.Rule | None, list[str]]:
    """The rule to write as ``firewall:`` (an INPUT rule first), the live rule it is, and
    notes about the other rules that use the set."""
    binary = firewall.BINARIES[family]
    uses = [r for r in rules if r.set_name == name]
    chosen: tuple[FirewallRule, firewall.Rule] | None = None
    for r in sorted(uses, key=lambda r: (r.chain != "INPUT", r.chain)):
        fw = _expressible(name, r) if r.binary == binary else None
        if fw is not None:
            chosen = (fw, r)
            break
    notes = []
    for r in uses:
        if chosen is not None and r is chosen[1]:
            continue
        if firewall.is_other_backend(r.binary):
            notes.append(
                f"also used by `{r.describe()}` (the other iptables backend: a plan that "
                "changes this set is an error until that rule moves to `iptables`)"
            )
        else:
            notes.append(f"also used by `{r.describe()}` (not imported; reconciler leaves it)")
    if chosen is None:
        return None, None, notes
    return chosen[0], chosen[1], notes


# --------------------------------------------------------------------------- the pure part
def _unexpressible(name: str, s: LiveSet) -> str | None:
    """Why set ``name`` cannot be written as the schema's ``hash:net``, or None."""
    h = s.header
    if TEMP_SUFFIX in name:
        return "a temporary set of an interrupted reconciler run (the next run removes it)"
    if not 1 <= len(name) <= 31 or not set(name) <= _NAME_OK:
        return "git names sets with 1-31 letters, digits, '_', '.' or '-'"
    if h.type != "hash:net":
        return f"type {h.type}: the schema has hash:net sets only"
    if h.family not in ("inet", "inet6"):
        return f"family {h.family}: the schema has inet and inet6"
    if s.members is None:
        return "its entries could not be read"
    if h.timeout is not None:
        return (
            f"created with timeout support (default {h.timeout} s): its entries expire by "
            "design (a dynamic set, such as fail2ban's), and git cannot express a timeout"
        )
    if s.nomatch:
        return (
            f"{len(s.nomatch)} nomatch entr{'y' if len(s.nomatch) == 1 else 'ies'} "
            f"({', '.join(sort_networks(s.nomatch)[:3])}): exceptions git cannot express"
        )
    if "skbinfo" in h.options:
        return "created with skbinfo (per-entry skbmark/skbprio/skbqueue): git cannot express it"
    return None


def from_sets(
    sets: Mapping[str, LiveSet],
    rules: Sequence[firewall.Rule],
    origin: Callable[[str], str],
    rules_origin: str | None,
) -> Found:
    """The resources for ``sets`` (by name) and the rules that use them. Pure.

    ``origin(name)`` is the comment saying where a set was read; ``rules_origin`` where the
    rules were (None: there are none to read, as in a save file). A set the schema cannot
    express is skipped with the reason.
    """
    found = Found()
    for name in sorted(sets):
        s = sets[name]
        why = _unexpressible(name, s)
        if why is not None:
            found.skipped.append(Skipped(f"{KIND}/{name}", why))
            continue
        h = s.header
        assert s.members is not None
        value: dict[str, object] = {"type": "hash:net"}
        if h.family != "inet":
            value["family"] = h.family
        if h.maxelem is not None and h.maxelem != KERNEL_MAXELEM:
            value["maxelem"] = h.maxelem
        value["members"] = sort_networks(s.members)
        notes = [origin(name)]
        if h.hashsize is not None:
            notes.append(f"hashsize {h.hashsize} left to the kernel (it grows it as needed)")
        kept = [o for o in h.options if o in ("counters", "comment", "forceadd")]
        if kept:
            notes.append(
                f"created with {', '.join(kept)}: kept by reconciler, but git cannot say "
                "them (entries it adds start without counters or comments)"
            )
        fw, rule, others = _firewall(name, h.family, rules)
        if fw is not None and rule is not None:
            spec: dict[str, str] = {"chain": fw.chain}
            if fw.in_interface:
                spec["in_interface"] = fw.in_interface
            spec["target"] = fw.target
            value["firewall"] = spec
            notes.append(f"firewall: `{rule.describe()}`, from {rules_origin}")
        elif rules_origin is not None:
            notes.append(f"no rule firewall: can express uses it (read with {rules_origin})")
        else:
            notes.append("no rules in this file: add firewall: for the rule that uses it")
        notes += others
        found.resources.append(Resource("ipsets", name, value, tuple(notes)))
    return found


# ---------------------------------------------------------------------------- a save file
_CREATE_VALUES = frozenset(
    {"family", "hashsize", "maxelem", "timeout", "netmask", "bucketsize", "initval",
     "markmask", "size", "range", "probes", "resize"}
)  # fmt: skip
_CREATE_FLAGS = frozenset({"counters", "comment", "forceadd", "skbinfo"})
_ADD_VALUES = frozenset(
    {"timeout", "packets", "bytes", "comment", "skbmark", "skbprio", "skbqueue"}
)
_ADD_FLAGS = frozenset({"nomatch"})
_IGNORED = frozenset({"flush", "destroy", "-F", "-X", "commit", "COMMIT"})


@dataclass
class _Parsed:
    header: dict[str, object]
    options: list[str] = field(default_factory=list)
    members: set[str] = field(default_factory=set)
    nomatch: set[str] = field(default_factory=set)
    expiring: set[str] = field(default_factory=set)
    lines: list[int] = field(default_factory=list)


def _networks(entry: str) -> list[str]:
    """The canonical networks of a hash:net entry: ``192.0.2.0/24``, ``192.0.2.1`` or a
    range ``10.0.0.0-10.0.0.255`` (ipset splits it into networks). ValueError if none."""
    if "-" in entry and "/" not in entry:
        first, last = (ipaddress.ip_address(p) for p in entry.split("-", 1))
        nets = ipaddress.summarize_address_range(first, last)
        return [str(n) for n in nets]
    return [parse_network(entry)[2]]


def parse_save(text: str, file: str) -> tuple[dict[str, LiveSet], dict[str, list[int]]]:
    """The sets of an ``ipset save`` / ``ipset restore`` file (``create`` and ``add`` lines
    with their options; ``-N``/``-A`` as the older syntax), and the lines each came from.

    Raises ValidationError with every problem as ``file:line:column`` (an unknown command
    or option, a member that is no network, an ``add`` to a set never created).
    """
    parsed: dict[str, _Parsed] = {}
    problems: list[Problem] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        def bad(message: str, path: str = "", lineno: int = lineno) -> None:
            problems.append(Problem(file, lineno, 1, path, message))

        try:
            words = shlex.split(line)
        except ValueError as e:
            bad(f"cannot split the line: {e}")
            continue
        cmd = words[0]
        if cmd in _IGNORED:
            continue
        if cmd in ("create", "-N", "add", "-A") and len(words) < 3:
            bad(f"{cmd} needs a set name and a {'type' if cmd in ('create', '-N') else 'member'}")
            continue
        if cmd in ("create", "-N"):
            name, settype, opts = words[1], words[2], words[3:]
            if name in parsed:
                bad(f"set {name} is created twice", "create")
                continue
            p = _Parsed({"type": settype, "family": "inet"}, lines=[lineno])
            i = 0
            while i < len(opts):
                o = opts[i]
                if o in _CREATE_FLAGS:
                    p.options.append(o)
                    i += 1
                elif o in _CREATE_VALUES and i + 1 < len(opts):
                    p.header[o] = opts[i + 1]
                    i += 2
                else:
                    bad(f"unknown create option {o!r} (or it lacks its value)", f"create {name}")
                    break
            for num in ("hashsize", "maxelem", "timeout"):
                if num in p.header and not str(p.header[num]).isdigit():
                    bad(f"{num} must be a number, got {p.header[num]!r}", f"create {name}")
                    p.header.pop(num)
            if p.header["family"] not in ("inet", "inet6"):
                bad(f"family must be inet or inet6, got {p.header['family']!r}", f"create {name}")
            parsed[name] = p
        elif cmd in ("add", "-A"):
            name, entry, opts = words[1], words[2], words[3:]
            p2 = parsed.get(name)
            if p2 is None:
                bad(f"add to set {name}, which no create line above makes", f"add {name}")
                continue
            p2.lines.append(lineno)
            values = {}
            flags = set()
            i = 0
            ok = True
            while i < len(opts):
                o = opts[i]
                if o in _ADD_FLAGS:
                    flags.add(o)
                    i += 1
                elif o in _ADD_VALUES and i + 1 < len(opts):
                    values[o] = opts[i + 1]
                    i += 2
                else:
                    bad(f"unknown add option {o!r} (or it lacks its value)", f"add {name}")
                    ok = False
                    break
            if not ok or p2.header["type"] != "hash:net":
                p2.members.add(entry)  # counted, never written: the set is skipped
                continue
            try:
                nets = _networks(entry)
            except ValueError:
                bad(f"not a network: {entry!r}", f"add {name}")
                continue
            family = p2.header["family"]
            if any((":" in n) != (family == "inet6") for n in nets):
                bad(f"{entry} is not a network of family {family}", f"add {name}")
                continue
            target = p2.nomatch if "nomatch" in flags else p2.members
            target.update(nets)
            if values.get("timeout", "0") != "0":
                p2.expiring.update(nets)
        else:
            bad(f"unknown command {cmd!r} (expected create or add lines, as ipset save writes)")
    if problems:
        raise ValidationError(problems)
    sets: dict[str, LiveSet] = {}
    for name, p in parsed.items():
        h = p.header
        header = SetHeader(
            name=name,
            type=str(h["type"]),
            family=str(h["family"]),
            revision=0,
            hashsize=int(str(h["hashsize"])) if "hashsize" in h else None,
            maxelem=int(str(h.get("maxelem", KERNEL_MAXELEM))),
            references=0,
            elements=len(p.members),
            timeout=int(str(h["timeout"])) if "timeout" in h else None,
            options=tuple(sorted(p.options)),
        )
        members = frozenset(p.members) if header.type == "hash:net" else None
        sets[name] = LiveSet(header, members, frozenset(p.nomatch), frozenset(p.expiring))
    return sets, {n: p.lines for n, p in parsed.items()}


def _lines(lines: Sequence[int]) -> str:
    if len(lines) == 1:
        return f"line {lines[0]}"
    return f"lines {lines[0]}-{lines[-1]}"


def from_save_file(path: Path, shown: str) -> Found:
    """The resources of an ``ipset save`` file (:func:`parse_save`); ValidationError for
    a malformed one, ReconcilerError when it cannot be read."""
    text = read_input(path, shown)
    sets, lines = parse_save(text, shown)
    return from_sets(sets, (), lambda n: f"from {shown}:{_lines(lines[n])}", None)


# --------------------------------------------------------------------------- the CLI part
def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--ipset-save FILE``."""
    p.add_argument(
        "--ipset-save",
        metavar="FILE",
        help="import ipsets from an `ipset save` / restore file instead of the kernel",
    )


def collect(args: argparse.Namespace, ctx: ImportContext) -> Found:
    """What ``reconcile import`` writes for ipsets: from ``--ipset-save`` when given, else
    from this host's kernel through the provider's own read (sets and rules)."""
    if args.ipset_save:
        return from_save_file(Path(args.ipset_save), args.ipset_save)
    from reconciler.kinds.ipset.provider import IpsetProvider

    try:
        live = IpsetProvider(None).read(HostDesired(host=ctx.host))
    except ReconcilerError as e:
        found = Found()
        found.errors.append(ReconcilerError(e.message, address=KIND))
        return found
    return from_sets(
        live.sets,
        live.rules,
        lambda _n: f"from ipset netlink on host {ctx.host}, {ctx.day}",
        f"iptables-save on host {ctx.host}",
    )
