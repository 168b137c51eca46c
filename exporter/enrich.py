"""Pod metadata for flows: which local pod owns an address or an endpoint id.

The source of truth on a node is the plugin's endpoint records (<stateDir>/endpoints/*.json, written at
ADD, removed at DEL). In a cluster, pod and namespace labels come from a watch on the API server
(`kubernetes` client, imported only then). The directory is reloaded when the records directory changes;
a lookup miss re-checks at most every MISS_RECHECK_S so a pod's first flow is named.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.flows import NO_LABELS
from exporter.policy.manifests import AUDIT_ANNOTATION
from plugin import endpoint as records

log = logging.getLogger("lumen.enrich")

MISS_RECHECK_S = 0.05


@dataclass(frozen=True)
class Pod:
    namespace: str
    pod: str
    container_id: str
    ifname: str
    endpoint_id: int
    host_ifindex: int
    host_veth: str
    ips: tuple[str, ...]
    state: str
    observed: bool
    record: dict[str, Any] = field(compare=False, hash=False)


class LabelSource:
    """Pod labels by (namespace, pod); empty outside a cluster."""

    def labels(self, namespace: str, pod: str) -> Mapping[str, str]:
        return NO_LABELS


class EndpointDirectory:
    """Index of the endpoint records by address and by endpoint id. Reads are lock-free: a reload
    swaps whole dicts."""

    def __init__(self, state_dir: str, labels: LabelSource | None = None) -> None:
        self.state_dir = state_dir
        self.label_source = labels or LabelSource()
        self._dir = os.path.join(state_dir, records.ENDPOINTS_DIR)
        self._mtime_ns = -1
        self._last_miss_check = 0.0
        self._reload_lock = threading.Lock()
        self.by_ip: dict[str, Pod] = {}
        self.by_id: dict[int, Pod] = {}
        self.pods: list[Pod] = []
        self.generation = 0  # bumped on every reload: decoders drop what they cached
        #: pods on other nodes by address (the enforcer's index): names the far end of cross-node flows
        self.remote: Mapping[str, Any] = {}
        self.refresh()

    def refresh(self, force: bool = False) -> bool:
        """Reload if the records directory changed; True if it did."""
        try:
            mtime = os.stat(self._dir).st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        # Directory mtimes tick coarsely (jiffies): a change within the same tick as our last read keeps
        # the mtime, so a recent mtime is not trusted.
        if mtime == self._mtime_ns and not force and time.time_ns() - mtime > 2 * 10**9:
            return False
        with self._reload_lock:
            self._mtime_ns = mtime
            pods = [p for p in (_pod(r) for r in records.all_records(self.state_dir)) if p is not None]
            by_ip: dict[str, Pod] = {}
            by_id: dict[int, Pod] = {}
            for p in pods:
                for ip in p.ips:
                    by_ip[ip] = p
                if p.endpoint_id:
                    by_id[p.endpoint_id] = p
            self.pods, self.by_ip, self.by_id = pods, by_ip, by_id
            self.generation += 1
        return True

    def lookup(self, endpoint_id: int, ip: str) -> Pod | None:
        pod = self.by_id.get(endpoint_id) if endpoint_id else None
        if pod is None:
            pod = self.by_ip.get(ip)
        if pod is None and endpoint_id:
            # A local pod we do not know yet: its record may have just been written.
            now = time.monotonic()
            if now - self._last_miss_check >= MISS_RECHECK_S:
                self._last_miss_check = now
                if self.refresh():
                    pod = self.by_id.get(endpoint_id) or self.by_ip.get(ip)
        return pod

    def set_remote(self, remote: Mapping[str, Any]) -> None:
        """Replace the remote pods (exporter.nodes.RemotePod by address); decoders re-name on a change."""
        if remote != self.remote:
            self.remote = remote
            self.generation += 1

    def labels(self, pod: Pod) -> Mapping[str, str]:
        return self.label_source.labels(pod.namespace, pod.pod)


def _pod(rec: dict[str, Any]) -> Pod | None:
    try:
        ips = tuple(str(ipaddress.ip_interface(a).ip) for a in rec.get("ips", []))
        return Pod(
            namespace=str(rec.get("namespace", "")),
            pod=str(rec.get("pod", "")),
            container_id=str(rec["containerId"]),
            ifname=str(rec.get("ifname", "")),
            endpoint_id=int(rec.get("endpointId") or 0),
            host_ifindex=int(rec.get("hostIfindex") or 0),
            host_veth=str(rec.get("hostVeth", "")),
            ips=ips,
            state=str(rec.get("state", "ready")),
            observed=bool(rec.get("observed", False)),
            record=rec,
        )
    except (KeyError, ValueError, TypeError):
        log.warning("skipping malformed endpoint record", extra={"record": rec})
        return None


class ManifestLabels(LabelSource):
    """Outside a cluster: pod labels from the `Pod` manifests of the policy directories (the same ones
    policy selects on), so local pods' flows carry the labels remote ones get."""

    def __init__(self, manifests: Callable[[], Any]) -> None:
        self._manifests = manifests

    def labels(self, namespace: str, pod: str) -> Mapping[str, str]:
        m = self._manifests().pods.get(f"{namespace}/{pod}")
        return m.labels if m is not None and m.labels else NO_LABELS


