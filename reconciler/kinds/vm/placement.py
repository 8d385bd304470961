"""Placement, decided in a pure function (:func:`plan_vms`): where each VM in git is, where
it goes, which VNC port it gets (a deterministic cluster-wide allocator) and whether the
nodes have the capacity. See :mod:`reconciler.kinds.vm.provider` for the rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

from reconciler.kinds.vm.domainxml import VncConfig
from reconciler.kinds.vm.read import DomainLive, NodeLive, VmLive
from reconciler.plan import Change, Op, PlanError

KIND = "vm"
VNC_BASE = 5900
VNC_MAX = 65535


class _Blocked(Exception):
    """A VM's change cannot be planned; the message is its plan error."""


@dataclass(slots=True)
class _Vm:
    """Planning state of one VM in git."""

    name: str
    spec: Mapping[str, Any]
    target: str
    want_port: Any = "auto"  # vnc_port from git: a number or "auto"
    current: DomainLive | None = None  # the copy whose config we carry (target's if there)
    current_node: str | None = None
    source: str | None = None  # a move's (or an interrupted move's) other node
    source_dom: DomainLive | None = None
    mode: str = "error"  # here | move | finish | define | error
    port: int | None = None  # planned VNC port (None: the domain has no VNC)
    has_vnc: bool = True  # the domain (or its definition) has VNC graphics
    tcp_vnc: bool = True  # ... listening on TCP (not a unix socket, not listen type none)
    size: tuple[int, int] = (0, 1)  # (memory KiB, vCPUs) it needs when running


def _mib(kib: int) -> int:
    return kib // 1024


def _names(names: Iterable[str], limit: int = 5) -> str:
    items = sorted(names)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def plan_vms(config: Mapping[str, Any], live: VmLive) -> tuple[list[Change], list[PlanError]]:
    """The changes that make the cluster match ``config`` (validated vms.yaml), and errors.

    Pure and deterministic: the same inputs give the same plan, including every ``auto``
    VNC port. Changes are in VM-name order; see the module docstring for the rules.
    """
    vms_cfg: Mapping[str, Mapping[str, Any]] = config.get("vms", {})
    errors: list[PlanError] = []
    reachable = {n: nl for n, nl in sorted(live.nodes.items()) if nl.error is None}
    unreachable = sorted(n for n, nl in live.nodes.items() if nl.error is not None)
    for n in unreachable:
        errors.append(PlanError(f"node/{n}", f"{live.nodes[n].error}; its VMs are skipped"))

    # Where is each VM in git now? Counting names across the nodes runs in C; the common
    # case (on its node, nowhere else) is then two dict lookups per VM, and only the others
    # have their copies gathered node by node.
    copies = Counter(chain.from_iterable(nl.domains for nl in reachable.values()))

    def where(name: str) -> list[tuple[str, DomainLive]]:
        return [(n, nl.domains[name]) for n, nl in reachable.items() if name in nl.domains]

    vms: dict[str, _Vm] = {}
    vm_errors: dict[str, str] = {}
    for name in sorted(vms_cfg):
        spec = vms_cfg[name]
        target = spec["node"]
        want = spec.get("vnc_port", "auto")
        if copies[name] == 1:
            nl = reachable.get(target)
            dom = nl.domains.get(name) if nl is not None else None
            if dom is not None and dom.persistent:
                vms[name] = _Vm(
                    name, spec, target, want, dom, target, None, None, "here", None,
                    dom.vnc is not None, dom.vnc is not None and dom.vnc.tcp,
                    (dom.memory_kib, dom.vcpus),
                )  # fmt: skip
                continue
        v = vms[name] = _Vm(name, spec, target, want)
        try:
            _locate(v, where(name), reachable, unreachable, live)
        except _Blocked as e:
            vm_errors[name] = str(e)
            v.mode = "error"

    # VNC ports, cluster-wide.
    _allocate_ports(vms, vm_errors, reachable)

    changes: dict[str, Change] = {}
    for name, v in vms.items():
        if name in vm_errors:
            continue
        cur = v.current
        # The common case (a timer run on a converged cluster), decided inline.
        if (
            v.mode == "here"
            and cur is not None
            and (v.port is None or cur.config_port == v.port)
            and (v.spec.get("state", "running") == "running") == cur.active
        ):
            continue
        try:
            ch = _change_for(v)
        except _Blocked as e:
            vm_errors[name] = str(e)
            continue
        if ch is not None:
            changes[name] = ch

    _check_capacity(vms, changes, vm_errors, reachable)

    # Domains git does not manage: reported on every change that touches their node.
    managed = set(vms_cfg)
    touched_nodes = {
        a
        for ch in changes.values()
        for op in ch.ops
        for k, a in op.args.items()
        if k.endswith("node")
    }
    unmanaged = {
        n: sorted(set(nl.domains) - managed) for n, nl in reachable.items() if n in touched_nodes
    }
    out: list[Change] = []
    for name in sorted(changes):
        ch = changes[name]
        touched = sorted({a for op in ch.ops for k, a in op.args.items() if k.endswith("node")})
        notes = [
            f"node {n} also has domains git does not manage (left untouched): "
            f"{_names(unmanaged[n])}"
            for n in touched
            if unmanaged.get(n)
        ]
        out.append(ch.with_warnings(*notes) if notes else ch)
    errors += [PlanError(f"{KIND}/{n}", vm_errors[n]) for n in sorted(vm_errors)]
    return out, errors


