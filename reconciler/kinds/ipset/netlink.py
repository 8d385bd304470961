"""A small, fast client for the kernel's ipset subsystem (nfnetlink, NFNL_SUBSYS_IPSET).

It talks to the ipset subsystem of the *current* network namespace of the calling thread (the
namespace is fixed when the :class:`IpsetClient` opens its socket) over a plain
``socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)``, encoding and decoding with :mod:`struct`.

Why not pyroute2 (a netlink library for Python)?

* ``import pyroute2`` alone costs ~0.45 s, more than a whole ``ipset restore`` of 65,536
  members; its per-attribute pure-Python NLA codec costs several microseconds per attribute,
  which dominates bulk adds and large dumps (see ``bench/bench_ipset.py``, which measures it).
* Its ``IPSet.add``/``delete`` send one netlink request per member (~45x slower than
  ``ipset restore``), while the kernel accepts many entries per request in one
  ``IPSET_ATTR_ADT`` nest (that is how ``ipset restore`` batches).
* The control commands (create, swap, rename, destroy) are 3-6 attributes each. Routing them
  through ``pyroute2.ipset.IPSet`` would mean a second socket with an asyncio core, the import
  cost on the first control call, and a second error-mapping path (pyroute2's ``IPSetError``)
  for what is a few lines with the codec below. So every command uses the one codec here, and
  errors are mapped once, the way ipset(8) words them.

The protocol constants below are the kernel's uapi values from
``include/uapi/linux/netfilter/ipset/ip_set.h`` / ``ip_set_hash.h``, ``linux/netlink.h`` and
``linux/netfilter/nfnetlink.h``; they are part of the kernel ABI and are defined here instead of
importing them from pyroute2 so that the read path does not pay pyroute2's import cost.

Kernel behaviour this module relies on (``net/netfilter/ipset/ip_set_core.c``):

* ``ip_set_ad`` applies the entries of an ``IPSET_ATTR_ADT`` nest one by one and stops at the
  first failing entry; entries before it stay applied (there is no rollback).
* Without ``NLM_F_EXCL`` the kernel sets ``IPSET_FLAG_EXIST``: adding an existing member or
  deleting a missing one is not an error.
* When the request carries a command-level ``IPSET_ATTR_LINENO`` and every entry its own
  ``IPSET_ATTR_LINENO``, a failing entry is reported by an NLMSG_ERROR that echoes the whole
  request with the command-level LINENO overwritten by the failing entry's line number.
* A LIST dump of one big set spans many netlink messages, all carrying ``IPSET_ATTR_SETNAME``;
  only the first carries the header (type, family, ``IPSET_ATTR_DATA``).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import hashlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

from reconciler import native
from reconciler.errors import NetlinkError, ProviderError
from reconciler.netlinksock import (
    NETLINK_CAP_ACK,
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
)
from reconciler.netlinksock import NLA as _NLA
from reconciler.netlinksock import NLMSGHDR as _NLMSGHDR
from reconciler.netlinksock import cstr as _cstr
from reconciler.netlinksock import error_code as _error_code
from reconciler.netlinksock import iter_attrs as _iter_attrs
from reconciler.netlinksock import nla as _nla
from reconciler.netlinksock import split_messages as _split_messages

__all__ = ["IpsetClient", "LiveSet", "SetHeader", "decode_list_dump"]

# --- netlink / nfnetlink (linux/netlink.h in reconciler.netlinksock, linux/netfilter/nfnetlink.h)
NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
NFNL_SUBSYS_IPSET = 6
NFNETLINK_V0 = 0
NFPROTO_UNSPEC = 0
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10

# --- ipset (linux/netfilter/ipset/ip_set.h) -------------------------------------------------------
IPSET_PROTOCOL = 7
IPSET_PROTOCOL_MIN = 6
IPSET_MAXNAMELEN = 32

IPSET_CMD_PROTOCOL = 1
IPSET_CMD_CREATE = 2
IPSET_CMD_DESTROY = 3
IPSET_CMD_FLUSH = 4
IPSET_CMD_RENAME = 5
IPSET_CMD_SWAP = 6
IPSET_CMD_LIST = 7
IPSET_CMD_SAVE = 8
IPSET_CMD_ADD = 9
IPSET_CMD_DEL = 10
IPSET_CMD_TEST = 11
IPSET_CMD_HEADER = 12
IPSET_CMD_TYPE = 13

# command-level attributes
IPSET_ATTR_PROTOCOL = 1
IPSET_ATTR_SETNAME = 2
IPSET_ATTR_TYPENAME = 3
IPSET_ATTR_SETNAME2 = IPSET_ATTR_TYPENAME
IPSET_ATTR_REVISION = 4
IPSET_ATTR_FAMILY = 5
IPSET_ATTR_FLAGS = 6
IPSET_ATTR_DATA = 7
IPSET_ATTR_ADT = 8
IPSET_ATTR_LINENO = 9
IPSET_ATTR_PROTOCOL_MIN = 10
IPSET_ATTR_REVISION_MIN = IPSET_ATTR_PROTOCOL_MIN
IPSET_ATTR_INDEX = 11

# CADT / create-data attributes (inside IPSET_ATTR_DATA)
IPSET_ATTR_IP = 1
IPSET_ATTR_CIDR = 3
IPSET_ATTR_TIMEOUT = 6
IPSET_ATTR_CADT_FLAGS = 8
IPSET_ATTR_CADT_LINENO = IPSET_ATTR_LINENO
IPSET_ATTR_HASHSIZE = 18
IPSET_ATTR_MAXELEM = 19
IPSET_ATTR_NETMASK = 20
IPSET_ATTR_ELEMENTS = 24
IPSET_ATTR_REFERENCES = 25

# entry extensions (inside an entry's IPSET_ATTR_DATA; the numbers overlap the header's)
IPSET_ATTR_BYTES = 24
IPSET_ATTR_PACKETS = 25
IPSET_ATTR_COMMENT = 26
IPSET_ATTR_SKBMARK = 27
IPSET_ATTR_SKBPRIO = 28
IPSET_ATTR_SKBQUEUE = 29

# inside IPSET_ATTR_IP
IPSET_ATTR_IPADDR_IPV4 = 1
IPSET_ATTR_IPADDR_IPV6 = 2

# CADT flags (enum ipset_cadt_flags): NOMATCH marks a hash:net exception entry; the WITH_*
# flags are the options a set was created with, as ipset(8) names them.
IPSET_FLAG_NOMATCH = 1 << 2
IPSET_FLAG_WITH_COUNTERS = 1 << 3
IPSET_FLAG_WITH_COMMENT = 1 << 4
IPSET_FLAG_WITH_FORCEADD = 1 << 5
IPSET_FLAG_WITH_SKBINFO = 1 << 6
SET_OPTIONS: dict[str, int] = {
    "counters": IPSET_FLAG_WITH_COUNTERS,
    "comment": IPSET_FLAG_WITH_COMMENT,
    "forceadd": IPSET_FLAG_WITH_FORCEADD,
    "skbinfo": IPSET_FLAG_WITH_SKBINFO,
}
"""The create options a set may carry besides its sizes and timeout, by ipset(8)'s names."""

