"""The C loops (``reconciler._netfast``) give exactly the answers of the Python loops they
stand for, on generated input, valid or not: a set's member check (members, problems, their
order and places), a list's parse, the sort, the netlink entries and a dump's decoding.

Each test runs the same call twice, with the extension and with ``native.netfast`` set to
None (the pure-Python path of an install where it could not be built). The extension is
built by ``scripts/setup`` (gcc and python3-dev); without it these tests fail, not skip,
since they would otherwise compare Python with itself.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reconciler import cidr, native, plan, yamlparse
from reconciler.kinds.ipset import batches, checks, lists, netlink
from reconciler.yamlsrc import parse_yaml
from tests.test_cidr import hextet, octet, prefix4, prefix6, whitespace

T = TypeVar("T")
FAST = native.netfast


@pytest.fixture(autouse=True)
def _built() -> Iterator[None]:
    assert FAST is not None, (
        "reconciler._netfast is not built: run scripts/setup (it needs gcc and python3-dev)"
    )
    yield
    native.netfast = FAST


def both(call: Callable[[], T]) -> tuple[T | str, T | str]:
    """``call()`` with the C loops and with the Python loops (an exception as its repr)."""
    out: list[T | str] = []
    for fast in (FAST, None):
        native.netfast = fast
        try:
            out.append(call())
        except Exception as e:  # the same refusal either way is part of the contract
            out.append(f"{type(e).__name__}: {e}")
        finally:
            native.netfast = FAST
    return out[0], out[1]


ipv4 = st.builds(lambda o, p: o if p is None else f"{o}/{p}",
                 st.tuples(octet, octet, octet, octet).map(".".join), prefix4)  # fmt: skip
ipv6 = st.builds(lambda h, p: h if p is None else f"{h}/{p}",
                 st.lists(hextet, min_size=1, max_size=8).map(":".join)
                 | st.sampled_from(["::", "::1", "2001:db8::", "::ffff:1.2.3.4", "fe80::1%eth0"]),
                 prefix6)  # fmt: skip
real = st.one_of(
    st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
              st.ip_addresses(v=4), st.integers(0, 32)),
    st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
              st.ip_addresses(v=6), st.integers(0, 128)),
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"{a}/24"),  # host bits, often
    st.ip_addresses(v=6).map(lambda a: f"{a}/64"),
)
member = st.one_of(
    real,
    real,
    ipv4,
    ipv6,
    st.builds(lambda a, m, b: a + m + b, whitespace, real, whitespace),
    # a NUL, Arabic-Indic digits, a no-break space: never read in C
    st.sampled_from(["", " ", "#", "10.0.0.0/8 # note", "10.0.0.1\x00", "\u0661\u0660.0.0.0/8",
                     "\u00a01.2.3.4"]),
)
# Few distinct values, so duplicates (as typed, and the same network spelled two ways) occur.
members = st.lists(st.one_of(member, st.sampled_from(["10.0.0.0/8", "10.0.0.0/08", "10.0.0.1",
                                                     "10.0.0.1/32", "2001:DB8::/32",
                                                     "2001:db8::/32"])),
                   max_size=40)  # fmt: skip


def _inline(family: str, items: list[Any]) -> tuple[list[tuple[Any, ...]], Any]:
    doc = parse_yaml(b"ipsets: {}\n", "fleet.yaml")
    spec = {"type": "hash:net", "family": family, "members": items}
    problems = checks.check(doc, "s", spec)
    return [(p.line, p.column, p.path, p.message) for p in problems], doc.derived


@settings(max_examples=400)
@given(members, st.sampled_from(["inet", "inet6"]))
@example(["10.0.0.0/8", " 10.0.0.0/8", "10.0.0.0/08", "1.2.3.4"], "inet")
@example(["2001:DB8::/32", "2001:db8::/32", "::ffff:1.2.3.4", "10.0.0.0/8"], "inet6")
def test_member_check(items: list[str], family: str) -> None:
    ours, theirs = both(lambda: _inline(family, items))
    assert ours == theirs


def test_member_check_of_non_strings() -> None:
    items: list[Any] = ["10.0.0.0/8", 5, None, ["x"], "10.0.0.0/8"]
    ours, theirs = both(lambda: _inline("inet", items))
    assert ours == theirs


line = st.one_of(
    member,
    st.builds(lambda m, c: f"{m} # {c}", member, st.text(max_size=5)),
    st.sampled_from(["", "# a comment", "   ", "\r", "10.1.0.0/16\r", "#10.0.0.0/8"]),
)


@settings(max_examples=400)
@given(st.lists(line, max_size=40), st.booleans())
@example(["10.0.0.0/8", "10.0.0.0/8 # again", "2001:DB8::/32", "2001:db8::/32"], False)
def test_list_parse(items: list[str], bom: bool) -> None:
    data = (("\ufeff" if bom else "") + "\n".join(items)).encode("utf-8", "surrogatepass")
    ours, theirs = both(lambda: lists.parse(data))
    assert ours == theirs


@settings(max_examples=300)
@given(st.lists(st.one_of(real.map(lambda t: str(ipaddress.ip_network(t, strict=False))),
                          st.sampled_from(["2001:DB8::/32", "10.0.0.0/32", "1.2.3.4/64",
                                           "::ffff:1.2.3.4/128", "10.0.0.0", "x/8"])),
                max_size=60))  # fmt: skip
def test_sort(items: list[str]) -> None:
    ours, theirs = both(lambda: cidr.sort_networks(items))
    assert ours == theirs


@settings(max_examples=300)
@given(st.lists(st.one_of(real, ipv4, ipv6, st.sampled_from(["10.0.0.0/0032", "1.2.3.4/33"])),
                max_size=30),
       st.sampled_from(["inet", "inet6"]), st.one_of(st.none(), st.integers(0, 2**31)))  # fmt: skip
def test_netlink_entries(items: list[str], family: str, timeout: int | None) -> None:
    ours, theirs = both(lambda: netlink._encode_members(family, items, "ipset/s", timeout))
    assert ours == theirs


@given(st.lists(st.tuples(st.binary(min_size=4, max_size=4), st.integers(0, 255)), min_size=1,
                max_size=50), st.booleans(), st.one_of(st.none(), st.integers(0, 49)))  # fmt: skip
@example([(b"\1\2\3\4", 24)] * 3, True, 0)
@example([(b"\1\2\3\4", 24)] * 3, False, 2)
def test_dump_decoding(entries: list[tuple[bytes, int]], is_net: bool, odd: int | None) -> None:
    def entry(k: int, addr: bytes, plen: int) -> bytes:
        # entry `odd` has its address attribute without NLA_F_NET_BYTEORDER: other header bytes
        kind = netlink._V4_T if k != odd else netlink.IPSET_ATTR_IPADDR_IPV4
        ip = struct.pack("=HH", 8, kind) + addr
        nested = struct.pack("=HH", 12, netlink._IP_T) + ip
        if is_net:
            nested += struct.pack("=HHB3x", 5, netlink.IPSET_ATTR_CIDR, plen)
        return struct.pack("=HH", 4 + len(nested), netlink._DATA_T) + nested

    chunk = b"".join(entry(k, a, p) for k, (a, p) in enumerate(entries))

    def decode() -> tuple[bool, list[str]]:
        acc = netlink._Acc("s")
        done = netlink._decode_adt_fast(acc, memoryview(chunk), 0, len(chunk), True, is_net)
        return done, acc.members

    ours, theirs = both(decode)
    assert ours == theirs and not isinstance(ours, str)
    # the fixed layout took the fast path in both, unless one entry's headers differ
    assert ours[0] is (odd is None or odd >= len(entries) or len(entries) == 1)

    # same4: whether those records are exactly a set of members, no string made
    assert FAST is not None
    size, cidr = (24, 20) if is_net else (16, -1)
    if not ours[0]:
        assert FAST.same4([chunk], size, 12, cidr, frozenset()) in (None, False)
        return
    decoded = frozenset(ours[1])
    for wanted in (decoded, decoded - {ours[1][0]}, (decoded - {ours[1][0]}) | {"192.0.2.0/31"},
                   frozenset(ours[1] + ["x"])):  # fmt: skip
        expected = wanted == decoded and len(set(ours[1])) == len(ours[1])
        got = FAST.same4([chunk[:size], chunk[size:]], size, 12, cidr, wanted)
        # None: it cannot tell (a member it does not read as a network: the caller decodes)
        readable = all(int(m.split("/")[1]) <= 32 for m in wanted if m != "x")
        if readable and "x" not in wanted:
            assert got is expected
        else:
            assert got in (None, expected)


yaml_line = st.one_of(
    st.builds(lambda ind, item, tail: f"{' ' * ind}- {item}{tail}",
              st.sampled_from([2, 2, 2, 4, 6]), st.one_of(real, ipv4, ipv6),
              st.sampled_from(["", "", " ", "\t", " # x", "\r", "x"])),
    st.sampled_from(["ipsets:", "  s:", "    members:", "", "#", "  -  1.2.3.4", "- 1.2.3.4",
                     "  - 1.2.3.4/", "  - /8", "  - 1.2.3", "  - 1.2.3.4.5", "  - 1234.1.1.1",
                     "  - 10.0.0.0/8/8", "  - a:b::/64", "  - 1.2.3.4\u00e9", "\u00e9"]),
)  # fmt: skip


@settings(max_examples=300)
@given(st.lists(st.tuples(yaml_line, st.integers(1, 80)), max_size=12), st.booleans())
def test_yaml_runs(blocks: list[tuple[str, int]], newline_at_end: bool) -> None:
    # Blocks of repeated lines (runs of 64 and more occur) and lone lines between them.
    text = "\n".join(line for line, times in blocks for _ in range(times))
    text += "\n" if newline_at_end else ""
    ours, theirs = both(lambda: yamlparse.run_spans(text))
    assert ours == theirs


def test_yaml_runs_of_every_length_near_the_minimum() -> None:
    for count in (62, 63, 64, 65):
        for other in ("    - 10.0.0.0/8", "  - x", "  - 10.0.0.1"):
            text = "  - 10.0.0.0/8\n" * count + other + "\n" + "  - 10.0.0.1\n" * count
            ours, theirs = both(functools.partial(yamlparse.run_spans, text))
            assert ours == theirs
    wide = "  - 10.0.0.0/8\n" * 70 + "\u4e00\n"  # outside Latin-1: the regex answers
    assert FAST is not None and FAST.runs(wide, 64) is None
    assert yamlparse.run_spans(wide) == [(0, 15 * 70, 2, ["10.0.0.0/8"] * 70)]


EXTRA = [{}, {"timeout": 0}, {"timeout": 600, "member": "overridden?"}]


@given(st.lists(real, max_size=30), st.sampled_from(["add_member", "delete_member"]),
       st.sampled_from(EXTRA))  # fmt: skip
def test_member_ops_and_their_dicts(items: list[str], verb: str, extra: dict[str, Any]) -> None:
    ours, theirs = both(lambda: plan.member_ops(verb, items, **extra))
    assert ours == theirs
    assert all(type(op) is plan.Op for op in ours)
    ops = (*ours, plan.Op("create_set", {"set": "s", "op": "shadowed"}), plan.Op("x", {}))
    ours_d, theirs_d = both(lambda: plan.op_dicts(ops))
    assert ours_d == theirs_d == [op.to_dict() for op in ops]
    assert [list(d) for d in ours_d] == [list(d) for d in theirs_d]  # the same key order


RUN_ARGS = st.sampled_from([{"member": "10.0.0.0/8"}, {"member": "10.1.0.0/16", "timeout": 0},
                            {"set": "s"}, {"member": "10.2.0.0/16", "x": 1, "y": 2}, {}])


@given(st.lists(st.builds(plan.Op, st.sampled_from(["add_member", "delete_member"]), RUN_ARGS),
                max_size=20), st.integers(0, 3))  # fmt: skip
def test_run_members(run: list[plan.Op], width: int) -> None:
    ours, theirs = both(lambda: batches.run_members(run, width))
    assert ours == theirs
