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
    assert schemacheck.host_check() is _hostcheck.validate


def _valid(check: Any, data: Any) -> bool:
    try:
        check(data)
    except fastjsonschema.JsonSchemaException:
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
    assert check is not _hostcheck.validate
    assert not _valid(check, {"ipsets": {"mgmt": {"type": "hash:ip"}}})
    assert _valid(check, {"ipsets": {}})