# error codes (enum ipset_errno; hash-specific ones from ip_set_hash.h)
IPSET_ERR_PRIVATE = 4096
IPSET_ERR_PROTOCOL = 4097
IPSET_ERR_FIND_TYPE = 4098
IPSET_ERR_MAX_SETS = 4099
IPSET_ERR_BUSY = 4100
IPSET_ERR_EXIST_SETNAME2 = 4101
IPSET_ERR_TYPE_MISMATCH = 4102
IPSET_ERR_EXIST = 4103
IPSET_ERR_INVALID_CIDR = 4104
IPSET_ERR_INVALID_NETMASK = 4105
IPSET_ERR_INVALID_FAMILY = 4106
IPSET_ERR_TIMEOUT = 4107
IPSET_ERR_REFERENCED = 4108
IPSET_ERR_IPADDR_IPV4 = 4109
IPSET_ERR_IPADDR_IPV6 = 4110
IPSET_ERR_COUNTER = 4111
IPSET_ERR_COMMENT = 4112
IPSET_ERR_INVALID_MARKMASK = 4113
IPSET_ERR_SKBINFO = 4114
IPSET_ERR_TYPE_SPECIFIC = 4352
IPSET_ERR_HASH_FULL = IPSET_ERR_TYPE_SPECIFIC
IPSET_ERR_HASH_ELEM = 4353
IPSET_ERR_INVALID_PROTO = 4354
IPSET_ERR_MISSING_PROTO = 4355
IPSET_ERR_HASH_RANGE_UNSUPPORTED = 4356
IPSET_ERR_HASH_RANGE = 4357

# ipset(8)'s wording for each code (ipset lib/errcode.c); keyed by (code, command), command 0
# meaning "any command". Type-specific codes (>= 4352) are only given for hash:* types here.
_MESSAGES: dict[tuple[int, int], str] = {
    (_errno.ENOENT, 0): "The set with the given name does not exist",
    (_errno.EMSGSIZE, 0): "Kernel error received: message could not be created",
    (IPSET_ERR_PROTOCOL, 0): "Kernel error received: ipset protocol error",
    (_errno.EEXIST, IPSET_CMD_CREATE): (
        "Set cannot be created: set with the same name already exists"
    ),
    (IPSET_ERR_EXIST, IPSET_CMD_CREATE): (
        "Set cannot be created: set with the same name already exists"
    ),
    (IPSET_ERR_FIND_TYPE, 0): "Kernel error received: set type not supported",
    (IPSET_ERR_MAX_SETS, 0): (
        "Kernel error received: maximal number of sets reached, cannot create more."
    ),
    (IPSET_ERR_INVALID_NETMASK, 0): "The value of the netmask parameter is invalid",
    (IPSET_ERR_INVALID_MARKMASK, 0): "The value of the markmask parameter is invalid",
    (IPSET_ERR_INVALID_FAMILY, 0): "Protocol family not supported by the set type",
    (IPSET_ERR_BUSY, IPSET_CMD_DESTROY): (
        "Set cannot be destroyed: it is in use by a kernel component"
    ),
    (IPSET_ERR_REFERENCED, IPSET_CMD_DESTROY): (
        "Set cannot be destroyed: it is in use by a kernel component"
    ),
    (IPSET_ERR_EXIST_SETNAME2, IPSET_CMD_RENAME): (
        "Set cannot be renamed: a set with the new name already exists"
    ),
    (IPSET_ERR_REFERENCED, IPSET_CMD_RENAME): (
        "Set cannot be renamed: it is in use by another system"
    ),
    (IPSET_ERR_EXIST_SETNAME2, IPSET_CMD_SWAP): (
        "Sets cannot be swapped: the second set does not exist"
    ),
    (IPSET_ERR_TYPE_MISMATCH, IPSET_CMD_SWAP): (
        "The sets cannot be swapped: their type does not match"
    ),
    (IPSET_ERR_INVALID_CIDR, 0): "The value of the CIDR parameter of the IP address is invalid",
    (IPSET_ERR_TIMEOUT, 0): "Timeout cannot be used: set was created without timeout support",
    (IPSET_ERR_IPADDR_IPV4, 0): "An IPv4 address is expected, but not received",
    (IPSET_ERR_IPADDR_IPV6, 0): "An IPv6 address is expected, but not received",
    (IPSET_ERR_COUNTER, 0): (
        "Packet/byte counters cannot be used: set was created without counter support"
    ),
    (IPSET_ERR_COMMENT, 0): "Comment cannot be used: set was created without comment support",
    (IPSET_ERR_SKBINFO, 0): (
        "Skbinfo mapping cannot be used: set was created without skbinfo support"
    ),
    (IPSET_ERR_EXIST, IPSET_CMD_ADD): "Element cannot be added to the set: it's already added",
    (IPSET_ERR_EXIST, IPSET_CMD_DEL): "Element cannot be deleted from the set: it's not added",
    (IPSET_ERR_HASH_FULL, 0): "Hash is full, cannot add more elements",
    (IPSET_ERR_HASH_ELEM, 0): "Null-valued element, cannot be stored in a hash type of set",
    (IPSET_ERR_INVALID_PROTO, 0): "Invalid protocol specified",
    (IPSET_ERR_MISSING_PROTO, 0): "Protocol missing, but must be specified",
    (IPSET_ERR_HASH_RANGE_UNSUPPORTED, 0): (
        'Range is not supported in the "net" component of the element'
    ),
    (IPSET_ERR_HASH_RANGE, 0): "Invalid range, covers the whole address space",
}

