"""The shared half of the golden diff tests: compare a provider's diff with expected data.

Each kind's golden files hold ``expected: {changes: [...], errors: [...]}``; every change
names its ``address``, ``action`` and exact ``ops`` (and optionally a ``refused`` substring);
every error its ``address`` and a substring it ``contains``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.plan import Change, PlanError


def check(
    expected: dict[str, Any], changes: Sequence[Change], errors: Sequence[PlanError]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Assert the common expectations; return (want, have) pairs for kind-specific checks."""
    got = [c.to_dict() for c in changes]
    want_changes = expected.get("changes") or []
    assert [c["address"] for c in got] == [c["address"] for c in want_changes]
    for want, have in zip(want_changes, got, strict=True):
        assert have["action"] == want["action"]
        assert have["ops"] == want["ops"]
        if want.get("refused"):
            assert want["refused"] in have.get("refused", "")
        else:
            assert "refused" not in have
    want_errors = expected.get("errors") or []
    assert [e.address for e in errors] == [e["address"] for e in want_errors]
    for want_e, have_e in zip(want_errors, errors, strict=True):
        assert want_e["contains"] in have_e.message
    return list(zip(want_changes, got, strict=True))
