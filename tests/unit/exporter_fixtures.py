"""Builders shared by the exporter unit tests: flows, endpoint records, a map source fed by real ctypes
mirrors, and an agent view backed by a real FlowStore."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from bpf import abi, vocab
from exporter.flows import Endpoint, Flow, FlowStore
from exporter.metrics import PodCounts

NOW_NS = 1_800_000_000 * 10**9


def make_flow(
    src: str = "10.22.0.5",
    dst: str = "10.22.0.6",
    sport: int = 40000,
    dport: int = 80,
    proto: str = "TCP",
    src_pod: tuple[str, str] | None = ("default", "client"),
    dst_pod: tuple[str, str] | None = ("default", "server"),
    verdict: str = "FORWARDED",
    type: str = "NEW",
    direction: str = "egress",
    time_ns: int = NOW_NS,
    packets: int = 1,
    nbytes: int = 100,
    labels: dict[str, str] | None = None,
    is_reply: bool = False,
    message: tuple[int, int, int] | None = None,
) -> Flow:
    """A flow as decode.py makes them; for ICMP pass `message` (type, code, echo id): the key holds the
    kernel's (echo id, type << 8 | code) and the ends have no port."""

    def ep(ip: str, port: int, pod: tuple[str, str] | None) -> Endpoint:
        if pod is None:
            return Endpoint(ip, port)
        return Endpoint(ip, port, pod[0], pod[1], dict(labels or {}))

    key_ports = (sport, dport)
    if message is not None:
        key_ports = abi.icmp_key_ports(*message)
        sport = dport = 0
    return Flow(
        key=(6 if ":" in src else 4, vocab.PROTOCOL_NUMBERS.get(proto, 6), src, dst, *key_ports, direction),
        type=type,
        time_ns=time_ns,
        start_ns=time_ns - 10**9,
        end_ns=time_ns,
        protocol=proto,
        direction=direction,
        verdict=verdict,
        drop_reason="policy_denied" if verdict == "DROPPED" else "none",
        source=ep(src, sport, src_pod),
        destination=ep(dst, dport, dst_pod),
        packets=packets,
        bytes=nbytes,
        tcp_flags=0x12,
        # a dropped flow: the destination is isolated for ingress and no rule admits the source
        ingress_policy="" if verdict == "DROPPED" else None,
        is_reply=is_reply,
        message=message,
    )


def write_record(
    state_dir: str,
    container_id: str,
    namespace: str,
    pod: str,
    ips: list[str],
    ifindex: int,
    state: str = "ready",
) -> None:
    directory = os.path.join(state_dir, "endpoints")
    os.makedirs(directory, exist_ok=True)
    record = {
        "containerId": container_id,
        "ifname": "eth0",
        "netns": f"/run/netns/{container_id}",
        "network": "lumen",
        "namespace": namespace,
        "pod": pod,
        "podUid": f"uid-{pod}",
        "hostVeth": f"lmn{container_id[:11]}",
        "hostIfindex": ifindex,
        "endpointId": ifindex,
        "mac": "02:00:00:00:00:01",
        "bridge": "lumen0",
        "ips": ips,
        "state": state,
        "observed": True,
        "createdAt": int(time.time()),
    }
    path = os.path.join(directory, f"{container_id}_eth0.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def remove_record(state_dir: str, container_id: str) -> None:
    os.unlink(os.path.join(state_dir, "endpoints", f"{container_id}_eth0.json"))


class FakeMaps:
    """metrics.MapSource over in-memory tables, shaped like the kernel's counter maps."""

    def __init__(self, capacity: int = 1024) -> None:
        self.flow_capacity = capacity
        self.entries = 0
        self.flows: dict[tuple[str, str, str], int] = {}  # (verdict, protocol, direction) -> flows
        self.drop_packets: dict[tuple[str, str], int] = {}
        self.decisions: dict[tuple[int, str, str, bool], int] = {}
        self.flags: dict[tuple[str, str], int] = {}
        self.pods: dict[int, PodCounts] = {}
        self.pairs: dict[tuple[int, int, str], int] = {}
        self.sources: dict[str, tuple[int, int]] = {}
        self.stats: dict[str, int] = {}

    def flow_table_entries(self) -> int:
        return self.entries

    def flow_counts(self) -> dict[tuple[str, str, str], int]:
        return dict(self.flows)

    def drops(self) -> dict[tuple[str, str], int]:
        return dict(self.drop_packets)

    def policy_counts(self) -> dict[tuple[int, str, str, bool], int]:
        return dict(self.decisions)

    def tcp_flags(self) -> dict[tuple[str, str], int]:
        return dict(self.flags)

    def pod_counters(self) -> dict[int, PodCounts]:
        return dict(self.pods)

    def pair_bytes(self) -> dict[tuple[int, int, str], int]:
        return dict(self.pairs)

    def source_counters(self) -> list[tuple[str, int, int]]:
        return [(ip, p, b) for ip, (p, b) in self.sources.items()]

    def datapath_stats(self) -> dict[str, int]:
        return dict(self.stats)


class View:
    """api.AgentView over a real store."""

    def __init__(self, store: FlowStore | None = None) -> None:
        self.store = store if store is not None else FlowStore(100)  # an empty store is falsy
        self.is_ready = (True, "ok")

    def endpoints(self) -> list[dict[str, Any]]:
        return [{"namespace": "default", "pod": "client", "attached": True}]

    def status(self) -> dict[str, Any]:
        return {"ready": self.is_ready[0]}

    def ready(self) -> tuple[bool, str]:
        return self.is_ready