_FAMILIES = {"inet": NFPROTO_IPV4, "inet6": NFPROTO_IPV6}
_FAMILY_NAMES = {NFPROTO_IPV4: "inet", NFPROTO_IPV6: "inet6", NFPROTO_UNSPEC: "unspec"}
_DECODABLE_TYPES = frozenset({"hash:net", "hash:ip"})

# Size of one ADD/DEL request. Each is applied by the kernel inside sendmsg(); 64 KiB keeps the
# number of syscalls low (~32 for 65,536 IPv4 members) and fits the default socket buffers.
_BATCH_BYTES = 64 * 1024
_RECV_BYTES = 1 << 20  # dump skbs are <= 32 KiB; an error echoing a 64 KiB request fits too
_SOCK_BUF = 4 << 20

_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian, 0 here)
_U32 = struct.Struct("=I")
_NET32 = struct.Struct(">I")
_HDR_LEN = _NLMSGHDR.size + _NFGENMSG.size  # 20

# One ADD/DEL entry, fully laid out:
#   DATA{ IP{ IPADDR_IPVx (net order) }, CIDR u8 (+3 pad), LINENO u32 }
_ENTRY4 = struct.Struct("=HHHHHH4sHHB3xHHI")  # 32 bytes
_ENTRY6 = struct.Struct("=HHHHHH16sHHB3xHHI")  # 44 bytes

# Fast path for dumps: a plain hash:net entry is DATA{ IP{ IPADDR }, CIDR } and a plain hash:ip
# entry is DATA{ IP{ IPADDR } }; each NLA header read as one u32 (len | type << 16).
_DUMP_NET4 = struct.Struct("=III4sIB3x")  # 24 bytes
_DUMP_NET6 = struct.Struct("=III16sIB3x")  # 36 bytes
_DUMP_IP4 = struct.Struct("=III4s")  # 16 bytes
_DUMP_IP6 = struct.Struct("=III16s")  # 28 bytes
_HEAD = struct.Struct("=HHHHHH")  # an entry's first 12 bytes: DATA, IP, IPADDR headers
_NET4_FIELDS = struct.Struct("=12x4B4xB3x")  # the four octets and the prefix length
_IP4_FIELDS = struct.Struct("=12x4B")
_OCTETS = tuple(str(i) for i in range(256))


def _hw(length: int, nla_type: int) -> int:
    return length | (nla_type << 16)


_DATA_T = IPSET_ATTR_DATA | NLA_F_NESTED
_IP_T = IPSET_ATTR_IP | NLA_F_NESTED
_V4_T = IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER
_V6_T = IPSET_ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER


class SetHeader(NamedTuple):
    """What the kernel reports about a set, besides its members.

    ``family`` is ``"inet"`` or ``"inet6"`` (``"unspec"`` for list:set). ``references`` counts
    the kernel users of the set (iptables rules, list:set members ...). ``hashsize`` and
    ``maxelem`` are ``None`` for types that do not have them. ``timeout`` is the set's default
    entry timeout in seconds (``0``: entries are permanent unless added with a timeout of
    their own), ``None`` for a set created without timeout support. ``options`` are the other
    create options it carries, by ipset(8)'s names (``counters``, ``comment``, ``forceadd``,
    ``skbinfo``), sorted.
    """

    name: str
    type: str
    family: str
    revision: int
    hashsize: int | None
    maxelem: int | None
    references: int
    elements: int
    timeout: int | None = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class LiveSet:
    """A set as read from the kernel.

    ``members`` are canonical ``str(ipaddress.ip_network(...))`` strings (``"10.0.0.0/8"``,
    ``"192.0.2.1/32"``, ``"2001:db8::/32"``); hash:ip members are host networks (/32, /128).
    ``members`` is ``None`` when this module cannot decode the set's entries (types other than
    hash:net and hash:ip). ``nomatch`` holds the exception entries of a hash:net (added with
    ``nomatch``: a packet they match does *not* match the set), which are not members.
    ``expiring`` holds the members whose entry carries a timeout of its own (not ``0``): the
    kernel removes them when it runs out.
    """

    header: SetHeader
    members: frozenset[str] | None
    nomatch: frozenset[str] = frozenset()
    expiring: frozenset[str] = frozenset()
    #: the SHA-256 (hex) of the dump's entries, with what their decoding depends on (type,
    #: family, netmask): the same digest, the same members (:mod:`.dumpmemo`).
    dump_digest: str | None = field(default=None, compare=False)


def _nla_str(nla_type: int, value: str) -> bytes:
    return _nla(nla_type, value.encode() + b"\0")


def _nla_u8(nla_type: int, value: int) -> bytes:
    return _nla(nla_type, bytes((value,)))


def _nla_net32(nla_type: int, value: int) -> bytes:
    return _nla(nla_type | NLA_F_NET_BYTEORDER, _NET32.pack(value))


def _ipset_error(code: int, cmd: int) -> str:
    """ipset(8)'s text for ``code`` answered to ``cmd`` (strerror for plain errnos)."""
    text = _MESSAGES.get((code, cmd)) or _MESSAGES.get((code, 0))
    if text is not None:
        return text
    if code < IPSET_ERR_PRIVATE:
        return f"Kernel error received: {os.strerror(code)}"
    return f"Undecoded error {code} received from kernel"


def _check_name(name: str) -> None:
    if not name or len(name.encode()) >= IPSET_MAXNAMELEN or "\0" in name:
        raise ProviderError(
            f"invalid set name {name!r}: 1..{IPSET_MAXNAMELEN - 1} bytes", address=f"ipset/{name}"
        )


