"""Semantic checks of ``ipsets:`` beyond the schema, and the typed form of a valid set (or
of a tombstone, ``absent: true``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.cidr import canonical_network, parse_network
from reconciler.errors import Problem
from reconciler.kinds.nic.checks import IFNAMSIZ, ifname_too_long
from reconciler.model import FirewallRule, IpsetSpec, Location
from reconciler.yamlsrc import YamlDoc, YPath


@dataclass(frozen=True)
class IpsetTombstone(IpsetSpec):
    """A set git marks ``absent: true``: delete it if it exists (a no-op otherwise).

    Deleting a set that an ACCEPT rule uses needs this intent: a set that merely left git is
    not deleted then (:mod:`reconciler.kinds.ipset.provider`). The other fields keep their
    zero values; whatever else the YAML says about the set is validated and ignored.
    """


def is_tombstone(spec: IpsetSpec | None) -> bool:
    """True when ``spec`` is a tombstone (``absent: true``)."""
    return isinstance(spec, IpsetTombstone)


def host_bits_message(text: str, host: str, network: str) -> str:
    """The problem of a member written with host bits set (``10.10.0.1/24``): a typo for a
    single address as often as for the network, so both are offered."""
    return f"{text}: host bits set; did you mean {host} or {network}?"


def check(doc: YamlDoc, name: str, spec: dict[str, Any]) -> list[Problem]:
    """Members: valid networks of the set's family, no /0, no host bits set, no duplicates
    after canonicalisation, no more than maxelem. The canonical members are kept with the
    document for :func:`load`. A tombstone's members, if it still lists them, are checked
    the same way (they are ignored, but stay valid for when the tombstone is lifted)."""
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
    if not isinstance(members, list):
        return out
    seen: dict[str, int] = {}
    for i, m in enumerate(members):
        if not isinstance(m, str):
            continue  # the schema reported it
        mpath = (*base, "members", i)
        text = m.strip()
        try:
            version, prefixlen, canon, host = parse_network(text)
        except ValueError:
            out.append(doc.problem(mpath, f"not a valid IP network: {m!r}"))
            continue
        if version != want_version:
            other = "inet6" if version == 6 else "inet"
            out.append(
                doc.problem(
                    mpath,
                    f"IPv{version} network {m} in an {family} set; "
                    f"put it in a set with family: {other}",
                )
            )
            continue
        if prefixlen == 0:
            halves = "0.0.0.0/1 and 128.0.0.0/1" if version == 4 else "::/1 and 8000::/1"
            out.append(
                doc.problem(
                    mpath,
                    f"the kernel rejects /0 in hash:net; split it into two /1 networks ({halves})",
                )
            )
            continue
        if host is not None:
            # The kernel would silently store the network: 10.10.0.1/24 (a typo for a /32)
            # would admit 256 addresses.
            out.append(doc.problem(mpath, host_bits_message(text, host, canon)))
            continue
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
            continue
        seen[canon] = i
    if not out:
        doc.derived[("ipset_members", name)] = frozenset(seen)
    maxelem = spec.get("maxelem")
    if isinstance(maxelem, int) and not isinstance(maxelem, bool) and len(members) > maxelem:
        out.append(
            doc.problem(
                (*base, "members"),
                f"{len(members)} members but maxelem is {maxelem}; raise maxelem or drop members",
                key=True,
            )
        )
    return out


def _ipset_spec(
    name: str, spec: dict[str, Any], location: Location, known: frozenset[str] | None = None
) -> IpsetSpec:
    if known is not None:
        members = known  # canonicalised by _check_ipset already
    else:
        members = frozenset(canonical_network(m.strip())[2] for m in spec["members"])
    fw = spec.get("firewall")
    firewall = None
    if fw is not None:
        firewall = FirewallRule(
            chain=fw.get("chain", "INPUT"),
            target=fw.get("target", "ACCEPT"),
            in_interface=fw.get("in_interface"),
        )
    return IpsetSpec(
        name=name,
        type=spec["type"],
        family=spec.get("family", "inet"),
        maxelem=spec.get("maxelem"),
        hashsize=spec.get("hashsize"),
        members=members,
        firewall=firewall,
        source=location,
    )


def load(doc: YamlDoc, name: str, spec: dict[str, Any]) -> IpsetSpec:
    """The typed set (an :class:`IpsetTombstone` for ``absent: true``), kept with the
    document: a cached fleet.yaml builds its sets once, not once per host."""
    typed: IpsetSpec | None = doc.derived.get(("ipset_spec", name))
    if typed is None:
        line, col = doc.pos(("ipsets", name), key=True)
        location = Location(doc.file, line, col)
        if spec.get("absent") is True:
            typed = IpsetTombstone(name=name, source=location)
        else:
            known = doc.derived.get(("ipset_members", name))
            typed = _ipset_spec(name, spec, location, known)
        doc.derived[("ipset_spec", name)] = typed
    return typed
