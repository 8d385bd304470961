"""The host schema's fast check, compiled ahead of time.

fastjsonschema turns a schema into Python source and compiles it: for the composed host
schema that is 0.1-0.2 s, paid by every process that validates a file not found in the
cache (a first run on a new commit, ``reconcile validate`` in CI). The same source is
kept in the package as ``reconciler/_hostcheck.py`` (generated; imported from its
bytecode like any module), with the SHA-256 of the schema it was generated from. When that
is not the schema in use (a schema part edited, the module not regenerated) the check is
compiled at run time as before: the answer is the same, only slower, and
``tests/test_schema_fast.py`` fails until ``python -m reconciler.schemacheck`` rewrites
the module.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

GENERATED = Path(__file__).parent / "_hostcheck.py"


def _schema() -> dict[str, Any]:
    """The composed host schema as fastjsonschema compiles it (draft-07 semantics, which
    is all it uses: ``tests/test_schema_fast.py``)."""
    from reconciler.schema import host_schema

    schema = json.loads(json.dumps(host_schema()))
    schema.pop("$schema", None)
    return cast(dict[str, Any], schema)


def schema_digest() -> str:
    """The SHA-256 of the composed host schema (:func:`reconciler.cache.schema_version`)."""
    from reconciler.cache import schema_version

    return schema_version()


def host_check() -> Answers:
    """Whether a document is valid against the host schema (True or False): the generated
    module's check when it was generated from this schema, else one compiled now.
    ``use_default=False``: it never writes defaults into the document."""
    try:
        from reconciler import _hostcheck
    except ImportError:
        _hostcheck = None  # type: ignore[assignment]
    if _hostcheck is not None and getattr(_hostcheck, "SCHEMA_SHA256", None) == schema_digest():
        return Answers(_hostcheck.validate, _hostcheck.JsonSchemaException)
    import fastjsonschema

    check = fastjsonschema.compile(_schema(), use_default=False)
    return Answers(check, fastjsonschema.JsonSchemaException)


class Answers:
    """A compiled ``check`` (which raises ``invalid`` for an invalid document) as a yes/no
    question: called with a document, True when it is valid."""

    def __init__(self, check: Callable[[Any], Any], invalid: type[Exception]) -> None:
        self.check = check
        self.invalid = invalid

    def __call__(self, data: Any) -> bool:
        try:
            self.check(data)
        except self.invalid:
            return False
        return True


#: What the generated module has instead of importing fastjsonschema (~20 ms, with its
#: code generator, in every process that validates a file): the exceptions its check
#: raises, and its patterns compiled when first used rather than at import.
_PRELUDE = '''
class JsonSchemaException(ValueError):
    """The document is not valid (fastjsonschema's exceptions, as far as the check uses them)."""

    def __init__(self, message, value=None, name=None, definition=None, rule=None):
        super().__init__(message)
        self.message = message
        self.value = value
        self.name = name
        self.definition = definition
        self.rule = rule


class JsonSchemaValueException(JsonSchemaException):
    """A value is not valid."""


class JsonSchemaValuesException(JsonSchemaException):
    """Several values are not valid."""


class _LazyDecimal(type):
    def __instancecheck__(cls, obj):
        decimal = sys.modules.get("decimal")
        return decimal is not None and isinstance(obj, decimal.Decimal)


class Decimal(metaclass=_LazyDecimal):
    """decimal.Decimal for isinstance(), without importing decimal."""


class _Patterns(dict):
    """The patterns by their text, each compiled when first looked up."""

    def __init__(self, sources):
        super().__init__()
        self._sources = sources

    def __missing__(self, key):
        compiled = self[key] = re.compile(self._sources[key])
        return compiled
'''

_IMPORT = "from fastjsonschema import JsonSchemaValueException, JsonSchemaValuesException\n"
_DECIMAL = "from decimal import Decimal\n"
_PATTERNS = re.compile(r"^REGEX_PATTERNS = \{\n(.*?)^\}\n", re.M | re.S)


def _standalone(code: str) -> str:
    """fastjsonschema's generated ``code`` without its import of fastjsonschema, and with its
    patterns compiled on first use (:data:`_PRELUDE`)."""
    if _IMPORT not in code:
        raise RuntimeError("fastjsonschema's generated code no longer imports its exceptions")
    if _DECIMAL not in code:
        raise RuntimeError("fastjsonschema's generated code no longer imports Decimal")
    code = code.replace(_IMPORT, _PRELUDE).replace(_DECIMAL, "import sys\n")
    found = _PATTERNS.search(code)
    if found is None:
        raise RuntimeError("fastjsonschema's generated code has no REGEX_PATTERNS")
    entries = found.group(1).replace(": re.compile(", ": (")
    return code[: found.start()] + f"REGEX_PATTERNS = _Patterns({{\n{entries}}})\n" + code[
        found.end() :
    ]


def render() -> str:
    """The source of the generated module for the schema in use."""
    import fastjsonschema

    code = _standalone(fastjsonschema.compile_to_code(_schema(), use_default=False))
    first = re.search(r"^def (validate_\w+)\(", code, re.M)
    if first is None:
        raise RuntimeError("fastjsonschema generated no validate function")
    return (
        "# Generated by `python -m reconciler.schemacheck` from the composed host schema\n"
        "# (reconciler/schemacheck.py): do not edit.\n"
        "# ruff: noqa\n"
        "# mypy: ignore-errors\n"
        f'SCHEMA_SHA256 = "{schema_digest()}"\n'
        f"{code}\n\nvalidate = {first.group(1)}\n"
    )


def is_current() -> bool:
    """Whether the generated module is the one :func:`render` writes now."""
    return GENERATED.exists() and GENERATED.read_text(encoding="utf-8") == render()


def main() -> int:
    """Rewrite ``reconciler/_hostcheck.py`` for the schema in use."""
    GENERATED.write_text(render(), encoding="utf-8")
    print(f"{GENERATED}: written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
