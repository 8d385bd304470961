"""What a resource kind is: the provider contract, its optional capabilities, and the
descriptor every kind registers in :mod:`reconciler.kinds` (``docs/kinds.md``).

A provider reads live state (``read``), compares it with the desired state in a *pure*
function (``diff``: no I/O, so it is tested with golden data files without root), and executes
ops (``apply``). Apply executes, never decides: every decision is already in the plan.

Optional capabilities are typed Protocols, offered by having the method, and checked here
only: :func:`notices`, :func:`forget_vanished`, :func:`snapshot_scope`,
:func:`from_snapshot` and, on live states, :func:`for_snapshot`. The zero value of every
:class:`Kind` field is the safe one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from reconciler.hostconfig import HostConfig
from reconciler.model import HostDesired
from reconciler.plan import Change, Op, PlanError, PlanWarning

if TYPE_CHECKING:
    from reconciler.errors import Problem
    from reconciler.fielddiff import Memo
    from reconciler.state import StateDir
    from reconciler.yamlsrc import YamlDoc


class Provider(Protocol):
    """What the engine needs from a resource kind."""

    kind: str

    def read(self, desired: HostDesired) -> Any:
        """Read the live state relevant to ``desired``, normalised for comparison.

        Must not write anything. Per-resource read failures are returned inside the live
        object (and surface as plan errors), not raised, so other resources still plan.
        """
        ...

    def diff(self, desired: HostDesired, live: Any) -> tuple[list[Change], list[PlanError]]:
        """Return the changes that make ``live`` match ``desired``, and per-resource errors.

        Pure: no I/O, deterministic, unchanged inputs.
        """
        ...

    def apply(self, change: Change) -> list[Op]:
        """Execute the ops of one change, in order, and return the ops executed.

        Raises ProviderError on failure (after recording whatever it completed).
        """
        ...


# ---------------------------------------------------------------- optional capabilities
@runtime_checkable
class GivesNotices(Protocol):
    """Warnings about resources that may have no change (a future-dated archive)."""

    def notices(self, desired: HostDesired, live: Any) -> list[PlanWarning]:
        """Pure, like ``diff``."""
        ...


@runtime_checkable
class ForgetsVanished(Protocol):
    """Forgets, after an apply, resources it owned that are gone from the host."""

    def forget_vanished(self, live: Any) -> None:
        """``live`` is the state re-read after the apply."""
        ...


@runtime_checkable
class SnapshotsWide(Protocol):
    """Reads more for a snapshot than the desired state names (every physical NIC), so a
    commit that adds a resource can still be planned against the snapshot."""

    def snapshot_scope(self, desired: HostDesired) -> HostDesired:
        """The desired state to read for a snapshot."""
        ...


@runtime_checkable
class PlansFromSnapshot(Protocol):
    """Adjusts a snapshot's live state, or the desired state, before its pure diff (a set
    added since the snapshot, definitions read from the commit being planned)."""

    def from_snapshot(
        self, desired: HostDesired, live: Any
    ) -> tuple[HostDesired, Any, list[Change]]:
        """(desired, live) to diff, and changes planned without the diff."""
        ...


@runtime_checkable
class ScrubbedForSnapshot(Protocol):
    """A live state that holds something only true of the process that read it."""

    def for_snapshot(self) -> Any:
        """The live state as a snapshot keeps it."""
        ...


def for_snapshot(live: Any) -> Any:
    """``live`` as a snapshot file keeps it."""
    return live.for_snapshot() if isinstance(live, ScrubbedForSnapshot) else live


def notices(
    provider: Provider, desired: HostDesired, live: Any, changes: Sequence[Change]
) -> list[PlanWarning]:
    """The provider's notices about resources that have no change in ``changes`` (a change
    shows its own warnings); [] for a provider without notices."""
    if not isinstance(provider, GivesNotices):
        return []
    changed = {c.address for c in changes}
    return [w for w in provider.notices(desired, live) if w.address not in changed]


def forget_vanished(provider: Provider, live: Any) -> None:
    """Let the provider forget what vanished from the host, if it keeps such a record."""
    if isinstance(provider, ForgetsVanished):
        provider.forget_vanished(live)


def snapshot_scope(provider: Provider, desired: HostDesired) -> HostDesired:
    """What ``reconcile snapshot`` reads for this provider: ``desired``, or wider."""
    return provider.snapshot_scope(desired) if isinstance(provider, SnapshotsWide) else desired


def from_snapshot(
    provider: Provider, desired: HostDesired, live: Any
) -> tuple[HostDesired, Any, list[Change]]:
    """(desired, live, extra changes) for planning against a snapshot's ``live``."""
    if isinstance(provider, PlansFromSnapshot):
        return provider.from_snapshot(desired, live)
    return desired, live, []


