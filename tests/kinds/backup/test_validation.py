"""Validation of the keep rules and checks of backup sets: the schema and the semantic checks
(reconciler/kinds/backup/schema.json, checks.py), through the real loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import desired as desired_mod
from reconciler.errors import ValidationError
from reconciler.kinds.backup.retention import UNLIMITED, KeepPolicy
from tests import hostcfg

RESTIC = "backend: restic, repository: /srv/restic, password_file: /root/pw"


def load(tmp_path: Path, body: str, backend: str = RESTIC) -> dict[str, object]:
    (tmp_path / "fleet.yaml").write_text(
        f"backups:\n  etc: {{{backend}, paths: [/etc], every: 1d, {body}}}\n"
    )
    d = desired_mod.load_host(tmp_path, "h1", config=hostcfg.permissive())
    spec: dict[str, object] = d.raw["backups"]["etc"]
    return spec


def problems(tmp_path: Path, body: str, backend: str = RESTIC) -> str:
    with pytest.raises(ValidationError) as ei:
        load(tmp_path, body, backend)
    return str(ei.value)


def test_new_keep_rules_and_check_are_accepted(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        "keep: {daily: unlimited, last: -1, within: 1y2m3d4h, within_hourly: 36h, "
        "within_daily: 2w, within_weekly: 3m, within_monthly: 1y, within_yearly: 10y, "
        "tags: [keep, 'gold,x']}, check: {every: 30d, read_data_subset: 2.5%}",
    )
    keep = spec["keep"]
    assert isinstance(keep, dict)
    policy = KeepPolicy.from_mapping(keep)
    assert policy.daily == UNLIMITED and policy.last == UNLIMITED
    assert str(policy.within) == "1y2m3d4h" and str(policy.within_daily) == "14d"
    assert policy.tags == (("keep",), ("gold", "x"))
    assert spec["check"] == {"every": "30d", "read_data_subset": "2.5%"}


def test_only_unlimited_or_tags_keep_something(tmp_path: Path) -> None:
    load(tmp_path, "keep: {weekly: unlimited}")
    load(tmp_path, "keep: {tags: [keep]}")
    load(tmp_path, "keep: {within_daily: 1d}")
    assert "keeps nothing" in problems(tmp_path, "keep: {last: 0, within_daily: 0d}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("keep: {daily: -2}", "keep.daily: expected a count: a whole number >= 0, or unlimited"),
        ("keep: {daily: all}", "keep.daily: expected a count"),
        ("keep: {within: 30s}", "keep.within: not a keep duration: use restic's syntax"),
        ("keep: {within_daily: 1d2d}", "keep.within_daily: not a keep duration: '1d2d' gives"),
        ("keep: {within_weekly: 7 days}", "keep.within_weekly: not a keep duration"),
        ("keep: {last: 1, tags: ['a b']}", "keep.tags[0]: expected a tag or a comma-separated"),
        ("keep: {last: 1, tags: ['a,,b']}", "keep.tags[0]: expected a tag"),
        ("keep: {last: 1}, check: {}", "backups.etc.check: missing required key 'every'"),
        ("keep: {last: 1}, check: {every: 0d}", "check.every: must be longer than zero"),
        ("keep: {last: 1}, check: {every: 1d, read_data_subset: 5}", "expected a percentage"),
        ("keep: {last: 1}, check: {every: 1d, read_data_subset: 0%}", "must be above 0%"),
        ("keep: {last: 1}, check: {every: 1d, read_data_subset: 101%}", "at most 100%"),
        ("keep: {last: 1}, check: {every: 1d, when: daily}", "unknown key 'when'"),
    ],
)
def test_bad_values_are_reported(tmp_path: Path, body: str, message: str) -> None:
    assert message in problems(tmp_path, body)


def test_restic_only_keys_on_a_tarsnap_set(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        "keep: {last: 1, tags: [keep]}, check: {every: 7d, read_data_subset: 5%}",
        backend="backend: tarsnap",
    )
    assert "keep.tags: 'keep.tags' only applies to backend restic: tarsnap archives" in text
    assert "'check.read_data_subset' only applies to backend restic" in text
    # A tarsnap set may be checked (it lists its newest archive).
    load(tmp_path, "keep: {last: 1}, check: {every: 7d}", backend="backend: tarsnap")
