"""The ``nic`` kind: ring sizes and offloads of NICs, bridge ports included.

What a careful sysadmin does with ``ethtool -G eth1 rx 4096`` and ``ethtool -K eth1 gso off``,
but only when something differs (the nic kind in ``docs/kinds.md``):

* no write when the live value already matches: a ring change resets the link on many
  drivers, so an unneeded one is an outage. The plan warns when a change bounces the link;
* a ring size above the driver's preset maximum, a ring setting on a NIC without rings (veth),
  and a feature the driver marks fixed (``[fixed]`` in ``ethtool -k``) whose value differs are
  *plan errors* for that NIC and setting, never changes that cannot converge;
* ``ports:`` on a bridge applies to every physical port enslaved to it, found over rtnetlink:
  through bonds to their slaves, from VLANs to their parent; tap/vnet/macvtap devices (VMs'
  ports) are skipped. A port is addressed as itself (``nic/eth1``), the bridge named in the
  change. A port that also has its own ``nics:`` entry gets both, unless they set the same
  setting differently: that is a plan error naming both sources (it cannot be seen before the
  host says which ports are enslaved);
* apply retries ENOMEM ("Cannot allocate memory", e.g. no contiguous memory for bigger rings)
  and EBUSY with exponential backoff within a bounded time; EOPNOTSUPP fails that setting only;
  other NICs converge either way (the engine contains per-change failures).

Offload names: ethtool short/legacy names are expanded with
:func:`~reconciler.kinds.nic.offloads.resolve_offload`. For a name that switches several kernel
features (``tso``, ``tx``), the features present on the NIC are compared one by one, and fixed
members are left as the driver has them, exactly as ``ethtool -K eth0 tx off`` does; it is an
error only when *every* present member is fixed and one differs. A single-feature name
(``gso``, or a kernel name) that is fixed and differs is an error. Features a kernel does not
know (``tx-udp-fragmentation`` since 4.14) are skipped inside a group and an error for a
single-feature name.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from reconciler import log
from reconciler.errors import ProviderError
from reconciler.kinds.nic.ethtool import EthtoolIO, FeatureLive, LinkLive, RingsLive
from reconciler.kinds.nic.offloads import resolve_offload
from reconciler.model import HostDesired, Location, NicSpec, RingValue
from reconciler.plan import Change, Op, PlanError, PlanWarning

KIND = "nic"

#: Device kinds that are VMs' ports on a bridge (libvirt's vnetN are ``tun`` taps).
VM_PORT_KINDS = frozenset({"tun", "tap", "macvtap"})
VM_PORT_PREFIXES = ("vnet", "tap", "macvtap")
#: Kinds whose members are reached through ``IFLA_MASTER``.
AGGREGATE_KINDS = frozenset({"bond", "team"})
#: Kinds whose settings belong on their lower device (``IFLA_LINK``).
STACKED_KINDS = frozenset({"vlan"})

RETRY_ERRNOS = frozenset({errno.ENOMEM, errno.EBUSY})


class NicState(NamedTuple):
    """Live settings of one NIC. ``rings`` is ``None`` when the driver has none, with the
    reason in ``rings_error`` (e.g. "Operation not supported")."""

    rings: RingsLive | None
    features: Mapping[str, FeatureLive]
    rings_error: str | None = None


@dataclass(frozen=True)
class NicLive:
    """Everything ``diff`` needs, read from the host. Plain data, so golden tests build it.

    ``links`` is every device of the namespace (for ``ports:`` resolution and kinds);
    ``nics`` the settings of each desired NIC and each resolved bridge port; ``errors`` a read
    failure per NIC name (that NIC only).
    """

    links: Mapping[str, LinkLive]
    nics: Mapping[str, NicState] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)


def is_vm_port(link: LinkLive) -> bool:
    """True for a VM's port on a bridge (tap/vnet/macvtap): never ours to tune."""
    return link.kind in VM_PORT_KINDS or link.name.startswith(VM_PORT_PREFIXES)