# ----------------------------------------------------------------------- the descriptor
@dataclass(frozen=True)
class Context:
    """What a provider is built with. The zero value builds a diff-only provider: no state
    dir (nothing recorded as ours), no ``--force``, no ``--allow-empty``, no cluster desired
    state, the real clock, the default host configuration.
    """

    state: StateDir | None = None
    force: bool = False
    #: ``--allow-empty``: a plan may delete every resource we own of a kind while git
    #: declares none of that kind (without it, such a plan is refused).
    allow_empty: bool = False
    #: validated ``vms.yaml`` when this host is the controller; None otherwise.
    vms: Mapping[str, Any] | None = None
    repo: Path | None = None
    #: a fixed "now" (the CI dry-run); None: the real clock.
    now: datetime | None = None
    #: the host configuration: the programs a provider runs come from here, never from
    #: the repository (:mod:`reconciler.hostconfig`).
    host: HostConfig = field(default_factory=HostConfig)


OpLine = Callable[[dict[str, Any]], str]
Check = Callable[["YamlDoc", str, dict[str, Any]], "list[Problem]"]
CheckFile = Callable[[Path, "YamlDoc"], "list[Problem]"]
HostCheck = Callable[["YamlDoc", str, dict[str, Any], HostConfig], "list[Problem]"]
HostCheckFile = Callable[["YamlDoc", HostConfig], "list[Problem]"]
Load = Callable[["YamlDoc", str, dict[str, Any]], Any]
Against = Callable[[HostDesired, HostDesired, "Memo | None"], list[Change]]
ClusterAgainst = Callable[[Mapping[str, Any] | None, Mapping[str, Any]], list[Change]]
LogEvents = Callable[[Sequence[Op]], Iterator[dict[str, Any]]]
Idle = Callable[[HostDesired, Context], bool]


def lazy(module: str, name: str) -> Any:
    """A stand-in for the function ``module.name`` that imports ``module`` when it is first
    called: a kind's descriptor names its checks, renderers and diffs without loading them,
    so a run pays only for the kinds its desired state uses."""
    import importlib

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{module}.{name}, imported when first called."
    setattr(call, "lazy_target", (module, name))  # noqa: B010 (for the registry's test)
    return call


class LazyMapping(Mapping[str, Any]):
    """The mapping ``module.name``, imported when first read (see :func:`lazy`)."""

    def __init__(self, module: str, name: str) -> None:
        """Nothing is imported yet."""
        self.lazy_target = (module, name)
        self._mapping: Mapping[str, Any] | None = None

    def _target(self) -> Mapping[str, Any]:
        if self._mapping is None:
            import importlib

            module, name = self.lazy_target
            self._mapping = getattr(importlib.import_module(module), name)
        return self._mapping

    def __getitem__(self, key: str) -> Any:
        return self._target()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._target())

    def __len__(self) -> int:
        return len(self._target())