class _KernelError(Exception):
    """An NLMSG_ERROR answer; ``lineno`` is the failing entry's line number, if reported."""

    def __init__(self, code: int, lineno: int | None) -> None:
        super().__init__(code)
        self.code = code
        self.lineno = lineno


#: The members wanted in each set: name -> (the digest of a dump known to decode to
#: exactly them, or None; those members) (:mod:`.dumpmemo`).
Known = Mapping[str, tuple[str | None, frozenset[str]]]


class _Acc:
    """A set being assembled from the messages of a dump."""

    __slots__ = (
        "chunks",
        "decodable",
        "elements",
        "expiring",
        "family",
        "flags",
        "hashsize",
        "maxelem",
        "members",
        "name",
        "netmask",
        "nomatch",
        "references",
        "revision",
        "timeout",
        "type",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.type = ""
        self.family = NFPROTO_UNSPEC
        self.revision = 0
        self.hashsize: int | None = None
        self.maxelem: int | None = None
        self.references = 0
        self.elements: int | None = None
        self.netmask: int | None = None
        self.members: list[str] = []
        self.nomatch: list[str] = []
        self.expiring: list[str] = []
        self.timeout: int | None = None
        self.flags = 0
        self.decodable = True
        self.chunks: list[bytes] = []

    def digest(self) -> str:
        """The SHA-256 of the entries (every ADT nest, in order) and the header fields their
        decoding depends on."""
        h = hashlib.sha256(f"{self.type}\0{self.family}\0{self.netmask}\0".encode())
        for chunk in self.chunks:
            h.update(len(chunk).to_bytes(4, "big"))
            h.update(chunk)
        return h.hexdigest()

    def _holds_exactly(self, wanted: frozenset[str]) -> bool | None:
        """Whether the entries are exactly ``wanted``, told in C without decoding them
        (a plain IPv4 hash:net or hash:ip set whose records all have the fixed layout);
        None when that cannot be told so (they are decoded and compared then)."""
        fast = native.netfast
        is_net = self.type == "hash:net"
        if (
            fast is None
            or self.family != NFPROTO_IPV4
            or self.type not in _DECODABLE_TYPES
            or (not is_net and self.netmask is not None)
        ):
            return None
        rec = _DUMP_NET4 if is_net else _DUMP_IP4
        if not all(len(c) >= rec.size and _first_fixed(c, rec, True, is_net) for c in self.chunks):
            return None
        same: bool | None = fast.same4(self.chunks, rec.size, 12, 20 if is_net else -1, wanted)
        return same

    def finish(self, known: Known) -> LiveSet:
        """The set, its entries decoded now, or taken from ``known`` when it has this set's
        digest (the members those very bytes were found to decode to). Decoded entries
        that are exactly the members ``known`` has for the set are given as that very
        frozenset (a converged set: the diff then compares nothing twice)."""
        digest = self.digest()
        hit = known.get(self.name)
        # True or False: told without decoding; None: not told (no wish, or not so)
        told = None if hit is None else hit[0] == digest or self._holds_exactly(hit[1])
        if hit is not None and told:
            members: frozenset[str] | None = hit[1]
        else:
            for chunk in self.chunks:
                _decode_adt(self, memoryview(chunk), 0, len(chunk))
            members = None
            if self.decodable:
                # A kernel set holds each entry once: as many, all of them wanted, is equal.
                same = told is None and hit is not None and len(hit[1]) == len(self.members)
                if same and hit is not None and hit[1].issuperset(self.members):
                    members = hit[1]
                else:
                    members = frozenset(self.members)
        options = tuple(sorted(n for n, bit in SET_OPTIONS.items() if self.flags & bit))
        elements = self.elements
        if elements is None:
            elements = len(members) if members is not None else 0
        header = SetHeader(
            name=self.name,
            type=self.type,
            family=_FAMILY_NAMES.get(self.family, str(self.family)),
            revision=self.revision,
            hashsize=self.hashsize,
            maxelem=self.maxelem,
            references=self.references,
            elements=elements,
            timeout=self.timeout,
            options=options,
        )
        if members is None:
            return LiveSet(header=header, members=None, dump_digest=digest)
        return LiveSet(
            header=header,
            members=members,
            nomatch=frozenset(self.nomatch),
            expiring=frozenset(self.expiring),
            dump_digest=digest,
        )


def _ntop6(addr: bytes) -> str:
    """``str(ipaddress.IPv6Address(addr))``, via the faster inet_ntop where they agree.

    Both compress the longest (leftmost) run of two or more zero groups; they differ only for
    IPv4-mapped/compatible addresses, which inet_ntop writes with a dotted quad.
    """
    text = socket.inet_ntop(socket.AF_INET6, addr)
    if "." in text:
        return str(ipaddress.IPv6Address(addr))
    return text


def _decode_adt(acc: _Acc, buf: memoryview, start: int, end: int) -> None:
    """Append the members in the ADT nest payload [start, end) to ``acc``."""
    if not acc.decodable:
        return
    if acc.type not in _DECODABLE_TYPES or acc.family not in (NFPROTO_IPV4, NFPROTO_IPV6):
        acc.decodable = False
        return
    v4 = acc.family == NFPROTO_IPV4
    is_net = acc.type == "hash:net"
    if (is_net or acc.netmask is None) and _decode_adt_fast(acc, buf, start, end, v4, is_net):
        return
    # Generic walk: tolerates extensions (timeout, counters, comment ...) and unusual layouts.
    # A nomatch entry is an exception, not a member; an entry with a timeout of its own
    # (not 0, which is "permanent") is a member that expires.
    host = 32 if v4 else 128
    for etype, estart, eend in _iter_attrs(buf, start, end):
        if etype != IPSET_ATTR_DATA:
            continue
        addr: bytes | None = None
        cidr = host if is_net or acc.netmask is None else acc.netmask
        nomatch = False
        timeout = 0
        for atype, astart, aend in _iter_attrs(buf, estart, eend):
            if atype == IPSET_ATTR_IP:
                for itype, istart, iend in _iter_attrs(buf, astart, aend):
                    if itype in (IPSET_ATTR_IPADDR_IPV4, IPSET_ATTR_IPADDR_IPV6):
                        addr = bytes(buf[istart:iend])
            elif atype == IPSET_ATTR_CIDR and aend > astart:
                cidr = buf[astart]
            elif atype == IPSET_ATTR_CADT_FLAGS and aend - astart >= 4:
                nomatch = bool(_NET32.unpack_from(buf, astart)[0] & IPSET_FLAG_NOMATCH)
            elif atype == IPSET_ATTR_TIMEOUT and aend - astart >= 4:
                timeout = _NET32.unpack_from(buf, astart)[0]
        if addr is None or len(addr) != (4 if v4 else 16):
            acc.decodable = False
            return
        text = f"{socket.inet_ntoa(addr)}/{cidr}" if v4 else f"{_ntop6(addr)}/{cidr}"
        if nomatch:
            acc.nomatch.append(text)
            continue
        acc.members.append(text)
        if timeout:
            acc.expiring.append(text)


def _same_headers(chunk: memoryview, size: int, offsets: tuple[int, ...]) -> bool:
    """True if every ``size``-byte record of ``chunk`` has the first record's bytes at
    ``offsets`` (the NLA headers), checked with C-speed strided slices, not per record."""
    count = len(chunk) // size
    return all(chunk[k::size].tobytes().count(chunk[k]) == count for k in offsets)


def _first_fixed(chunk: memoryview | bytes, rec: struct.Struct, v4: bool, is_net: bool) -> bool:
    """Whether the first record of ``chunk`` has the fixed layout ``rec``: its NLA header
    words checked by type (flag bits such as NLA_F_NET_BYTEORDER differ between kernel
    versions)."""
    first = rec.unpack_from(chunk, 0)
    data_hw, ip_hw, addr_hw = first[0], first[1], first[2]
    alen = 4 if v4 else 16
    mask = NLA_TYPE_MASK
    if (
        data_hw & 0xFFFF != rec.size
        or (data_hw >> 16) & mask != IPSET_ATTR_DATA
        or ip_hw & 0xFFFF != 8 + alen
        or (ip_hw >> 16) & mask != IPSET_ATTR_IP
        or addr_hw & 0xFFFF != 4 + alen
        or (addr_hw >> 16) & mask != (IPSET_ATTR_IPADDR_IPV4 if v4 else IPSET_ATTR_IPADDR_IPV6)
    ):
        return False
    if is_net:
        cidr_hw = first[4]
        if cidr_hw & 0xFFFF != 5 or (cidr_hw >> 16) & mask != IPSET_ATTR_CIDR:
            return False
    return True


def _decode_adt_fast(
    acc: _Acc, buf: memoryview, start: int, end: int, v4: bool, is_net: bool
) -> bool:
    """Decode fixed-layout entries with one ``iter_unpack``; False if the layout differs.

    The first entry's NLA header words are checked by type (flag bits such as
    NLA_F_NET_BYTEORDER differ between kernel versions); every other entry must carry the same
    header bytes, which :func:`_same_headers` verifies in bulk.
    """
    rec = (_DUMP_NET4 if v4 else _DUMP_NET6) if is_net else (_DUMP_IP4 if v4 else _DUMP_IP6)
    size = rec.size
    if end <= start or (end - start) % size:
        return end == start
    chunk = buf[start:end]
    if not _first_fixed(chunk, rec, v4, is_net):
        return False
    alen = 4 if v4 else 16
    offsets = tuple(range(12))
    if is_net:
        offsets += tuple(range(12 + alen, 16 + alen))
    fast = native.netfast
    if v4 and fast is not None:  # the headers compared and the strings made in C
        made: list[str] | None = fast.format4(chunk, size, 12, 20 if is_net else -1)
        if made is None:
            return False
        acc.members.extend(made)
        return True
    if not _same_headers(chunk, size, offsets):
        return False
    if v4:
        octets = _OCTETS
        if is_net:
            acc.members.extend(
                f"{octets[a]}.{octets[b]}.{octets[c]}.{octets[d]}/{octets[n]}"
                for a, b, c, d, n in _NET4_FIELDS.iter_unpack(chunk)
            )
        else:
            acc.members.extend(
                f"{octets[a]}.{octets[b]}.{octets[c]}.{octets[d]}/32"
                for a, b, c, d in _IP4_FIELDS.iter_unpack(chunk)
            )
    elif is_net:
        acc.members.extend(f"{_ntop6(r[3])}/{r[5]}" for r in rec.iter_unpack(chunk))
    else:
        acc.members.extend(f"{_ntop6(r[3])}/128" for r in rec.iter_unpack(chunk))
    return True


def _decode_header(acc: _Acc, buf: memoryview, start: int, end: int) -> None:
    for atype, astart, aend in _iter_attrs(buf, start, end):
        if aend - astart >= 4:
            value = _NET32.unpack_from(buf, astart)[0]
        elif aend - astart == 1:
            value = buf[astart]
        else:
            continue
        if atype == IPSET_ATTR_HASHSIZE:
            acc.hashsize = value
        elif atype == IPSET_ATTR_MAXELEM:
            acc.maxelem = value
        elif atype == IPSET_ATTR_REFERENCES:
            acc.references = value
        elif atype == IPSET_ATTR_ELEMENTS:
            acc.elements = value
        elif atype == IPSET_ATTR_NETMASK:
            acc.netmask = value
        elif atype == IPSET_ATTR_TIMEOUT:
            acc.timeout = value
        elif atype == IPSET_ATTR_CADT_FLAGS:
            acc.flags = value


def _decode_error(buf: memoryview, start: int, end: int) -> _KernelError | None:
    """Decode the NLMSG_ERROR payload at [start, end) of ``buf``: None for an ack, else the
    error and the echoed LINENO."""
    code = _error_code(buf, start)
    if code == 0:
        return None
    lineno: int | None = None
    echo = start + 4  # the request's nlmsghdr follows; its payload only for LINENO errors
    if end - echo >= _HDR_LEN:
        echo_len = _NLMSGHDR.unpack_from(buf, echo)[0]
        attrs_end = min(echo + echo_len, end)
        for atype, astart, aend in _iter_attrs(buf, echo + _HDR_LEN, attrs_end):
            if atype == IPSET_ATTR_LINENO and aend - astart == 4:
                lineno = _U32.unpack_from(buf, astart)[0]
                break
    return _KernelError(code, lineno)


def decode_list_dump(
    datagrams: Iterable[bytes | memoryview],
    seq: int,
    name: str | None = None,
    known: Known | None = None,
) -> dict[str, LiveSet]:
    """Decode the kernel's answer to an ``IPSET_CMD_LIST`` dump request into sets, by name.

    ``datagrams`` are the netlink datagrams received after sending request ``seq`` (each the
    bytes of one ``recv``), in order; they are consumed only up to the ``NLMSG_DONE`` that
    ends the dump. Messages of other requests are skipped. ``name`` is the set the request
    named (None for a dump of every set): an ``ENOENT`` error for it means that set does not
    exist and gives ``{}``; any other error raises :class:`NetlinkError` in ipset(8)'s words.
    Pure: the same bytes always give the same sets (this is :meth:`IpsetClient.list_sets`'s
    and :meth:`IpsetClient.get`'s decoding, without the socket). A set whose entries have
    the digest ``known`` gives for it takes the members ``known`` gives, undecoded.
    """
    known = known or {}
    sets: dict[str, _Acc] = {}
    for datagram in datagrams:
        view = memoryview(datagram)
        for mtype, _flags, start, end in _split_messages(view, seq):
            if mtype == NLMSG_DONE:
                return {n: a.finish(known) for n, a in sets.items()}
            if mtype == NLMSG_ERROR:
                err = _decode_error(view, start, end)
                if err is None:
                    continue
                if err.code == _errno.ENOENT and name is not None:
                    return {}
                raise NetlinkError(
                    _ipset_error(err.code, IPSET_CMD_LIST),
                    errno=err.code,
                    address=f"ipset/{name}" if name else "ipset",
                )
            if mtype != (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST:
                continue
            _decode_list_message(sets, view, start, end)
    return {n: a.finish(known) for n, a in sets.items()}


def _decode_list_message(sets: dict[str, _Acc], view: memoryview, start: int, end: int) -> None:
    """Fold one IPSET_CMD_LIST message (payload [start, end) of ``view``) into ``sets``."""
    acc: _Acc | None = None
    adt: tuple[int, int] | None = None
    data: tuple[int, int] | None = None
    for atype, astart, aend in _iter_attrs(view, start + _NFGENMSG.size, end):
        if atype == IPSET_ATTR_SETNAME:
            set_name = _cstr(view, astart, aend)
            acc = sets.get(set_name)
            if acc is None:
                acc = sets[set_name] = _Acc(set_name)
        elif acc is None:
            continue
        elif atype == IPSET_ATTR_TYPENAME:
            acc.type = _cstr(view, astart, aend)
        elif atype == IPSET_ATTR_FAMILY and aend > astart:
            acc.family = view[astart]
        elif atype == IPSET_ATTR_REVISION and aend > astart:
            acc.revision = view[astart]
        elif atype == IPSET_ATTR_DATA:
            data = (astart, aend)
        elif atype == IPSET_ATTR_ADT:
            adt = (astart, aend)
    if acc is None:
        return
    if data is not None:
        _decode_header(acc, view, *data)
    if adt is not None:
        # Kept (copied: the receive buffer is reused) and decoded, if need be, when the
        # dump is complete (:meth:`_Acc.finish`).
        acc.chunks.append(bytes(view[adt[0] : adt[1]]))


def _encode_members(
    family: str, members: Iterable[str], address: str, timeout: int | None = None
) -> tuple[bytes, int, list[str]]:
    """The entries of every member, one after the other (each with LINENO = its 1-based
    position), the size of one entry, and the member strings.

    With ``timeout`` each entry carries it (``IPSET_ATTR_TIMEOUT``; ``0`` is a permanent entry
    in a set with a default timeout). Raises :class:`ProviderError` naming the first malformed
    member before anything is sent. The kernel masks the address with the prefix, so
    ``10.1.2.3/8`` is stored as ``10.0.0.0/8``.
    """
    extra = b"" if timeout is None else _nla_net32(IPSET_ATTR_TIMEOUT, timeout)
    if family == "inet":
        af, host, pack = socket.AF_INET, 32, _ENTRY4.pack
        head = (32 + len(extra), _DATA_T, 12, _IP_T, 8, _V4_T)
    elif family == "inet6":
        af, host, pack = socket.AF_INET6, 128, _ENTRY6.pack
        head = (44 + len(extra), _DATA_T, 24, _IP_T, 20, _V6_T)
    else:
        raise ProviderError(f"unknown family {family!r} (inet | inet6)", address=address)
    h0, h1, h2, h3, h4, h5 = head
    pton = socket.inet_pton
    names = list(members)
    fast = native.netfast
    if fast is not None:  # the same bytes, built in C; None: a malformed member, found below
        done = fast.encode(names, af == socket.AF_INET6, _HEAD.pack(*head),
                           _NLA.pack(5, IPSET_ATTR_CIDR), _NLA.pack(8, IPSET_ATTR_CADT_LINENO),
                           extra)  # fmt: skip
        if done is not None:
            return done, head[0], names
    out: list[bytes] = []
    append = out.append
    for lineno, member in enumerate(names, 1):
        addr, sep, plen = member.partition("/")
        try:
            packed = pton(af, addr)
            if sep:
                if not (plen.isascii() and plen.isdigit()):
                    raise ValueError(plen)
                cidr = int(plen)
                if cidr > host:
                    raise ValueError(plen)
            else:
                cidr = host
        except (OSError, ValueError, TypeError, AttributeError):
            raise ProviderError(
                f"member {member!r} is not an {family} address or network; nothing was applied",
                address=address,
            ) from None
        append(pack(h0, h1, h2, h3, h4, h5, packed, 5, IPSET_ATTR_CIDR, cidr, 8,
                    IPSET_ATTR_CADT_LINENO, lineno) + extra)  # fmt: skip
    return b"".join(out), head[0], names


class IpsetClient:
    """A netlink connection to the ipset subsystem of the calling thread's network namespace.

    The namespace is the one current when the client is created; later ``setns()`` calls of the
    thread do not move it. Not thread-safe: use one client per thread.
    """

    def __init__(self) -> None:
        """Open the NETLINK_NETFILTER socket (raises OSError if netlink is unavailable)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                                 (SO_SNDBUFFORCE, socket.SO_SNDBUF)):  # fmt: skip
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, _SOCK_BUF)
                except OSError:  # not CAP_NET_ADMIN: the sysctl-capped size will have to do
                    sock.setsockopt(socket.SOL_SOCKET, plain, _SOCK_BUF)
            with contextlib.suppress(OSError):  # older kernels: errors just echo more
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        self._seq = 0
        self._buf = bytearray(_RECV_BYTES)
        self._view = memoryview(self._buf)
        self._revisions: dict[tuple[str, int], int] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket; idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> IpsetClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport -----------------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ProviderError("IpsetClient is closed")
        return self._sock

    def _send(self, cmd: int, flags: int, attrs: bytes, family: int = NFPROTO_IPV4) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        msg_type = (NFNL_SUBSYS_IPSET << 8) | cmd
        head = _NLMSGHDR.pack(_HDR_LEN + len(attrs), msg_type, flags, self._seq, 0)
        self._socket().sendall(head + _NFGENMSG.pack(family, NFNETLINK_V0, 0) + attrs)
        return self._seq

    def _recv(self) -> int:
        n = self._socket().recv_into(self._buf, len(self._buf), socket.MSG_TRUNC)
        if n > len(self._buf):
            raise ProviderError(f"netlink message of {n} bytes exceeds the receive buffer")
        return n

    def _datagrams(self) -> Iterator[memoryview]:
        """Yield each received datagram as a view into the receive buffer (``self._view``
        from offset 0), valid until the next iteration step receives again."""
        view = self._view
        while True:
            yield view[: self._recv()]

    def _messages(self, seq: int) -> Iterator[tuple[int, int, int, int]]:
        """Yield ``(type, flags, payload start, payload end)`` of the answers to ``seq``.

        The payload offsets point into ``self._view``, valid until the next iteration step
        receives again. NLMSG_ERROR answers are yielded too.
        """
        for datagram in self._datagrams():
            yield from _split_messages(datagram, seq)

    def _error_of(self, start: int, end: int) -> _KernelError | None:
        """Decode an NLMSG_ERROR payload: None for an ack, else the error and echoed LINENO."""
        return _decode_error(self._view, start, end)

    def _request(self, cmd: int, flags: int, attrs: bytes, family: int = NFPROTO_IPV4) -> None:
        """Send one request with NLM_F_ACK and wait for its ack; raise _KernelError on error."""
        seq = self._send(cmd, flags | NLM_F_REQUEST | NLM_F_ACK, attrs, family)
        for mtype, _flags, start, end in self._messages(seq):
            if mtype == NLMSG_ERROR:
                err = self._error_of(start, end)
                if err is not None:
                    raise err
                return

    @staticmethod
    def _base(name: str) -> bytes:
        return _nla_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL) + _nla_str(IPSET_ATTR_SETNAME, name)

    def _control(self, cmd: int, name: str, attrs: bytes, family: int = NFPROTO_IPV4) -> None:
        """Send a control command with NLM_F_EXCL, as ipset(8) does without ``-exist``.

        Without NLM_F_EXCL the kernel sets IPSET_FLAG_EXIST, which makes e.g. DESTROY of a
        missing set succeed silently (newer kernels) and CREATE of an existing, identical set.
        """
        _check_name(name)
        try:
            self._request(cmd, NLM_F_EXCL, self._base(name) + attrs, family)
        except _KernelError as e:
            raise NetlinkError(
                _ipset_error(e.code, cmd), errno=e.code, address=f"ipset/{name}"
            ) from None

    # --- reading -------------------------------------------------------------------------------

    def _dump(self, name: str | None, known: Known | None = None) -> dict[str, LiveSet]:
        attrs = _nla_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL)
        if name is not None:
            _check_name(name)
            attrs += _nla_str(IPSET_ATTR_SETNAME, name)
        seq = self._send(IPSET_CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP, attrs)
        return decode_list_dump(self._datagrams(), seq, name, known)

    def list_sets(self, known: Known | None = None) -> dict[str, LiveSet]:
        """Every set of the namespace, headers and members, read with ONE LIST dump.

        Members of a set are collected from all messages of the (multi-part) dump; a set
        whose entries have the digest ``known`` gives takes its members from there
        (:func:`decode_list_dump`). Returns ``{}`` when the namespace has no sets.
        """
        return self._dump(None, known)

    def get(self, name: str) -> LiveSet | None:
        """The set ``name`` (header and members, from a dump of that set), or None if absent."""
        return self._dump(name).get(name)

    # --- control -------------------------------------------------------------------------------

    def _revision(self, set_type: str, family: int, address: str) -> int:
        """The newest revision of ``set_type`` the kernel supports (IPSET_CMD_TYPE), cached."""
        key = (set_type, family)
        cached = self._revisions.get(key)
        if cached is not None:
            return cached
        attrs = (
            _nla_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL)
            + _nla_str(IPSET_ATTR_TYPENAME, set_type)
            + _nla_u8(IPSET_ATTR_FAMILY, family)
        )
        seq = self._send(IPSET_CMD_TYPE, NLM_F_REQUEST | NLM_F_ACK, attrs, family)
        revision: int | None = None
        view = self._view
        for mtype, _flags, start, end in self._messages(seq):
            if mtype == NLMSG_ERROR:
                err = self._error_of(start, end)
                if err is not None:
                    code = err.code
                    if code in (_errno.ENOENT, _errno.EEXIST):  # how the kernel says "no type"
                        code = IPSET_ERR_FIND_TYPE
                    raise NetlinkError(
                        f"{_ipset_error(code, IPSET_CMD_TYPE)}: {set_type}",
                        errno=err.code,
                        address=address,
                    )
                break
            for atype, astart, aend in _iter_attrs(view, start + _NFGENMSG.size, end):
                if atype == IPSET_ATTR_REVISION and aend > astart:
                    revision = view[astart]
        if revision is None:
            raise NetlinkError(
                f"Kernel error received: no revision reported for set type {set_type}",
                errno=IPSET_ERR_PROTOCOL,
                address=address,
            )
        self._revisions[key] = revision
        return revision

    def create(
        self,
        name: str,
        *,
        type: str = "hash:net",
        family: str = "inet",
        maxelem: int | None = None,
        hashsize: int | None = None,
        timeout: int | None = None,
        options: Iterable[str] = (),
    ) -> None:
        """Create an empty set (exclusive: NetlinkError EEXIST if ``name`` exists).

        Uses the newest revision of ``type`` the kernel supports; ``maxelem``/``hashsize``
        default to the kernel's (65536 / 1024). ``family`` is ``"inet"`` or ``"inet6"``.
        ``timeout`` (seconds) gives the set timeout support with that default; ``options``
        are further create options by ipset(8)'s names (:data:`SET_OPTIONS`): used to rebuild
        a set that has them.
        """
        address = f"ipset/{name}"
        _check_name(name)
        nfproto = _FAMILIES.get(family)
        if nfproto is None:
            raise ProviderError(f"unknown family {family!r} (inet | inet6)", address=address)
        flags = 0
        for option in options:
            if option not in SET_OPTIONS:
                raise ProviderError(
                    f"unknown set option {option!r} ({', '.join(SET_OPTIONS)})", address=address
                )
            flags |= SET_OPTIONS[option]
        revision = self._revision(type, nfproto, address)
        data = b""
        if hashsize is not None:
            data += _nla_net32(IPSET_ATTR_HASHSIZE, hashsize)
        if maxelem is not None:
            data += _nla_net32(IPSET_ATTR_MAXELEM, maxelem)
        if timeout is not None:
            data += _nla_net32(IPSET_ATTR_TIMEOUT, timeout)
        if flags:
            data += _nla_net32(IPSET_ATTR_CADT_FLAGS, flags)
        attrs = (
            _nla_str(IPSET_ATTR_TYPENAME, type)
            + _nla_u8(IPSET_ATTR_REVISION, revision)
            + _nla_u8(IPSET_ATTR_FAMILY, nfproto)
            + _nla(IPSET_ATTR_DATA | NLA_F_NESTED, data)
        )
        self._control(IPSET_CMD_CREATE, name, attrs, nfproto)

    def destroy(self, name: str) -> None:
        """Destroy set ``name``. Raises NetlinkError if it is absent (ENOENT) or in use."""
        self._control(IPSET_CMD_DESTROY, name, b"")

    def swap(self, a: str, b: str) -> None:
        """Atomically exchange the contents (type, members ...) of sets ``a`` and ``b``.

        Rules referencing either name keep referencing that name. Raises NetlinkError if a set
        is missing or the types do not match.
        """
        _check_name(b)
        self._control(IPSET_CMD_SWAP, a, _nla_str(IPSET_ATTR_SETNAME2, b))

    def rename(self, old: str, new: str) -> None:
        """Rename set ``old`` to ``new``. Raises NetlinkError if ``new`` exists or ``old`` not."""
        _check_name(new)
        self._control(IPSET_CMD_RENAME, old, _nla_str(IPSET_ATTR_SETNAME2, new))

    # --- bulk add / delete ---------------------------------------------------------------------

    def add_members(
        self, name: str, family: str, members: Iterable[str], *, timeout: int | None = None
    ) -> None:
        """Add ``members`` (CIDR or address strings of ``family``) to set ``name``.

        Idempotent: members already present are not an error (the kernel then rewrites the
        entry's extensions: with ``timeout`` its timeout, so ``timeout=0`` makes an expiring
        entry permanent). ``timeout`` needs a set with timeout support. Sent in batches of
        many entries per netlink message, each acknowledged. On failure raises NetlinkError
        naming the offending member; members before it were applied, it and those after it
        were not. A malformed member raises ProviderError before anything is sent.
        """
        self._adt(IPSET_CMD_ADD, name, family, members, timeout)

    def delete_members(self, name: str, family: str, members: Iterable[str]) -> None:
        """Delete ``members`` from set ``name``; idempotent (absent members are not an error).

        Batched and error-reported like :meth:`add_members`.
        """
        self._adt(IPSET_CMD_DEL, name, family, members)

    def _adt(
        self,
        cmd: int,
        name: str,
        family: str,
        members: Iterable[str],
        timeout: int | None = None,
    ) -> None:
        address = f"ipset/{name}"
        _check_name(name)
        entries, size, names = _encode_members(family, members, address, timeout)
        if not names:
            return
        nfproto = _FAMILIES[family]
        # LINENO at command level switches on the kernel's per-entry error reporting.
        prefix = self._base(name) + _nla(IPSET_ATTR_LINENO, _U32.pack(0))
        room = _BATCH_BYTES - _HDR_LEN - len(prefix) - 4
        per = max(1, room // size)
        adt_type = IPSET_ATTR_ADT | NLA_F_NESTED
        total = len(names)
        verb = "add" if cmd == IPSET_CMD_ADD else "delete"
        for first in range(0, total, per):
            body = entries[first * size : min(first + per, total) * size]
            attrs = prefix + _NLA.pack(4 + len(body), adt_type) + body
            try:
                self._request(cmd, 0, attrs, nfproto)
            except _KernelError as e:
                raise NetlinkError(
                    self._adt_message(e, cmd, verb, names, first, min(first + per, total)),
                    errno=e.code,
                    address=address,
                ) from None

    @staticmethod
    def _adt_message(
        e: _KernelError, cmd: int, verb: str, names: list[str], first: int, last: int
    ) -> str:
        text = _ipset_error(e.code, cmd)
        total = len(names)
        if e.lineno is not None and first < e.lineno <= last:
            i = e.lineno - 1
            return (
                f"{text}: cannot {verb} member {names[i]} (#{i + 1} of {total}); "
                f"the {i} member(s) before it were applied, it and the {total - i - 1} "
                "after it were not"
            )
        return (
            f"{text}: {verb} failed in the batch of members #{first + 1}..#{last} of {total} "
            f"(first {names[first]}); the {first} member(s) of earlier batches were applied, "
            "those of this batch and later ones were not"
        )
