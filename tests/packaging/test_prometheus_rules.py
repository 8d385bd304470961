"""The shipped monitoring: Prometheus alert rules and the Grafana fleet dashboard.

The rules are checked and unit-tested by Prometheus's own ``promtool`` (``check rules``,
``test rules`` with packaging/prometheus/reconciler.rules.test.yml). Both the rules and the
dashboard may only name metrics that reconciler writes: the names are taken from what
:func:`reconciler.metrics.render` really prints, so a renamed metric fails here instead of
silently emptying a panel or muting an alert.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import metrics
from reconciler.kinds.backup.checkstate import CheckRecord

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "packaging" / "prometheus"
RULES = PROMETHEUS / "reconciler.rules.yml"
RULE_TESTS = PROMETHEUS / "reconciler.rules.test.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "reconciler-fleet.json"

#: PromQL's functions and keywords (Prometheus 2.x), which are not metric names.
PROMQL_WORDS = frozenset(
    [
        "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil",
        "changes", "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values",
        "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
        "floor", "group", "histogram_quantile", "holt_winters", "hour", "idelta", "increase",
        "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "max",
        "max_over_time", "min", "min_over_time", "minute", "month", "predict_linear",
        "present_over_time", "quantile", "quantile_over_time", "rate", "resets", "round",
        "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar",
        "stdvar_over_time", "sum", "sum_over_time", "time", "timestamp", "topk", "vector",
        "year", "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
        "group_left", "group_right", "inf", "nan",
    ]
)


def _run(*argv: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is missing: install Debian's prometheus package (scripts/setup does)")
    return path


def test_promtool_checks_the_rules(promtool: str) -> None:
    proc = _run(promtool, "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    proc = _run(promtool, "test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_unit_test() -> None:
    alerts = {r["alert"] for g in _rules()["groups"] for r in g["rules"] if "alert" in r}
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert alerts == tested
    assert {
        "ReconcilerNoSuccessfulRun",
        "ReconcilerRunFailed",
        "ReconcilerDriftDetected",
        "ReconcilerResourceNotConverged",
        "ReconcilerCommitsDiverge",
        "ReconcilerBackupCheckFailed",
    } <= alerts


# --- the names used are the names written -------------------------------------------------


@pytest.fixture(scope="module")
def written() -> frozenset[str]:
    """Every metric name reconciler writes, from a render that has all of them."""
    ok = {
        "format_version": 1, "host": "h", "commit": "c1", "dry_run": False, "ok": True,
        "started": "2024-05-01T10:00:00+00:00", "finished": "2024-05-01T10:00:02+00:00",
        "kinds": ["ipset", "nic", "backup", "vm"], "changes": [], "refused": [], "errors": [],
    }  # fmt: skip
    failed = ok | {
        "ok": False,
        "errors": [{"address": "nic/eth0", "message": "did not converge: a re-read still ..."}],
    }
    checks = {"etc": CheckRecord(datetime(2024, 5, 1, tzinfo=UTC), True, "restic check", "", "7d")}
    text = metrics.render([ok, failed], backup_checks=checks)
    names = frozenset(ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE "))
    assert "reconciler_backup_check_ok" in names and "reconciler_resource_not_converged" in names
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label
    matchers, ranges and grouping lists that are not functions or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group()
        if word in PROMQL_WORDS or text[m.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def test_metric_names_parser() -> None:
    expr = (
        'count by (job) (count by (job, commit) (reconciler_applied_commit_info{x="a b"}))'
        " > 1 unless on (instance) increase(reconciler_errors_total[1h]) and up"
    )
    assert metric_names(expr) == {"reconciler_applied_commit_info", "reconciler_errors_total", "up"}


def _rules() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return doc


def test_alerts_name_only_metrics_reconciler_writes(written: frozenset[str]) -> None:
    for group in _rules()["groups"]:
        for rule in group["rules"]:
            used = metric_names(rule["expr"])
            assert used, rule["alert"]
            assert used <= written, (rule["alert"], used - written)


def _exprs(node: Any) -> Iterator[str]:
    """Every ``expr`` in a dashboard (panel targets), wherever it is nested."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def test_dashboard_is_json_and_names_only_metrics_reconciler_writes(
    written: frozenset[str],
) -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "reconciler-fleet" and doc["panels"]
    exprs = list(_exprs(doc))
    assert len(exprs) >= len(doc["panels"])
    for expr in exprs:
        used = metric_names(expr)
        assert used, expr
        assert used <= written, (expr, used - written)
    for panel in doc["panels"]:
        assert list(_exprs(panel)), f"panel {panel['title']!r} has no query"
    # Template variables query label values of a written metric too.
    for var in doc["templating"]["list"]:
        definition = var.get("definition")
        if definition:
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", definition)
            assert m and m[1] in written, definition
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for topic in ("applied commit", "last run age", "drift", "errors by kind"):
        assert topic in titles
