"""Grafana dashboards: they load (JSON, schema, variables), every PromQL expression parses in Prometheus's
own parser (`promtool check rules`), and every metric they or the alert rules use is one the agent
exports. The expression helpers here are reused by tests/e2e/test_prometheus.py against live data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
RULES = REPO / "deploy/prometheus/rules.yaml"

# What Grafana substitutes before a query reaches Prometheus. Multi-value variables set to "All" become
# the allValue regex ".*"; the interval variables become durations.
SUBSTITUTIONS = {"__rate_interval": "1m", "__interval": "30s", "__range": "10m"}
ALL_VALUE = ".*"

# Metrics the dashboards use that the agent does not export yet, and why. A name here must not be
# exported (then it belongs in the agent's list instead): see test_every_metric_used_is_exported.
NOT_YET_EXPORTED: dict[str, str] = {}
# Metrics Prometheus itself makes, not the agent.
FROM_PROMETHEUS = {"up"}


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def substitute(expr: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return SUBSTITUTIONS.get(name, ALL_VALUE)

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL as Prometheus receives it) for every panel target and query variable."""
    out: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        board = load(path)
        for p in panels(board):
            for t in p.get("targets", []):
                out.append((f"{path.stem}: {p['title']} [{t['refId']}]", substitute(t["expr"])))
        for v in board["templating"]["list"]:
            if v["type"] == "query":
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
                assert m, f"{path.stem}: variable {v['name']}: want label_values(selector, label)"
                out.append((f"{path.stem}: variable {v['name']}", substitute(m.group(1))))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [
        (f"rules: {r.get('alert') or r.get('record')}", r["expr"])
        for g in rules["groups"]
        for r in g["rules"]
    ]


def metric_names(expr: str) -> set[str]:
    """Metric names in an expression: identifiers followed by a selector or range, minus PromQL words."""
    words = {"sum", "by", "rate", "increase", "topk", "max", "min", "avg", "count", "without", "on", "offset"}
    words |= {"ignoring", "unless", "and", "or", "label_values", "group_left", "group_right", "bool"}
    stripped = re.sub(r'"[^"]*"', '""', expr)  # label values are not names
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # nor are label names
    stripped = re.sub(r"\((?:[\w\s,]*)\)(?=\s*\()", "()", stripped)  # by (a, b) lists
    names = set(re.findall(r"\b([a-zA-Z_:][\w:]*)\s*(?=\{|\[|\s*$|\s*\)|\s*[<>=!*/+-])", stripped))
    return {
        n for n in names if n not in words and not n.startswith("lumen:") and not re.fullmatch(r"\d\w*", n)
    }


# -- the dashboards load ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_shape(path: Path) -> None:
    board = load(path)
    assert board["schemaVersion"] >= 39, "Grafana 11+ schema"
    assert board["uid"] and len(board["uid"]) <= 40
    assert "lumen" in board["tags"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in board["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_variables(path: Path) -> None:
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("node", "namespace", "pod"):
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["allValue"] == ALL_VALUE, name
        assert v["datasource"]["uid"] == "${datasource}", name
    # pod choices follow the chosen namespace
    assert "$namespace" in variables["pod"]["query"]["query"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_panel_queries_the_datasource_variable(path: Path) -> None:
    board = load(path)
    used = set()
    for p in panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']}: no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            used |= set(re.findall(r"\$(\w+)", t["expr"]))
    # each filter variable is used by some panel, or choosing it would change nothing
    assert {"node", "namespace", "pod"} <= used


def test_provisioning_points_at_the_dashboards() -> None:
    prov = yaml.safe_load((REPO / "dashboards/provisioning/dashboards/lumen.yaml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    ds = yaml.safe_load((REPO / "dashboards/provisioning/datasources/lumen.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")


def test_the_issue_panels_exist() -> None:
    titles = {path.stem: " | ".join(p["title"].lower() for p in panels(load(path))) for path in DASHBOARDS}
    node = titles["lumen-node"]
    for want in (
        "flows per second by verdict",
        "drops per second by reason",
        "lost events",
        "flow table fill",
    ):
        assert want in node, want
    assert "agents up" in node and "poll" in node
    pods = titles["lumen-pods"]
    assert "bytes received" in pods and "packets sent" in pods and "top 10" in pods
    policy = titles["lumen-policy"]
    assert "verdicts per second by policy" in policy and "drops" in policy


# -- the PromQL parses -------------------------------------------------------------------------------


def test_every_expression_parses_in_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH: run `make setup` (Debian package prometheus)"
    exprs = dashboard_exprs()
    assert len(exprs) > 30
    # One recording rule per expression: promtool reports the rule that fails to parse.
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [{"record": f"lumen:check:{i}", "expr": e} for i, (_, e) in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        bad = [f"{where}: {e}" for i, (where, e) in enumerate(exprs) if f'lumen:check:{i}"' in res.stderr]
        pytest.fail(f"{res.stdout}{res.stderr}\n" + "\n".join(bad))
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout


def test_promtool_check_has_teeth(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool
    path = tmp_path / "bad.rules.yaml"
    bad = substitute('sum by (pod) (rate(lumen_pod_rx_bytes_total{pod=~"$pod"}[$__rate_interval])')
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": bad}]}]}))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0


# -- the metrics exist -------------------------------------------------------------------------------


def exported_metric_names(tmp_path: Path) -> set[str]:
    """Every sample name the agent's Collector emits, over a fake map source with one pod and one drop,
    and the relay's metrics."""
    from prometheus_client import CollectorRegistry, generate_latest

    from exporter.enrich import EndpointDirectory
    from exporter.flows import FlowStore
    from exporter.metrics import AgentHealth, LumenCollector
    from tests.unit.exporter_fixtures import FakeMaps

    maps = FakeMaps()
    maps.flows = {("DROPPED", "TCP", "egress"): 1}
    maps.drop_packets = {("policy_denied", "TCP"): 3}
    maps.decisions = {(7, "DROPPED", "egress", True): 1}
    maps.flags = {("SYN", "IPv4"): 1}
    maps.sources = {"192.0.2.1": (1, 60)}
    registry = CollectorRegistry(auto_describe=False)
    directory = EndpointDirectory(str(tmp_path), None)
    registry.register(LumenCollector(maps, directory, AgentHealth(), FlowStore(16)))
    text = generate_latest(registry).decode()
    # and the relay's own (lumen relay's /metrics: agents up, fan-out latency, agent errors)
    from exporter.relay.fanout import Metrics

    relay_registry = CollectorRegistry()
    Metrics(relay_registry)
    text += generate_latest(relay_registry).decode()
    names = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    # counters are exposed with the _total suffix
    return names | {f"{n}_total" for n in names}


def test_every_metric_used_is_exported(tmp_path: Path) -> None:
    exported = exported_metric_names(tmp_path)
    used: dict[str, str] = {}
    for where, expr in dashboard_exprs() + rule_exprs():
        for name in metric_names(expr):
            used.setdefault(name, where)
    assert "lumen_pod_rx_bytes_total" in used and "lumen_lost_events_total" in used  # the parser works
    missing = {n: w for n, w in used.items() if n not in exported | FROM_PROMETHEUS}
    assert set(missing) <= set(NOT_YET_EXPORTED), f"not exported by the agent or the relay: {missing}"
    assert not set(NOT_YET_EXPORTED) & exported, "now exported: remove it from NOT_YET_EXPORTED"
