"""The enrich stage of the flow pipeline: which pod owns an address or an endpoint id (local pods from
the plugin's endpoint records, pods on other nodes from the enforcer's index), its labels and node, the
names of policies.

The source of truth on a node is the plugin's endpoint records (<stateDir>/endpoints/*.json, written at
ADD, removed at DEL). In a cluster, pod and namespace labels come from exporter/kube.py's watch of the API
server (a LabelSource). The directory is reloaded when the records directory changes; a lookup miss
re-checks at most every MISS_RECHECK_S so a pod's first flow is named.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bpf.abi import POLICY_DENIED_ID
from exporter.flows import NO_LABELS, Endpoint
from exporter.workload import NONE as NO_WORKLOAD
from exporter.workload import Workload, workload
from plugin import endpoint as records

log = logging.getLogger("lumen.enrich")

MISS_RECHECK_S = 0.05


@dataclass(frozen=True)
class LocalPod:
    """A pod of this node, from its endpoint record (the plugin's, under <stateDir>/endpoints)."""

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
    """Pod labels and workload by (namespace, pod), for local and remote pods; none by default."""

    def labels(self, namespace: str, pod: str) -> Mapping[str, str]:
        return NO_LABELS

    def workload(self, namespace: str, pod: str) -> Workload:
        return NO_WORKLOAD


class IdentitySource(Protocol):
    """The policy identities the enforcer gave (exporter/enforcer.py)."""

    def pod_identity(self, namespace: str, pod: str) -> int:
        """The label identity of a pod; 0 if not known."""
        ...

    def address_identity(self, ip: str) -> int:
        """The identity of an address that is not a local pod: a remote pod's, HOST or WORLD."""
        ...


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
        self.by_ip: dict[str, LocalPod] = {}
        self.by_id: dict[int, LocalPod] = {}
        self.pods: list[LocalPod] = []
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
            by_ip: dict[str, LocalPod] = {}
            by_id: dict[int, LocalPod] = {}
            for p in pods:
                for ip in p.ips:
                    by_ip[ip] = p
                if p.endpoint_id:
                    by_id[p.endpoint_id] = p
            self.pods, self.by_ip, self.by_id = pods, by_ip, by_id
            self.generation += 1
        return True

    def lookup(self, endpoint_id: int, ip: str) -> LocalPod | None:
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

    def labels(self, pod: LocalPod) -> Mapping[str, str]:
        return self.label_source.labels(pod.namespace, pod.pod)

    def invalidate(self) -> None:
        """Something a flow's ends are named from changed (labels, identities): decoders name them again."""
        self.generation += 1


def _pod(rec: dict[str, Any]) -> LocalPod | None:
    try:
        ips = tuple(str(ipaddress.ip_interface(a).ip) for a in rec.get("ips", []))
        return LocalPod(
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

    def workload(self, namespace: str, pod: str) -> Workload:
        m = self._manifests().pods.get(f"{namespace}/{pod}")
        return workload(pod, m.labels if m is not None else {}, m.owners if m is not None else ())


class Enricher:
    """What the decoder asks about the ids and addresses in an event. The decoder memoises the endpoints
    per flow and forgets them when `generation` changes (records reloaded, remote pods changed)."""

    def __init__(
        self,
        directory: EndpointDirectory,
        node: str = "",
        policy_names: Mapping[int, str] | None = None,
        identities: IdentitySource | None = None,
    ) -> None:
        self.directory = directory
        self.node = node
        #: policy id -> namespace/name (the enforcer's; grows, never shrinks)
        self.policy_names: Mapping[int, str] = policy_names if policy_names is not None else {}
        self.identities = identities

    @property
    def generation(self) -> int:
        return self.directory.generation

    def endpoint(self, endpoint_id: int, ip: str, port: int) -> Endpoint:
        """One side of a flow: named if the address or endpoint id is a local pod's or a remote pod's."""
        pod = self.directory.lookup(endpoint_id, ip)
        ids = self.identities
        source = self.directory.label_source
        if pod is None:
            far = self.directory.remote.get(ip)  # a pod on another node
            identity = ids.address_identity(ip) if ids is not None else 0
            if far is None:
                return Endpoint(ip, port, identity=identity)
            labels = far.labels or source.labels(far.namespace, far.name) or NO_LABELS
            kind, owner = source.workload(far.namespace, far.name)
            if not owner:
                kind, owner = workload(far.name, labels)
            return Endpoint(ip, port, far.namespace, far.name, labels, far.node, kind, owner, identity)
        labels = self.directory.labels(pod)
        kind, owner = source.workload(pod.namespace, pod.pod)
        if not owner:
            kind, owner = workload(pod.pod, labels)
        identity = ids.pod_identity(pod.namespace, pod.pod) if ids is not None else 0
        return Endpoint(ip, port, pod.namespace, pod.pod, labels, self.node, kind, owner, identity)

    def policy_name(self, policy_id: int) -> str | None:
        """None: no policy isolates that side; "" no rule admitted it; else namespace/name."""
        if not policy_id:
            return None
        if policy_id == POLICY_DENIED_ID:
            return ""
        return self.policy_names.get(policy_id) or f"#{policy_id}"
