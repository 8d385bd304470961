"""The contract every provider implements.

A provider reads live state (``read``), compares it with the desired state in a *pure*
function (``diff``: no I/O, so it is tested with golden data files without root), and executes
ops (``apply``). Apply executes, never decides: every decision is already in the plan.

Optional: ``notices(desired, live) -> list[PlanWarning]``, pure like ``diff``: warnings about
resources that may have no change (the engine keeps those whose address has no change in
the plan; a change carries its own). The backup kind reports future-dated archives this way.
"""

from __future__ import annotations

from typing import Any, Protocol

from reconciler.model import HostDesired
from reconciler.plan import Change, Op, PlanError


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
