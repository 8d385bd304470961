"""Prometheus textfile metrics: exposition format, semantics, atomic replace, CLI wiring."""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from reconciler import metrics
from reconciler.state import StateDir
from tests.clirun import run_backup_only

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{({LABEL}(?:,{LABEL})*)?\}})? (\S+)$")

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_exposition(text: str) -> tuple[Series, dict[str, str]]:
    """A strict reader of the text exposition format (what node_exporter accepts).

    Checks: newline-terminated; HELP then TYPE before a metric's samples; each metric in one
    group; counters named ``*_total``; label syntax; float values; no duplicate series.
    Returns series -> value and metric -> type.
    """
    assert text.endswith("\n") and "\r" not in text
    series: Series = {}
    types: dict[str, str] = {}
    helped: set[str] = set()
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name) and name not in helped, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, mtype = line.split(" ")
            assert name in helped and name not in types, line
            assert mtype in ("gauge", "counter"), line
            if mtype == "counter":
                assert name.endswith("_total"), name
            types[name] = mtype
            current = name
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.groups()
            assert name == current, f"{name} outside its HELP/TYPE group"
            pairs = tuple(
                (k, v)
                for k, v in re.findall(
                    r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels or ""
                )
            )
            key = (name, pairs)
            assert key not in series, f"duplicate series {key}"
            series[key] = float(value)
    return series, types


def rec(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "format_version": 1,
        "host": "h1",
        "commit": "c1",
        "dry_run": False,
        "started": "2024-05-01T10:00:00.000+00:00",
        "finished": "2024-05-01T10:00:02.500+00:00",
        "kinds": ["ipset", "nic", "backup", "vm"],
        "ok": True,
        "changes": [],
        "refused": [],
        "errors": [],
    }
    return base | kw


def ch(address: str, drift: bool = False) -> dict[str, Any]:
    return {"address": address, "kind": address.split("/")[0], "action": "update", "ops": 1,
            "drift": drift}  # fmt: skip


def test_render_is_valid_exposition_with_precise_values() -> None:
    records = [
        rec(commit="c1", changes=[ch("ipset/a"), ch("ipset/b"), ch("nic/eth0")]),
        rec(commit="c1", changes=[ch("ipset/a", drift=True)]),
        rec(
            commit="c2",
            ok=False,
            finished="2024-05-01T11:00:00.000+00:00",
            started="2024-05-01T10:59:59.000+00:00",
            changes=[ch("backup/etc")],
            errors=[
                {"address": "nic/eth0", "message": "EBUSY"},
                {"address": "journal", "message": "disk full"},
            ],
        ),
    ]
    series, types = parse_exposition(metrics.render(records, skipped_lines=1))

    def v(name: str, **labels: str) -> float:
        return series[(name, tuple(labels.items()))]

    assert v("reconciler_last_run_timestamp_seconds") == 1714561200.0
    assert v("reconciler_last_run_duration_seconds") == 1.0
    assert v("reconciler_last_run_success") == 0
    # The applied commit is the last *successful* run's, not the failed run's.
    assert v("reconciler_applied_commit_info", commit="c1") == 1
    assert not any(k[0] == "reconciler_applied_commit_info" and k[1] != (("commit", "c1"),)
                   for k in series)  # fmt: skip
    assert v("reconciler_last_run_changes", kind="backup") == 1
    assert v("reconciler_last_run_changes", kind="ipset") == 0
    assert v("reconciler_last_run_errors", kind="nic") == 1
    assert v("reconciler_last_run_errors", kind="run") == 1
    assert v("reconciler_last_run_drift_changes", kind="ipset") == 0
    assert v("reconciler_changes_total", kind="ipset") == 3
    assert v("reconciler_changes_total", kind="nic") == 1
    assert v("reconciler_changes_total", kind="vm") == 0
    assert v("reconciler_drift_changes_total", kind="ipset") == 1
    assert v("reconciler_errors_total", kind="nic") == 1
    assert v("reconciler_journal_skipped_lines") == 1
    assert types["reconciler_changes_total"] == "counter"
    assert types["reconciler_last_run_changes"] == "gauge"


def test_label_values_are_escaped() -> None:
    text = metrics.render([rec(commit='we"ird\\\n')])
    assert 'reconciler_applied_commit_info{commit="we\\"ird\\\\\\n"} 1' in text
    parse_exposition(text)


