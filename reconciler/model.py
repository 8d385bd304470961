"""Typed desired state: what the YAML in git says a host should look like.

These objects are produced only by :mod:`reconciler.desired` after the YAML passed its schema
and semantic checks, so providers can trust them: CIDRs are canonical, families match, names
are valid. Everything is immutable; the zero value of every optional field is the safe one
(no firewall rule, kernel-default sizes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

Family = Literal["inet", "inet6"]


class Location(NamedTuple):
    """Where a value came from: a file in the desired-state repo and a 1-based line/column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class FirewallRule(NamedTuple):
    """An iptables rule that must exist so the set is actually used.

    Rendered as ``-I <chain> [-i <in_interface>] -m set --match-set <set> src -j <target>``.
    """

    chain: str = "INPUT"
    target: str = "ACCEPT"
    in_interface: str | None = None


@dataclass(frozen=True)
class IpsetSpec:
    """A desired ``hash:net`` set.

    ``members`` holds canonical network strings (``ipaddress.ip_network(m, strict=False)``),
    so ``10.1.2.3/8`` is ``10.0.0.0/8`` and a host address is ``192.0.2.1/32``, exactly what
    the kernel reports back. ``maxelem``/``hashsize`` of ``None`` mean "the kernel default".
    """

    name: str
    type: str = "hash:net"
    family: Family = "inet"
    maxelem: int | None = None
    hashsize: int | None = None
    members: frozenset[str] = frozenset()
    firewall: FirewallRule | None = None
    source: Location | None = field(default=None, compare=False)
    #: a digest of what ``members`` were made of (family, inline members, list contents):
    #: the same digest, the same members; None when unknown
    #: (:mod:`reconciler.kinds.ipset.dumpmemo`).
    members_digest: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class HostDesired:
    """Everything the desired state says about one host, fleet.yaml merged with its host file.

    ``ipsets`` and ``nics`` are typed. ``raw`` holds validated plain data, by section: the
    sections of kinds that have no typed form (``backups``), the plain form of kinds that
    keep both (``nics``), and host settings sections with their defaults filled in
    (``tarsnap``); see ``Kind.load``, ``keeps_raw`` and ``settings`` in
    :mod:`reconciler.kinds.base`. ``files`` lists the files that contributed, for messages.
    """

    host: str
    ipsets: dict[str, IpsetSpec] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    nics: dict[str, NicSpec] = field(default_factory=dict)

    def resource_names(self, section: str) -> set[str]:
        """The names of the resources of one section (``ipsets``, ``nics``, ``backups``),
        typed or plain."""
        typed: set[str] = set(self.ipsets) if section == "ipsets" else set()
        if section == "nics":
            typed = set(self.nics)
        return typed | set(self.raw.get(section) or {})


RingValue = int | Literal["max"]

#: Ring fields as written in YAML (``ethtool -G`` names), in display order.
RING_FIELDS: tuple[str, ...] = ("rx", "tx", "rx-mini", "rx-jumbo")


class RingSpec(NamedTuple):
    """Desired ring sizes: a positive number or ``"max"`` (the driver's preset maximum) per
    field; ``None`` leaves the field alone."""

    rx: RingValue | None = None
    tx: RingValue | None = None
    rx_mini: RingValue | None = None
    rx_jumbo: RingValue | None = None

    def items(self) -> list[tuple[str, RingValue]]:
        """The fields set, as ``(yaml_name, value)`` pairs in RING_FIELDS order."""
        values = (self.rx, self.tx, self.rx_mini, self.rx_jumbo)
        return [(f, v) for f, v in zip(RING_FIELDS, values, strict=True) if v is not None]


@dataclass(frozen=True)
class NicSpec:
    """Desired settings of one NIC (or, as ``ports``, of every physical port of a bridge).

    ``offloads`` is keyed by the name as written (``gso``, ``tx-generic-segmentation`` ...),
    already validated by :func:`reconciler.kinds.nic.offloads.resolve_offload`. ``source`` is the
    position of the NIC's key (of the ``ports:`` key for a ports block), for messages.
    """

    name: str
    rings: RingSpec | None = None
    offloads: dict[str, bool] = field(default_factory=dict)
    ports: NicSpec | None = None
    source: Location | None = field(default=None, compare=False)
