"""JSON rendering of the plan dict (the versioned contract of ``docs/plan.md``)."""

from __future__ import annotations

import json
from typing import Any


def render(plan: dict[str, Any]) -> str:
    """Return the plan as one JSON document (stable key order, newline-terminated)."""
    return json.dumps(plan, indent=2, sort_keys=False) + "\n"
