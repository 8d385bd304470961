"""Executing placement ops on the nodes: define, verify, undefine, start, shut down, set a
VNC port, live-migrate, and the two recoveries of an interrupted migration (resume the
paused source; discard a stale paused copy, :mod:`.moving`). Each step re-checks what makes
it safe on the live node (a move's target copy exists with the same UUID before the source
is undefined; nothing running is undefined or copied; only a paused copy is resumed or
discarded, and only while the other node does not run it, or runs it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.errors import ProviderError
from reconciler.kinds.vm.domainxml import parse_domain_xml, with_vnc_port
from reconciler.kinds.vm.libvirtio import NodeIO
from reconciler.kinds.vm.read import Definition, Nodes
from reconciler.plan import Op


class Moves:
    """Executes ops on ``nodes``; ``definitions`` are the ``definition:`` files read with
    the live state; a graceful shutdown waits at most ``shutdown_timeout`` seconds."""

    def __init__(
        self,
        nodes: Nodes,
        config: Mapping[str, Any],
        definitions: Mapping[str, Definition],
        shutdown_timeout: float,
    ) -> None:
        self.nodes = nodes
        self.config = config
        self.definitions = definitions
        self.shutdown_timeout = shutdown_timeout

    def apply_op(self, op: Op) -> None:
        """Execute one op; ProviderError when it fails or a safety check refuses it."""
        a = op.args
        vm = a["vm"]
        if op.op == "define":
            self._define(vm, a)
        elif op.op == "undefine":
            self._undefine(vm, a)
        elif op.op == "start":
            io = self.nodes.get(a["node"])
            io.start(self._uuid_on(io, vm))
        elif op.op == "shutdown":
            io = self.nodes.get(a["node"])
            if not io.shutdown(self._uuid_on(io, vm), self.shutdown_timeout):
                raise ProviderError(
                    f"{vm} did not shut down within {self.shutdown_timeout:g} s on {a['node']}; "
                    "it was not forced off"
                )
        elif op.op == "set_vnc_port":
            io = self.nodes.get(a["node"])
            uuid = self._uuid_on(io, vm)
            io.define(with_vnc_port(io.config_xml(uuid), int(a["vnc_port"])))
            self._verify(io, vm, uuid, a["vnc_port"])
        elif op.op == "migrate":
            src, dst = self.nodes.get(a["from_node"]), self.nodes.get(a["to_node"])
            xml, persist = src.live_xml(a["uuid"]), src.config_xml(a["uuid"])
            if a.get("vnc_port") is not None:
                xml = with_vnc_port(xml, int(a["vnc_port"]))
                persist = with_vnc_port(persist, int(a["vnc_port"]))
            uri = self.config["nodes"][a["to_node"]].get("migration_uri")
            src.migrate_live(a["uuid"], dst, xml, persist, uri)
            self._verify(dst, vm, a["uuid"], a.get("vnc_port"))
        elif op.op == "resume":
            self._resume(vm, a)
        elif op.op == "discard_paused":
            self._discard_paused(vm, a)
        else:  # a plan from a newer version, or a bug: never guess
            raise ProviderError(f"unknown op {op.op!r}")

    def _uuid_on(self, io: NodeIO, vm: str) -> str:
        found = io.find(vm)
        if found is None:
            raise ProviderError(f"{vm} is not defined on {io.name}")
        return found[0]

    def _define(self, vm: str, a: Mapping[str, Any]) -> None:
        target = self.nodes.get(a["node"])
        if a.get("from_node"):
            source = self.nodes.get(a["from_node"])
            xml = source.config_xml(a["uuid"])
            if source.is_active(a["uuid"]):
                raise ProviderError(f"{vm} is running on {a['from_node']}; not copying it")
        else:
            d = self.definitions.get(vm)
            if d is None or d.xml is None:
                raise ProviderError(f"the definition of {vm} was not read")
            xml = d.xml
        try:
            if a.get("vnc_port") is not None:
                xml = with_vnc_port(xml, int(a["vnc_port"]))
        except ValueError as e:
            raise ProviderError(str(e)) from e
        uuid = target.define(xml)
        if a.get("uuid") and uuid != a["uuid"]:
            raise ProviderError(f"defined on {a['node']} with UUID {uuid}, not {a['uuid']}")
        self._verify(target, vm, uuid, a.get("vnc_port"))

    def _verify(self, io: NodeIO, vm: str, uuid: str, port: int | None) -> None:
        """Re-read the definition just written: the port must be ``port`` with autoport off."""
        try:
            info = parse_domain_xml(io.config_xml(uuid))
        except ValueError as e:
            raise ProviderError(f"verifying {vm} on {io.name}: {e}") from e
        if port is not None and (
            info.vnc is None or info.vnc.autoport or info.vnc.port != int(port)
        ):
            raise ProviderError(
                f"verifying {vm} on {io.name}: VNC is {info.vnc}, expected port {port} "
                "with autoport='no'"
            )

    def _undefine(self, vm: str, a: Mapping[str, Any]) -> None:
        # The safety rule lives here too: never undefine unless the definition exists, with
        # the same UUID, on the node it is kept on.
        kept = self.nodes.get(a["kept_on"])
        found = kept.find(vm)
        if found is None or found[0] != a["uuid"] or not found[2]:
            raise ProviderError(
                f"{vm} (UUID {a['uuid']}) is not defined on {a['kept_on']}; not undefining it "
                f"on {a['node']}"
            )
        source = self.nodes.get(a["node"])
        if source.is_active(a["uuid"]):
            raise ProviderError(f"{vm} is running on {a['node']}; not undefining it")
        source.undefine(a["uuid"])

    def _paused_copy(self, vm: str, a: Mapping[str, Any]) -> NodeIO:
        """The node of ``a["node"]``, checked to hold ``vm`` with ``a["uuid"]``, paused."""
        io = self.nodes.get(a["node"])
        found = io.find(vm)
        if found is None or found[0] != a["uuid"] or io.state(a["uuid"]) != "paused":
            raise ProviderError(f"{vm} (UUID {a['uuid']}) is not paused on {a['node']}; left alone")
        return io

    def _resume(self, vm: str, a: Mapping[str, Any]) -> None:
        # Only while the other node of the interrupted migration does not run it: two
        # running copies would share the disks.
        io = self._paused_copy(vm, a)
        other = self.nodes.get(a["not_running_on"]).find(vm)
        if other is not None and other[0] == a["uuid"] and other[1]:
            raise ProviderError(
                f"{vm} is active on {a['not_running_on']}; not resuming it on {a['node']}"
            )
        io.resume(a["uuid"])

    def _discard_paused(self, vm: str, a: Mapping[str, Any]) -> None:
        # Only while the copy kept runs there, same UUID: that one is the VM.
        io = self._paused_copy(vm, a)
        kept = self.nodes.get(a["kept_on"])
        found = kept.find(vm)
        if found is None or found[0] != a["uuid"] or kept.state(a["uuid"]) != "running":
            raise ProviderError(
                f"{vm} (UUID {a['uuid']}) is not running on {a['kept_on']}; not discarding "
                f"its paused copy on {a['node']}"
            )
        io.destroy(a["uuid"])
        if io.find(vm) is not None:
            io.undefine(a["uuid"])
