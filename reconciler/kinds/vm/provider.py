"""The ``vm`` kind: which VM lives on which libvirt node, and VNC ports that never collide.

Run on the controller host named in ``vms.yaml``. ``read`` (:mod:`.read`) opens one
connection per node (concurrently, kept for apply and re-read), lists every domain with its
inactive and live XML and the node's capacity. ``diff`` (pure:
:func:`~reconciler.kinds.vm.placement.plan_vms`) decides, per VM in git:

* on its node: converge the VNC port (config, ``autoport='no'``) and the state;
* on another node: move it (shared storage: only the definition moves);
* on no node: define it from ``definition:``, else an error;
* on two nodes: an error, unless it is our own interrupted move (same UUID on both, git names
  one of them): then the copy on the other node is undefined, finishing the move.

Safety rules (``docs/desired-state.md``), each enforced and tested:

* a move defines on the target and verifies it there (same UUID, the planned VNC port) before
  it undefines on the source, so a definition is never absent from both nodes; ``undefine``
  re-checks the target copy and refuses to undefine a running domain;
* a running VM is stopped for a move only when git allows it (``state: shutoff``, or the
  per-VM ``allow_stop: true``), by a graceful shutdown with a timeout, never forced; otherwise
  the change is shown as refused ("blocked"); ``live_migrate: true`` migrates it instead;
* VNC ports are unique across the cluster: fixed ports are checked against every domain git
  does not manage on the target node, ``auto`` ports come from a deterministic allocator;
* domains git does not list are reported (as warnings on changes to their node, and in the
  log) and never touched;
* a node that cannot be read makes its VMs errors and skips moves into or out of it; a VM not
  found on the reachable nodes is not defined while any node is unreachable (it may be there);
* a plan that would run more memory or vCPUs on a node than it has is refused for the VMs
  that add load there, with the numbers.

Ops (all name ``vm`` and a node): ``shutdown``, ``start``, ``set_vnc_port``; ``define``
(``from_node`` + ``uuid``: copy of the source's inactive XML; or ``definition``: the file from
git); ``undefine`` (``uuid``; ``kept_on``: the node the definition must exist on first);
``migrate`` (live). A move is listed as its steps: ``[shutdown] define undefine [start]``;
``apply`` executes them (:mod:`.moves`).

A move is recorded in the state dir before its first write and the record dropped when it is
done (:mod:`.moving`): a run killed mid-migration leaves the next run knowing the VM was
ours and in flight, which is what lets it resume a guest left paused on the source (op
``resume``) or discard the stale paused copy beside the one running on the target
(``discard_paused``). A record that cannot be written stops the move before it starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler import log
from reconciler.errors import ProviderError, StateError
from reconciler.kinds.vm import moving
from reconciler.kinds.vm.libvirtio import open_node
from reconciler.kinds.vm.moves import Moves
from reconciler.kinds.vm.placement import KIND, plan_vms, unmanaged_domains
from reconciler.kinds.vm.read import (
    Connect,
    Definition,
    Nodes,
    VmLive,
    read_definitions,
)
from reconciler.model import HostDesired
from reconciler.plan import Change, Op, PlanError
from reconciler.state import StateDir

DEFAULT_SHUTDOWN_TIMEOUT = 120.0



class VmProvider:
    """read / pure diff / apply for VM placement across the libvirt nodes of ``vms.yaml``.

    ``config`` is :func:`reconciler.desired.load_vms`'s validated data; ``repo`` the
    desired-state directory (``definition:`` files are read in ``read``). ``connect(name,
    uri)`` opens a node (default :func:`~reconciler.kinds.vm.libvirtio.open_node`); each node
    is opened once and kept for apply and re-read, and tests pass a factory that hands out
    their own in-memory ``test:///`` nodes. ``shutdown_timeout`` bounds a graceful shutdown.
    ``state`` is the state dir, where moves in flight are recorded (None: not recorded).
    """

    kind = KIND

    def __init__(
        self,
        config: Mapping[str, Any],
        repo: Path,
        *,
        connect: Connect = open_node,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        state: StateDir | None = None,
    ) -> None:
        self.config = config
        self.state = state
        # The moves in flight the state dir records, read with the live state (not part of
        # VmLive: a snapshot carries none, and a plan from one recovers nothing).
        self._moving: dict[str, dict[str, Any]] = {}
        self.repo = repo
        self.shutdown_timeout = shutdown_timeout
        self.nodes = Nodes(config, connect)
        self._definitions: dict[str, Definition] = {}
        self._moves = Moves(self.nodes, config, self._definitions, shutdown_timeout)

    def close(self) -> None:
        """Close every node connection this provider opened."""
        self.nodes.close()

    # ----------------------------------------------------------------------------- read
    def read(self, desired: HostDesired) -> VmLive:
        """Read every node (:meth:`~reconciler.kinds.vm.read.Nodes.read`) and the
        ``definition:`` files, and the moves in flight the state dir records. Writes
        nothing. An unreachable node is recorded as an error for that node, not raised."""
        self._moving = self.state.ours(moving.KIND) if self.state is not None else {}
        nodes = self.nodes.read()
        # A run right after one killed mid-migration: wait for libvirt to finish tearing
        # that migration down (its incoming copy on the target) before planning.
        deadline = time.monotonic() + moving.SETTLE_WAIT
        while moving.incoming(self._moving, nodes) and time.monotonic() < deadline:
            time.sleep(0.25)
            nodes = self.nodes.read()
        self._definitions.clear()
        self._definitions.update(read_definitions(self.config, self.repo))
        live = VmLive(nodes, dict(self._definitions))
        logger = log.get()
        for n, doms in unmanaged_domains(self.config, live).items():
            logger.info("vm_unmanaged", node=n, domains=doms[:20], count=len(doms))
        return live

    # ----------------------------------------------------------------------------- diff
    def diff(self, desired: HostDesired, live: VmLive) -> tuple[list[Change], list[PlanError]]:
        """Pure: see :func:`plan_vms` (``desired`` is the host's; VMs come from vms.yaml),
        with the interrupted live migrations of ours planned to converge
        (:func:`.moving.recover`, from the records the read found)."""
        changes, errors = plan_vms(self.config, live)
        return moving.recover(self._moving, live, changes, errors)

    def forget_vanished(self, live: VmLive) -> None:
        """After the apply (``live`` is the re-read): drop the records of moves that are
        over (the VM on one node, not paused), left by a run killed mid-move."""
        if self.state is None:
            return
        for name, record in self.state.ours(moving.KIND).items():
            if moving.settled(record, name, live):
                self.state.forget(moving.KIND, name)

    def from_snapshot(
        self, desired: HostDesired, live: VmLive
    ) -> tuple[HostDesired, VmLive, list[Change]]:
        """The definitions come from the commit being planned, not the host's checkout."""
        return desired, replace(live, definitions=read_definitions(self.config, self.repo)), []

    # ---------------------------------------------------------------------------- apply
    def apply(self, change: Change) -> list[Op]:
        """Execute the ops of one change in order, stopping at the first failure (a later
        step, e.g. the undefine after a failed define, must never run). Raises
        ProviderError naming the step, after the ops that completed. A move is recorded
        in the state dir before its first op and the record dropped after its last
        (:mod:`.moving`); when the record cannot be written nothing is done."""
        done: list[Op] = []
        move = moving.move_record(change) if self.state is not None else None
        if move is not None:
            try:
                self.state.intend(moving.KIND, change.name, *move)  # type: ignore[union-attr]
            except StateError as e:
                raise ProviderError(
                    f"not moved: the move could not be recorded as ours ({e.message})",
                    address=change.address,
                ) from e
        for op in change.ops:
            try:
                self._moves.apply_op(op)
            except ProviderError as e:
                steps = ", ".join(o.op for o in done) or "nothing"
                raise ProviderError(
                    f"{op.op} failed: {e.message} (done before it: {steps}; the next run "
                    "continues from the live state)",
                    address=change.address,
                ) from e
            done.append(op)
            if move is not None and op.op in ("undefine", "migrate", "discard_paused"):
                self.state.forget(moving.KIND, change.name)  # type: ignore[union-attr]
                move = None
        return done