def test_write_is_a_rename_of_a_complete_temp_file_in_the_same_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "reconciler.prom"
    target.write_text("old\n")
    seen: list[tuple[Path, Path, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        seen.append((Path(src), Path(dst), Path(src).read_text()))
        assert target.read_text() == "old\n"  # untouched until the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    text = metrics.render([rec()])
    metrics.write_atomic(target, text)
    ((src, dst, content),) = seen
    assert src.parent == dst.parent == tmp_path and dst == target
    assert not src.name.endswith(".prom")  # the textfile collector ignores the temp file
    assert content == text == target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # node_exporter's user can read it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconciler.prom"]


def test_a_failed_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        metrics.write_atomic(tmp_path / "reconciler.prom", "x 1\n")
    assert list(tmp_path.iterdir()) == []


def test_a_reader_never_sees_a_half_written_file(tmp_path: Path) -> None:
    target = tmp_path / "reconciler.prom"
    big = metrics.render([rec(changes=[ch(f"ipset/s{i}") for i in range(2000)])])
    small = metrics.render([rec()])
    metrics.write_atomic(target, small)
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = target.read_text()
            if text not in (big, small):
                bad.append(text[-80:])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            metrics.write_atomic(target, big if i % 2 else small)
    finally:
        stop.set()
        t.join()
    assert bad == []


def test_default_path_only_uses_an_existing_textfile_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "TEXTFILE_DIRS", (tmp_path / "a", tmp_path / "b"))
    assert metrics.default_path() is None
    (tmp_path / "b").mkdir()
    assert metrics.default_path() == tmp_path / "b" / "reconciler.prom"


# --- through the CLI -------------------------------------------------------------------


def test_cli_writes_metrics_after_a_run_and_not_after_a_dry_run(tmp_path: Path) -> None:
    prom = tmp_path / "reconciler.prom"
    assert run_backup_only(tmp_path, "--dry-run", "--metrics-file", str(prom)).returncode == 0
    assert not prom.exists()
    proc = run_backup_only(tmp_path, "--metrics-file", str(prom))
    assert proc.returncode == 0, proc.stderr
    series, _ = parse_exposition(prom.read_text())
    assert series[("reconciler_last_run_success", ())] == 1
    assert len(StateDir(tmp_path / "state").runs().records) == 1


def test_cli_takes_the_metrics_file_from_the_environment(tmp_path: Path) -> None:
    prom = tmp_path / "env.prom"
    proc = run_backup_only(tmp_path, env={**os.environ, "RECONCILER_METRICS_FILE": str(prom)})
    assert proc.returncode == 0, proc.stderr
    assert "reconciler_last_run_success 1" in prom.read_text()


def test_a_metrics_failure_never_fails_the_run(tmp_path: Path) -> None:
    proc = run_backup_only(tmp_path, "--metrics-file", str(tmp_path / "no" / "such" / "dir.prom"))
    assert proc.returncode == 0, proc.stderr
    assert "metrics_not_written" in proc.stderr and "Traceback" not in proc.stderr
    assert len(StateDir(tmp_path / "state").runs().records) == 1


# --- what the alerts need --------------------------------------------------------------


def test_last_success_time_and_not_converged_resources() -> None:
    ok = rec(finished="2024-05-01T10:00:02.500+00:00")
    failed = rec(
        ok=False,
        finished="2024-05-01T10:15:00.000+00:00",
        errors=[
            {"address": "nic/eth0", "message": "did not converge: a re-read still shows "
             "update (1 op(s))"},
            {"address": "ipset/mgmt", "message": "did not converge: a re-read still shows "
             "update (2 op(s))"},
            {"address": "nic/eth1", "message": "EBUSY"},
        ],
    )  # fmt: skip
    series, types = parse_exposition(metrics.render([ok, failed]))
    assert series[("reconciler_last_success_timestamp_seconds", ())] == 1714557602.5
    assert series[("reconciler_last_run_timestamp_seconds", ())] == 1714558500.0
    assert series[("reconciler_last_run_not_converged", (("kind", "nic"),))] == 1
    assert series[("reconciler_last_run_not_converged", (("kind", "ipset"),))] == 1
    assert series[("reconciler_last_run_not_converged", (("kind", "vm"),))] == 0
    stuck = sorted(k[1] for k in series if k[0] == "reconciler_resource_not_converged")
    assert stuck == [(("kind", "ipset"), ("address", "ipset/mgmt")),
                     (("kind", "nic"), ("address", "nic/eth0"))]  # fmt: skip
    assert types["reconciler_resource_not_converged"] == "gauge"
    # A clean last run: every kind at 0 and no per-resource series; never a success: no time.
    series, _ = parse_exposition(metrics.render([failed, rec()]))
    assert not any(k[0] == "reconciler_resource_not_converged" for k in series)
    assert series[("reconciler_last_run_not_converged", (("kind", "nic"),))] == 0
    series, _ = parse_exposition(metrics.render([failed]))
    assert ("reconciler_last_success_timestamp_seconds", ()) not in series


def test_backup_check_metrics_come_from_the_state_dirs_records(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from reconciler.kinds.backup import checkstate
    from reconciler.kinds.backup.checkstate import CheckRecord

    at = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
    state = StateDir(tmp_path / "state")
    assert metrics.read_backup_checks(state.path) == {}
    checkstate.save(
        state.path,
        {
            "etc": CheckRecord(at, True, "restic check", "no errors were found", "30d"),
            "www": CheckRecord(at, False, "tarsnap -t -f www-20240501-030000", "corrupt", "7d"),
        },
    )
    checks = metrics.read_backup_checks(state.path)
    series, types = parse_exposition(metrics.render([rec()], backup_checks=checks))
    assert series[("reconciler_backup_check_ok", (("set", "etc"),))] == 1
    assert series[("reconciler_backup_check_ok", (("set", "www"),))] == 0
    assert series[("reconciler_backup_last_check_timestamp_seconds", (("set", "www"),))] == (
        at.timestamp()
    )
    assert series[("reconciler_backup_check_interval_seconds", (("set", "etc"),))] == 30 * 86400
    assert types["reconciler_backup_check_ok"] == "gauge"
    # No records: no backup check series at all.
    assert "reconciler_backup_check_ok" not in metrics.render([rec()])
    # A corrupt record file is not a metrics failure (the backup sets report it).
    checkstate.path_in(state.path).write_text("{not json")
    assert metrics.read_backup_checks(state.path) == {}
