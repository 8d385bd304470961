"""The typed form of a validated set (:class:`~reconciler.model.IpsetSpec`, tombstones) and
the ``load`` of the ipset kind's descriptor.

Apart from :mod:`.checks` because every run loads its sets while only a run that validates
a file anew checks them (a cached file is not checked again): the checks and the list
parser are imported when a file is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.cidr import canonical_network
from reconciler.errors import ValidationError
from reconciler.model import FirewallRule, IpsetSpec, Location
from reconciler.yamlsrc import YamlDoc

__all__ = ["IpsetTombstone", "is_tombstone", "load"]


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


def _ipset_spec(
    name: str,
    spec: dict[str, Any],
    location: Location,
    known: frozenset[str] | None = None,
    digest: str | None = None,
) -> IpsetSpec:
    if known is not None:
        members = known  # canonicalised by _check_ipset already
    else:
        members = frozenset(canonical_network(m.strip())[2] for m in spec.get("members") or ())
        digest = None  # it describes the derived members only
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
        members_digest=digest,
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
            if known is None and "members_from" in spec:
                # Not derived yet (the checks ran elsewhere): the lists must be read, never
                # silently left out.
                from reconciler.kinds.ipset.checks import check

                problems = check(doc, name, spec)
                known = doc.derived.get(("ipset_members", name))
                if known is None:
                    raise ValidationError(problems)
            digest = doc.derived.get(("ipset_members_digest", name))
            typed = _ipset_spec(
                name, spec, location, known, digest if isinstance(digest, str) else None
            )
        doc.derived[("ipset_spec", name)] = typed
    return typed
