"""Lumen's flows in Hubble's JSON: `lumen observe -o jsonpb` prints what `hubble observe -o jsonpb` prints,
so that scripts, jq filters and tools written for Hubble read Lumen's flows unchanged.

Hubble's JSON is the proto3 JSON mapping of its `observer.GetFlowsResponse` (a `flow.Flow` inside, the
node name and the time beside it) with the proto field names kept (`drop_reason_desc`, not
`dropReasonDesc`). The mapping's rules apply: enums by value name, fields holding their default value
(0, "", false, an empty list) left out, 64-bit integers as strings, timestamps in RFC 3339 with Z, and a
`google.protobuf.BoolValue` (is_reply) as a plain boolean that is always present when known.

The input is a flow as the API serves it (exporter.flows `Flow.to_dict`): the CLI reads those, and so can
anything else holding the API's JSON. Fields a flow may not carry (labels, workload, identity, ICMP
type) are read when present and left out when not. tests/unit/test_hubble.py checks the output field by
field against a schema of the Hubble messages (tests/unit/golden/hubble_flow_schema.json).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Lumen's drop reasons -> (Hubble DropReason value name, its number): the deprecated numeric
#: `drop_reason` field is still read by older tools
DROP_REASONS: dict[str, tuple[str, int]] = {
    "policy_denied": ("POLICY_DENIED", 133),
}

#: Cilium monitor message types Hubble puts in `event_type.type`
_EVENT_DROP = 1
_EVENT_TRACE = 4
#: trace sub-types (observation points): leaving a pod is FROM_ENDPOINT, entering one TO_ENDPOINT
_TRACE_TO_ENDPOINT = 0
_TRACE_FROM_ENDPOINT = 5

_TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")
_PORTED = {"TCP", "UDP", "SCTP"}


def _pruned(obj: dict[str, Any]) -> dict[str, Any]:
    """Leave out fields holding their proto3 default, as the JSON mapping does."""
    return {k: v for k, v in obj.items() if v not in (None, "", 0, [], {}) or v is False and k == "is_reply"}


def _ip_version(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


#: Lumen's reserved identities (bpf/include/types.h enum lumen_identity) have Cilium's numbers; Hubble
#: labels such an endpoint `reserved:<name>`
RESERVED_IDENTITIES = {1: "host", 2: "world", 3: "unmanaged"}


def _labels(labels: Mapping[str, str], identity: int) -> list[str]:
    # Cilium prefixes each label with where it came from; a pod's labels come from Kubernetes.
    if not labels and identity in RESERVED_IDENTITIES:
        return [f"reserved:{RESERVED_IDENTITIES[identity]}"]
    return [f"k8s:{k}={v}" for k, v in sorted(labels.items())]


def endpoint(ep: Mapping[str, Any]) -> dict[str, Any]:
    """A `flow.Endpoint`: the pod's namespace, name, labels, workload and security identity."""
    workload = ep.get("workload") or {}
    workloads = (
        [_pruned({"name": workload.get("name", ""), "kind": workload.get("kind", "")})]
        if workload.get("name")
        else []
    )
    identity = int(ep.get("identity") or 0)
    return _pruned(
        {
            "ID": int(ep.get("endpoint_id") or 0),
            "identity": identity,
            "namespace": ep.get("namespace", ""),
            "labels": _labels(ep.get("labels") or {}, identity),
            "pod_name": ep.get("pod", ""),
            "workloads": workloads,
        }
    )


def icmp_type_code(flow: Mapping[str, Any]) -> tuple[int, int] | None:
    """ICMP type and code from the flow's `icmp` object (None when the flow does not carry one)."""
    icmp = flow.get("icmp") or {}
    if "type" not in icmp:
        return None
    return int(icmp["type"]), int(icmp.get("code", 0))


