"""The host schema's check compiled ahead of time (``reconciler/schemacheck.py``): the
generated module is the one the schema in use gives, and it answers as the check compiled
at run time does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastjsonschema
import pytest

from reconciler import _hostcheck, schemacheck
from reconciler.yamlsrc import load_yaml

ROOT = Path(__file__).resolve().parent.parent


def test_the_generated_check_is_current() -> None:
    assert schemacheck.is_current(), "run: .venv/bin/python -m reconciler.schema"
    assert schemacheck.host_check().check is _hostcheck.validate
    assert "fastjsonschema" not in _hostcheck.__dict__ and "import fastjsonschema" not in (
        ROOT / "reconciler" / "_hostcheck.py"
    ).read_text()


def _valid(check: Any, data: Any) -> bool:
    try:
        check(data)
    except (fastjsonschema.JsonSchemaException, _hostcheck.JsonSchemaException):
        return False
    return True


def test_it_answers_as_the_check_compiled_at_run_time() -> None:
    compiled = fastjsonschema.compile(schemacheck._schema(), use_default=False)
    files = [
        p
        for base in ("desired-state", "tests/data/desired", "lab")
        for p in sorted((ROOT / base).rglob("*.yaml"))
        if p.name == "fleet.yaml" or p.parent.name == "hosts"
    ]
    answers = []
    for path in files:
        data = load_yaml(path, path.name).data
        if data is None:
            continue
        answers.append(_valid(_hostcheck.validate, data))
        assert answers[-1] == _valid(compiled, data), path
    assert True in answers and False in answers  # both kinds of answer were compared


def test_a_stale_module_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_hostcheck, "SCHEMA_SHA256", "0" * 64)
    check = schemacheck.host_check()
    assert check.check is not _hostcheck.validate
    assert not check({"ipsets": {"mgmt": {"type": "hash:ip"}}})
    assert check({"ipsets": {}})


def test_the_generated_module_stands_alone() -> None:
    """It imports neither fastjsonschema nor decimal: its exceptions are its own, a Decimal
    is recognised without importing decimal (none can exist before it is), and its patterns
    are compiled when first used."""
    import decimal

    assert isinstance(decimal.Decimal("1.5"), _hostcheck.Decimal)
    assert not isinstance(1.5, _hostcheck.Decimal) and not isinstance("1", _hostcheck.Decimal)
    compiled = fastjsonschema.compile(schemacheck._schema(), use_default=False)
    for maxelem in (decimal.Decimal(65536), decimal.Decimal("0.5"), 1.0, "x", True):
        data: dict[str, Any] = {"ipsets": {"s": {"type": "hash:net", "members": [],
                                                  "maxelem": maxelem}}}  # fmt: skip
        assert _valid(_hostcheck.validate, data) == _valid(compiled, data), maxelem
    pattern = "^[A-Za-z0-9_-]{1,28}$"
    assert _hostcheck.REGEX_PATTERNS[pattern].pattern == "^[A-Za-z0-9_-]{1,28}\\Z"
    validate: Any = _hostcheck.validate
    with pytest.raises(_hostcheck.JsonSchemaValueException) as e:
        validate({"ipsets": {"s": {"type": "hash:ip"}}})
    assert isinstance(e.value, ValueError) and e.value.rule == "const"
