"""How NIC ops read in the text plan."""

from __future__ import annotations

from typing import Any

from reconciler.kinds.base import OpLine
from reconciler.model import RING_FIELDS


def _set_features(a: dict[str, Any]) -> str:
    feats = ", ".join(f"{k} {'on' if v else 'off'}" for k, v in a["features"].items())
    return f"~ features {feats}"


def _set_rings(a: dict[str, Any]) -> str:
    rings = " ".join(f"{k} {a[k]}" for k in RING_FIELDS if k in a)
    bounce = " (resets the link)" if a.get("bounces_link") else ""
    return f"~ rings {rings}{bounce}"


OP_LINES: dict[str, OpLine] = {"set_features": _set_features, "set_rings": _set_rings}
