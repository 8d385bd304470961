"""What a commit changes in a host's NIC settings, without the host: ``set_field`` ops."""

from __future__ import annotations

from reconciler.fielddiff import Memo, settings_changes
from reconciler.model import HostDesired
from reconciler.plan import Change


def changes(before: HostDesired, after: HostDesired, memo: Memo | None = None) -> list[Change]:
    """Ring and offload settings per NIC, from ``before`` to ``after``."""
    return settings_changes("nic", "nic", before.raw.get("nics") or {}, after.raw.get("nics") or {})