def layer4(flow: Mapping[str, Any]) -> dict[str, Any]:
    """A `flow.Layer4`: exactly one of TCP, UDP, SCTP, ICMPv4, ICMPv6 (none for other protocols)."""
    proto = flow["protocol"]
    if proto in _PORTED:
        body: dict[str, Any] = {
            "source_port": int(flow["source"].get("port", 0)),
            "destination_port": int(flow["destination"].get("port", 0)),
        }
        if proto == "TCP":
            seen = set(flow.get("tcp_flags") or ())
            body["flags"] = {name: True for name in _TCP_FLAGS if name in seen}
        return {proto: _pruned(body)}
    if proto in ("ICMP", "ICMPv6"):
        type_code = icmp_type_code(flow) or (0, 0)
        return {
            "ICMPv4" if proto == "ICMP" else "ICMPv6": _pruned({"type": type_code[0], "code": type_code[1]})
        }
    return {}


def traffic_direction(flow: Mapping[str, Any]) -> str:
    """Hubble's `traffic_direction` is the connection's direction as the observed pod sees it: a reply
    leaving a server pod belongs to a connection that is ingress for that pod. Lumen's `direction` is
    where this record's packets were seen (egress: leaving the source pod), so a reply flips it."""
    egress = flow.get("direction") == "egress"
    if flow.get("is_reply"):
        egress = not egress
    return "EGRESS" if egress else "INGRESS"


def summary(flow: Mapping[str, Any]) -> str:
    """The one-line `Summary` Hubble prints: TCP flags, or the protocol (with the ICMP message)."""
    proto = flow["protocol"]
    if proto == "TCP":
        flags = flow.get("tcp_flags") or []
        return f"TCP Flags: {', '.join(flags)}" if flags else "TCP"
    if proto in ("ICMP", "ICMPv6"):
        family = "ICMPv4" if proto == "ICMP" else "ICMPv6"
        icmp = flow.get("icmp") or {}
        if icmp.get("name"):
            return f"{family} {icmp['name']}"
        type_code = icmp_type_code(flow)
        return f"{family} type {type_code[0]} code {type_code[1]}" if type_code else family
    return str(proto)


def _policies(flow: Mapping[str, Any], side: str) -> list[dict[str, Any]]:
    """The NetworkPolicy that admitted one side (`flow.Policy`), when one did."""
    name = (flow.get("policy") or {}).get(side)
    if not name:
        return []
    namespace, _, short = name.rpartition("/")
    return [_pruned({"name": short, "namespace": namespace, "kind": "NetworkPolicy"})]


def flow(f: Mapping[str, Any]) -> dict[str, Any]:
    """A `flow.Flow` in Hubble's JSON."""
    src, dst = f["source"], f["destination"]
    dropped = f.get("verdict") == "DROPPED"
    reason = DROP_REASONS.get(f.get("drop_reason", "")) if dropped else None
    egress_seen = f.get("direction") == "egress"
    if dropped:
        event_type = {"type": _EVENT_DROP, "sub_type": reason[1] if reason else 0}
    else:
        event_type = {"type": _EVENT_TRACE, "sub_type": _TRACE_FROM_ENDPOINT if egress_seen else 0}
    out: dict[str, Any] = {
        "time": f["time"],
        "verdict": f.get("verdict", ""),
        "drop_reason": reason[1] if reason else 0,
        "IP": {"source": src["ip"], "destination": dst["ip"], "ipVersion": _ip_version(src["ip"])},
        "l4": layer4(f),
        "source": endpoint(src),
        "destination": endpoint(dst),
        "Type": "L3_L4",
        "node_name": f.get("node", ""),
        "event_type": _pruned(event_type),
        "traffic_direction": traffic_direction(f),
        "trace_observation_point": "" if dropped else ("FROM_ENDPOINT" if egress_seen else "TO_ENDPOINT"),
        "drop_reason_desc": reason[0] if reason else "",
        "is_reply": bool(f.get("is_reply")),
        "interface": _pruned({"index": int(f.get("ifindex") or 0)}),
        "Summary": summary(f),
        "egress_allowed_by": _policies(f, "egress"),
        "ingress_allowed_by": _policies(f, "ingress"),
    }
    return _pruned(out)


def response(f: Mapping[str, Any]) -> dict[str, Any]:
    """An `observer.GetFlowsResponse` holding the flow: one line of `hubble observe -o jsonpb`."""
    return _pruned({"flow": flow(f), "node_name": f.get("node", ""), "time": f["time"]})
