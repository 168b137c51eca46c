"""Decide a connection the way Kubernetes NetworkPolicy defines it.

Logic:
 1. A pod selected by any policy whose policyTypes include a direction is isolated in that direction;
    a pod no policy selects accepts everything in it.
 2. An isolated pod admits a connection if any rule of any selecting policy matches it (policies add up).
 3. A rule matches when a peer matches the other side (empty `from`/`to` = anyone) and a port entry
    matches protocol and port (empty `ports` = anything); named ports resolve on the destination pod.
 4. A connection is allowed when the source's egress and the destination's ingress both admit it.
    External endpoints (no pod) have no policy side. A pod's traffic to itself never leaves it and is
    allowed, as the upstream conformance suite expects. Traffic to or from the node itself is always
    allowed (Kubernetes: "traffic to and from the node where a Pod is running is always allowed").
ipBlock peers match by address, pods included (the upstream e2e suite puts pod IPs in ipBlocks).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from bpf.vocab import CONNECTION_PROTOCOLS, PORTED_PROTOCOLS
from exporter.policy.cluster import Cluster, Endpoint, Pod
from exporter.policy.model import Direction, NetworkPolicy, Peer, PolicyPort, Rule


@dataclass(frozen=True)
class Connection:
    """src -> dst on protocol/port. ICMP has no port and is admitted only by rules without ports."""

    src: Endpoint
    dst: Endpoint
    protocol: str
    port: int | None = None

    def __post_init__(self) -> None:
        if self.protocol not in CONNECTION_PROTOCOLS:
            raise ValueError(
                f"protocol must be one of {', '.join(CONNECTION_PROTOCOLS)}, got {self.protocol!r}"
            )
        if (self.protocol in PORTED_PROTOCOLS) != (self.port is not None):
            needs = "needs" if self.protocol in PORTED_PROTOCOLS else "has no"
            raise ValueError(f"{self.protocol} {needs} port")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1-65535, got {self.port}")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.src} -> {self.dst}{port}/{self.protocol}"


@dataclass(frozen=True)
class RuleRef:
    """The rule that admitted a connection: `a/allow-web ingress[0]`."""

    policy: str
    direction: Direction
    index: int

    def __str__(self) -> str:
        return f"{self.policy} {self.direction}[{self.index}]"


@dataclass(frozen=True)
class DirectionVerdict:
    """One side's say. `selected_by` empty = that pod is not isolated in this direction (or not a pod)."""

    direction: Direction
    endpoint: Endpoint
    selected_by: tuple[str, ...] = ()
    allowed_by: tuple[RuleRef, ...] = ()

    @property
    def isolated(self) -> bool:
        return bool(self.selected_by)

    @property
    def allowed(self) -> bool:
        return not self.selected_by or bool(self.allowed_by)


@dataclass(frozen=True)
class Verdict:
    connection: Connection
    egress: DirectionVerdict
    ingress: DirectionVerdict
    loopback: bool = False
    node: bool = False  # one side is the node itself

    @property
    def allowed(self) -> bool:
        return self.loopback or self.node or (self.egress.allowed and self.ingress.allowed)

    @property
    def allowed_by(self) -> tuple[RuleRef, ...]:
        return self.egress.allowed_by + self.ingress.allowed_by

    @property
    def policies(self) -> tuple[str, ...]:
        """Names of the policies that admitted it, each once, in order (for metrics and flow records)."""
        return tuple(dict.fromkeys(r.policy for r in self.allowed_by))

    @property
    def denied_in(self) -> tuple[Direction, ...]:
        """Directions whose isolation no rule lifted; empty when allowed."""
        if self.loopback or self.node:
            return ()
        return tuple(d.direction for d in (self.egress, self.ingress) if not d.allowed)

    @property
    def reason(self) -> str:
        if self.loopback:
            return "allowed: a pod's traffic to itself"
        if self.node:
            return "allowed: traffic to or from the node is always allowed"
        if self.allowed:
            if not self.allowed_by:
                return "allowed: no policy isolates either side"
            return "allowed by " + ", ".join(map(str, self.allowed_by))
        sides = [
            f"no {d.direction} rule of {', '.join(d.selected_by)} admits it"
            for d in (self.egress, self.ingress)
            if not d.allowed
        ]
        return "denied: " + "; ".join(sides)


