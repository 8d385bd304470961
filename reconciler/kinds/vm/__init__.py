"""The ``vm`` kind: which VM lives on which libvirt node, and VNC ports that never collide.

``libvirtio`` is the libvirt boundary; ``read`` turns domains into live records,
``placement`` decides (moves, VNC ports, capacity) in a pure function, and ``provider``
reads, plans and applies (moves: define, verify, undefine). Its desired state is
cluster-wide (``vms.yaml``) and applied by the controller host only.
"""

from __future__ import annotations

from typing import Any

from reconciler.kinds.base import Context, Kind, LazyMapping, Provider, lazy


def _provider(ctx: Context) -> Provider | None:
    if ctx.vms is None or ctx.repo is None:
        return None
    from reconciler.kinds.vm.provider import VmProvider

    return VmProvider(ctx.vms, ctx.repo, state=ctx.state)


def _live_class() -> type[Any]:
    from reconciler.kinds.vm.read import VmLive

    return VmLive


KIND = Kind(
    name="vm",
    provider=_provider,
    live_class=_live_class,
    op_lines=LazyMapping("reconciler.kinds.vm.render", "OP_LINES"),
    check_host_cluster=lazy("reconciler.kinds.vm.checks", "check_host_cluster"),
    cluster_against=lazy("reconciler.kinds.vm.against", "vm_changes"),
    cluster=True,
    error_heads=("node",),
    needs_root=False,  # libvirt's own access rules decide (qemu+ssh://, the libvirt group)
)
