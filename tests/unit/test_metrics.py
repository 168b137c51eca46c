"""The Prometheus Collector over a fake map source: figures, label sets, pods going away, monotonic
counters, retired totals across restarts, and `promtool check metrics` on the exposition."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.enrich import EndpointDirectory
from exporter.flows import FlowStore
from exporter.metrics import AgentHealth, FlowTotals, LumenCollector, Retired
from tests.unit.exporter_fixtures import FakeMaps, make_flow, remove_record, write_record


@pytest.fixture
def node(tmp_path):
    state = str(tmp_path)
    write_record(state, "c1", "shop", "client", ["10.22.0.5/24"], 7)
    write_record(state, "c2", "shop", "server", ["10.22.0.6/24"], 8)
    maps = FakeMaps(capacity=100)
    maps.flows = [
        FlowTotals("TCP", "egress", "FORWARDED", "none", 7, 8, 10, 1000),  # client -> server
        FlowTotals("TCP", "egress", "FORWARDED", "none", 8, 7, 6, 600),  # server -> client
        FlowTotals("UDP", "egress", "FORWARDED", "none", 7, 0, 2, 200),  # client -> outside
        FlowTotals("TCP", "ingress", "DROPPED", "policy_denied", 0, 8, 3, 180),  # outside -> server, dropped
    ]
    maps.sources = {"10.22.0.5": (12, 1200), "10.22.0.6": (6, 600), "192.168.1.9": (3, 180)}
    maps.stats = {
        "lost_events": 4,
        "events": 100,
        "flows_created": 4,
        "flow_insert_failed": 0,
        "redirected": 16,
    }
    directory = EndpointDirectory(state)
    retired = Retired()
    health = AgentHealth(events_consumed=96, attached_endpoints=2)
    store = FlowStore(10)
    registry = CollectorRegistry(auto_describe=False)
    collector = LumenCollector(maps, directory, retired, health, store)
    registry.register(collector)
    return state, maps, retired, store, registry


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_flow_figures_come_from_the_maps(node):
    _, _, _, _, reg = node
    assert (
        value(reg, "lumen_flows_processed_total", verdict="FORWARDED", protocol="TCP", direction="egress")
        == 2
    )
    assert (
        value(reg, "lumen_flows_processed_total", verdict="FORWARDED", protocol="UDP", direction="egress")
        == 1
    )
    assert (
        value(reg, "lumen_flows_processed_total", verdict="DROPPED", protocol="TCP", direction="ingress") == 1
    )
    assert value(reg, "lumen_drop_total", reason="policy_denied", protocol="TCP") == 3


def test_pod_rx_tx(node):
    _, _, _, _, reg = node
    assert value(reg, "lumen_pod_tx_packets_total", namespace="shop", pod="client") == 12
    assert value(reg, "lumen_pod_tx_bytes_total", namespace="shop", pod="client") == 1200
    assert value(reg, "lumen_pod_rx_packets_total", namespace="shop", pod="client") == 6
    assert value(reg, "lumen_pod_rx_packets_total", namespace="shop", pod="server") == 13
    assert value(reg, "lumen_pod_rx_bytes_total", namespace="shop", pod="server") == 1180


def test_source_counters_and_datapath_and_agent_health(node):
    _, _, _, store, reg = node
    store.add(make_flow())
    assert value(reg, "lumen_source_packets_total", namespace="shop", pod="client") == 12
    assert value(reg, "lumen_other_source_bytes_total") == 180
    assert value(reg, "lumen_lost_events_total") == 4
    assert value(reg, "lumen_datapath_events_total") == 100
    assert value(reg, "lumen_redirected_packets_total") == 16
    assert value(reg, "lumen_agent_events_consumed_total") == 96
    assert value(reg, "lumen_attached_endpoints") == 2
    assert value(reg, "lumen_flow_table_entries") == 4
    assert value(reg, "lumen_flow_table_fill_ratio") == 0.04
    assert value(reg, "lumen_flow_store_flows") == 1


def test_a_deleted_pod_has_no_series(node):
    state, _, _, _, reg = node
    assert value(reg, "lumen_pod_tx_packets_total", namespace="shop", pod="client") == 12
    remove_record(state, "c1")
    text = generate_latest(reg).decode()
    assert 'pod="client"' not in text
    assert value(reg, "lumen_pod_rx_packets_total", namespace="shop", pod="server") == 13


def test_pod_to_pod_matrix(node):
    state, maps, retired, _, reg = node

    def pair(src: str, dst: str) -> float | None:
        labels = dict(
            source_namespace="shop", source_pod=src, destination_namespace="shop", destination_pod=dst
        )
        return value(reg, "lumen_pod_to_pod_bytes_total", verdict="FORWARDED", **labels)

    assert pair("client", "server") == 1000 and pair("server", "client") == 600
    retired.add(maps.flows.pop(0))  # swept: its bytes stay in the matrix
    assert pair("client", "server") == 1000
    remove_record(state, "c1")
    assert pair("client", "server") is None and pair("server", "client") is None


def test_swept_flows_keep_counting_and_survive_a_restart(node, tmp_path):
    _, maps, retired, _, reg = node
    swept = maps.flows.pop(0)  # the agent's idle sweep removes it from the table ...
    retired.add(swept)  # ... and moves its totals here
    assert value(reg, "lumen_pod_tx_packets_total", namespace="shop", pod="client") == 12
    assert (
        value(reg, "lumen_flows_processed_total", verdict="FORWARDED", protocol="TCP", direction="egress")
        == 2
    )

    path = str(tmp_path / "retired.json")
    retired.save(path)
    again = Retired.load(path)
    assert again.flows == retired.flows and again.tx == retired.tx and again.rx == retired.rx
    assert again.pairs == retired.pairs == {(7, 8, "FORWARDED"): 1000}
    (tmp_path / "bad.json").write_text("{not json")
    assert Retired.load(str(tmp_path / "bad.json")).flows == {}


def test_counters_never_go_down_when_the_lru_evicts(node):
    _, maps, _, _, reg = node
    assert value(reg, "lumen_pod_tx_packets_total", namespace="shop", pod="server") == 6
    maps.flows = [f for f in maps.flows if f.src_ep != 8]  # LRU eviction: gone without a sweep
    assert value(reg, "lumen_pod_tx_packets_total", namespace="shop", pod="server") == 6


def test_promtool_accepts_the_exposition(node):
    _, _, _, _, reg = node
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed; scripts/setup.sh installs it"
    text = generate_latest(reg)
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.decode().strip() == "" and proc.stderr.decode().strip() == ""
