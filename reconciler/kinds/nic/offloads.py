"""Offload names: ethtool's short and legacy names, the kernel's feature names, and how one
resolves to the other (as ``ethtool -K`` does)."""

from __future__ import annotations

from typing import Any

#: ethtool's short and legacy long offload names (``ethtool -K``/``-k``) -> the kernel
#: features (``ethtool -k`` rows, ``netdev_features_strings``) they switch.
OFFLOAD_ALIASES: dict[str, tuple[str, ...]] = {
    "rx": ("rx-checksum",),
    "rx-checksumming": ("rx-checksum",),
    "tx": (
        "tx-checksum-ipv4",
        "tx-checksum-ip-generic",
        "tx-checksum-ipv6",
        "tx-checksum-fcoe-crc",
        "tx-checksum-sctp",
    ),
    "tx-checksumming": (
        "tx-checksum-ipv4",
        "tx-checksum-ip-generic",
        "tx-checksum-ipv6",
        "tx-checksum-fcoe-crc",
        "tx-checksum-sctp",
    ),
    "sg": ("tx-scatter-gather",),
    "scatter-gather": ("tx-scatter-gather",),
    "tso": (
        "tx-tcp-segmentation",
        "tx-tcp-ecn-segmentation",
        "tx-tcp-mangleid-segmentation",
        "tx-tcp6-segmentation",
    ),
    "tcp-segmentation-offload": (
        "tx-tcp-segmentation",
        "tx-tcp-ecn-segmentation",
        "tx-tcp-mangleid-segmentation",
        "tx-tcp6-segmentation",
    ),
    "ufo": ("tx-udp-fragmentation",),
    "udp-fragmentation-offload": ("tx-udp-fragmentation",),
    "gso": ("tx-generic-segmentation",),
    "generic-segmentation-offload": ("tx-generic-segmentation",),
    "gro": ("rx-gro",),
    "generic-receive-offload": ("rx-gro",),
    "lro": ("rx-lro",),
    "large-receive-offload": ("rx-lro",),
    "rxvlan": ("rx-vlan-hw-parse",),
    "rx-vlan-offload": ("rx-vlan-hw-parse",),
    "txvlan": ("tx-vlan-hw-insert",),
    "tx-vlan-offload": ("tx-vlan-hw-insert",),
    "ntuple": ("rx-ntuple-filter",),
    "ntuple-filters": ("rx-ntuple-filter",),
    "rxhash": ("rx-hashing",),
    "receive-hashing": ("rx-hashing",),
}

#: Kernel feature names (``net/ethtool/common.c: netdev_features_strings``), accepted as is.
#: Extend this table when a newer kernel adds a feature you need to switch.
KERNEL_FEATURES: frozenset[str] = frozenset(
    {
        "tx-scatter-gather",
        "tx-checksum-ipv4",
        "tx-checksum-ip-generic",
        "tx-checksum-ipv6",
        "highdma",
        "tx-scatter-gather-fraglist",
        "tx-vlan-hw-insert",
        "rx-vlan-hw-parse",
        "rx-vlan-filter",
        "tx-vlan-stag-hw-insert",
        "rx-vlan-stag-hw-parse",
        "rx-vlan-stag-filter",
        "vlan-challenged",
        "tx-generic-segmentation",
        "tx-lockless",
        "netns-local",
        "rx-gro",
        "rx-gro-hw",
        "rx-lro",
        "tx-tcp-segmentation",
        "tx-gso-robust",
        "tx-tcp-ecn-segmentation",
        "tx-tcp-mangleid-segmentation",
        "tx-tcp6-segmentation",
        "tx-tcp-accecn-segmentation",  # Linux 6.18
        "tx-fcoe-segmentation",
        "tx-gre-segmentation",
        "tx-gre-csum-segmentation",
        "tx-ipxip4-segmentation",
        "tx-ipxip6-segmentation",
        "tx-udp_tnl-segmentation",
        "tx-udp_tnl-csum-segmentation",
        "tx-gso-partial",
        "tx-tunnel-remcsum-segmentation",
        "tx-sctp-segmentation",
        "tx-esp-segmentation",
        "tx-udp-segmentation",
        "tx-gso-list",
        "tx-udp-fragmentation",
        "tx-checksum-fcoe-crc",
        "tx-checksum-sctp",
        "fcoe-mtu",
        "rx-ntuple-filter",
        "rx-hashing",
        "rx-checksum",
        "tx-nocache-copy",
        "loopback",
        "rx-fcs",
        "rx-all",
        "l2-fwd-offload",
        "hw-tc-offload",
        "esp-hw-offload",
        "esp-tx-csum-hw-offload",
        "rx-udp_tunnel-port-offload",
        "tls-hw-record",
        "tls-hw-tx-offload",
        "tls-hw-rx-offload",
        "rx-gro-list",
        "macsec-hw-offload",
        "rx-udp-gro-forwarding",
        "hsr-tag-ins-offload",
        "hsr-tag-rm-offload",
        "hsr-fwd-offload",
        "hsr-dup-offload",
    }
)


def resolve_offload(name: str) -> tuple[str, ...]:
    """Kernel feature names an offload name switches (``gso`` -> ``tx-generic-segmentation``).

    Raises ``KeyError`` for a name that is neither an ethtool name nor a kernel feature.
    """
    if name in OFFLOAD_ALIASES:
        return OFFLOAD_ALIASES[name]
    if name in KERNEL_FEATURES:
        return (name,)
    raise KeyError(name)


def offload_bool(value: Any) -> bool | None:
    """``on``/``off``/a boolean as a boolean; None for anything else (the schema reports it)."""
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return bool(value == "on")
    return None
