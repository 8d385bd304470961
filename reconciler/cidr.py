"""Canonical IP networks, fast.

``ipaddress.ip_network`` costs ~9 µs per call (an IPv6 network with its host check, ~40),
which was most of the time spent validating a 65,536-member set. The common forms, an
address alone or ``address/prefix`` of either family, take a fast path here: libc's
``inet_pton`` parses the address (it accepts exactly the dotted quads ``ipaddress`` does,
no leading zeros, and the same IPv6 forms) and integer arithmetic clears the host bits.
Anything else (a netmask prefix ``/255.0.0.0``, a zero-padded prefix ``/08``, an embedded
dotted quad or a zone in an IPv6 address, any invalid input) goes through ``ipaddress``,
so every answer, and every refusal, is ``ipaddress``'s (``tests/test_cidr.py`` checks
this property).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

from reconciler import native

#: Prefix lengths as ``ipaddress`` writes them; another spelling (``08``) takes the slow path.
_PLEN4 = {str(p): p for p in range(33)}
_PLEN6 = {str(p): p for p in range(129)}
_MASK4 = [(0xFFFFFFFF << (32 - p)) & 0xFFFFFFFF for p in range(33)]
_ALL6 = (1 << 128) - 1
_MASK6 = [(_ALL6 << (128 - p)) & _ALL6 for p in range(129)]


def canonical_network(text: str) -> tuple[int, int, str]:
    """Return ``(version, prefixlen, canonical)`` for ``text``, host bits cleared.

    ``canonical`` equals ``str(ipaddress.ip_network(text, strict=False))``, so
    ``10.1.2.3/8`` gives ``10.0.0.0/8`` and ``192.0.2.1`` gives ``192.0.2.1/32``.
    Raises ValueError for anything that is not an IP network. (The desired state refuses
    host bits: :func:`parse_network` says when they are set.)
    """
    version, prefixlen, canonical, _ = parse_network(text)
    return version, prefixlen, canonical


def parse_network(text: str) -> tuple[int, int, str, str | None]:
    """Return ``(version, prefixlen, canonical, host)`` for ``text``.

    The first three are :func:`canonical_network`'s. ``host`` is None unless ``text`` has
    host bits set (bits after the prefix), and is then the address alone as a host network:
    ``10.10.0.1/24`` gives ``(4, 24, "10.10.0.0/24", "10.10.0.1/32")``, ``2001:db8::1/64``
    gives ``(6, 64, "2001:db8::/64", "2001:db8::1/128")``. One parse for both answers: a
    65,536-member set is checked member by member. Raises ValueError for anything that is
    not an IP network, exactly when ``ipaddress.ip_network(text, strict=False)`` does.
    """
    fast = _fast(text)
    return fast if fast is not None else parse_with_ipaddress(text)


def _fast(text: str) -> tuple[int, int, str, str | None] | None:
    """:func:`parse_network` for the common forms; None: not one of them (valid or not),
    ask ``ipaddress``."""
    addr, sep, plen = text.partition("/")
    if ":" not in addr:
        try:
            packed = inet_pton(AF_INET, addr)
        except (OSError, ValueError):  # ValueError: a NUL or a character outside ASCII
            return None
        if not sep:
            return 4, 32, text + "/32", None  # inet_pton's dotted quads are canonical
        prefix = _PLEN4.get(plen)
        if prefix is None:
            return None
        address = int.from_bytes(packed, "big")
        value = address & _MASK4[prefix]
        if value == address:
            return 4, prefix, text, None
        net = inet_ntop(AF_INET, value.to_bytes(4, "big"))
        return 4, prefix, f"{net}/{plen}", f"{addr}/32"
    if "." in addr or "%" in addr:
        return None  # an embedded dotted quad or a zone: rare, ipaddress writes them its way
    try:
        packed = inet_pton(AF_INET6, addr)
    except (OSError, ValueError):
        return None
    if sep:
        prefix = _PLEN6.get(plen)
        if prefix is None:
            return None
    else:
        prefix = 128
    address = int.from_bytes(packed, "big")
    value = address & _MASK6[prefix]
    host = None
    if value != address:
        host = ntop6(packed) + "/128"
        packed = value.to_bytes(16, "big")
    return 6, prefix, f"{ntop6(packed)}/{prefix}", host


def parse_with_ipaddress(text: str) -> tuple[int, int, str, str | None]:
    """:func:`parse_network` through ``ipaddress`` alone: the reference the fast path
    agrees with, and the path every uncommon form takes. Raises ValueError (ipaddress's)
    for anything that is not an IP network."""
    net = ipaddress.ip_network(text, strict=False)
    host = None
    if "/" in text:
        addr = ipaddress.ip_interface(text).ip
        if addr != net.network_address:
            host = f"{addr}/{addr.max_prefixlen}"
    return net.version, net.prefixlen, str(net), host


def ntop6(addr: bytes) -> str:
    """``str(ipaddress.IPv6Address(addr))`` for 16 packed bytes, via the faster inet_ntop
    where they agree.

    Both compress the longest (leftmost) run of two or more zero groups; they differ only for
    IPv4-mapped/compatible addresses, which inet_ntop writes with a dotted quad.
    """
    text = inet_ntop(AF_INET6, addr)
    if "." in text:
        return str(ipaddress.IPv6Address(addr))
    return text


#: A prefix length as the last byte of a sort key.
_PLEN_BYTE = {str(p): bytes((p,)) for p in range(129)}


def sort_key(canonical: str) -> bytes:
    """A numeric sort key for a canonical network string: the IP version, the packed
    address and the prefix length as bytes, which compare as those numbers do (IPv4 first,
    then by address, then by prefix). One bytes object and no ``ipaddress``: sorting a
    200,000-member plan is ~10x cheaper than through ``ipaddress`` and ~2x than a tuple key.
    """
    addr, _, plen = canonical.partition("/")
    if ":" in addr:
        return b"\x06" + inet_pton(AF_INET6, addr) + _PLEN_BYTE[plen]
    return b"\x04" + inet_pton(AF_INET, addr) + _PLEN_BYTE[plen]


def sort_networks(members: Collection[str]) -> list[str]:
    """``sorted(members, key=sort_key)``: in C when the extension is built (a 200,000-member
    plan sorts ~20x faster), else in Python, with the same order either way (stable, like
    ``sorted``) and the same exception for a member that is not a network."""
    fast = native.netfast
    if fast is not None:
        done: list[str] | None = fast.sort(members)
        if done is not None:
            return done
    return sorted(members, key=sort_key)
