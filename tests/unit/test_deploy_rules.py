"""The Prometheus alert rules load in Prometheus and fire when (and only when) they should.

`promtool` comes with Debian's prometheus package (scripts/setup.sh installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy/prometheus/rules.yaml"
RULES_TEST = REPO / "deploy/prometheus/rules.test.yaml"
PROMETHEUS_RULE = REPO / "deploy/kubernetes/prometheusrule.yaml"

REQUIRED_ALERTS = {"LumenAgentDown", "LumenLostEvents", "LumenDropSpike", "LumenFlowTableNearFull"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not on PATH: run `make setup` (Debian package prometheus)"
    return path


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_rules_pass_promtool_check(promtool: str) -> None:
    res = _run(promtool, "check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr


def test_rules_unit_tests_pass(promtool: str) -> None:
    res = _run(promtool, "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_required_alert_exists_and_is_unit_tested() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert REQUIRED_ALERTS <= alerts
    tests = yaml.safe_load(RULES_TEST.read_text())
    tested = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")  # a firing case, not only a silent one
    }
    assert alerts <= tested, f"alerts without a firing unit test: {alerts - tested}"


def test_every_alert_has_severity_and_summary() -> None:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]
