"""``reconcile import`` for VMs: the placement of every persistent domain of the libvirt
nodes named with ``--node NAME=URI`` (node, VNC port, state), for ``vms.yaml``.

Node URIs pass the same host-configuration checks as ``vms.yaml``'s (the test driver only
where the host allows it, no URI that starts a program). Nodes are read with the provider's
own read; :func:`from_nodes` is the pure part, and it plans the result with the provider's
own placement so that what the first run would still change is said, not discovered.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.importing import VMS_FILE, Found, ImportContext, Resource, Skipped
from reconciler.kinds.vm.checks import libvirt_uri_problems
from reconciler.kinds.vm.read import DomainLive, NodeLive, VmLive

KIND = "vm"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def _vnc_port(dom: DomainLive) -> tuple[int | str, str | None]:
    """The ``vnc_port`` to write and a note about it."""
    if dom.vnc is None:
        return "auto", "no VNC graphics"
    if not dom.vnc.tcp:
        return "auto", f"VNC on {dom.vnc.listen} (no TCP port): auto leaves it alone"
    if dom.config_port is not None:
        return dom.config_port, None
    return "auto", "VNC with autoport: libvirt picks the port at start"


def from_nodes(uris: Mapping[str, str], lives: Mapping[str, NodeLive], origin: str) -> Found:
    """The ``nodes:`` and ``vms:`` entries for the nodes ``uris`` (name -> URI) as read
    (``lives``). Pure. A node that could not be read is an error (``node/NAME``) and its
    domains are not imported; a domain the schema cannot place (transient, paused, on two
    nodes) is skipped with the reason."""
    found = Found()
    where: dict[str, list[tuple[str, DomainLive]]] = {}
    for node in sorted(uris):
        live = lives.get(node)
        if live is None or live.error is not None:
            why = live.error if live is not None else "not read"
            found.errors.append(ReconcilerError(why or "unreadable", address=f"node/{node}"))
            continue
        found.resources.append(
            Resource("nodes", node, {"uri": uris[node]}, (origin,), file=VMS_FILE)
        )
        for dom in live.domains.values():
            where.setdefault(dom.name, []).append((node, dom))
    for name in sorted(where):
        address = f"{KIND}/{name}"
        places = where[name]
        if len(places) > 1:
            nodes = ", ".join(n for n, _ in places)
            found.skipped.append(Skipped(address, f"defined on several nodes ({nodes})"))
            continue
        node, dom = places[0]
        if not _NAME.match(name):
            found.skipped.append(
                Skipped(address, "git names VMs with 1-64 letters, digits, '_', '.', '+' or '-'")
            )
            continue
        if not dom.persistent:
            found.skipped.append(Skipped(address, "transient (no persistent definition)"))
            continue
        if dom.state not in ("running", "shutoff"):
            found.skipped.append(Skipped(address, f"state {dom.state}: git has running or shutoff"))
            continue
        port, note = _vnc_port(dom)
        value: dict[str, Any] = {"node": node, "vnc_port": port, "state": dom.state}
        notes = [f"{origin}, node {node}"] + ([note] if note else [])
        found.resources.append(Resource("vms", name, value, tuple(notes), file=VMS_FILE))
    return found


def first_run_changes(found: Found, lives: Mapping[str, NodeLive]) -> list[str]:
    """What the first run would still change for the VMs ``found`` holds, by the
    provider's own placement (an autoport VM gets its port pinned). Pure."""
    from reconciler.kinds.vm.placement import plan_vms

    nodes = {r.name: r.value for r in found.resources if r.section == "nodes"}
    vms = {r.name: dict(r.value) for r in found.resources if r.section == "vms"}
    if not vms:
        return []
    config = {"controller": "-", "storage": "shared", "nodes": nodes, "vms": vms}
    live = VmLive({n: lives[n] for n in nodes})
    changes, errors = plan_vms(config, live)
    out = [f"{c.address}: the first run changes {c.before} to {c.after}" for c in changes]
    out += [f"{e.address}: {e.message}" for e in errors]
    return out


# ---------------------------------------------------------------------------- read part
def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--node NAME=URI`` (repeatable)."""
    p.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME=URI",
        help="import the VMs of this libvirt node into vms.yaml (repeatable)",
    )


def _parse_nodes(values: Sequence[str], found: Found, ctx: ImportContext) -> dict[str, str]:
    uris: dict[str, str] = {}
    for value in values:
        name, sep, uri = value.partition("=")
        if not sep or not _NAME.match(name) or not uri:
            why = "expected NAME=URI, NAME 1-64 letters, digits, '_', '.', '+' or '-'"
            found.errors.append(ReconcilerError(f"--node {value!r}: {why}", address=KIND))
            continue
        problems = libvirt_uri_problems(uri, ctx.config)
        if problems:
            found.errors.append(ReconcilerError("; ".join(problems), address=f"node/{name}"))
            continue
        if name in uris and uris[name] != uri:
            found.errors.append(ReconcilerError("named twice", address=f"node/{name}"))
            continue
        uris[name] = uri
    return uris


def collect(args: argparse.Namespace, ctx: ImportContext) -> Found:
    """What ``reconcile import`` writes into vms.yaml: the nodes of ``--node`` and their
    domains; nothing without ``--node``."""
    found = Found()
    if not args.node:
        return found
    uris = _parse_nodes(args.node, found, ctx)
    if not uris:
        return found
    from reconciler.kinds.vm.read import Nodes

    nodes = Nodes({"nodes": {n: {"uri": u} for n, u in uris.items()}})
    try:
        lives = nodes.read()
    finally:
        nodes.close()
    mine = from_nodes(uris, lives, f"from libvirt on {ctx.host}, {ctx.day}")
    mine.notes += first_run_changes(mine, lives)
    found.extend(mine)
    return found
