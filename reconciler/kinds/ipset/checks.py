"""Semantic checks of ``ipsets:`` beyond the schema. A set's members are its inline
``members:`` and the networks of the lists its ``members_from:`` names
(:mod:`reconciler.kinds.ipset.lists`). The typed form of a valid set (or of a tombstone,
``absent: true``) is :mod:`.spec`'s, re-exported here."""

from __future__ import annotations

import hashlib
from typing import Any

from reconciler import native
from reconciler.cidr import parse_network
from reconciler.errors import Problem
from reconciler.kinds.ipset import lists
from reconciler.kinds.ipset.lists import (
    host_bits_message,
    wrong_family_message,
    zero_prefix_message,
)
from reconciler.kinds.ipset.spec import IpsetTombstone, is_tombstone, load
from reconciler.kinds.nic.checks import IFNAMSIZ, ifname_too_long
from reconciler.yamlsrc import YamlDoc, YPath, format_path

__all__ = ["IpsetTombstone", "check", "host_bits_message", "is_tombstone", "load"]


def check(doc: YamlDoc, name: str, spec: dict[str, Any]) -> list[Problem]:
    """Members: valid networks of the set's family, no /0, no host bits set, no duplicates
    after canonicalisation (within ``members:``, within one list; the same network inline
    and in a list, or in two lists, is one member), no more than maxelem, counted once
    merged. ``members_from:`` lists are read from the document's repository
    (``doc.root``), their problems located in the list. The canonical members, inline and
    listed, are kept with the document for :func:`load`. A tombstone's members, if it
    still lists them, are checked the same way (they are ignored, but stay valid for when
    the tombstone is lifted); its lists are not read."""
    base: YPath = ("ipsets", name)
    out: list[Problem] = []
    fw = spec.get("firewall")
    iface = fw.get("in_interface") if isinstance(fw, dict) else None
    if isinstance(iface, str) and len(iface.lstrip("!").encode()) > IFNAMSIZ - 1:
        out.append(doc.problem((*base, "firewall", "in_interface"), ifname_too_long(iface)))
    elif iface == "!":
        out.append(
            doc.problem(
                (*base, "firewall", "in_interface"),
                f"{iface!r} names no interface: '!eth0' is every interface but eth0",
            )
        )
    elif isinstance(iface, str) and "!" in iface[1:]:
        out.append(
            doc.problem(
                (*base, "firewall", "in_interface"),
                f"{iface!r}: '!' only as the first character, to negate (every interface "
                "but the one named)",
            )
        )
    family = spec.get("family", "inet")
    want_version = 4 if family == "inet" else 6
    members = spec.get("members")
    seen = _check_inline(doc, base, members, family, want_version, out)
    from_lists = _check_lists(doc, name, spec, want_version, out)
    merged = from_lists.union(seen) if seen else from_lists
    if not out and seen is not None:
        doc.derived[("ipset_members", name)] = merged
        doc.derived[("ipset_members_digest", name)] = _members_digest(doc, name, spec, seen)
    count = len(merged) if from_lists or not isinstance(members, list) else len(members)
    maxelem = spec.get("maxelem")
    if isinstance(maxelem, int) and not isinstance(maxelem, bool) and count > maxelem:
        where = (*base, "members") if isinstance(members, list) else (*base, "members_from")
        out.append(
            doc.problem(
                where,
                f"{count} members but maxelem is {maxelem}; raise maxelem or drop members",
                key=True,
            )
        )
    return out


def _members_digest(doc: YamlDoc, name: str, spec: dict[str, Any], seen: dict[str, int]) -> str:
    """A digest of what the set's members are made of: its family, its inline members
    (canonical, in order) and the content of each list it reads. The same digest, the same
    members (for one reconciler version); computed here, where the members are in order,
    and kept with the document (the cache keeps it too)."""
    h = hashlib.sha256(f"{spec.get('family', 'inet')}\0".encode())
    h.update("\n".join(seen).encode())
    for _, rel in _list_paths(("ipsets", name), spec):
        h.update(f"\0{rel}\0{doc.inputs.get(rel, '')}".encode())
    return h.hexdigest()