class KubeLabels(LabelSource):
    """Watches the pods of this node, all namespaces and all NetworkPolicies: pod labels (plus namespace
    labels as `namespace.<key>`) for flows, and exporter.enforcer.ClusterSource for policy. Reconnects
    after errors; runs on daemon threads."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._pods: dict[tuple[str, str], dict[str, str]] = {}
        self._ports: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._namespaces: dict[str, dict[str, str]] = {}
        self._audit: dict[str, bool] = {}
        self._policies: dict[str, Any] = {}
        self._remote: dict[tuple[str, str], tuple[dict[str, str], tuple[Any, ...], tuple[str, ...]]] = {}
        self._remote_node: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def labels(self, namespace: str, pod: str) -> Mapping[str, str]:
        out = dict(self._pods.get((namespace, pod), {}))
        for key, value in self._namespaces.get(namespace, {}).items():
            out[f"namespace.{key}"] = value
        return out

    def start(self) -> None:
        from kubernetes import config  # type: ignore[import-not-found]  # optional: only in a cluster

        config.load_incluster_config()
        for target in (self._watch_pods, self._watch_namespaces, self._watch_policies):
            t = threading.Thread(target=self._forever, args=(target,), daemon=True, name=target.__name__)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def _forever(self, target: Any) -> None:
        while not self._stop.is_set():
            try:
                target()
            except Exception as exc:  # noqa: BLE001 - a watch must survive API server restarts
                log.warning("kubernetes watch failed, retrying", extra={"error": str(exc)})
                self._stop.wait(5)

    def _watch_pods(self) -> None:
        from kubernetes import client, watch  # type: ignore[import-not-found]

        # Every pod of the cluster: local ones name flows; remote ones give their addresses an identity,
        # so pod selectors match traffic from other nodes.
        api = client.CoreV1Api()
        for ev in watch.Watch().stream(api.list_pod_for_all_namespaces, timeout_seconds=300):
            obj = ev["object"]
            ips = [p.ip for p in (getattr(obj.status, "pod_i_ps", None) or []) if p.ip]
            self.on_pod_event(ev["type"], obj.metadata, getattr(obj.spec, "node_name", None), ips, obj)
            if self._stop.is_set():
                return

    def on_pod_event(self, kind: str, meta: Any, node: str | None, ips: list[str], obj: Any = None) -> None:
        key = (meta.namespace, meta.name)
        if kind == "DELETED":
            for table in (self._pods, self._ports, self._remote, self._remote_node):
                table.pop(key, None)
            return
        labels = dict(meta.labels or {})
        ports = _container_ports(obj) if obj is not None else ()
        if node == self.node:
            self._pods[key] = labels
            self._ports[key] = ports
            self._remote.pop(key, None)
        else:
            self._remote[key] = (labels, ports, tuple(ips))
            self._remote_node[key] = node or ""
            self._pods.pop(key, None)

    def remote_pods(self) -> list[tuple[str, str, Mapping[str, str], tuple[Any, ...], tuple[str, ...]]]:
        """(namespace, name, labels, container ports, IPs) of pods on other nodes."""
        return [(ns, name, *v) for (ns, name), v in list(self._remote.items())]

    def node_of(self, namespace: str, name: str) -> str:
        """The node a remote pod runs on ("" if unknown)."""
        return self._remote_node.get((namespace, name), "")

    def _watch_namespaces(self) -> None:
        from kubernetes import client, watch  # type: ignore[import-not-found]

        api = client.CoreV1Api()
        for ev in watch.Watch().stream(api.list_namespace, timeout_seconds=300):
            meta = ev["object"].metadata
            if ev["type"] == "DELETED":
                self._namespaces.pop(meta.name, None)
                self._audit.pop(meta.name, None)
            else:
                self._namespaces[meta.name] = dict(meta.labels or {})
                self._audit[meta.name] = (meta.annotations or {}).get(AUDIT_ANNOTATION, "").lower() == "true"
            if self._stop.is_set():
                return

    def _watch_policies(self) -> None:
        from kubernetes import client, watch  # type: ignore[import-not-found]

        api = client.NetworkingV1Api()
        serialize = client.ApiClient().sanitize_for_serialization
        for ev in watch.Watch().stream(api.list_network_policy_for_all_namespaces, timeout_seconds=300):
            self.on_policy_event(ev["type"], serialize(ev["object"]))
            if self._stop.is_set():
                return

    def on_policy_event(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event, the object as the API serves it (camelCase dict)."""
        from exporter.policy.errors import PolicyError
        from exporter.policy.model import API_VERSION, parse_policy

        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if kind == "DELETED":
            self._policies.pop(key, None)
            return
        # list items come without apiVersion/kind; server-side fields are not the policy
        doc = {"apiVersion": API_VERSION, "kind": "NetworkPolicy", "spec": obj.get("spec") or {}}
        doc["metadata"] = {k: v for k, v in meta.items() if k in ("name", "namespace", "labels")}
        try:
            self._policies[key] = parse_policy(doc)
        except PolicyError as e:
            log.error(
                "NetworkPolicy from the API server not enforced", extra={"policy": key, "error": str(e)}
            )
            self._policies.pop(key, None)

    # -- exporter.enforcer.ClusterSource --------------------------------------------------------

    def policies(self) -> list[Any]:
        return list(self._policies.values())

    def pod(self, namespace: str, name: str) -> tuple[Mapping[str, str], tuple[Any, ...]] | None:
        labels = self._pods.get((namespace, name))
        return None if labels is None else (labels, self._ports.get((namespace, name), ()))

    def namespace(self, name: str) -> tuple[Mapping[str, str], bool] | None:
        labels = self._namespaces.get(name)
        return None if labels is None else (labels, self._audit.get(name, False))


def _container_ports(pod: Any) -> tuple[Any, ...]:
    from exporter.policy.cluster import ContainerPort

    out = []
    for c in getattr(pod.spec, "containers", None) or []:
        for p in c.ports or []:
            out.append(ContainerPort(int(p.container_port), p.protocol or "TCP", p.name))
    return tuple(out)