def unmanaged_domains(config: Mapping[str, Any], live: VmLive) -> dict[str, list[str]]:
    """Per reachable node, the domains git does not list (reported, never touched)."""
    names = set(config.get("vms", {}))
    return {
        n: sorted(set(nl.domains) - names)
        for n, nl in sorted(live.nodes.items())
        if nl.error is None and set(nl.domains) - names
    }


def _locate(
    v: _Vm,
    where: list[tuple[str, DomainLive]],
    reachable: Mapping[str, NodeLive],
    unreachable: list[str],
    live: VmLive,
) -> None:
    """Set ``v.mode`` (and where its copies are, ``where``: (node, domain) pairs) or raise
    _Blocked with the reason."""
    if v.target in unreachable:
        raise _Blocked(
            f"its node {v.target} is unreachable ({live.nodes[v.target].error}); not checked, "
            "and no move into it is planned"
        )
    transient = [n for n, d in where if not d.persistent]
    if transient:
        raise _Blocked(
            f"it runs as a transient domain on {', '.join(transient)} (no persistent "
            "definition); define it there (virsh define) so it can be managed"
        )
    on_target = [d for n, d in where if n == v.target]
    others = [(n, d) for n, d in where if n != v.target]
    if on_target and not others:
        v.mode, v.current, v.current_node = "here", on_target[0], v.target
        _sized(v)
        return
    if on_target and len(others) == 1 and others[0][1].uuid == on_target[0].uuid:
        # Our own interrupted move: defined on the target (and verified) before the crash.
        (src, sdom), tdom = others[0], on_target[0]
        if sdom.active and tdom.active:
            raise _Blocked(
                f"the same domain (UUID {tdom.uuid}) is running on both {src} and {v.target}; "
                "stop one of them by hand (shared storage: they share the disks)"
            )
        v.mode, v.current, v.current_node = "finish", tdom, v.target
        v.source, v.source_dom = src, sdom
        _sized(v)
        return
    if len(where) > 1:
        desc = ", ".join(f"{n} (UUID {d.uuid}, {d.state})" for n, d in where)
        raise _Blocked(
            f"found on {len(where)} nodes: {desc}; not guessing which one is the VM. Undefine "
            "the wrong copies by hand"
        )
    if len(where) == 1:
        src, dom = where[0]
        v.mode, v.current, v.current_node, v.source, v.source_dom = "move", dom, src, src, dom
        _sized(v)
        return
    if unreachable:
        raise _Blocked(
            f"not found on the reachable nodes, and {', '.join(unreachable)} could not be read "
            "(it may be defined there); not defining it anywhere this run"
        )
    d = live.definitions.get(v.name)
    if d is None:
        raise _Blocked(
            f"not defined on any node ({', '.join(reachable) or 'none reachable'}) and vms.yaml "
            "gives no definition: to create it; define it by hand or add definition:"
        )
    if d.error is not None or d.info is None:
        raise _Blocked(d.error or f"definition {d.path} could not be read")
    v.mode = "define"
    v.has_vnc = d.info.vnc is not None
    v.tcp_vnc = d.info.vnc is not None and d.info.vnc.tcp
    v.size = (d.info.memory_kib, d.info.vcpus)


