"""The host schema is composed from each kind's part (reconciler/schema.py); the shipped
schemas/host.schema.json is that composition, byte for byte."""

from pathlib import Path

from reconciler import kinds, schema

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_host_schema_is_the_composition_of_the_parts() -> None:
    shipped = (ROOT / "schemas" / "host.schema.json").read_text(encoding="utf-8")
    assert shipped == schema.render(), "run: .venv/bin/python -m reconciler.schema"


def test_every_kind_with_a_section_brings_its_schema_part() -> None:
    composed = schema.host_schema()
    for kind in kinds.KINDS:
        if kind.section is not None:
            assert kind.section in composed["properties"], kind.name
            assert (ROOT / "reconciler" / "kinds" / kind.name / "schema.json").is_file()
    for section, _ in [(s, d) for k in kinds.KINDS for s, d in k.settings.items()]:
        assert section in composed["properties"], section
