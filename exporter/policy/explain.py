"""Explain one verdict in words, and replay flows against a proposed policy set (what-if).

Both are for `lumen policy explain` and `lumen policy whatif`; neither applies anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.policy.cluster import Cluster, Endpoint
from exporter.policy.engine import Connection, DirectionVerdict, Engine, Verdict
from exporter.policy.model import NetworkPolicy


def explain(engine: Engine, conn: Connection) -> str:
    """Several lines: the verdict, then each direction's policies and the rules that admitted it."""
    v = engine.decide(conn)
    lines = [f"{conn}: {'ALLOWED' if v.allowed else 'DENIED'}"]
    if v.loopback:
        lines.append("  a pod's traffic to itself never leaves the pod; policies do not apply")
        return "\n".join(lines)
    if v.node:
        lines.append("  one side is the node itself: traffic to and from the node is always allowed")
        return "\n".join(lines)
    for side in (v.egress, v.ingress):
        lines += _side_lines(engine, side)
    return "\n".join(lines)


def _side_lines(engine: Engine, side: DirectionVerdict) -> list[str]:
    who = "source" if side.direction == "egress" else "destination"
    if side.endpoint.pod is None:
        return [f"  {side.direction}: {who} {side.endpoint} is not a pod; no policy applies there"]
    if not side.isolated:
        return [
            f"  {side.direction}: no policy selects {who} {side.endpoint.pod.key} "
            f"for {side.direction}: allowed"
        ]
    status = (
        "allowed"
        if side.allowed
        else f"DENIED (default deny: {len(side.selected_by)} policy(ies), no rule matches)"
    )
    lines = [
        f"  {side.direction}: {who} {side.endpoint.pod.key} "
        f"is selected by {', '.join(side.selected_by)}: {status}"
    ]
    policies = {p.key: p for p in engine.policies}
    for ref in side.allowed_by:
        rule = policies[ref.policy].rules(ref.direction)[ref.index]
        peers = "; ".join(map(str, rule.peers)) or "anyone"
        ports = ", ".join(map(str, rule.ports)) or "any port"
        lines.append(
            f"    allowed by {ref}: {'from' if ref.direction == 'ingress' else 'to'} {peers} on {ports}"
        )
    for name in side.selected_by:
        if not policies[name].rules(side.direction) and not any(r.policy == name for r in side.allowed_by):
            lines.append(f"    {name} has no {side.direction} rules (it only isolates)")
    return lines


@dataclass(frozen=True)
class FlowRecord:
    """A stored flow reduced to what policy decides on. A pod is named by namespace+pod, else by IP."""

    protocol: str
    port: int | None = None
    src_namespace: str | None = None
    src_pod: str | None = None
    src_ip: str | None = None
    dst_namespace: str | None = None
    dst_pod: str | None = None
    dst_ip: str | None = None


def _endpoint(
    cluster: Cluster, namespace: str | None, pod: str | None, ip: str | None, side: str
) -> Endpoint:
    addr = ipaddress.ip_address(ip) if ip else None
    if namespace and pod and f"{namespace}/{pod}" in cluster.pods:
        return Endpoint(pod=cluster.pods[f"{namespace}/{pod}"], ip=addr)
    if addr is not None:  # a pod that is gone is only an address now (or whichever pod holds it today)
        return Endpoint(pod=cluster.pod_by_ip(addr), ip=addr)
    raise LookupError(f"flow {side}: pod {namespace}/{pod} is unknown and the flow has no IP")


def flow_connection(cluster: Cluster, flow: FlowRecord) -> Connection:
    return Connection(
        _endpoint(cluster, flow.src_namespace, flow.src_pod, flow.src_ip, "source"),
        _endpoint(cluster, flow.dst_namespace, flow.dst_pod, flow.dst_ip, "destination"),
        flow.protocol,
        flow.port,
    )


@dataclass(frozen=True)
class Change:
    flow: FlowRecord
    before: Verdict
    after: Verdict

    def __str__(self) -> str:
        was = "allowed" if self.before.allowed else "denied"
        now = "allowed" if self.after.allowed else "denied"
        return f"{self.after.connection}: {was} -> {now} ({self.after.reason})"


def whatif(
    flows: Iterable[FlowRecord],
    current: Iterable[NetworkPolicy],
    proposed: Iterable[NetworkPolicy],
    cluster: Cluster,
) -> list[Change]:
    """Flows whose decision (allowed/denied) differs between the current and the proposed policies."""
    now, then = Engine(current, cluster), Engine(proposed, cluster)
    changes = []
    for flow in flows:
        conn = flow_connection(cluster, flow)
        before, after = now.decide(conn), then.decide(conn)
        if before.allowed != after.allowed:
            changes.append(Change(flow, before, after))
    return changes