def bridge_ports(
    bridge: str, links: Mapping[str, LinkLive]
) -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
    """The physical ports of ``bridge``, each with its path from the bridge, and the skipped
    VM ports. Pure.

    Members are the links whose master is the bridge; a bond (or team) is replaced by its
    slaves, a VLAN by its parent (recursively: a VLAN on a bond reaches the bond's slaves).
    Anything else (a physical NIC, a veth ...) is a port. Returns ``([(port, path)], skipped)``
    sorted by port name; a port reached twice is listed once.
    """
    ports: dict[str, tuple[str, ...]] = {}
    skipped: list[str] = []
    by_master: dict[str, list[str]] = {}
    for link in links.values():
        if link.master is not None:
            by_master.setdefault(link.master, []).append(link.name)

    def walk(name: str, path: tuple[str, ...]) -> None:
        if name in path[:-1]:
            return  # a loop in broken link data; never recurse forever
        link = links.get(name)
        if link is None:
            return
        if is_vm_port(link):
            skipped.append(name)
        elif link.kind in AGGREGATE_KINDS:
            for slave in sorted(by_master.get(name, [])):
                walk(slave, (*path, slave))
        elif link.kind in STACKED_KINDS:
            if link.parent is not None:
                walk(link.parent, (*path, link.parent))
        elif link.kind != "bridge":
            ports.setdefault(name, path)

    for member in sorted(by_master.get(bridge, [])):
        walk(member, (bridge, member))
    return sorted(ports.items()), sorted(skipped)


# ---------------------------------------------------------------------------------- planning


@dataclass
class _Setting:
    """One wanted value and where it came from (for conflict messages)."""

    value: Any
    origin: str


@dataclass
class _Target:
    """Everything wanted for one NIC, merged from its own entry and bridges' ``ports:``."""

    name: str
    rings: dict[str, _Setting] = field(default_factory=dict)
    # offload name as written -> wanted value, origin
    offloads: dict[str, _Setting] = field(default_factory=dict)
    via: list[tuple[str, ...]] = field(default_factory=list)  # paths from bridges
    own: NicSpec | None = None
    conflicts: list[str] = field(default_factory=list)


def _origin(path: str, source: Location | None) -> str:
    return f"{path} ({source})" if source else path


def _onoff(v: bool) -> str:
    return "on" if v else "off"


def _as(name: str, feature: str) -> str:
    return "" if name == feature else f" as {name}"


def _add(target: _Target, spec: NicSpec, origin: str) -> None:
    """Merge ``spec`` into ``target``, noting same-setting conflicts with what is there."""
    for fieldname, value in spec.rings.items() if spec.rings else []:
        have = target.rings.get(fieldname)
        if have is not None and have.value != value:
            target.conflicts.append(
                f"rings.{fieldname} is {have.value} in {have.origin} but {value} in {origin}"
            )
        elif have is None:
            target.rings[fieldname] = _Setting(value, origin)
    for name, want in spec.offloads.items():
        for feature in resolve_offload(name):
            for other_name, have in target.offloads.items():
                if feature in resolve_offload(other_name) and have.value != want:
                    target.conflicts.append(
                        f"{feature} is {_onoff(have.value)} in {have.origin}"
                        f"{_as(other_name, feature)} but {_onoff(want)} in {origin}"
                        f"{_as(name, feature)}"
                    )
                    break
        if name not in target.offloads:
            target.offloads[name] = _Setting(want, origin)


