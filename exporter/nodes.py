"""The cluster's nodes as the agent needs them to route pods: name, addresses, pod CIDRs.

Two sources, the same shape:
  - in a cluster, a watch on the Node objects (`spec.podCIDRs` or `spec.podCIDR`, the `InternalIP`
    entries of `status.addresses`), `KubeNodes`;
  - outside one, `Node` manifests in the policy directories the agent already watches (the same YAML
    `kubectl get node -o yaml` prints; exporter/policy/manifests.py hands them to `parse_node`).
Both feed exporter/routing.py (routes, VXLAN) and exporter/masquerade.py (which destinations are inside
the cluster). Also here: the remote pods' names by address, for naming the far end of a cross-node flow.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.policy.errors import PolicyError

log = logging.getLogger("lumen.nodes")


@dataclass(frozen=True)
class NodeInfo:
    name: str
    #: InternalIP addresses, in the order the Node lists them (canonical text)
    addresses: tuple[str, ...] = ()
    #: pod CIDRs (canonical text); at most one per address family is routed
    pod_cidrs: tuple[str, ...] = ()

    def address(self, version: int) -> str | None:
        return next((a for a in self.addresses if ipaddress.ip_address(a).version == version), None)

    def cidrs(self, version: int) -> list[str]:
        return [c for c in self.pod_cidrs if ipaddress.ip_network(c).version == version]


@dataclass(frozen=True)
class RemotePod:
    """A pod on another node: names the far end of a flow that crosses nodes."""

    namespace: str
    name: str
    node: str
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_node(doc: Mapping[str, Any]) -> NodeInfo:
    """A Node object (manifest or API, camelCase) -> NodeInfo; PolicyError names the bad field."""
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise PolicyError("metadata.name", "required (a non-empty string)")
    spec = doc.get("spec") or {}
    status = doc.get("status") or {}
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        raise PolicyError("spec", "spec and status must be mappings")
    raw_cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    if not isinstance(raw_cidrs, list):
        raise PolicyError("spec.podCIDRs", "must be a list")
    cidrs = []
    for i, c in enumerate(raw_cidrs):
        try:
            cidrs.append(str(ipaddress.ip_network(str(c), strict=True)))
        except ValueError as e:
            raise PolicyError(f"spec.podCIDRs[{i}]", f"not a network: {e}") from None
    addresses = []
    for i, a in enumerate(status.get("addresses") or []):
        if not isinstance(a, Mapping) or a.get("type") != "InternalIP":
            continue
        try:
            addresses.append(str(ipaddress.ip_address(str(a.get("address")))))
        except ValueError:
            raise PolicyError(f"status.addresses[{i}].address", "not an IP address") from None
    return NodeInfo(meta["name"], tuple(addresses), tuple(cidrs))


class KubeNodes:
    """Watches the Node objects (RBAC: list/watch nodes) on a daemon thread; reconnects after errors.
    `on_change` is called after every change (the agent wakes its reconciler)."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        self._on_change = on_change
        self._stop = threading.Event()
        self.synced = False

    def nodes(self) -> dict[str, NodeInfo]:
        return dict(self._nodes)

    def start(self) -> None:
        from kubernetes import config  # type: ignore[import-not-found]  # optional: only in a cluster

        config.load_incluster_config()
        threading.Thread(target=self._forever, name="watch_nodes", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _forever(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
            except Exception as exc:  # noqa: BLE001 - a watch must survive API server restarts
                log.warning("node watch failed, retrying", extra={"error": str(exc)})
                self._stop.wait(5)

    def _watch(self) -> None:
        from kubernetes import client, watch  # type: ignore[import-not-found]

        api = client.CoreV1Api()
        serialize = client.ApiClient().sanitize_for_serialization
        for ev in watch.Watch().stream(api.list_node, timeout_seconds=300):
            self.on_event(ev["type"], serialize(ev["object"]))
            if self._stop.is_set():
                return

    def on_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        if kind == "DELETED":
            self._nodes.pop(name, None)
        else:
            try:
                self._nodes[name] = parse_node(obj)
            except PolicyError as e:
                log.error("Node from the API server not routed", extra={"node": name, "error": str(e)})
                self._nodes.pop(name, None)
        self.synced = True
        if self._on_change is not None:
            self._on_change()
