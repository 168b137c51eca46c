"""A fixed set of flows for the output tests of `lumen observe` (golden files in golden/observe/): a TCP
request and its reply, UDP to an IPv6 address outside the cluster, a dropped ping and TCP to the internet.
Built as the agent builds them (exporter.flows.Flow) and served as the API serves them (`to_dict`)."""

from __future__ import annotations

from typing import Any

from exporter.flows import Endpoint, Flow

T0 = 1_799_913_600_123_456_000  # 2027-01-14T08:00:00.123456Z
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def _flow(
    src: Endpoint,
    dst: Endpoint,
    proto: str,
    *,
    num: int,
    type: str = "NEW",
    verdict: str = "FORWARDED",
    direction: str = "egress",
    flags: int = 0,
    reply: bool = False,
    node: str = "n1",
    duration_ns: int = 10**9,
    offset_ns: int = 0,
    egress: str | None = None,
    ingress: str | None = None,
    packets: int = 3,
    nbytes: int = 180,
) -> Flow:
    t = T0 + offset_ns
    return Flow(
        key=(6 if ":" in src.ip else 4, num, src.ip, dst.ip, src.port, dst.port, direction),
        type=type,
        time_ns=t,
        start_ns=t - duration_ns,
        end_ns=t,
        protocol=proto,
        direction=direction,
        verdict=verdict,
        drop_reason="policy_denied" if verdict == "DROPPED" else "none",
        source=src,
        destination=dst,
        packets=packets,
        bytes=nbytes,
        tcp_flags=flags,
        ifindex=7,
        node=node,
        egress_policy=egress,
        ingress_policy=ingress,
        is_reply=reply,
    )


#: the frontend pod: labels, node, its Deployment and its policy identity
FRONTEND: dict[str, Any] = {
    "labels": {"app": "frontend", "tier": "web"},
    "node": "n1",
    "workload_kind": "Deployment",
    "workload": "frontend",
    "identity": 256,
}
CART: dict[str, Any] = {"labels": {"app": "cart"}, "node": "n2", "identity": 257}


def sample_flows() -> list[Flow]:
    frontend = Endpoint("10.244.1.10", 41000, "shop", "frontend", **FRONTEND)
    cart = Endpoint("10.244.2.11", 8080, "shop", "cart", **CART)
    cart6 = Endpoint("fd00:244:2::b", 51000, "shop", "cart", **CART)
    outside6 = Endpoint("fd01:244::c8", 443, identity=2)  # WORLD: no pod
    monitor = Endpoint("10.244.2.12", 0, "ops", "monitor", {"app": "monitor"}, "n2", identity=260)
    frontend_icmp = Endpoint("10.244.1.10", 0, "shop", "frontend", **FRONTEND)  # ICMP has no ports
    catalog = Endpoint("10.244.3.13", 38000, "shop", "catalog", {"app": "catalog"}, "n3", identity=258)
    internet = Endpoint("192.168.244.200", 443, identity=2)
    ping = _flow(monitor, frontend_icmp, "ICMP", num=1, type="DROP", verdict="DROPPED", direction="ingress",
                 offset_ns=3_000_000, ingress="", packets=1, nbytes=84, duration_ns=0)  # fmt: skip
    ping.message = (8, 0, 4242)  # echo request, echo identifier 4242
    return [
        _flow(frontend, cart, "TCP", num=6, flags=SYN | ACK | PSH, duration_ns=127_044_825_000,
              ingress="shop/allow-shop", packets=12, nbytes=3400),
        _flow(Endpoint("10.244.2.11", 8080, "shop", "cart", **CART),
              Endpoint("10.244.1.10", 41000, "shop", "frontend", **FRONTEND),
              "TCP", num=6, type="END", direction="ingress", flags=ACK | PSH | FIN, reply=True,
              offset_ns=1_500_000, duration_ns=127_000_000_000, packets=10, nbytes=52_000),
        _flow(cart6, outside6, "UDP", num=17, node="n2", offset_ns=2_000_000, duration_ns=0, packets=1,
              nbytes=76),
        ping,
        _flow(catalog, internet, "TCP", num=6, type="REPORT", node="n3", flags=ACK | PSH,
              offset_ns=4_000_000, duration_ns=850_000_000, packets=40, nbytes=2_000_000),
    ]  # fmt: skip


def sample_dicts() -> list[dict[str, Any]]:
    return [f.to_dict() for f in sample_flows()]
