"""What the engine decides about: pods (labels, IPs, named container ports) and namespaces (labels).

The agent fills this from the API server or the CNI's endpoint store; tests build it by hand.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from exporter.policy.model import IPAddress

# The API server sets this label on every namespace (1.21+); policies select namespaces by name with it.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True, eq=False)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ips: tuple[IPAddress, ...] = ()
    ports: tuple[ContainerPort, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "ips", tuple(ipaddress.ip_address(ip) for ip in self.ips))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> int | None:
        """The number of the container port with this name and protocol, as Kubernetes resolves it."""
        return next((p.port for p in self.ports if p.name == name and p.protocol == protocol), None)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod (maybe with the IP it used), or an address outside any pod."""

    pod: Pod | None = None
    ip: IPAddress | None = None

    def __post_init__(self) -> None:
        if self.pod is None and self.ip is None:
            raise ValueError("an endpoint needs a pod or an IP")

    def addresses(self) -> tuple[IPAddress, ...]:
        if self.ip is not None:
            return (self.ip,)
        return self.pod.ips if self.pod is not None else ()

    def __str__(self) -> str:
        if self.pod is None:
            return str(self.ip)
        return self.pod.key + (f" ({self.ip})" if self.ip is not None else "")


class Cluster:
    """Pods and namespaces, indexed by name and by IP."""

    def __init__(
        self,
        pods: Iterable[Pod] = (),
        namespaces: Iterable[Namespace] = (),
        host_ips: Iterable[str | IPAddress] = (),
    ) -> None:
        self.pods = {p.key: p for p in pods}
        self.namespaces = {n.name: n for n in namespaces}
        self._by_ip = {ip: p for p in self.pods.values() for ip in p.ips}
        #: the node's own addresses: traffic to and from the node is always allowed
        self.host_ips = frozenset(ipaddress.ip_address(ip) for ip in host_ips)

    def is_host(self, ep: Endpoint) -> bool:
        return ep.pod is None and ep.ip is not None and ep.ip in self.host_ips

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        ns = self.namespaces.get(name)
        return {**(ns.labels if ns is not None else {}), NAMESPACE_NAME_LABEL: name}

    def pod_by_ip(self, ip: IPAddress) -> Pod | None:
        return self._by_ip.get(ip)

    def endpoint(self, ref: str | IPAddress | Pod) -> Endpoint:
        """`namespace/pod`, a Pod, or an IP (a pod's IP stands for that pod; any other is external)."""
        if isinstance(ref, Pod):
            return Endpoint(pod=ref)
        if isinstance(ref, str):
            try:
                ip = ipaddress.ip_address(ref)
            except ValueError:
                if ref not in self.pods:
                    raise LookupError(f"no pod {ref!r} (expected namespace/pod or an IP)") from None
                return Endpoint(pod=self.pods[ref])
        else:
            ip = ref
        return Endpoint(pod=self.pod_by_ip(ip), ip=ip)
