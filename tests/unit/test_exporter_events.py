"""Decoding golden flow_event bytes (hand-packed from bpf/include/types.h) into Flows with pod names."""

from __future__ import annotations

import ctypes as ct
from pathlib import Path

import pytest

from bpf import abi
from exporter import decode, mapsource
from exporter.enrich import EndpointDirectory, Enricher
from tests.unit.exporter_fixtures import write_record

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str) -> bytes:
    lines = (GOLDEN / name).read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


@pytest.fixture
def decoder(tmp_path):
    write_record(str(tmp_path), "c1", "shop", "client", ["10.22.0.5/24", "fd00:22::4/64"], 7)
    write_record(str(tmp_path), "c2", "shop", "server", ["10.22.0.6/24", "fd00:22::5/64"], 8)
    d = decode.Decoder(Enricher(EndpointDirectory(str(tmp_path)), node="node-a"))
    d.mono_to_wall_ns = 1_700_000_000 * 10**9  # a fixed boot time makes times exact
    return d


def test_struct_format_reads_what_the_ctypes_mirror_reads():
    raw = golden("flow_event_tcp4_end.hex")
    assert len(raw) == ct.sizeof(abi.FlowEvent) == decode.EVENT.size
    ev = abi.FlowEvent.from_buffer_copy(raw)
    (saddr, daddr, sport, dport, proto, family, direction, *rest) = decode.EVENT.unpack(raw)
    assert saddr == bytes(ev.key.saddr) and daddr == bytes(ev.key.daddr)
    assert (sport, dport, proto, family, direction) == (
        ev.key.sport, ev.key.dport, ev.key.proto, ev.key.family, ev.key.direction,
    )  # fmt: skip
    names = "ts_ns first_seen_ns last_seen_ns packets bytes payload_bytes src_ep dst_ep ifindex type"
    names += " tcp_flags verdict drop_reason egress_policy ingress_policy flags"
    assert rest == [getattr(ev, n) for n in names.split()]


def test_tcp4_end_event(decoder):
    flow = decoder.flow(golden("flow_event_tcp4_end.hex"))
    assert flow.key == (4, 6, "10.22.0.5", "10.22.0.6", 40000, 80, "egress")
    assert (flow.type, flow.protocol, flow.direction, flow.verdict, flow.drop_reason) == (
        "END", "TCP", "egress", "FORWARDED", "none",
    )  # fmt: skip
    assert (flow.source.namespace, flow.source.pod, flow.source.port) == ("shop", "client", 40000)
    assert (flow.destination.namespace, flow.destination.pod, flow.destination.port) == ("shop", "server", 80)
    assert (flow.packets, flow.bytes, flow.payload_bytes, flow.ifindex) == (12, 3456, 2000, 7)
    assert flow.tcp_flag_names() == ["FIN", "SYN", "ACK"]
    boot = 1_700_000_000 * 10**9
    assert (flow.start_ns, flow.end_ns, flow.time_ns) == (
        boot + 10**9,
        boot + 4_500_000_000,
        boot + 5 * 10**9,
    )
    assert flow.finished and flow.node == "node-a"
    # egress not isolated (None), ingress admitted by policy id 42, whose name the enforcer knows
    assert (flow.egress_policy, flow.ingress_policy, flow.is_reply) == (None, "#42", False)
    decoder.enricher.policy_names = {42: "shop/allow-client"}
    named = decoder.flow(golden("flow_event_tcp4_end.hex"))
    assert named.policies == ["shop/allow-client"]
    assert named.to_dict()["policy"]["summary"] == "allowed by shop/allow-client"


def test_udp6_new_event_from_outside(decoder):
    flow = decoder.flow(golden("flow_event_udp6_new.hex"))
    assert flow.key == (6, 17, "fd00:99::1", "fd00:22::5", 53, 5353, "ingress")
    assert flow.type == "NEW" and flow.protocol == "UDP"
    assert flow.source.pod == "" and flow.source.ip == "fd00:99::1"
    assert (flow.destination.namespace, flow.destination.pod) == ("shop", "server")
    assert (flow.packets, flow.bytes) == (1, 98)
    assert flow.is_reply and flow.policies == [] and flow.policy_summary() == "reply of an allowed connection"


