"""Synthetic flows for bench/history: a cluster-like mix, deterministic per seed.

Pods in namespaces talk to services (a few ports each), replies come back from the server's port to an
ephemeral one, some flows go to addresses outside the node, about 2% are dropped by policy. Times are
spread over a window ending at `end_ns`, with nanosecond noise like the kernel's clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from exporter.flows import Endpoint, Flow

NAMESPACES = ("shop", "payments", "search", "ops", "data", "auth", "web", "ml", "infra", "batch")
SERVICE_PORTS = (80, 443, 8080, 5432, 6379, 9090, 53, 3306)


class Cluster:
    def __init__(self, pods: int = 200, seed: int = 1) -> None:
        rnd = random.Random(seed)
        self.rnd = rnd
        self.pods: list[Endpoint] = []
        for i in range(pods):
            ns = NAMESPACES[i % len(NAMESPACES)]
            app = f"app{i % 37}"
            self.pods.append(
                Endpoint(
                    f"10.244.{i // 250}.{i % 250 + 2}", 0, ns, f"{app}-{i:04x}", {"app": app, "tier": ns}
                )
            )
        self.external = [Endpoint(f"203.0.113.{i}", 0) for i in range(1, 40)]
        self.ports = {id(p): rnd.choice(SERVICE_PORTS) for p in self.pods}
        # a service graph, not a random one: each pod calls a handful of others and one outside address
        self.peers = {id(p): [*rnd.sample(self.pods, 5), rnd.choice(self.external)] for p in self.pods}

    def flows(self, n: int, end_ns: int, span_ns: int, node: str = "node-a") -> Iterator[Flow]:
        rnd = self.rnd
        pods = self.pods
        step = span_ns / max(n, 1)
        for k in range(n):
            t = int(end_ns - span_ns + k * step) + rnd.randrange(1_000_000)
            src = rnd.choice(pods)
            dst = rnd.choice(self.peers[id(src)])
            port = self.ports.get(id(dst), 443)
            reply = rnd.random() < 0.4
            proto = "UDP" if port == 53 else "TCP"
            dropped = rnd.random() < 0.02
            eph = rnd.randrange(32768, 61000)
            sport, dport = (port, eph) if reply else (eph, port)
            if reply:
                src, dst = dst, src
            packets = rnd.randrange(1, 200)
            nbytes = packets * rnd.randrange(60, 1500)
            start = t - rnd.randrange(1_000_000, 60_000_000_000)
            yield Flow(
                key=(4, 17 if proto == "UDP" else 6, src.ip, dst.ip, sport, dport, "egress"),
                type="DROP" if dropped else "END",
                time_ns=t,
                start_ns=start,
                end_ns=t
                if rnd.random() < 0.7
                else t - rnd.randrange(0, 1_000_000_000),  # FIN: the last packet
                protocol=proto,
                direction="egress",
                verdict="DROPPED" if dropped else "FORWARDED",
                drop_reason="policy_denied" if dropped else "none",
                source=Endpoint(src.ip, sport, src.namespace, src.pod, src.labels),
                destination=Endpoint(dst.ip, dport, dst.namespace, dst.pod, dst.labels),
                packets=1 if dropped else packets,
                bytes=80 if dropped else nbytes,
                payload_bytes=0 if dropped else nbytes - packets * 52,
                tcp_flags=0x1B if proto == "TCP" else 0,
                ifindex=rnd.randrange(3, 300),
                node=node,
                ingress_policy="" if dropped else None,
                egress_policy="shop/allow-web" if src.namespace == "shop" and not dropped else None,
                is_reply=reply,
            )
