"""The JSON Schema of fleet.yaml and hosts/<host>.yaml, composed from its parts: the base
(``host.schema.base.json``: the top level and ``verify``) and each kind's ``schema.json`` in
its folder (its section and the ``$defs`` it uses), in registry order.

``schemas/host.schema.json`` is this composition written out for editors and readers;
``python -m reconciler.schema`` rewrites it, and a test checks it is current.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

from reconciler import kinds as registry

PACKAGE = Path(__file__).parent
SHIPPED = PACKAGE / "schemas" / "host.schema.json"


def _read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@functools.cache
def host_schema() -> dict[str, Any]:
    """The composed host schema. A ``$defs`` entry that two parts define must be identical
    (``ifname`` is shared by ipset and nic); two parts claiming one section is an error."""
    out = _read(PACKAGE / "host.schema.base.json")
    props: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    parts = [(k.name, PACKAGE / "kinds" / k.name / "schema.json") for k in registry.KINDS]
    for name, path in parts:
        if not path.exists():
            continue
        part = _read(path)
        for key, value in part.get("properties", {}).items():
            if key in props or key in out["properties"]:
                raise RuntimeError(f"schema: section {key!r} of kind {name} is defined twice")
            props[key] = value
        for key, value in part.get("$defs", {}).items():
            if key in defs and defs[key] != value:
                raise RuntimeError(f"schema: $defs/{key} of kind {name} differs from another's")
            defs[key] = value
    out["properties"] = {**props, **out["properties"]}
    out["$defs"] = {**defs, **out["$defs"]}
    return out


def render() -> str:
    """The composed schema as the shipped file holds it."""
    return json.dumps(host_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """Rewrite ``schemas/host.schema.json`` from its parts, and the check compiled from it
    (:mod:`reconciler.schemacheck`)."""
    SHIPPED.write_text(render(), encoding="utf-8")
    print(f"{SHIPPED}: written", file=sys.stderr)
    from reconciler import schemacheck

    return schemacheck.main()


if __name__ == "__main__":
    raise SystemExit(main())
