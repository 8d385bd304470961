"""The fast canonicaliser must agree with ipaddress on every input, valid or not: the
canonical network, whether host bits are set (and the address then offered), and whether
the input is refused at all."""

from __future__ import annotations

import ipaddress

from hypothesis import example, given, settings
from hypothesis import strategies as st

from reconciler.cidr import (
    canonical_network,
    ntop6,
    parse_network,
    parse_with_ipaddress,
    sort_key,
)

octet = st.one_of(
    st.integers(0, 255).map(str),
    st.sampled_from(["256", "300", "01", "00", "000", "0x1", "999", "", " 1", "1 ", "+1", "٣"]),
)
prefix4 = st.one_of(
    st.none(),
    st.integers(0, 33).map(str),
    st.sampled_from(["08", "032", "x", "", "-1", " 8", "8 ", "255.0.0.0", "0.0.0.255", "8/8"]),
)
prefix6 = st.one_of(
    st.none(),
    st.integers(0, 129).map(str),
    st.sampled_from(["064", "0128", "", "x", " 64", "64 ", "ffff::", "1.2.3.4", "64/64"]),
)
hextet = st.one_of(
    st.integers(0, 0xFFFF).map(lambda v: f"{v:x}"),
    st.integers(0, 0xFFFF).map(lambda v: f"{v:04X}"),
    st.sampled_from(["0", "", "00000", "g", "1.2.3.4", "01.2.3.4", "256.1.1.1", "%eth0", " "]),
)
whitespace = st.sampled_from(["", " ", "\t", "\n", "\u00a0"])

Parsed = tuple[int, int, str, str | None] | None


def _reference(text: str) -> Parsed:
    """What the ipaddress path says (the behaviour before the fast path existed)."""
    try:
        return parse_with_ipaddress(text)
    except ValueError:
        return None


def _ours(text: str) -> Parsed:
    try:
        return parse_network(text)
    except ValueError:
        return None


def _with(addr: str, plen: str | None) -> str:
    return addr if plen is None else f"{addr}/{plen}"


@given(st.tuples(octet, octet, octet, octet), prefix4, whitespace, whitespace)
@example(("10", "10", "0", "1"), "24", "", "")  # host bits set
@example(("010", "0", "0", "1"), None, "", "")  # a leading zero (refused since 3.9.5)
def test_ipv4_agrees_with_ipaddress(
    octets: tuple[str, ...], plen: str | None, before: str, after: str
) -> None:
    text = before + _with(".".join(octets), plen) + after
    assert _ours(text) == _reference(text)


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_ipv4_networks_with_and_without_host_bits(addr: ipaddress.IPv4Address, plen: int) -> None:
    for text in (str(addr), f"{addr}/{plen}"):
        assert _ours(text) == _reference(text)


@given(st.ip_addresses(v=6), st.one_of(st.none(), st.integers(0, 128)), st.booleans())
@example(ipaddress.IPv6Address("::ffff:192.0.2.1"), 96, False)  # IPv4-mapped
@example(ipaddress.IPv6Address("::192.0.2.1"), 120, False)  # IPv4-compatible
@example(ipaddress.IPv6Address("2001:db8::1"), 64, True)  # host bits, upper case
def test_ipv6_agrees_with_ipaddress(
    addr: ipaddress.IPv6Address, plen: int | None, upper: bool
) -> None:
    forms = {str(addr), addr.exploded, str(addr).upper() if upper else str(addr)}
    if addr.ipv4_mapped is not None:
        forms.add(f"::ffff:{addr.ipv4_mapped}")
    for form in forms:
        text = _with(form, None if plen is None else str(plen))
        assert _ours(text) == _reference(text)


@settings(max_examples=500)
@given(
    st.lists(hextet, min_size=1, max_size=9),
    st.one_of(st.none(), st.integers(0, 9)),
    prefix6,
    whitespace,
)
@example(["1", "2", "3", "4", "5", "6", "7"], 7, None, "")  # "::" for one group
@example(["1", "2", "3", "4", "5", "6", "7", "8"], 1, None, "")  # "::" for none: refused
@example(["fe80", "1%eth0"], 1, "64", "")  # a zone
@example(["", "ffff", "01.2.3.4"], 0, None, "")  # mapped, leading zero in the quad
def test_ipv6_spellings_agree_with_ipaddress(
    groups: list[str], gap: int | None, plen: str | None, space: str
) -> None:
    """Hextet sequences, well or badly formed, with or without a "::" somewhere."""
    if gap is not None and gap <= len(groups):
        addr = ":".join(groups[:gap]) + "::" + ":".join(groups[gap:])
    else:
        addr = ":".join(groups)
    text = _with(addr, plen) + space
    assert _ours(text) == _reference(text)


@given(st.text(max_size=20))
def test_garbage_is_rejected_like_ipaddress(text: str) -> None:
    assert _ours(text) == _reference(text)


@given(st.text(alphabet="0123456789abcdefABCDEF:./% ", max_size=45))
def test_near_misses_agree_with_ipaddress(text: str) -> None:
    assert _ours(text) == _reference(text)


def test_the_ipaddress_path_is_ipaddress() -> None:
    assert parse_with_ipaddress("10.10.0.1/24") == (4, 24, "10.10.0.0/24", "10.10.0.1/32")
    assert parse_with_ipaddress("2001:db8::/32") == (6, 32, "2001:db8::/32", None)
    assert parse_with_ipaddress("::ffff:1.2.3.4") == (6, 128, "::ffff:102:304/128", None)
    for text in ("010.0.0.1", "1.2.3.4/33", "1::2::3", " 1.2.3.4"):
        try:
            parse_with_ipaddress(text)
        except ValueError as e:
            assert str(e) == str(_error(text))
        else:
            raise AssertionError(f"{text!r} accepted")


def _error(text: str) -> ValueError:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        return e
    raise AssertionError(f"ipaddress accepts {text!r}")


def test_canonical_network_is_parse_network_without_the_host() -> None:
    assert canonical_network("10.1.2.3/8") == (4, 8, "10.0.0.0/8")
    assert parse_network("10.10.0.1/24") == (4, 24, "10.10.0.0/24", "10.10.0.1/32")
    assert parse_network("2001:DB8::1/64") == (6, 64, "2001:db8::/64", "2001:db8::1/128")


@given(st.ip_addresses(v=6))
def test_ntop6_is_ipaddress(addr: ipaddress.IPv6Address) -> None:
    assert ntop6(addr.packed) == str(addr)


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
