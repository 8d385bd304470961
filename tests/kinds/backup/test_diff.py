"""Golden cases for the backup provider's pure diff: {desired, live, expected ops} as data.

Each file in tests/kinds/backup/golden/ holds the desired YAML (loaded through the real loader),
live state as plain data and the expected changes and errors. Live state notation
(``live:``): ``now`` (UTC, ISO 8601), ``sets`` maps a set to ``archives`` (every name the
backend lists), ``missing_paths``, ``tags`` (archive -> its restic tags), ``last_check`` (ISO
8601) and ``last_check_ok``; ``errors`` maps a set to a read error. Expected changes
compare address, action and ops exactly (``tests/golden.py``); ``warnings`` entries are
substrings. No root, no backup service: diff is pure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import desired as desired_mod
from reconciler.kinds import base
from reconciler.kinds.backup.provider import BackupLive, BackupProvider, SetLive
from reconciler.model import HostDesired
from reconciler.plan import Plan
from reconciler.render import text as render_text
from tests import golden, hostcfg

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(GOLDEN.glob("*.yaml"))


def _live(data: dict[str, Any]) -> BackupLive:
    now = datetime.fromisoformat(str(data["now"])).astimezone(UTC)
    sets = {
        name: SetLive(
            tuple(s.get("archives") or ()),
            tuple(s.get("missing_paths") or ()),
            {a: tuple(t) for a, t in (s.get("tags") or {}).items()},
            datetime.fromisoformat(str(s["last_check"])) if s.get("last_check") else None,
            s.get("last_check_ok"),
        )
        for name, s in (data.get("sets") or {}).items()
    }
    return BackupLive(now, sets, dict(data.get("errors") or {}))


def _desired(text: str, tmp_path: Path) -> HostDesired:
    (tmp_path / "fleet.yaml").write_text(text)
    # The cases name paths of their own (/srv/restic ...): a host that allows any path.
    return desired_mod.load_host(tmp_path, "h1", config=hostcfg.permissive())


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden(case: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(case.read_text())
    desired = _desired(data["desired"], tmp_path)
    changes, errors = BackupProvider().diff(desired, _live(data["live"]))

    for want, have in golden.check(data["expected"], changes, errors):
        # The backup-specific part: warnings (future archives) as substrings, in order.
        have_warnings = have.get("warnings", [])
        assert len(have_warnings) == len(want.get("warnings") or [])
        for w, h in zip(want.get("warnings") or [], have_warnings, strict=True):
            assert w in h


def test_diff_is_pure(tmp_path: Path) -> None:
    """Diff leaves its inputs unchanged and gives the same answer twice."""
    data = yaml.safe_load((GOLDEN / "expiry_reasons.yaml").read_text())
    desired = _desired(data["desired"], tmp_path)
    live = _live(data["live"])
    before = (repr(desired.raw), repr(live))
    p = BackupProvider()
    first = p.diff(desired, live)
    assert p.diff(desired, live) == first
    assert (repr(desired.raw), repr(live)) == before


def test_every_counts_from_the_newest_archive(tmp_path: Path) -> None:
    """One second short of ``every`` is not due; exactly ``every`` is."""
    desired = _desired(
        "backups:\n  etc:\n    backend: tarsnap\n    paths: [/etc]\n    every: 1h\n"
        "    keep: {last: 5}\n",
        tmp_path,
    )
    sets = {"etc": SetLive(("etc-20261128-040000",))}
    p = BackupProvider()
    early = BackupLive(datetime(2026, 11, 28, 4, 59, 59, tzinfo=UTC), sets)
    assert p.diff(desired, early) == ([], [])
    on_time = BackupLive(datetime(2026, 11, 28, 5, 0, 0, tzinfo=UTC), sets)
    (change,), errors = p.diff(desired, on_time)
    assert not errors
    assert [o.to_dict() for o in change.ops] == [
        {"op": "create_archive", "archive": "etc-20261128-050000", "paths": ["/etc"], "exclude": []}
    ]


def test_read_error_and_missing_set_state(tmp_path: Path) -> None:
    """A set absent from the live state (not read) is an error, never a blind create."""
    desired = _desired(
        "backups:\n  etc:\n    backend: tarsnap\n    paths: [/etc]\n    every: 1h\n"
        "    keep: {last: 5}\n",
        tmp_path,
    )
    changes, errors = BackupProvider().diff(desired, BackupLive(datetime.now(UTC)))
    assert changes == []
    assert [e.address for e in errors] == ["backup/etc"]


def test_text_rendering(tmp_path: Path) -> None:
    data = yaml.safe_load((GOLDEN / "due_and_expire.yaml").read_text())
    desired = _desired(data["desired"], tmp_path)
    changes, _ = BackupProvider().diff(desired, _live(data["live"]))
    text = render_text.render(Plan("h1", changes=changes).to_dict())
    assert "+ archive etc-20261128-050000 (/etc)" in text
    assert "- archive etc-20261128-020000: last: 3 (this is the 4th newest)" in text


def _dump(case: Path, tmp_path: Path) -> str:
    """The actual result of one case as golden YAML (to review when writing a case)."""
    data = yaml.safe_load(case.read_text())
    desired = _desired(data["desired"], tmp_path)
    changes, errors = BackupProvider().diff(desired, _live(data["live"]))
    out = {
        "changes": [
            {
                k: c.to_dict()[k]
                for k in ("address", "action", "ops", "warnings")
                if k in c.to_dict()
            }
            for c in changes
        ],
        "errors": [e.to_dict() for e in errors],
    }
    return yaml.safe_dump(out, sort_keys=False, width=200)


def test_future_archive_is_reported_when_the_set_has_nothing_to_do(tmp_path: Path) -> None:
    """A future-dated archive on a set with nothing due and nothing to expire has no change
    to carry its warning: it comes as a plan-level warning instead, and only then."""
    desired = _desired(
        "backups:\n  etc:\n    backend: tarsnap\n    paths: [/etc]\n    every: 1d\n"
        "    keep: {last: 5}\n",
        tmp_path,
    )
    now = datetime(2026, 11, 28, 5, 0, tzinfo=UTC)
    sets = {"etc": SetLive(("etc-20261128-040000", "etc-20301231-000000"))}
    live = BackupLive(now, sets)
    p = BackupProvider()
    changes, errors = p.diff(desired, live)
    assert (changes, errors) == ([], [])
    notes = base.notices(p, desired, live, changes)
    assert [w.address for w in notes] == ["backup/etc"]
    assert "etc-20301231-000000 is dated 2030-12-31 00:00:00 UTC" in notes[0].message
    plan = Plan("h1", changes=changes, errors=errors, warnings=notes)
    assert plan.empty  # a warning is not a change: the exit code stays 0
    d = plan.to_dict()
    assert d["warnings"] == [{"address": "backup/etc", "message": notes[0].message}]
    text = render_text.render(d)
    assert "No changes: live state matches the desired state." in text
    assert f"Warnings:\n  backup/etc: {notes[0].message}" in text

    # When the set has a change, the change carries the warning, and only the change.
    due = BackupLive(datetime(2026, 11, 29, 5, 0, tzinfo=UTC), sets)
    (change,), _ = p.diff(desired, due)
    assert any("etc-20301231-000000" in w for w in change.warnings)
    assert base.notices(p, desired, due, [change]) == []
    # A plan without warnings keeps the JSON document exactly as before.
    assert "warnings" not in Plan("h1").to_dict()


def test_check_ops_in_the_text_plan(tmp_path: Path) -> None:
    data = yaml.safe_load((GOLDEN / "check_failed_holds_order.yaml").read_text())
    desired = _desired(data["desired"], tmp_path)
    changes, _ = BackupProvider().diff(desired, _live(data["live"]))
    text = render_text.render(Plan("h1", changes=changes).to_dict())
    lines = [ln.strip() for ln in text.splitlines()]
    i = lines.index("+ archive etc-20261128-050000 (/etc)")
    assert lines[i + 1] == (
        "= check archive etc-20261128-050000 (tarsnap -t, read back): the last check "
        "(2026-11-28 04:00:00 UTC) failed: checked on every run until one passes"
    )
    assert lines[i + 2].startswith("- archive etc-20261128-020000")
    data = yaml.safe_load((GOLDEN / "check_due_restic.yaml").read_text())
    changes, _ = BackupProvider().diff(_desired(data["desired"], tmp_path), _live(data["live"]))
    text = render_text.render(Plan("h1", changes=changes).to_dict())
    assert (
        "= check repository (restic check --read-data-subset=5%): last checked "
        "2026-10-29 05:00:00 UTC, every 30d"
    ) in text
