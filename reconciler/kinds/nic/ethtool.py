"""The syscall boundary of the ``nic`` kind: links, ring sizes and features of NICs.

Everything the NIC provider reads or writes on a host goes through :class:`EthtoolIO`, a thin
layer over pyroute2 (``IPRoute`` for the link dump, ``pyroute2.ethtool.ioctl`` for rings and
features). It returns plain data (:class:`LinkLive`, :class:`RingsLive`, :class:`FeatureLive`)
and raises only ``OSError`` with the kernel's errno, so the provider has one error path.
Tests inject faults here and nowhere else (see ``tests/kinds/nic/test_kernel.py``).

Why the ethtool ioctl rather than pyroute2's ``Ethtool`` (netlink with ioctl fallback)?

* ``Ethtool.set_rings`` turns *any* netlink error into a silent retry over the ioctl, so the
  errno we can report is the ioctl's anyway, after two kernel writes instead of one;
* ``Ethtool.get_features`` is ioctl-only already, and re-reads the 60-odd feature names
  (``ETH_SS_FEATURES``) per call, parsing them byte by byte in Python. That string set is the
  kernel's global ``netdev_features_strings``, identical for every device, so it is read once
  per :class:`EthtoolIO` here: the read of 64 NICs is then several times faster;
* both paths end in the same driver callbacks (``get/set_ringparam``, ``ndo_set_features``).

pyroute2 is imported on first use (it costs ~0.3 s), so other kinds never pay for it.
All sockets are opened in the network namespace of the calling thread at construction time.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Ring fields as written in YAML -> the ``struct ethtool_ringparam`` field (pyroute2's name).
RING_IOCTL_FIELDS: dict[str, str] = {
    "rx": "rx",
    "tx": "tx",
    "rx-mini": "rx_mini",
    "rx-jumbo": "rx_jumbo",
}

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


@dataclass(frozen=True)
class LinkLive:
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


@dataclass(frozen=True)
class RingsLive:
    """Current ring sizes and the driver's preset maxima, keyed by YAML field name."""

    current: Mapping[str, int]
    maximum: Mapping[str, int]