class IdleProvider:
    """The provider of a kind with nothing to do on this host (:attr:`Kind.idle`): it reads
    nothing and plans nothing, and its kind's modules are not imported. It keeps the kind
    in the run (the journal lists the kinds a run converged)."""

    def __init__(self, kind: str) -> None:
        """The provider of ``kind``."""
        self.kind = kind

    def read(self, desired: HostDesired) -> None:
        """Nothing to read."""
        return None

    def diff(self, desired: HostDesired, live: Any) -> tuple[list[Change], list[PlanError]]:
        """Nothing to change."""
        return [], []

    def apply(self, change: Change) -> list[Op]:
        """Never called: an idle kind plans no change."""
        raise RuntimeError(f"{self.kind} is idle: it has no change to apply")


@dataclass(frozen=True)
class Kind:
    """Everything the rest of reconciler needs to know about one kind.

    Heavy modules (the provider's I/O: netlink, libvirt) are imported only when
    ``provider`` or ``live_class`` is called, so listing kinds costs nothing; the other
    functions and ``op_lines`` name their modules with :func:`lazy` and
    :class:`LazyMapping`, imported when first used. The whole-file checks (``check_file``,
    ``check_host_file``) run only on files that have the kind's section or one of its
    ``settings`` sections.
    """

    #: the address prefix (``ipset/mgmt``) and the ``--only`` value.
    name: str
    #: build the provider; None when it has nothing to do here (vm off the controller).
    provider: Callable[[Context], Provider | None]
    #: the class ``read`` returns, for snapshots.
    live_class: Callable[[], type[Any]]
    #: its key in fleet.yaml and hosts/*.yaml; None for a kind with its own file.
    section: str | None = None
    #: semantic checks of one resource (``section.<name>``), beyond the schema.
    check: Check | None = None
    #: checks of a whole fleet or host file that one resource at a time cannot see.
    check_file: CheckFile | None = None
    #: what one resource asks of the host (a program to run, a host file to read) checked
    #: against the host configuration (``allowed_dirs`` ...). Run on every load, never
    #: cached: the answer depends on the host configuration and the host's file system.
    check_host: HostCheck | None = None
    #: the same for a whole fleet or host file (its settings sections: ``tarsnap``).
    check_host_file: HostCheckFile | None = None
    #: the same for a cluster-wide kind's own file (``vms.yaml``: libvirt node URIs).
    check_host_cluster: HostCheckFile | None = None
    #: one validated resource -> its typed desired form (``HostDesired.<section>``); None
    #: keeps it as plain data in ``HostDesired.raw[section]``.
    load: Load | None = None
    #: with ``load``: it returns (typed, plain data) and both are kept.
    keeps_raw: bool = False
    #: host-file settings sections merged key by key into ``raw`` (with their defaults).
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: how each of its ops reads in the text plan, by op name.
    op_lines: Mapping[str, OpLine] = field(default_factory=dict)
    #: the log events for executed ops; None: one event per op.
    log_events: LogEvents | None = None
    #: the change a commit asks for, desired state before vs after (the CI dry-run).
    against: Against | None = None
    #: the same for a cluster-wide kind: its cluster desired state before vs after.
    cluster_against: ClusterAgainst | None = None
    #: its changes follow the clock (backups are due), so a change is never drift.
    scheduled: bool = False
    #: its desired state is cluster-wide (vms.yaml), applied on the controller only.
    cluster: bool = False
    #: other heads of error addresses that are this kind's (``node/kvm1`` is vm's).
    error_heads: tuple[str, ...] = ()
    #: its provider reads or changes what only root may (the kernel's network state), so
    #: a run of it by another user stops at once with "needs root". False: it works for
    #: any user with access to what the desired state names (a backup repository, a
    #: libvirt socket).
    needs_root: bool = True
    #: True when the kind certainly has nothing to read, plan or record for this desired
    #: state on this host (nothing desired, nothing of its own in the state dir): a run
    #: then uses :class:`IdleProvider` and never imports the kind's provider. None: never
    #: idle.
    idle: Idle | None = None
