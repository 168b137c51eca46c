"""A directory of the manifests you would `kubectl apply`: NetworkPolicies, and outside a cluster the
Namespaces (labels, audit annotation) and Pods (labels, named container ports; `spec.nodeName` and
`status.podIPs` for pods on other nodes) they talk about, and the Nodes (name, InternalIP, pod CIDRs)
the agent routes to (exporter/nodes.py).

All or nothing, like model.load_policies: one invalid document raises a PolicyError naming the file,
the document and the field, and the caller keeps what is in force. Other kinds (Deployments, Services)
are skipped: the directory may hold a whole application's manifests.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bpf.vocab import PORTED_PROTOCOLS
from exporter.nodes import NodeInfo, parse_node
from exporter.policy.cluster import ContainerPort
from exporter.policy.errors import PolicyError
from exporter.policy.model import NetworkPolicy, parse_policy, yaml_objects
from exporter.policy.selectors import check_label_key, check_label_value
from exporter.workload import owners_of

#: Namespace annotation: "true" turns policy drops in that namespace into AUDIT verdicts (forwarded)
AUDIT_ANNOTATION = "lumen.dev/policy-audit"
SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class PodManifest:
    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] = ()
    #: where it runs and its addresses, when given: a pod on another node is routed and named by them
    node: str = ""
    ips: tuple[str, ...] = ()
    #: (kind, name) of metadata.ownerReferences, the controller first: the pod's workload
    owners: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NamespaceManifest:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    audit: bool = False


@dataclass
class Manifests:
    policies: list[NetworkPolicy] = field(default_factory=list)
    pods: dict[str, PodManifest] = field(default_factory=dict)
    namespaces: dict[str, NamespaceManifest] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def _labels(meta: dict, path: str) -> dict[str, str]:
    raw = meta.get("labels") or {}
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}.labels", "must be a mapping")
    return {
        check_label_key(k, f"{path}.labels"): check_label_value(v, f"{path}.labels.{k}")
        for k, v in raw.items()
    }


def _meta(doc: dict, default_namespace: str | None) -> tuple[dict, str, str]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise PolicyError("metadata.name", "required (a non-empty string)")
    namespace = meta.get("namespace", default_namespace)
    if default_namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise PolicyError("metadata.namespace", "must be a non-empty string")
    return meta, meta["name"], namespace or ""


def parse_pod(doc: dict, default_namespace: str = "default") -> PodManifest:
    meta, name, namespace = _meta(doc, default_namespace)
    ports: list[ContainerPort] = []
    spec = doc.get("spec") or {}
    containers = spec.get("containers") or [] if isinstance(spec, dict) else None
    if not isinstance(containers, list):
        raise PolicyError("spec.containers", "must be a list")
    for ci, c in enumerate(containers):
        for pi, p in enumerate((c or {}).get("ports") or []):
            path = f"spec.containers[{ci}].ports[{pi}]"
            number = p.get("containerPort") if isinstance(p, dict) else None
            if not isinstance(number, int) or not 1 <= number <= 65535:
                raise PolicyError(f"{path}.containerPort", f"must be 1-65535, got {number!r}")
            protocol = p.get("protocol", "TCP")
            if protocol not in PORTED_PROTOCOLS:
                allowed = ", ".join(PORTED_PROTOCOLS)
                raise PolicyError(f"{path}.protocol", f"must be {allowed}, got {protocol!r}")
            ports.append(ContainerPort(number, protocol, p.get("name")))
    node = spec.get("nodeName") or ""
    if not isinstance(node, str):
        raise PolicyError("spec.nodeName", "must be a string")
    owners = owners_of(meta.get("ownerReferences"))
    return PodManifest(namespace, name, _labels(meta, "metadata"), tuple(ports), node, _pod_ips(doc), owners)


def _pod_ips(doc: dict) -> tuple[str, ...]:
    status = doc.get("status") or {}
    if not isinstance(status, dict):
        raise PolicyError("status", "must be a mapping")
    raw = [p.get("ip") if isinstance(p, dict) else p for p in status.get("podIPs") or []]
    if not raw and status.get("podIP"):
        raw = [status["podIP"]]
    out = []
    for i, ip in enumerate(raw):
        try:
            out.append(str(ipaddress.ip_address(str(ip))))
        except ValueError:
            raise PolicyError(f"status.podIPs[{i}].ip", f"not an IP address: {ip!r}") from None
    return tuple(out)


def parse_namespace(doc: dict) -> NamespaceManifest:
    meta, name, _ = _meta(doc, None)
    annotations = meta.get("annotations") or {}
    audit = (
        str(annotations.get(AUDIT_ANNOTATION, "")).lower() == "true"
        if isinstance(annotations, dict)
        else False
    )
    return NamespaceManifest(name, _labels(meta, "metadata"), audit)


def load_text(text: str, source: str, into: Manifests, default_namespace: str = "default") -> None:
    objects = yaml_objects(text, source)
    seen = {p.key for p in into.policies}
    for where, obj in objects:
        if not isinstance(obj, dict):
            raise PolicyError("", "expected a mapping (a Kubernetes object)", where)
        kind = obj.get("kind")
        try:
            if kind == "NetworkPolicy":
                policy = parse_policy(obj, default_namespace)
                if policy.key in seen:
                    raise PolicyError("metadata.name", f"NetworkPolicy {policy.key} is defined twice")
                seen.add(policy.key)
                into.policies.append(policy)
            elif kind == "Pod":
                pod = parse_pod(obj, default_namespace)
                into.pods[pod.key] = pod
            elif kind == "Namespace":
                ns = parse_namespace(obj)
                into.namespaces[ns.name] = ns
            elif kind == "Node":
                node = parse_node(obj)
                into.nodes[node.name] = node
            elif not isinstance(kind, str) or not kind:
                raise PolicyError("kind", "required")
        except PolicyError as e:
            raise e.located(where) from None


def load_dirs(paths: Iterable[str | Path], default_namespace: str = "default") -> Manifests:
    """Every manifest file of these directories (or files), sorted by name; all or nothing."""
    out = Manifests()
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file())
        elif p.exists():
            files = [p]
        else:
            continue  # a directory not created yet holds no policies (the agent warns at start)
        for f in files:
            try:
                text = f.read_text()
            except OSError as e:
                raise PolicyError("", f"cannot read: {e.strerror}", str(f)) from None
            load_text(text, str(f), out, default_namespace)
            out.files.append(str(f))
    return out


def fingerprint(paths: Iterable[str | Path]) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of the manifest files: a change means reload (the directory watch)."""
    out = []
    for p in map(Path, paths):
        entries = sorted(p.iterdir()) if p.is_dir() else [p] if p.exists() else []
        for f in entries:
            try:
                st = f.stat()
            except OSError:
                continue
            if f.suffix in SUFFIXES:
                out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)
