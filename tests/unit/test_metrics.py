"""The Prometheus Collector over a fake map source: figures read as the kernel keeps them, label sets,
pods going away or coming back under the same name, and `promtool check metrics` on the exposition."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.enrich import EndpointDirectory
from exporter.flows import FlowStore
from exporter.metrics import AgentHealth, LumenCollector, PodCounts
from tests.unit.exporter_fixtures import FakeMaps, make_flow, remove_record, write_record


@pytest.fixture
def node(tmp_path):
    state = str(tmp_path)
    write_record(state, "c1", "shop", "client", ["10.22.0.5/24"], 7)
    write_record(state, "c2", "shop", "server", ["10.22.0.6/24"], 8)
    maps = FakeMaps(capacity=100)
    maps.entries = 4
    maps.flows = {
        ("FORWARDED", "TCP", "egress"): 2,
        ("FORWARDED", "UDP", "egress"): 1,
        ("DROPPED", "TCP", "ingress"): 1,
    }
    maps.drop_packets = {("policy_denied", "TCP"): 3}
    maps.decisions = {(5, "FORWARDED", "ingress", False): 2, (5, "DROPPED", "ingress", True): 1}
    maps.flags = {("SYN", "IPv4"): 3, ("SYN-ACK", "IPv4"): 3, ("RST", "IPv6"): 1}
    maps.pods = {7: PodCounts(12, 1200, 6, 600), 8: PodCounts(6, 600, 10, 1000)}
    maps.pairs = {(7, 8, "FORWARDED"): 1000, (8, 7, "FORWARDED"): 600}
    maps.sources = {"192.168.1.9": (3, 180), "10.22.0.99": (1, 60)}
    maps.stats = {
        "lost_events": 4,
        "events": 100,
        "flows_created": 4,
        "flow_insert_failed": 0,
        "redirected": 16,
    }
    directory = EndpointDirectory(state)
    health = AgentHealth(events_consumed=96, attached_endpoints=2)
    store = FlowStore(10)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LumenCollector(maps, directory, health, store, {5: "shop/web"}))
    return state, maps, store, registry


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_flow_figures_come_from_the_kernel_counters(node):
    _, _, _, reg = node
    assert (
        value(reg, "lumen_flows_processed_total", verdict="FORWARDED", protocol="TCP", direction="egress")
        == 2
    )
    assert (
        value(reg, "lumen_flows_processed_total", verdict="DROPPED", protocol="TCP", direction="ingress") == 1
    )
    assert value(reg, "lumen_drop_total", reason="policy_denied", protocol="TCP") == 3
    verdicts = "lumen_policy_verdicts_total"
    assert (
        value(reg, verdicts, verdict="FORWARDED", direction="ingress", policy="shop/web", match="rule") == 2
    )
    # a denial names the policy whose default deny it is
    deny = {"verdict": "DROPPED", "direction": "ingress", "policy": "shop/web", "match": "default-deny"}
    assert value(reg, verdicts, **deny) == 1
    assert value(reg, "lumen_tcp_flags_total", flag="SYN-ACK", family="IPv4") == 3
    assert value(reg, "lumen_tcp_flags_total", flag="RST", family="IPv6") == 1


def test_pod_rx_tx(node):
    _, _, _, reg = node
    assert value(reg, "lumen_pod_tx_packets_total", namespace="shop", pod="client") == 12
    assert value(reg, "lumen_pod_tx_bytes_total", namespace="shop", pod="client") == 1200
    assert value(reg, "lumen_pod_rx_packets_total", namespace="shop", pod="client") == 6
    assert value(reg, "lumen_pod_rx_bytes_total", namespace="shop", pod="server") == 1000


def test_source_counters_and_datapath_and_agent_health(node):
    _, _, store, reg = node
    store.add(make_flow())
    # a pod holding a slot: its tx; an address no current pod holds: "other"
    assert value(reg, "lumen_source_packets_total", namespace="shop", pod="client") == 12
    assert value(reg, "lumen_other_source_bytes_total") == 240
    assert value(reg, "lumen_lost_events_total") == 4
    assert value(reg, "lumen_datapath_events_total") == 100
    assert value(reg, "lumen_redirected_packets_total") == 16
    assert value(reg, "lumen_agent_events_consumed_total") == 96
    assert value(reg, "lumen_attached_endpoints") == 2
    assert value(reg, "lumen_flow_table_entries") == 4
    assert value(reg, "lumen_flow_table_fill_ratio") == 0.04
    assert value(reg, "lumen_flow_store_flows") == 1


def test_a_pod_without_a_slot_is_counted_by_its_addresses(node):
    state, maps, _, reg = node
    write_record(state, "c3", "shop", "batch", ["10.22.0.99/24"], 9)  # every slot was taken
    assert value(reg, "lumen_source_packets_total", namespace="shop", pod="batch") == 1
    assert value(reg, "lumen_other_source_bytes_total") == 180


def test_a_deleted_pod_has_no_series(node):
    state, _, _, reg = node
    assert value(reg, "lumen_pod_tx_packets_total", namespace="shop", pod="client") == 12
    remove_record(state, "c1")
    text = generate_latest(reg).decode()
    assert 'pod="client"' not in text
    assert value(reg, "lumen_pod_rx_packets_total", namespace="shop", pod="server") == 10


def test_a_pod_created_again_under_the_same_name_starts_from_its_own_counters(node):
    """A StatefulSet pod deleted and created again: a new endpoint, a zeroed slot. The series restarts
    (a counter reset Prometheus' rate() handles); no floor from the old pod may hide the new counts."""
    state, maps, _, reg = node
    assert value(reg, "lumen_pod_tx_packets_total", namespace="shop", pod="client") == 12
    remove_record(state, "c1")
    write_record(state, "c1b", "shop", "client", ["10.22.0.5/24"], 17)
    maps.pods[17] = PodCounts(2, 200, 0, 0)
    assert value(reg, "lumen_pod_tx_packets_total", namespace="shop", pod="client") == 2


def test_pod_to_pod_matrix(node):
    state, _, _, reg = node

    def pair(src: str, dst: str) -> float | None:
        labels = dict(
            source_namespace="shop", source_pod=src, destination_namespace="shop", destination_pod=dst
        )
        return value(reg, "lumen_pod_to_pod_bytes_total", verdict="FORWARDED", **labels)

    assert pair("client", "server") == 1000 and pair("server", "client") == 600
    remove_record(state, "c1")
    assert pair("client", "server") is None and pair("server", "client") is None


def test_promtool_accepts_the_exposition(node):
    _, _, _, reg = node
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed; scripts/setup.sh installs it"
    text = generate_latest(reg)
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.decode().strip() == "" and proc.stderr.decode().strip() == ""


def test_sources_that_found_the_table_full_are_still_other_sources(node):
    _, maps, _, reg = node
    maps.stats.update(sources_full_packets=5, sources_full_bytes=500)
    assert value(reg, "lumen_other_source_packets_total") == 4 + 5
    assert value(reg, "lumen_other_source_bytes_total") == 240 + 500