class Engine:
    """Policies and the cluster they apply to; decide() answers for one connection."""

    def __init__(self, policies: Iterable[NetworkPolicy], cluster: Cluster) -> None:
        self.cluster = cluster
        self.policies = list(policies)
        self._by_namespace: dict[str, list[NetworkPolicy]] = defaultdict(list)
        for p in sorted(self.policies, key=lambda p: p.key):
            self._by_namespace[p.namespace].append(p)

    def selecting(self, pod: Pod, direction: Direction) -> list[NetworkPolicy]:
        """Policies that isolate `pod` in `direction`."""
        return [
            p
            for p in self._by_namespace.get(pod.namespace, [])
            if direction in p.policy_types and p.pod_selector.matches(pod.labels)
        ]

    def connection(
        self, src: str | Pod, dst: str | Pod, protocol: str, port: int | None = None
    ) -> Connection:
        """Build a Connection from `namespace/pod` names, Pods or IPs."""
        return Connection(self.cluster.endpoint(src), self.cluster.endpoint(dst), protocol, port)

    def decide(self, conn: Connection) -> Verdict:
        src, dst = conn.src, conn.dst
        loopback = src.pod is not None and dst.pod is not None and src.pod.key == dst.pod.key
        return Verdict(
            conn,
            egress=self._side("egress", src, peer=dst, conn=conn),
            ingress=self._side("ingress", dst, peer=src, conn=conn),
            loopback=loopback,
            node=self.cluster.is_host(src) or self.cluster.is_host(dst),
        )

    def _side(self, direction: Direction, me: Endpoint, peer: Endpoint, conn: Connection) -> DirectionVerdict:
        if me.pod is None:
            return DirectionVerdict(direction, me)
        policies = self.selecting(me.pod, direction)
        allowed = tuple(
            RuleRef(p.key, direction, i)
            for p in policies
            for i, rule in enumerate(p.rules(direction))
            if self._rule_matches(rule, p.namespace, peer, conn)
        )
        return DirectionVerdict(direction, me, tuple(p.key for p in policies), allowed)

    def _rule_matches(self, rule: Rule, namespace: str, peer: Endpoint, conn: Connection) -> bool:
        peers_ok = not rule.peers or any(self._peer_matches(p, namespace, peer) for p in rule.peers)
        ports_ok = not rule.ports or any(self._port_matches(p, conn) for p in rule.ports)
        return peers_ok and ports_ok

    def _peer_matches(self, peer: Peer, policy_namespace: str, ep: Endpoint) -> bool:
        if peer.ip_block is not None:
            return any(peer.ip_block.contains(ip) for ip in ep.addresses())
        if ep.pod is None:  # selectors only ever pick pods
            return False
        if peer.namespace_selector is None:  # podSelector alone: the policy's own namespace
            ns_ok = ep.pod.namespace == policy_namespace
        else:
            ns_ok = peer.namespace_selector.matches(self.cluster.namespace_labels(ep.pod.namespace))
        # namespaceSelector alone: every pod of the selected namespaces
        pod_ok = peer.pod_selector is None or peer.pod_selector.matches(ep.pod.labels)
        return ns_ok and pod_ok

    @staticmethod
    def _port_matches(pp: PolicyPort, conn: Connection) -> bool:
        if conn.port is None or pp.protocol != conn.protocol:
            return False
        if pp.port is None:
            return True
        if isinstance(pp.port, str):  # named: the destination pod's container port of that name+protocol
            dst = conn.dst.pod
            return dst is not None and dst.named_port(pp.port, pp.protocol) == conn.port
        return pp.port <= conn.port <= (pp.end_port if pp.end_port is not None else pp.port)