def _check_inline(
    doc: YamlDoc, base: YPath, members: Any, family: str, want_version: int, out: list[Problem]
) -> dict[str, int] | None:
    """Check the inline ``members:`` (appending to ``out``); their canonical networks by
    index, or None when there is no list of them to check."""
    if members is None:
        return {}
    if not isinstance(members, list):
        return None
    seen: dict[str, int] = {}

    def one(i: int, m: object) -> None:
        if not isinstance(m, str):
            return  # the schema reported it
        text = m.strip()
        try:
            version, prefixlen, canon, host = parse_network(text)
        except ValueError:
            out.append(doc.problem((*base, "members", i), f"not a valid IP network: {m!r}"))
            return
        if version == want_version and prefixlen and host is None and canon not in seen:
            seen[canon] = i  # the common case, first: a valid new member
            return
        mpath = (*base, "members", i)
        if version != want_version:
            out.append(doc.problem(mpath, wrong_family_message(version, m, family)))
            return
        if prefixlen == 0:
            out.append(doc.problem(mpath, zero_prefix_message(version)))
            return
        if host is not None:
            # The kernel would silently store the network: 10.10.0.1/24 (a typo for a /32)
            # would admit 256 addresses.
            out.append(doc.problem(mpath, host_bits_message(text, host, canon)))
            return
        if canon in seen:
            j = seen[canon]
            first_line = doc.pos((*base, "members", j))[0]
            out.append(
                doc.problem(
                    mpath,
                    f"{m} is the same network as {members[j]} on line {first_line} "
                    f"(both are {canon})",
                )
            )
            return
        seen[canon] = i

    fast = native.netfast
    if fast is not None:  # the common case in C, the rest (in order) through one()
        mine = seen if want_version == 4 else None, seen if want_version == 6 else None
        fast.scan(members, 0, *mine, False, one)
    else:
        for i, m in enumerate(members):
            one(i, m)
    return seen


def _list_paths(base: YPath, spec: dict[str, Any]) -> list[tuple[YPath, str]]:
    """``members_from:`` as (YAML path, list path) pairs: one path or a list of them."""
    froms = spec.get("members_from")
    if isinstance(froms, str) and froms:
        return [((*base, "members_from"), froms)]
    if isinstance(froms, list):
        return [
            ((*base, "members_from", i), r) for i, r in enumerate(froms) if isinstance(r, str) and r
        ]
    return []  # the schema reports anything else (an empty path included)


def _check_lists(
    doc: YamlDoc, name: str, spec: dict[str, Any], want_version: int, out: list[Problem]
) -> frozenset[str]:
    """Read and check the lists ``members_from:`` names (appending to ``out``, each
    problem located in its list, with the set's path); their networks of the set's
    family. A tombstone's paths are checked, its lists not read: a set being deleted needs
    no members, and its list may have gone with it. Every list read is recorded with the
    document (:meth:`YamlDoc.depends_on`): what is derived here is only as current as they
    are."""
    found: list[frozenset[str]] = []
    family = spec.get("family", "inet")
    for ypath, rel in _list_paths(("ipsets", name), spec):
        why = lists.path_problem(rel)
        if why is not None:
            out.append(doc.problem(ypath, why))
            continue
        if spec.get("absent") is True:
            continue
        if doc.root is None:
            out.append(doc.problem(ypath, f"{rel}: no repository to read it from"))
            continue
        try:
            data = lists.read(doc.root, rel)
        except lists.ListError as e:
            out.append(doc.problem(ypath, e.message))
            continue
        doc.depends_on(rel, data)
        parsed = lists.parse_cached(data)
        where = format_path(ypath)
        out.extend(Problem(rel, p.line, p.column, where, p.message) for p in parsed.problems)
        hidden = parsed.more
        other = 6 if want_version == 4 else 4
        if parsed.members[other]:
            room = max(lists.MAX_PROBLEMS - len(parsed.problems), 1)
            shown = lists.entries(data, parsed, other, room)
            out.extend(
                Problem(rel, line, col, where, wrong_family_message(other, text, family))
                for line, col, text in shown
            )
            hidden += len(parsed.members[other]) - len(shown)
        if hidden:
            out.append(Problem(rel, 0, 0, where, f"{hidden} more problem(s) in {rel} not shown"))
        found.append(parsed.members[want_version])
    return found[0] if len(found) == 1 else frozenset().union(*found)
