"""The Kubernetes API server watch (in a cluster only): pods of every node, namespaces and NetworkPolicies.

It gives flows their pod and namespace labels (an exporter.enrich.LabelSource), remote pods' addresses an
identity, and the enforcer its policies (exporter.enforcer.ClusterSource). The `kubernetes` client is
imported only when the watch starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from exporter.enrich import LabelSource
from exporter.policy.manifests import AUDIT_ANNOTATION
from exporter.workload import owners_of, workload

log = logging.getLogger("lumen.kube")


class KubeWatch(LabelSource):
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
        self._workloads: dict[tuple[str, str], tuple[str, str]] = {}
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
            for table in (self._pods, self._ports, self._remote, self._remote_node, self._workloads):
                table.pop(key, None)
            return
        labels = dict(meta.labels or {})
        self._workloads[key] = workload(meta.name, labels, owners_of(getattr(meta, "owner_references", None)))
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

    def workload(self, namespace: str, pod: str) -> tuple[str, str]:
        return self._workloads.get((namespace, pod), ("", ""))

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