def _plan_rings(
    nic: str, rings: dict[str, _Setting], state: NicState
) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Wanted ring changes: (before, after, errors). Any error drops every ring change of
    this NIC: a ring change bounces the link, so it is done once, when all of it is valid."""
    if not rings:
        return {}, {}, []
    if state.rings is None:
        why = state.rings_error or "Operation not supported"
        return (
            {},
            {},
            [
                f"ring sizes ({', '.join(rings)}) are not supported by this NIC ({why}, "
                f"as `ethtool -g {nic}` says); remove rings: for it"
            ],
        )
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    errors: list[str] = []
    for fieldname, setting in rings.items():
        maximum = state.rings.maximum.get(fieldname, 0)
        current = state.rings.current.get(fieldname, 0)
        value: RingValue = setting.value
        if maximum == 0:
            errors.append(f"this NIC has no {fieldname} ring (its driver's maximum is 0)")
            continue
        want = maximum if value == "max" else int(value)
        if want > maximum:
            errors.append(
                f"rings.{fieldname} {want} is above the driver's maximum of {maximum} "
                f"(from {setting.origin}); use {maximum} or max"
            )
            continue
        if want != current:
            before[fieldname] = current
            after[fieldname] = want
    if errors:
        return {}, {}, errors
    return before, after, []


def _targets(desired: HostDesired, live: NicLive) -> tuple[dict[str, _Target], list[PlanError]]:
    """Every NIC to converge, with what is wanted of it from its own entry and from the
    bridges whose ``ports:`` reach it; and the errors of NICs that cannot be planned. Pure."""
    errors: list[PlanError] = []
    targets: dict[str, _Target] = {}
    for name in sorted(desired.nics):
        spec = desired.nics[name]
        address = f"{KIND}/{name}"
        link = live.links.get(name)
        if link is None:
            errors.append(
                PlanError(
                    address,
                    f"no NIC named {name} on this host "
                    f"(desired by {_origin('nics.' + name, spec.source)})",
                )
            )
            continue
        if spec.rings is not None and link.kind == "bridge":
            errors.append(
                PlanError(
                    address,
                    f"{name} is a bridge, which has no rings of its own; put them under "
                    "ports: to size the rings of its ports",
                )
            )
            continue
        if spec.ports is not None and link.kind != "bridge":
            errors.append(
                PlanError(
                    address,
                    f"ports: only applies to a bridge, and {name} is "
                    f"{'a ' + link.kind if link.kind else 'a physical NIC'}",
                )
            )
            continue
        t = targets.setdefault(name, _Target(name))
        t.own = spec
        _add(t, spec, _origin(f"nics.{name}", spec.source))
        if spec.ports is not None:
            ports, _skipped = bridge_ports(name, live.links)
            origin = _origin(f"nics.{name}.ports", spec.ports.source)
            for port, path in ports:
                pt = targets.setdefault(port, _Target(port))
                pt.via.append(path)
                _add(pt, spec.ports, origin)
    return targets, errors


def _ringless_ports(
    desired: HostDesired, live: NicLive, targets: dict[str, _Target]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(port -> bridges) for bridge ports that get ring sizes only from bridges' ``ports:``
    and whose driver has no rings; and (bridge -> its ports) for bridges none of whose
    ports has rings (then an error: the ``rings:`` can never apply). Pure."""
    ringless: dict[str, list[str]] = {}
    with_rings: dict[str, bool] = {}
    members: dict[str, list[str]] = {}
    for name in sorted(targets):
        t = targets[name]
        state = live.nics.get(name)
        if not t.via or not t.rings or state is None or name in live.errors:
            continue
        own_rings = t.own is not None and t.own.rings is not None
        bridges = sorted({p[0] for p in t.via})
        for b in bridges:
            members.setdefault(b, []).append(name)
            with_rings[b] = with_rings.get(b, False) or state.rings is not None
        if state.rings is None and not own_rings:
            ringless[name] = bridges
    none_with_rings = {b: ps for b, ps in members.items() if not with_rings[b]}
    return ringless, none_with_rings


def _features_of(name: str, state: NicState) -> tuple[str, ...]:
    """The kernel features ``name`` switches on this NIC. ``tso`` is every
    ``tx-tcp*-segmentation`` the kernel has, as ethtool defines it, including ones newer than
    our table (Linux 6.18 added ``tx-tcp-accecn-segmentation``): otherwise ``tso off`` would
    leave TSO half on and ``ethtool -k`` would still say ``tcp-segmentation-offload: on``."""
    features = resolve_offload(name)
    if set(features) == set(resolve_offload("tso")):
        extra = sorted(f for f in state.features if _TSO.match(f) and f not in features)
        features = (*features, *extra)
    return features


_TSO = re.compile(r"^tx-tcp[a-z0-9-]*-segmentation$")


def _plan_offloads(
    offloads: dict[str, _Setting], state: NicState
) -> tuple[dict[str, bool], dict[str, bool], list[str]]:
    """Wanted feature changes: (before, after, errors), kernel feature names. Errors are per
    offload name; the other offloads still change."""
    before: dict[str, bool] = {}
    after: dict[str, bool] = {}
    errors: list[str] = []
    for name, setting in offloads.items():
        want = bool(setting.value)
        features = _features_of(name, state)
        present = [f for f in features if f in state.features]
        if not present:
            errors.append(
                f"offload {name} ({', '.join(features)}) is not known to this kernel "
                f"(from {setting.origin})"
            )
            continue
        group = len(features) > 1
        fixed_differ = [
            f for f in present if state.features[f].fixed and state.features[f].active != want
        ]
        if fixed_differ and (not group or all(state.features[f].fixed for f in present)):
            f = fixed_differ[0]
            label = name if name == f else f"{name} ({f})"
            errors.append(
                f"offload {label} is not changeable on this NIC: the driver fixes it "
                f"{_onoff(state.features[f].active)} (from {setting.origin})"
            )
            continue
        for f in present:
            live = state.features[f]
            if live.fixed or live.active == want or f in after:
                continue
            before[f] = live.active
            after[f] = want
    return before, after, errors


