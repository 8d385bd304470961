"""The generic part of netlink, shared by the kinds that speak it over a plain socket.

The ipset kind (nfnetlink, :mod:`reconciler.kinds.ipset.netlink`) and the nic kind's link dump
(rtnetlink, :mod:`reconciler.kinds.nic.ethtool`) both send requests on a
``socket(AF_NETLINK, SOCK_RAW, protocol)`` and decode the answers with :mod:`struct`: the
message header, the attribute (NLA) walk and the C strings are the same for every netlink
family and live here. Only the stdlib is imported, so a kind that uses this pays nothing else.

The constants are the kernel's uapi values from ``include/uapi/linux/netlink.h``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # plain error acks carry only the request's header, not its payload

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLA = struct.Struct("=HH")  # len, type


def nla(nla_type: int, payload: bytes) -> bytes:
    """One attribute: its header, ``payload`` and the padding to 4 bytes."""
    length = 4 + len(payload)
    return NLA.pack(length, nla_type) + payload + b"\0" * (-length & 3)


def iter_attrs(buf: memoryview | bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type without flags, payload start, payload end)`` of the NLAs in [start, end)."""
    unpack = NLA.unpack_from
    while start + 4 <= end:
        length, nla_type = unpack(buf, start)
        if length < 4:
            return
        yield nla_type & NLA_TYPE_MASK, start + 4, min(start + length, end)
        start += (length + 3) & ~3


def cstr(buf: memoryview | bytes, start: int, end: int) -> str:
    """The NUL-terminated string at [start, end) of ``buf`` (undecodable bytes replaced)."""
    raw = bytes(buf[start:end])
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def split_messages(buf: memoryview, seq: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(type, flags, payload start, payload end)`` of the netlink messages in one
    received datagram ``buf`` that answer request ``seq`` (offsets into ``buf``)."""
    n = len(buf)
    unpack = NLMSGHDR.unpack_from
    pos = 0
    while pos + 16 <= n:
        length, mtype, mflags, mseq, _pid = unpack(buf, pos)
        if length < 16:
            break
        if mseq == seq:
            yield mtype, mflags, pos + 16, min(pos + length, n)
        pos += (length + 3) & ~3


def error_code(buf: memoryview | bytes, start: int) -> int:
    """The errno of the NLMSG_ERROR payload at ``start`` (positive; 0 for an ack)."""
    code: int = -struct.unpack_from("=i", buf, start)[0]
    return code
