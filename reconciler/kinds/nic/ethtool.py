"""The syscall boundary of the ``nic`` kind: links, ring sizes and features of NICs.

Everything the NIC provider reads or writes on a host goes through :class:`EthtoolIO`, a thin
layer over two sockets of the stdlib: an rtnetlink socket for the link dump (``RTM_GETLINK``,
decoded with :mod:`reconciler.netlinksock`) and an ``AF_INET`` datagram socket for the ethtool
ioctl (``SIOCETHTOOL``: ``ETHTOOL_GRINGPARAM``/``SRINGPARAM`` for rings,
``ETHTOOL_GSSET_INFO`` + ``GSTRINGS`` for the feature names, ``ETHTOOL_GFEATURES``/
``SFEATURES`` for features), the structs of ``include/uapi/linux/ethtool.h`` packed with
:mod:`struct`. It returns plain data (:class:`LinkLive`, :class:`RingsLive`,
:class:`FeatureLive`) and raises only ``OSError`` with the kernel's errno, so the provider has
one error path. Tests inject faults here and nowhere else (see
``tests/kinds/nic/test_kernel.py``).

Why the ethtool ioctl rather than ethtool's netlink interface?

* the ioctl reports the errno of the one write it makes (``ENOMEM`` for rings that do not
  fit), which is what the provider retries or reports;
* the feature names (``ETH_SS_FEATURES``) are the kernel's global ``netdev_features_strings``,
  identical for every device, so they are read once per :class:`EthtoolIO`: the read of 64 NICs
  is then one ``ETHTOOL_GFEATURES`` per NIC;
* both paths end in the same driver callbacks (``get/set_ringparam``, ``ndo_set_features``).

Nothing beyond the stdlib is imported (a third-party netlink library cost ~0.3 s to import,
more than the whole read of 64 NICs). Both sockets are opened in the network namespace of the
calling thread at construction time.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from reconciler.netlinksock import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    cstr,
    error_code,
    iter_attrs,
    nla,
    split_messages,
)

#: Ring fields as written in YAML -> the ``struct ethtool_ringparam`` field.
RING_IOCTL_FIELDS: dict[str, str] = {
    "rx": "rx",
    "tx": "tx",
    "rx-mini": "rx_mini",
    "rx-jumbo": "rx_jumbo",
}

# include/uapi/linux/sockios.h, include/uapi/linux/ethtool.h, include/uapi/linux/if.h
SIOCETHTOOL = 0x8946
ETHTOOL_GRINGPARAM = 0x10
ETHTOOL_SRINGPARAM = 0x11
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GFEATURES = 0x3A
ETHTOOL_SFEATURES = 0x3B
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
IFNAMSIZ = 16

# ETHTOOL_SFEATURES returns these flags (positive) when the request was not fully honoured
# (include/uapi/linux/ethtool.h).
ETHTOOL_F_UNSUPPORTED = 1 << 2
ETHTOOL_F_WISH = 1 << 0

# struct ethtool_ringparam (include/uapi/linux/ethtool.h): cmd, then the four preset maxima
# (rx, rx_mini, rx_jumbo, tx) and the four current sizes in the same order; all __u32.
_RINGPARAM = struct.Struct("=9I")
_RINGPARAM_FIELDS = (
    "cmd",
    *("rx_max", "rx_mini_max", "rx_jumbo_max", "tx_max"),
    *("rx", "rx_mini", "rx_jumbo", "tx"),
)
# struct ethtool_gfeatures: cmd, size (number of blocks), then ``size`` blocks of
# struct ethtool_get_features_block {available, requested, active, never_changed} (__u32 each).
_GFEATURES_HEAD = struct.Struct("=II")
_FEATURES_BLOCK = struct.Struct("=4I")
# struct ethtool_sfeatures: cmd, size, then ``size`` blocks of
# struct ethtool_set_features_block {valid, requested}.
_SFEATURES_BLOCK = struct.Struct("=2I")
# struct ethtool_sset_info: cmd, reserved, sset_mask (__u64), then one __u32 per set asked for.
_SSET_INFO = struct.Struct("=IIQI")
# struct ethtool_gstrings: cmd, string_set, len, then len * ETH_GSTRING_LEN bytes.
_GSTRINGS_HEAD = struct.Struct("=III")
# struct ifreq: the name, then (a union) the pointer to the ethtool command; 40 bytes on
# 64-bit, native layout because of the pointer.
_IFREQ = struct.Struct("@16sP16x")

# rtnetlink (include/uapi/linux/rtnetlink.h, if_link.h): the link dump.
NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_GETLINK = 18
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_EXT_MASK = 29
IFLA_LINK_NETNSID = 37
RTEXT_FILTER_SKIP_STATS = 1 << 3  # leave the counters out: the dump is a fraction the size
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_U32 = struct.Struct("=I")
_RECV_BYTES = 1 << 18


class LinkLive(NamedTuple):
    """One network device as rtnetlink reports it.

    ``kind`` is ``IFLA_INFO_KIND`` (``veth``, ``bridge``, ``bond``, ``vlan``, ``tun`` ...),
    ``None`` for a physical NIC. ``master`` is the name of the bridge or bond it is enslaved to
    (``IFLA_MASTER``); ``parent`` the lower device of a stacked device such as a VLAN
    (``IFLA_LINK``; ``None`` for a veth, whose ``IFLA_LINK`` is its peer, or when the lower
    device lives in another namespace).
    """

    name: str
    kind: str | None = None
    master: str | None = None
    parent: str | None = None


class RingsLive(NamedTuple):
    """Current ring sizes and the driver's preset maxima, keyed by YAML field name."""

    current: Mapping[str, int]
    maximum: Mapping[str, int]