def _sized(v: _Vm) -> None:
    assert v.current is not None
    v.has_vnc = v.current.vnc is not None
    v.tcp_vnc = v.current.vnc is not None and v.current.vnc.tcp
    v.size = (v.current.memory_kib, v.current.vcpus)


def _foreign_ports(
    reachable: Mapping[str, NodeLive], managed: set[str]
) -> dict[str, dict[int, set[str]]]:
    """Per node, VNC port -> the domains git does not manage that hold it (configured or
    listening). Managed domains are left out: their ports are handed out by the allocator."""
    out: dict[str, dict[int, set[str]]] = {}
    for n, nl in reachable.items():
        users: dict[int, set[str]] = {}
        for name in nl.domains.keys() - managed:  # a set difference: no loop over the rest
            d = nl.domains[name]
            for p in d.ports():
                users.setdefault(p, set()).add(d.name)
        out[n] = users
    return out


def _allocate_ports(
    vms: Mapping[str, _Vm], vm_errors: dict[str, str], reachable: Mapping[str, NodeLive]
) -> None:
    """Give every VM its VNC port (``v.port``), or an error. Deterministic, in passes:

    1. fixed ports from git, each checked against domains git does not manage on its node;
    2. VMs we cannot plan keep whatever port they hold (nobody else may take it);
    3. ``auto`` VMs keep the port they already have when it is free (stable across runs),
       those listening on it now first, then by name;
    4. the other ``auto`` VMs get the lowest free port from 5900, by name.

    "Free" on node T: claimed by no other VM in git, held by no domain git does not manage
    on T (configured, defined or running, or listening), and no other managed VM listens on
    it on T now.
    """
    managed = set(vms)
    users = _foreign_ports(reachable, managed)
    claimed: dict[int, str] = {}
    # Ports managed VMs listen on now, per node: really taken until they stop. Their
    # configured ports are not: those VMs get their own port below (claimed), and a
    # configured port somebody else keeps is changed on them.
    listening: dict[str, dict[int, str]] = {
        n: {
            d.live_vnc_port: d.name
            for d in nl.domains.values()
            if d.live_vnc_port is not None and d.name in managed
        }
        for n, nl in reachable.items()
    }
    no_users: dict[int, set[str]] = {}
    no_listeners: dict[int, str] = {}

    def taken(node: str, port: int, me: str) -> bool:
        # Held by a domain git does not manage (never ``me``), or listened on by another
        # managed VM. Runs once per VM and port tried, so it builds nothing.
        if port in users.get(node, no_users):
            return True
        live = listening.get(node, no_listeners).get(port)
        return live is not None and live != me

    # 1. Fixed ports.
    for name, v in vms.items():
        want = v.want_port
        if want == "auto" or name in vm_errors:
            continue
        claimed[int(want)] = name
        foreign = sorted(users.get(v.target, no_users).get(int(want), ()))
        if foreign:
            vm_errors[name] = (
                f"vnc_port {want} is used on node {v.target} by {_names(foreign)}, which git "
                "does not manage; choose another port (or auto)"
            )
    # 2. VMs we cannot plan keep what they hold (in name order, after the fixed ports).
    for name in sorted(vm_errors):
        cur = vms[name].current if name in vms else None
        if cur is not None:
            for p in sorted(cur.ports()):
                claimed.setdefault(p, name)
    # 3. auto VMs keep the port they have when free; the rest wait for 4.
    pending: list[_Vm] = []
    keepers: list[tuple[bool, str, _Vm, int]] = []
    for name, v in vms.items():
        if name in vm_errors:
            continue
        want = v.want_port
        if not v.has_vnc:
            if want != "auto":
                vm_errors[name] = (
                    f"vnc_port {want} is set but the domain has no <graphics type='vnc'>"
                )
            continue  # nothing to allocate: the VM has no console port
        if want != "auto":
            v.port = int(want)  # a console on a socket or without listener becomes TCP
            continue
        if not v.tcp_vnc:
            continue  # auto: a unix-socket or listener-less console has no port to give
        cur = v.current
        have = None if cur is None else cur.config_port or cur.live_vnc_port
        if have is None:
            pending.append(v)
            continue
        # A VM listening on its port now keeps it before one that only has it configured.
        keepers.append((cur is None or cur.live_vnc_port != have, name, v, have))
    keepers.sort()  # by (not listening, name): names are unique, so never compares a _Vm
    for _, name, v, have in keepers:
        if have in claimed or have in users.get(v.target, no_users):
            pending.append(v)
            continue
        live = listening.get(v.target, no_listeners).get(have)
        if live is not None and live != name:  # taken(), inline: this runs for every VM
            pending.append(v)
            continue
        v.port = have
        claimed[have] = name
    # 4. The lowest free port, by name. Every port below ``low`` is claimed (claims only
    # grow), so the search starts there: linear in VMs, not VMs x ports.
    pending.sort(key=lambda v: v.name)
    low = VNC_BASE
    for v in pending:
        while low in claimed:
            low += 1
        port = low
        while port <= VNC_MAX and (port in claimed or taken(v.target, port, v.name)):
            port += 1
        if port > VNC_MAX:
            vm_errors[v.name] = "no free VNC port left between 5900 and 65535"
            continue
        v.port = port
        claimed[port] = v.name