class NicProvider:
    """read / pure diff / apply for NIC ring sizes and offloads in the current namespace.

    ``io`` is the syscall boundary (an :class:`EthtoolIO`, opened on first use and kept, so
    its ``writes`` counter covers read, apply and re-read). ENOMEM/EBUSY on a write are
    retried after ``retry_initial`` seconds, doubling, for at most ``retry_total`` seconds in
    all; ``sleep`` is injectable so tests need not wait.
    """

    kind = KIND

    def __init__(
        self,
        io: EthtoolIO | None = None,
        *,
        retry_initial: float = 0.05,
        retry_total: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._io_obj = io
        self.retry_initial = retry_initial
        self.retry_total = retry_total
        self.sleep = sleep
        self.retries = 0  # write attempts repeated after ENOMEM/EBUSY, for tests and logs

    @property
    def io(self) -> EthtoolIO:
        """The I/O layer, opened in the calling thread's namespace on first use."""
        if self._io_obj is None:
            self._io_obj = EthtoolIO()
        return self._io_obj

    def close(self) -> None:
        """Close the I/O layer if it was opened."""
        if self._io_obj is not None:
            self._io_obj.close()
            self._io_obj = None

    # ----------------------------------------------------------------------------- read
    def snapshot_scope(self, desired: HostDesired) -> HostDesired:
        """``desired`` with every link of the host added (no settings), except loopback and
        VM ports, bridges with their ports: reading it records every NIC's state, which a
        snapshot needs so that a later commit adding a NIC can be planned in CI."""
        nics = dict(desired.nics)
        for name, link in self.io.links().items():
            if name != "lo" and not is_vm_port(link) and name not in nics:
                ports = NicSpec(name) if link.kind == "bridge" else None
                nics[name] = NicSpec(name, ports=ports)
        return replace(desired, nics=nics)

    def read(self, desired: HostDesired) -> NicLive:
        """Read links, and rings and features of every desired NIC and resolved bridge port.

        Writes nothing. A NIC that cannot be read is an error for that NIC only; a NIC that
        does not exist is simply absent (``diff`` reports it).
        """
        if not desired.nics:
            return NicLive(links={})
        io = self.io
        links = io.links()
        names: set[str] = set()
        for name, spec in desired.nics.items():
            if name not in links:
                continue
            names.add(name)
            if spec.ports is not None and links[name].kind == "bridge":
                names.update(p for p, _ in bridge_ports(name, links)[0])
        nics: dict[str, NicState] = {}
        errors: dict[str, str] = {}
        for name in sorted(names):
            try:
                features = io.get_features(name)
            except OSError as e:
                errors[name] = f"reading features: {os.strerror(e.errno or 0)}"
                continue
            rings: RingsLive | None = None
            rings_error = None
            try:
                rings = io.get_rings(name)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                    errors[name] = f"reading ring sizes: {os.strerror(e.errno or 0)}"
                    continue
                rings_error = os.strerror(e.errno)
            nics[name] = NicState(rings, features, rings_error)
        return NicLive(links, nics, errors)

    # ----------------------------------------------------------------------------- diff
    def diff(self, desired: HostDesired, live: NicLive) -> tuple[list[Change], list[PlanError]]:
        """The changes that make every desired NIC and bridge port match git. Pure.

        One change per NIC (``nic/<ifname>``), action ``update``, ops ``set_features`` then
        ``set_rings``, each carrying only the values that differ. Errors are per NIC and
        setting: a NIC with an impossible ring size still gets its offloads.
        """
        targets, errors = _targets(desired, live)
        # Every source is merged now (a port's own entry may sort after its bridge), so each
        # target holds all of its conflicts.
        ringless, none_with_rings = _ringless_ports(desired, live, targets)
        errors += [
            PlanError(
                f"{KIND}/{bridge}",
                f"none of {bridge}'s ports has ring sizes to set ({', '.join(ports)}: their "
                "drivers have no rings); remove rings: from its ports:",
            )
            for bridge, ports in sorted(none_with_rings.items())
        ]
        changes: list[Change] = []
        for name in sorted(targets):
            t = targets[name]
            address = f"{KIND}/{name}"
            if t.conflicts:
                errors.append(
                    PlanError(
                        address,
                        "conflicting settings for this port: "
                        + "; ".join(t.conflicts)
                        + "; make them agree (or drop one)",
                    )
                )
                continue
            if name in live.errors:
                errors.append(PlanError(address, live.errors[name]))
                continue
            state = live.nics.get(name)
            if state is None:
                errors.append(PlanError(address, f"{name} was not read"))
                continue
            rings = t.rings
            if name in ringless:
                rings = {}  # a bridge port whose driver has no rings: a plan warning
            rb, ra, rerr = _plan_rings(name, rings, state)
            fb, fa, ferr = _plan_offloads(t.offloads, state)
            errors.extend(PlanError(address, m) for m in rerr + ferr)
            ops: list[Op] = []
            if fa:
                ops.append(Op("set_features", {"nic": name, "features": dict(sorted(fa.items()))}))
            if ra:
                ops.append(Op("set_rings", {"nic": name, **ra, "bounces_link": True}))
            if not ops:
                continue
            warnings: tuple[str, ...] = ()
            if ra:
                warnings = (
                    f"changing ring sizes of {name} resets its link (carrier drops briefly)",
                )
            before: dict[str, Any] = {}
            after: dict[str, Any] = {}
            if fa:
                before["features"] = dict(sorted(fb.items()))
                after["features"] = dict(sorted(fa.items()))
            if ra:
                before["rings"] = rb
                after["rings"] = ra
            if t.via:
                bridges = sorted({p[0] for p in t.via})
                for d in (before, after):
                    d["bridge"] = bridges[0] if len(bridges) == 1 else bridges
                    d["path"] = [" > ".join(p) for p in t.via]
            changes.append(Change(KIND, name, "update", tuple(ops), before, after, None, warnings))
        return changes, errors

    def notices(self, desired: HostDesired, live: NicLive) -> list[PlanWarning]:
        """Pure: bridge ports skipped for ring sizes because their driver has none (tap,
        veth or a paravirtual NIC beside real ones), as tap and vnet ports are."""
        targets, _ = _targets(desired, live)
        ringless, none_with_rings = _ringless_ports(desired, live, targets)
        return [
            PlanWarning(
                f"{KIND}/{port}",
                f"ring sizes from {' and '.join(bridges)}'s ports: skipped: this port's driver "
                f"has no rings ({live.nics[port].rings_error or 'Operation not supported'})",
            )
            for port, bridges in sorted(ringless.items())
            if not set(bridges) <= set(none_with_rings)
        ]

    # ---------------------------------------------------------------------------- apply
    def apply(self, change: Change) -> list[Op]:
        """Execute the change's ops in order and return those executed.

        Each op is retried on ENOMEM/EBUSY (bounded backoff). A failing op does not stop the
        next one (an unsupported ring size must not keep offloads from converging); after all
        ops, any failure is raised as one ProviderError naming the NIC and setting.
        """
        done: list[Op] = []
        failures: list[str] = []
        for op in change.ops:
            a = op.args
            nic = a["nic"]
            if op.op == "set_features":
                features: dict[str, bool] = a["features"]
                what = "features " + ", ".join(f"{k} {_onoff(v)}" for k, v in features.items())
                call: Callable[[], None] = functools.partial(self._set_features, nic, features)
            elif op.op == "set_rings":
                values = {k: v for k, v in a.items() if k not in ("nic", "bounces_link")}
                what = "rings " + ", ".join(f"{k} {v}" for k, v in values.items())
                call = functools.partial(self._set_rings, nic, values)
            else:  # a plan from a newer version, or a bug: never guess
                failures.append(f"unknown op {op.op!r}")
                continue
            try:
                self._with_retry(change.address, what, call)
            except ProviderError as e:
                failures.append(e.message)
                continue
            done.append(op)
        if failures:
            raise ProviderError("; ".join(failures), address=change.address)
        return done

    def _set_features(self, nic: str, features: dict[str, bool]) -> None:
        self.io.set_features(nic, features)

    def _set_rings(self, nic: str, values: dict[str, int]) -> None:
        self.io.set_rings(nic, values)

    def _with_retry(self, address: str, what: str, call: Callable[[], None]) -> None:
        """Run ``call``; on ENOMEM/EBUSY wait and retry (doubling) within ``retry_total``."""
        delay = self.retry_initial
        deadline = time.monotonic() + self.retry_total
        attempts = 0
        while True:
            attempts += 1
            try:
                call()
                return
            except OSError as e:
                code = e.errno or 0
                reason = os.strerror(code) if code else str(e)
                if code in RETRY_ERRNOS and time.monotonic() + delay <= deadline:
                    self.retries += 1
                    log.get().warning(
                        "nic_retry", address=address, what=what, error=reason, delay=delay
                    )
                    self.sleep(delay)
                    delay *= 2
                    continue
                if code in RETRY_ERRNOS:
                    reason += f" (still failing after {attempts} attempts)"
                elif code in (errno.EOPNOTSUPP, errno.ENOTSUP):
                    reason = "not supported by this NIC's driver (EOPNOTSUPP)"
                raise ProviderError(f"setting {what}: {reason}", address=address) from e