@dataclass(frozen=True)
class FeatureLive:
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
    (empty strings) are left out; a name given twice takes its last bit, as pyroute2's
    ``EthtoolFeaturesList`` does. Raises ``struct.error`` when ``data`` holds fewer blocks than
    ``strings`` needs.
    """
    offsets: dict[str, int] = {}
    for i, name in enumerate(strings):
        offsets[name] = i
    out: dict[str, FeatureLive] = {}
    for name, i in offsets.items():
        if not name:  # unnamed bits (gaps in the string table) are not features
            continue
        available, _requested, active, never_changed = _FEATURES_BLOCK.unpack_from(
            data, _GFEATURES_HEAD.size + (i // 32) * _FEATURES_BLOCK.size
        )
        bit = 1 << (i % 32)
        out[name] = FeatureLive(
            active=active & bit != 0,
            fixed=available & bit == 0 or never_changed & bit != 0,
        )
    return out


class EthtoolIO:
    """Reads and writes NIC settings in the calling thread's network namespace.

    ``writes`` counts the write syscalls issued (ring or feature sets), so tests and the
    benchmark can prove that a no-op run issued none.
    """

    def __init__(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.ethtool import ioctl

        self._mod: Any = ioctl
        self._ioctl: Any = ioctl.IoctlEthtool()
        self._ipr: Any = IPRoute()
        self._strings: list[str] | None = None
        self.writes = 0

    def close(self) -> None:
        """Close both sockets."""
        self._ioctl.close()
        self._ipr.close()

    def __enter__(self) -> EthtoolIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ read
    def links(self) -> dict[str, LinkLive]:
        """Every link of the namespace, by name (one rtnetlink dump)."""
        msgs = list(self._ipr.get_links())
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in msgs}
        out: dict[str, LinkLive] = {}
        for m in msgs:
            name = m.get_attr("IFLA_IFNAME")
            info = m.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            master = m.get_attr("IFLA_MASTER")
            lower = m.get_attr("IFLA_LINK")
            parent = None
            # A veth's IFLA_LINK is its peer, not a lower device; IFLA_LINK_NETNSID means
            # the index is in another namespace, where our names mean nothing.
            if (
                lower
                and lower != m["index"]
                and kind != "veth"
                and m.get_attr("IFLA_LINK_NETNSID") is None
            ):
                parent = names.get(lower)
            out[name] = LinkLive(
                name=name,
                kind=kind,
                master=names.get(master) if master else None,
                parent=parent,
            )
        return out

    def _errno_call(self, fn: Any, *args: Any) -> Any:
        """Call a pyroute2 ioctl helper, mapping its exceptions back to ``OSError(errno)``."""
        try:
            return fn(*args)
        except self._mod.NotSupportedError as e:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported") from e
        except self._mod.NoSuchDevice as e:
            raise OSError(errno.ENODEV, "No such device") from e

    def get_rings(self, ifname: str) -> RingsLive:
        """Ring sizes of ``ifname`` (``ETHTOOL_GRINGPARAM``); ``OSError(EOPNOTSUPP)`` when the
        driver has none (veth)."""
        self._ioctl.change_ifname(ifname)
        return unpack_ringparam(bytes(self._errno_call(self._ioctl.get_rings)))

    def _gfeatures(self, ifname: str) -> tuple[Any, list[str]]:
        """``ETHTOOL_GFEATURES`` of ``ifname``: the filled ``struct ethtool_gfeatures`` (a
        pyroute2 ctypes structure) and the feature names of its bits."""
        mod = self._mod
        self._ioctl.change_ifname(ifname)
        if self._strings is None:
            # netdev_features_strings: global, the same for every device (see module doc).
            self._strings = self._errno_call(self._ioctl.get_stringset, mod.ETH_SS_FEATURES)
        cmd = mod.EthtoolGfeatures()
        cmd.cmd = mod.ETHTOOL_GFEATURES
        cmd.size = mod.feature_bits_to_blocks(len(self._strings))
        self._ioctl.ifreq.gfeatures = ctypes.pointer(cmd)
        self._errno_call(self._ioctl.ioctl)
        return cmd, self._strings

    def _feature_list(self, ifname: str) -> Any:
        """pyroute2's ``EthtoolFeaturesList`` of ``ifname``, ready to change and write back."""
        cmd, strings = self._gfeatures(ifname)
        return self._mod.EthtoolFeaturesList(cmd, strings)

    def get_features(self, ifname: str) -> dict[str, FeatureLive]:
        """Every feature of ``ifname`` (``ETHTOOL_GFEATURES``): active, and fixed or not."""
        cmd, strings = self._gfeatures(ifname)
        return unpack_features(strings, bytes(cmd))

    # ----------------------------------------------------------------------------- write
    def set_rings(self, ifname: str, values: Mapping[str, int]) -> None:
        """Set the given ring fields (YAML names) of ``ifname``; others keep their value."""
        self._write("rings", ifname, dict(values))

    def set_features(self, ifname: str, features: Mapping[str, bool]) -> None:
        """Switch the given kernel features of ``ifname``; others are left alone."""
        self._write("features", ifname, dict(features))

    def _write(self, what: str, ifname: str, values: dict[str, Any]) -> None:
        """The one function that issues write syscalls: tests wrap it to inject faults.

        Raises ``OSError`` with the kernel's errno (``ENOMEM``, ``EBUSY``, ``EOPNOTSUPP`` ...).
        """
        self.writes += 1
        if what == "rings":
            self._ioctl.change_ifname(ifname)
            rings = self._errno_call(self._ioctl.get_rings)
            for key, value in values.items():
                rings[RING_IOCTL_FIELDS[key]] = value
            # ETHTOOL_SRINGPARAM takes the whole struct: unchanged fields carry their value.
            self._errno_call(self._ioctl.set_rings, rings)
            return
        fl = self._feature_list(ifname)
        for name, value in values.items():
            fl.set_value(name, bool(value))
        self._ioctl.ifreq.sfeatures = ctypes.pointer(fl._cmd_set)
        try:
            # Called directly (not pyroute2's ioctl()) to see the positive result flags.
            ret = fcntl.ioctl(self._ioctl.sock, self._mod.SIOCETHTOOL, self._ioctl.ifreq)
        except OSError as e:
            if e.errno == errno.ENOTSUP:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported") from e
            raise
        if isinstance(ret, int) and ret & ETHTOOL_F_UNSUPPORTED:
            raise OSError(errno.EOPNOTSUPP, "the driver refused to change some of the features")