def _may_stop(v: _Vm) -> bool:
    return v.spec.get("state") == "shutoff" or bool(v.spec.get("allow_stop", False))


def _vnc_summary(vnc: VncConfig | None) -> Any:
    if vnc is None:
        return None
    if not vnc.tcp:
        return vnc.listen  # "socket" or "none": no TCP port
    return "auto" if vnc.autoport else vnc.port


def _change_for(v: _Vm) -> Change | None:
    """The change for one located VM with its port allocated (None when it matches)."""
    want_running = v.spec.get("state", "running") == "running"
    if v.mode == "here":
        # The common case (a timer run on a converged cluster): decided before any dict is
        # built for it.
        cur0 = v.current
        assert cur0 is not None
        if (v.port is None or cur0.config_port == v.port) and want_running == cur0.active:
            return None
    name, target = v.name, v.target
    after = {"node": target, "state": v.spec.get("state", "running"), "vnc_port": v.port}
    cur = v.current
    before: dict[str, Any] | None = None
    if cur is not None:
        before = {"node": v.current_node, "state": cur.state, "vnc_port": _vnc_summary(cur.vnc)}
        if cur.live_vnc_port is not None:
            before["live_vnc_port"] = cur.live_vnc_port

    ops: list[Op] = []
    warnings: list[str] = []
    refused: str | None = None

    def converge_on_target(dom: DomainLive, active_after: bool) -> None:
        if v.port is not None and dom.config_port != v.port:
            ops.append(Op("set_vnc_port", {"vm": name, "node": target, "vnc_port": v.port}))
            if active_after and dom.active:
                warnings.append(
                    f"{name} is running: it keeps listening on port "
                    f"{dom.live_vnc_port} until its next restart"
                )
        if want_running and not active_after:
            ops.append(Op("start", {"vm": name, "node": target}))
        elif not want_running and active_after:
            ops.append(Op("shutdown", {"vm": name, "node": target}))

    if v.mode == "here":
        assert cur is not None
        converge_on_target(cur, cur.active)
        if not ops:
            return None
        return Change(KIND, name, "update", tuple(ops), before, after, None, tuple(warnings))

    if v.mode == "finish":
        assert cur is not None and v.source is not None and v.source_dom is not None
        src, sdom = v.source, v.source_dom
        warnings.append(
            f"finishing an interrupted move: {name} (UUID {sdom.uuid}) is defined on both "
            f"{src} and {target}"
        )
        if sdom.active:
            if not _may_stop(v):
                refused = _blocked_msg(v, src)
            ops.append(Op("shutdown", {"vm": name, "node": src}))
        ops.append(Op("undefine", {"vm": name, "node": src, "uuid": sdom.uuid, "kept_on": target}))
        converge_on_target(cur, cur.active or sdom.active)
        assert before is not None
        before["node"] = [src, target]
        return Change(KIND, name, "move", tuple(ops), before, after, refused, tuple(warnings))

    if v.mode == "move":
        assert cur is not None and v.source is not None
        src = v.source
        if v.spec.get("live_migrate") and cur.active:
            ops.append(
                Op(
                    "migrate",
                    {
                        "vm": name,
                        "from_node": src,
                        "to_node": target,
                        "vnc_port": v.port,
                        "uuid": cur.uuid,
                    },
                )
            )
            if not want_running:
                ops.append(Op("shutdown", {"vm": name, "node": target}))
            return Change(KIND, name, "move", tuple(ops), before, after)
        if cur.active:
            if not _may_stop(v):
                refused = _blocked_msg(v, src)
            ops.append(Op("shutdown", {"vm": name, "node": src}))
        ops.append(
            Op(
                "define",
                {
                    "vm": name,
                    "node": target,
                    "vnc_port": v.port,
                    "from_node": src,
                    "uuid": cur.uuid,
                },
            )
        )
        ops.append(Op("undefine", {"vm": name, "node": src, "uuid": cur.uuid, "kept_on": target}))
        if want_running:
            ops.append(Op("start", {"vm": name, "node": target}))
        return Change(KIND, name, "move", tuple(ops), before, after, refused, tuple(warnings))

    assert v.mode == "define"
    ops.append(
        Op(
            "define",
            {
                "vm": name,
                "node": target,
                "vnc_port": v.port,
                "definition": v.spec.get("definition"),
            },
        )
    )
    if want_running:
        ops.append(Op("start", {"vm": name, "node": target}))
    return Change(KIND, name, "create", tuple(ops), None, after)


