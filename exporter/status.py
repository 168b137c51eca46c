"""The agent's answers about itself, as JSON: /api/status (`lumen status`), /api/endpoints and
/api/policy (`lumen policy status`). Read-only views over the parts the agent wires together."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from exporter.attachments import Attachments
from exporter.enrich import EndpointDirectory
from exporter.flows import FlowStore
from exporter.metrics import AgentHealth, MapSource
from exporter.workload import workload


def endpoints(
    directory: EndpointDirectory, attachments: Attachments, identities: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Every endpoint record, with its identity (the enforcer's, else the record's), labels, workload
    and attach state."""
    directory.refresh()
    out = []
    for p in directory.pods:
        labels = directory.labels(p)
        kind, owner = directory.label_source.workload(p.namespace, p.pod)
        if not owner:
            kind, owner = workload(p.pod, labels)
        out.append(
            {
                "namespace": p.namespace,
                "pod": p.pod,
                "containerId": p.container_id,
                "ifname": p.ifname,
                "ips": list(p.ips),
                "hostVeth": p.host_veth,
                "hostIfindex": p.host_ifindex,
                "endpointId": p.endpoint_id,
                "identity": identities.get(f"{p.namespace}/{p.pod}") or p.record.get("identity"),
                "state": p.state,
                "attached": attachments.is_attached(p),
                "labels": dict(labels),
                "workload": {"kind": kind, "name": owner} if owner else None,
            }
        )
    return out


def agent_status(
    *,
    version: str,
    cfg: Any,
    started_at: float,
    ready: tuple[bool, str],
    source: MapSource | None,
    store: FlowStore,
    health: AgentHealth,
    tracing: bool,
    network: dict[str, Any],
    endpoint_list: Callable[[], list[dict[str, Any]]],
) -> dict[str, Any]:
    stats = dict(source.datapath_stats()) if source else {}
    entries = source.flow_table_entries() if source else 0
    capacity = cfg.flow_table_size
    ok, reason = ready
    return {
        "version": version,
        "node": cfg.node,
        "ready": ok,
        "reason": reason,
        "uptime_s": round(time.time() - started_at, 1),
        "pin_dir": cfg.pin_dir,
        "state_dir": cfg.state_dir,
        "aggregation": cfg.aggregation,
        "flow_table": {
            "entries": entries,
            "capacity": capacity,
            "fill_ratio": round(entries / capacity, 4),
        },
        "flow_store": {
            "flows": len(store),
            "capacity": store.capacity,
            "evicted": store.evicted,
        },
        "events": {
            "consumed": health.events_consumed,
            "emitted": stats.get("events", 0),
            "lost": stats.get("lost_events", 0),
            "decode_errors": health.decode_errors,
            "poll_lag_s": round(health.poll_lag_seconds, 6),
            "sink_errors": dict(health.sink_errors),
        },
        "otel": tracing,
        "network": network,
        "endpoints": endpoint_list(),
    }


def policy_status(enforcer: Any, config: Any, policy_entries: int, dirs: list[str]) -> dict[str, Any]:
    """`enforcer` is exporter.enforcer.Enforcer, `config` the datapath's abi.Config as in force."""
    st = enforcer.status
    return {
        "generation": int(config.policy_gen),
        "applied_at": st.applied_at,
        "audit": bool(config.audit),
        "dirs": dirs,
        "files": st.files,
        "policies": st.policies,
        "summary": st.summary,
        "error": st.error,
        "map_entries": policy_entries,
    }
