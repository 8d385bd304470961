"""The fast canonicaliser must agree with ipaddress on every input, valid or not."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from reconciler.cidr import canonical_network, sort_key

octet = st.one_of(st.integers(0, 255).map(str), st.sampled_from(["256", "300", "01", "00", "999"]))
prefix = st.one_of(st.none(), st.integers(0, 33).map(str), st.sampled_from(["08", "x", ""]))


def _reference(text: str) -> tuple[int, int, str] | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return net.version, net.prefixlen, str(net)


def _ours(text: str) -> tuple[int, int, str] | None:
    try:
        return canonical_network(text)
    except ValueError:
        return None


@given(st.tuples(octet, octet, octet, octet), prefix)
def test_ipv4_agrees_with_ipaddress(octets: tuple[str, ...], plen: str | None) -> None:
    text = ".".join(octets) + ("" if plen is None else f"/{plen}")
    assert _ours(text) == _reference(text)


@given(st.ip_addresses(v=6), st.integers(0, 128))
def test_ipv6_agrees_with_ipaddress(addr: ipaddress.IPv6Address, plen: int) -> None:
    text = f"{addr}/{plen}"
    assert _ours(text) == _reference(text)


@given(st.text(max_size=20))
def test_garbage_is_rejected_like_ipaddress(text: str) -> None:
    assert _ours(text) == _reference(text)


@given(st.lists(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), max_size=30))
def test_sort_key_orders_numerically(
    addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    canon = [str(ipaddress.ip_network(a)) for a in addrs]
    expected = sorted(
        canon,
        key=lambda c: (
            ipaddress.ip_network(c).version,
            int(ipaddress.ip_network(c).network_address),
        ),
    )
    assert sorted(canon, key=sort_key) == expected