def _blocked_msg(v: _Vm, src: str) -> str:
    return (
        f"{v.name} is running on {src} and moving it to {v.target} needs a stop, which git "
        "does not allow: set allow_stop: true (graceful shutdown, then start on "
        f"{v.target}), live_migrate: true, or state: shutoff"
    )


def _check_capacity(
    vms: Mapping[str, _Vm],
    changes: dict[str, Change],
    vm_errors: dict[str, str],
    reachable: Mapping[str, NodeLive],
) -> None:
    """Drop (as errors) the changes that would run more memory or vCPUs on a node than it
    has. Only changes adding load to an overfull node are dropped: a node already over
    capacity by hand does not block unrelated changes."""

    # What runs where now: every active domain (git's or not) on the node it is on, summed.
    now: dict[str, tuple[int, int]] = {}
    for n, nl in reachable.items():
        active = [d for d in nl.domains.values() if d.active]
        now[n] = (sum(d.memory_kib for d in active), sum(d.vcpus for d in active))
    # After the plan: the same, with each planned (not refused) VM taken from where it runs
    # and put on its target when git wants it running.
    after = {n: list(load) for n, load in now.items()}
    added: dict[str, list[str]] = {}  # node -> VMs the plan starts there (not running there)
    for name, ch in changes.items():
        if ch.refused:
            continue
        v = vms[name]
        running_on_target = False
        for n, nl in reachable.items():
            d = nl.domains.get(name)
            if d is not None and d.active:
                after[n][0] -= d.memory_kib
                after[n][1] -= d.vcpus
                running_on_target = running_on_target or n == v.target
        if v.spec.get("state", "running") == "running" and v.target in after:
            after[v.target][0] += v.size[0]
            after[v.target][1] += v.size[1]
            if not running_on_target:
                added.setdefault(v.target, []).append(name)
    for n in sorted(reachable):
        nl = reachable[n]
        mem, cpu = after[n]
        mem_now, cpu_now = now[n]
        over_mem = mem > nl.memory_kib and mem > mem_now
        over_cpu = cpu > nl.cpus and cpu > cpu_now
        if not (over_mem or over_cpu):
            continue
        for vm in sorted(added.get(n, [])):
            m, c = vms[vm].size
            parts = []
            if over_mem:
                parts.append(
                    f"{_mib(mem)} MiB of memory ({vm}: {_mib(m)} MiB) but it has "
                    f"{_mib(nl.memory_kib)} MiB"
                )
            if over_cpu:
                parts.append(f"{cpu} vCPUs ({vm}: {c}) but it has {nl.cpus} CPUs")
            vm_errors[vm] = (
                f"refused: this plan would run {' and '.join(parts)} on node {n}; "
                f"{vm} was not placed"
            )
            del changes[vm]