def test_decodes_the_mirror_object_the_loader_hands_over(decoder):
    raw = golden("flow_event_tcp4_end.hex")
    assert decoder.flow(abi.FlowEvent.from_buffer_copy(raw)) == decoder.flow(raw)


def test_a_pod_added_after_start_is_named_on_its_first_event(tmp_path):
    d = decode.Decoder(Enricher(EndpointDirectory(str(tmp_path))))
    write_record(str(tmp_path), "c2", "shop", "server", ["fd00:22::5/64"], 8)
    assert d.flow(golden("flow_event_udp6_new.hex")).destination.pod == "server"


def test_swept_flow_from_a_table_entry(decoder):
    key = abi.FlowKey(sport=40000, dport=80, proto=6, family=4, direction=int(abi.Direction.EGRESS))
    ct.memmove(key.saddr, bytes([10, 22, 0, 5]), 4)
    ct.memmove(key.daddr, bytes([10, 22, 0, 6]), 4)
    st = abi.FlowStats(packets=5, bytes=500, first_seen_ns=10, last_seen_ns=20, src_ep=7, dst_ep=8, verdict=1)
    flow = decoder.ended(key, st, now_mono_ns=30)
    assert flow.type == "END" and flow.source.pod == "client" and flow.packets == 5


def test_swept_entries_may_come_as_bcc_generated_classes(decoder):
    class flow_key(ct.Structure):  # noqa: N801 - bcc names its generated classes after the C structs
        _fields_ = abi.FlowKey._fields_

    key = flow_key(sport=1, dport=2, proto=17, family=4, direction=int(abi.Direction.EGRESS))
    ct.memmove(key.saddr, bytes([10, 22, 0, 5]), 4)
    flow = decoder.ended(key, abi.FlowStats(packets=3, src_ep=7), now_mono_ns=30)
    assert flow.key == (4, 17, "10.22.0.5", "0.0.0.0", 1, 2, "egress") and flow.source.pod == "client"


def test_the_map_source_names_the_kernels_numbers():
    from types import SimpleNamespace

    class Maps:
        cfg = SimpleNamespace(flow_table_size=64)

        def flow_counts(self) -> dict:
            return {(17, int(abi.Verdict.FORWARDED), int(abi.Direction.EGRESS)): 9, (200, 2, 2): 1}

        def drops(self) -> dict:
            return {(int(abi.DropReason.POLICY_DENIED), 6): 3}

        def policy_decisions(self) -> dict:
            return {(5, int(abi.Verdict.DROPPED), int(abi.Direction.INGRESS), True): 2}

        def tcp_flags(self) -> dict:
            return {(4, 0x02): 5, (4, 0x12): 4, (6, 0x11): 2, (6, 0x14): 1}

        def pod_counters(self) -> dict:
            return {7: (1, 2, 3, 4)}

        def pair_bytes(self) -> dict:
            return {(7, 8, int(abi.Verdict.AUDIT)): 100}

    source = mapsource.DatapathSource(Maps())  # type: ignore[arg-type]
    assert source.flow_counts() == {("FORWARDED", "UDP", "egress"): 9, ("DROPPED", "200", "ingress"): 1}
    assert source.drops() == {("policy_denied", "TCP"): 3}
    assert source.policy_counts() == {(5, "DROPPED", "ingress", True): 2}
    assert source.tcp_flags() == {
        ("SYN", "IPv4"): 5,
        ("SYN-ACK", "IPv4"): 4,
        ("FIN", "IPv6"): 2,
        ("RST", "IPv6"): 1,
    }
    assert source.pod_counters()[7].rx_bytes == 4
    assert source.pair_bytes() == {(7, 8, "AUDIT"): 100}
