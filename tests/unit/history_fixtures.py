"""Random flows and filters for the history tests (hypothesis strategies), from a small universe of pods
and addresses so that filters hit."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import strategies as st

from exporter.filters import FilterGroup, FlowQuery
from exporter.flows import NO_LABELS, Endpoint, Flow

T0 = 1_800_000_000 * 10**9  # 2027-01-15T08:00:00Z, an hour boundary
HOUR = 3600 * 10**9

PODS = [
    ("shop", "web-1", {"app": "web", "tier": "front"}),
    ("shop", "web-2", {"app": "web", "tier": "front"}),
    ("shop", "db-0", {"app": "db"}),
    ("ops", "probe", {}),
    ("payments", "api-7", {"app": "api"}),
]
ADDRESSES = ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
EXTERNAL = ["203.0.113.9", "198.51.100.1", "2001:db8::7"]


def endpoint(i: int, port: int) -> Endpoint:
    if i < len(PODS):
        ns, pod, labels = PODS[i]
        return Endpoint(ADDRESSES[i], port, ns, pod, MappingProxyType(labels) if labels else NO_LABELS)
    return Endpoint(EXTERNAL[i - len(PODS)], port)


@st.composite
def flow_lists(draw: st.DrawFn, max_size: int = 40, span_ns: int = 3 * HOUR) -> list[Flow]:
    """Flows with distinct keys and distinct times, in time order."""
    n = draw(st.integers(0, max_size))
    times = sorted(draw(st.lists(st.integers(0, span_ns - 1), min_size=n, max_size=n, unique=True)))
    out = []
    for k, t in enumerate(times):
        s = draw(st.integers(0, len(PODS) + len(EXTERNAL) - 1))
        d = draw(st.integers(0, len(PODS) + len(EXTERNAL) - 1))
        v6 = ":" in endpoint(s, 0).ip or ":" in endpoint(d, 0).ip
        if v6:  # one family per flow: both ends v6
            s, d = len(PODS) + 2, len(PODS) + 2
        proto = draw(st.sampled_from([(6, "TCP"), (17, "UDP"), (1, "ICMP"), (132, "SCTP"), (253, "253")]))
        dport = draw(st.sampled_from([0, 53, 80, 443, 8080]))
        sport = 20000 + k  # distinct keys: the memory store keeps one record per key
        verdict = draw(st.sampled_from(["FORWARDED", "FORWARDED", "DROPPED", "AUDIT"]))
        typ = draw(st.sampled_from(["END", "DROP", "NEW"]))
        time_ns = T0 + t
        out.append(
            Flow(
                key=(
                    6 if v6 else 4,
                    proto[0],
                    endpoint(s, 0).ip,
                    endpoint(d, 0).ip,
                    sport,
                    dport,
                    draw(st.sampled_from(["egress", "ingress"])),
                ),
                type=typ,
                time_ns=time_ns,
                start_ns=time_ns - draw(st.integers(0, 10**11)),
                end_ns=time_ns - draw(st.integers(0, 10**9)),
                protocol=proto[1],
                direction="",
                verdict=verdict,
                drop_reason="policy_denied" if verdict == "DROPPED" else "none",
                source=endpoint(s, sport),
                destination=endpoint(d, dport),
                packets=draw(st.integers(0, 10**6)),
                bytes=draw(st.integers(0, 10**9)),
                payload_bytes=draw(st.integers(0, 10**9)),
                tcp_flags=draw(st.integers(0, 255)),
                ifindex=draw(st.integers(0, 4000)),
                node=draw(st.sampled_from(["node-a", "node-b"])),
                egress_policy=draw(st.sampled_from([None, "", "shop/allow-web"])),
                ingress_policy=draw(st.sampled_from([None, "", "ops/deny-all"])),
                is_reply=draw(st.booleans()),
            )
        )
        out[-1].direction = out[-1].key[6]
    return out


CRITERIA_VALUES = {
    "pod": ["shop/web-1", "shop/", "web", "ops/probe", "payments/"],
    "namespace": ["shop", "ops", "payments", "kube-system"],
    "ip": ["10.1.0.0/24", "10.1.0.2", "203.0.113.0/24", "2001:db8::/32"],
    "port": ["53", "80", "443", "20001"],
    "label": ["app=web", "app", "tier=front", "app=db"],
}
PLAIN_VALUES = {
    "protocol": ["tcp", "udp", "icmp", "47", "6"],
    "verdict": ["forwarded", "dropped", "audit"],
    "type": ["end", "drop", "new"],
    "direction": ["egress", "ingress"],
    "node": ["node-a", "node-b"],
    "is_reply": ["true", "false"],
    "tcp_flags": ["SYN", "FIN", "RST"],
    "ip_version": ["4", "6"],
}


@st.composite
def groups(draw: st.DrawFn) -> FilterGroup:
    names = [f"{side}{base}" for base in CRITERIA_VALUES for side in ("", "from_", "to_")] + list(
        PLAIN_VALUES
    )
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    crit = {}
    for name in chosen:
        base = name.split("_", 1)[1] if name.startswith(("from_", "to_")) else name
        pool = CRITERIA_VALUES.get(base) or PLAIN_VALUES[name]
        crit[name] = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
    return FilterGroup(crit)


queries = st.builds(
    FlowQuery,
    allow=st.lists(groups(), max_size=2).map(tuple),
    deny=st.lists(groups(), max_size=1).map(tuple),
)