class FeatureLive(NamedTuple):
    """One kernel feature of a NIC: ``active`` now, ``fixed`` when the driver does not let it
    change (not in ``hw_features``, or ``NETIF_F_NEVER_CHANGE``: ethtool's ``[fixed]``)."""

    active: bool
    fixed: bool = False


def unpack_ringparam(data: bytes) -> RingsLive:
    """The ring sizes in the bytes of a ``struct ethtool_ringparam`` (``ETHTOOL_GRINGPARAM``'s
    answer, native byte order): current sizes and preset maxima, keyed by YAML field name.
    Bytes after the struct are ignored."""
    r = dict(zip(_RINGPARAM_FIELDS, _RINGPARAM.unpack_from(data), strict=True))
    return RingsLive(
        current={k: r[f] for k, f in RING_IOCTL_FIELDS.items()},
        maximum={k: r[f + "_max"] for k, f in RING_IOCTL_FIELDS.items()},
    )


def unpack_features(strings: Sequence[str], data: bytes) -> dict[str, FeatureLive]:
    """The features in the bytes of a ``struct ethtool_gfeatures`` (``ETHTOOL_GFEATURES``'s
    answer, native byte order), named by ``strings`` (the ``ETH_SS_FEATURES`` string set:
    bit ``i`` is ``strings[i]``).

    A feature is ``active`` when its bit is set in the block's ``active`` word, and ``fixed``
    when it is not in ``available`` (``hw_features``) or is in ``never_changed``. Unnamed bits
    (empty strings) are left out; a name given twice takes its last bit (as
    :func:`pack_sfeatures` does). Raises ``struct.error`` when ``data`` holds fewer blocks
    than ``strings`` needs.
    """
    out: dict[str, FeatureLive] = {}
    for name, i in _feature_bits(strings).items():
        available, _requested, active, never_changed = _FEATURES_BLOCK.unpack_from(
            data, _GFEATURES_HEAD.size + (i // 32) * _FEATURES_BLOCK.size
        )
        bit = 1 << (i % 32)
        out[name] = FeatureLive(
            active=active & bit != 0,
            fixed=available & bit == 0 or never_changed & bit != 0,
        )
    return out


def _feature_bits(strings: Sequence[str]) -> dict[str, int]:
    """Feature name -> its bit (the last one for a name given twice), unnamed bits left out."""
    bits: dict[str, int] = {}
    for i, name in enumerate(strings):
        bits[name] = i
    bits.pop("", None)
    return bits


def pack_sfeatures(strings: Sequence[str], features: Mapping[str, bool]) -> bytes:
    """The ``struct ethtool_sfeatures`` that switches ``features`` (kernel names, bits by
    ``strings``) and no other: a feature's bit is set in ``valid``, and in ``requested``
    when it is to be on. ``KeyError`` for a name not in ``strings``."""
    blocks = [[0, 0] for _ in range(_blocks(len(strings)))]
    bits = _feature_bits(strings)
    for name, on in features.items():
        i = bits[name]
        block, bit = blocks[i // 32], 1 << (i % 32)
        block[0] |= bit
        if on:
            block[1] |= bit
    return _GFEATURES_HEAD.pack(ETHTOOL_SFEATURES, len(blocks)) + b"".join(
        _SFEATURES_BLOCK.pack(valid, requested) for valid, requested in blocks
    )


def _buffer(size: int) -> array.array[int]:
    """A zeroed buffer of ``size`` bytes at a fixed address, for the kernel to fill."""
    return array.array("B", bytes(size))


def _blocks(n_bits: int) -> int:
    """The number of 32-bit feature words that hold ``n_bits`` bits."""
    return (n_bits + 31) // 32


class EthtoolIO:
    """Reads and writes NIC settings in the calling thread's network namespace.

    ``writes`` counts the write syscalls issued (ring or feature sets), so tests and the
    benchmark can prove that a no-op run issued none.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._rtnl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            self._rtnl.bind((0, 0))
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0
        self._strings: list[str] | None = None
        self.writes = 0

    def close(self) -> None:
        """Close both sockets."""
        self._sock.close()
        self._rtnl.close()

    def __enter__(self) -> EthtoolIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ read
    def links(self) -> dict[str, LinkLive]:
        """Every link of the namespace, by name (one rtnetlink dump)."""
        found = list(self._dump_links())
        names = {index: name for index, name, *_ in found}
        out: dict[str, LinkLive] = {}
        for index, name, kind, master, lower, netnsid in found:
            parent = None
            # A veth's IFLA_LINK is its peer, not a lower device; IFLA_LINK_NETNSID means
            # the index is in another namespace, where our names mean nothing.
            if lower and lower != index and kind != "veth" and not netnsid:
                parent = names.get(lower)
            out[name] = LinkLive(
                name=name,
                kind=kind,
                master=names.get(master) if master else None,
                parent=parent,
            )
        return out

    def _dump_links(self) -> list[tuple[int, str, str | None, int, int, bool]]:
        """``RTM_GETLINK`` dump: (index, name, kind, master index, lower index, whether the
        lower index is another namespace's) per link. ``OSError`` with the kernel's errno."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nla(
            IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS)
        )
        head = NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETLINK,
                             NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0)  # fmt: skip
        self._rtnl.sendall(head + body)
        buf = bytearray(_RECV_BYTES)
        out: list[tuple[int, str, str | None, int, int, bool]] = []
        while True:
            n = self._rtnl.recv_into(buf, len(buf), socket.MSG_TRUNC)
            if n > len(buf):
                raise OSError(errno.EMSGSIZE, "rtnetlink answer larger than the receive buffer")
            view = memoryview(buf)[:n]
            for mtype, _flags, start, end in split_messages(view, self._seq):
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    code = error_code(view, start)
                    if code:
                        raise OSError(code, os.strerror(code))
                    continue
                if mtype == RTM_NEWLINK and end - start >= _IFINFOMSG.size:
                    out.append(_link_record(view, start, end))

    def _ethtool(self, ifname: str, cmd: array.array[int]) -> int:
        """One ``SIOCETHTOOL`` ioctl on ``ifname`` with the command struct ``cmd`` (filled in
        place by the kernel). Returns the ioctl's non-negative result; ``OSError`` with the
        kernel's errno (``ENODEV`` for a name no device can have)."""
        name = ifname.encode()
        if not name or len(name) >= IFNAMSIZ:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        # The kernel reads and writes the command through this address: ``cmd`` stays alive
        # (and unresized) for the call.
        ifreq = bytearray(_IFREQ.pack(name, cmd.buffer_info()[0]))
        result: int = fcntl.ioctl(self._sock, SIOCETHTOOL, ifreq)
        return result

    def _get(self, ifname: str, cmd: array.array[int]) -> None:
        """A read (or whole-struct write) command: a positive answer means the driver did
        not do it, reported as ``OSError(EOPNOTSUPP)``."""
        if self._ethtool(ifname, cmd):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    def _ringparam(self, ifname: str) -> array.array[int]:
        """``ETHTOOL_GRINGPARAM`` of ``ifname``: the filled ``struct ethtool_ringparam``."""
        cmd = _buffer(_RINGPARAM.size)
        _RINGPARAM.pack_into(cmd, 0, ETHTOOL_GRINGPARAM, *(0,) * 8)
        self._get(ifname, cmd)
        return cmd

    def get_rings(self, ifname: str) -> RingsLive:
        """Ring sizes of ``ifname`` (``ETHTOOL_GRINGPARAM``); ``OSError(EOPNOTSUPP)`` when the
        driver has none (veth)."""
        return unpack_ringparam(self._ringparam(ifname).tobytes())

    def _feature_strings(self, ifname: str) -> list[str]:
        """The ``ETH_SS_FEATURES`` string set (read through ``ifname`` on first use, then
        kept: netdev_features_strings is global, the same for every device)."""
        if self._strings is None:
            info = _buffer(_SSET_INFO.size)
            _SSET_INFO.pack_into(info, 0, ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0)
            self._ethtool(ifname, info)
            count = _SSET_INFO.unpack_from(info)[3]
            cmd = _buffer(_GSTRINGS_HEAD.size + count * ETH_GSTRING_LEN)
            _GSTRINGS_HEAD.pack_into(cmd, 0, ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
            self._get(ifname, cmd)
            raw = cmd.tobytes()
            self._strings = [
                raw[at : at + ETH_GSTRING_LEN].split(b"\0", 1)[0].decode("latin-1")
                for at in range(_GSTRINGS_HEAD.size, len(raw), ETH_GSTRING_LEN)
            ]
        return self._strings

    def _gfeatures(self, ifname: str) -> tuple[bytes, list[str]]:
        """``ETHTOOL_GFEATURES`` of ``ifname``: the bytes of the filled
        ``struct ethtool_gfeatures`` and the feature names of its bits."""
        strings = self._feature_strings(ifname)
        size = _blocks(len(strings))
        cmd = _buffer(_GFEATURES_HEAD.size + size * _FEATURES_BLOCK.size)
        _GFEATURES_HEAD.pack_into(cmd, 0, ETHTOOL_GFEATURES, size)
        self._get(ifname, cmd)
        return cmd.tobytes(), strings

    def get_features(self, ifname: str) -> dict[str, FeatureLive]:
        """Every feature of ``ifname`` (``ETHTOOL_GFEATURES``): active, and fixed or not."""
        data, strings = self._gfeatures(ifname)
        return unpack_features(strings, data)

    # ----------------------------------------------------------------------------- write
    def set_rings(self, ifname: str, values: Mapping[str, int]) -> None:
        """Set the given ring fields (YAML names) of ``ifname``; others keep their value."""
        self._write("rings", ifname, dict(values))

    def set_features(self, ifname: str, features: Mapping[str, bool]) -> None:
        """Switch the given kernel features of ``ifname``; others are left alone."""
        self._write("features", ifname, dict(features))

    def _write(self, what: str, ifname: str, values: dict[str, int | bool]) -> None:
        """The one function that issues write syscalls: tests wrap it to inject faults.

        Raises ``OSError`` with the kernel's errno (``ENOMEM``, ``EBUSY``, ``EOPNOTSUPP`` ...).
        """
        self.writes += 1
        if what == "rings":
            cmd = self._ringparam(ifname)
            fields = dict(zip(_RINGPARAM_FIELDS, _RINGPARAM.unpack_from(cmd), strict=True))
            for key, value in values.items():
                fields[RING_IOCTL_FIELDS[key]] = int(value)
            # ETHTOOL_SRINGPARAM takes the whole struct: unchanged fields carry their value.
            fields["cmd"] = ETHTOOL_SRINGPARAM
            _RINGPARAM.pack_into(cmd, 0, *(fields[f] for f in _RINGPARAM_FIELDS))
            self._get(ifname, cmd)
            return
        strings = self._feature_strings(ifname)
        packed = pack_sfeatures(strings, {k: bool(v) for k, v in values.items()})
        cmd = array.array("B", packed)
        # The result is read here: positive flags say the request was not fully honoured.
        ret = self._ethtool(ifname, cmd)
        if ret & ETHTOOL_F_UNSUPPORTED:
            raise OSError(errno.EOPNOTSUPP, "the driver refused to change some of the features")


def _link_record(
    view: memoryview, start: int, end: int
) -> tuple[int, str, str | None, int, int, bool]:
    """One ``RTM_NEWLINK`` message at [start, end) of ``view`` as :meth:`EthtoolIO._dump_links`
    returns it."""
    index = _IFINFOMSG.unpack_from(view, start)[2]
    name, kind, master, lower, netnsid = "", None, 0, 0, False
    for atype, astart, aend in iter_attrs(view, start + _IFINFOMSG.size, end):
        if atype == IFLA_IFNAME:
            name = cstr(view, astart, aend)
        elif atype == IFLA_MASTER and aend - astart >= 4:
            master = _U32.unpack_from(view, astart)[0]
        elif atype == IFLA_LINK and aend - astart >= 4:
            lower = _U32.unpack_from(view, astart)[0]
        elif atype == IFLA_LINK_NETNSID:
            netnsid = True
        elif atype == IFLA_LINKINFO:
            for itype, istart, iend in iter_attrs(view, astart, aend):
                if itype == IFLA_INFO_KIND:
                    kind = cstr(view, istart, iend)
    return index, name, kind, master, lower, netnsid
