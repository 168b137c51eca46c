"""Keep the datapath's policy maps equal to the NetworkPolicies in force.

Each sync (agent start, then every housekeeping round):
  1. reload the manifest directories if a file changed; an invalid set is refused whole, with the
     error kept for /api/v1/policy and the log, and the policies in force stay;
  2. give every known pod (manifests, API server, endpoint records) and every namespace an identity;
  3. compile and, if anything changed, swap the maps (bpf/loader.py apply_policy: one generation);
  4. publish identities.json for the plugin (after the maps hold the new identities' entries), and
     correct the identity of local endpoints whose labels changed (flows then decide again);
  5. keep the node's own addresses in the ipcache as the HOST identity (always allowed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any, Protocol

from bpf import abi
from exporter.enrich import EndpointDirectory
from exporter.identities import Identities
from exporter.nodes import RemotePod
from exporter.policy.cluster import Cluster, ContainerPort, Namespace, Pod
from exporter.policy.compiler import Compiled, Compiler, LabelSet, summary
from exporter.policy.engine import Engine
from exporter.policy.errors import PolicyError
from exporter.policy.manifests import Manifests, fingerprint, load_dirs
from exporter.policy.model import NetworkPolicy

log = logging.getLogger("lumen.policy")


class PolicyDatapath(Protocol):
    def apply_policy(self, compiled: Compiled, audit: bool = False) -> int: ...

    def bump_policy_generation(self) -> int: ...

    def endpoint_identities(self) -> dict[str, int]: ...

    def set_endpoint_identity(self, ips: list[str], identity: int) -> None: ...

    def set_ipcache(self, identities: dict[str, int]) -> None: ...


class ClusterSource(Protocol):
    """What a watch on the API server provides (exporter/kube.py); None outside a cluster."""

    def policies(self) -> list[NetworkPolicy]: ...

    def pod(
        self, namespace: str, name: str
    ) -> tuple[Mapping[str, str], tuple[ContainerPort, ...]] | None: ...

    def namespace(self, name: str) -> tuple[Mapping[str, str], bool] | None: ...

    def remote_pods(
        self,
    ) -> list[tuple[str, str, Mapping[str, str], tuple[ContainerPort, ...], tuple[str, ...]]]:
        """(namespace, name, labels, container ports, IPs) of pods on other nodes."""
        ...


@dataclass
class PolicyStatus:
    generation: int = 0
    applied_at: float = 0.0
    error: str = ""
    files: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    summary: str = ""


def _host_addresses() -> list[str]:
    from plugin.netlink import Netlink

    with Netlink() as nl:
        return [str(iface.ip) for _, iface in nl.addrs()]


class Enforcer:
    def __init__(
        self,
        state_dir: str,
        dirs: list[str],
        dp: PolicyDatapath,
        directory: EndpointDirectory,
        cluster_source: ClusterSource | None = None,
        audit: bool = False,
        host_addresses: Any = _host_addresses,
    ) -> None:
        self.dirs = dirs
        self.dp = dp
        self.directory = directory
        self.kube = cluster_source
        self.audit = audit
        self.identities = Identities(state_dir)
        self.manifests = Manifests()
        self.status = PolicyStatus()
        self.compiled: Compiled | None = None
        self.engine = Engine([], Cluster())
        #: every policy id ever compiled -> namespace/name (flows decided earlier keep their names)
        self.policy_names: dict[int, str] = {}
        self._host_addresses = host_addresses
        self._fingerprint: tuple[Any, ...] | None = None
        #: namespace/pod -> identity, as of the last sync
        self.pod_identities: dict[str, int] = {}
        #: address -> pod on another node (manifests with status.podIPs, or the API watch)
        self.remote_pods: dict[str, RemotePod] = {}
        #: address -> identity of what is not a local pod: remote pods, the node's own addresses (HOST)
        self.address_identities: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- identities of a flow's ends (exporter.enrich.IdentitySource) ---------------------------------

    def pod_identity(self, namespace: str, pod: str) -> int:
        return self.pod_identities.get(f"{namespace}/{pod}", 0)

    def address_identity(self, ip: str) -> int:
        return self.address_identities.get(ip, int(abi.Identity.WORLD))

    # -- sources -----------------------------------------------------------------------------------

    def _reload(self) -> None:
        fp = fingerprint(self.dirs)
        if fp == self._fingerprint:
            return
        self._fingerprint = fp
        try:
            manifests = load_dirs(self.dirs)
        except PolicyError as e:
            self.status.error = f"rejected, policies in force unchanged: {e}"
            log.error("invalid policy manifests", extra={"error": str(e)})
            return
        self.manifests = manifests
        self.status.error = ""
        self.status.files = manifests.files

    def policies(self) -> list[NetworkPolicy]:
        out = {p.key: p for p in self.manifests.policies}
        if self.kube is not None:
            out.update({p.key: p for p in self.kube.policies()})
        return sorted(out.values(), key=lambda p: p.key)

    def _pod_facts(self, namespace: str, name: str) -> tuple[dict[str, str], tuple[ContainerPort, ...]]:
        if self.kube is not None:
            found = self.kube.pod(namespace, name)
            if found is not None:
                return dict(found[0]), found[1]
        m = self.manifests.pods.get(f"{namespace}/{name}")
        return (dict(m.labels), m.ports) if m is not None else ({}, ())

    def _namespace_facts(self, name: str) -> tuple[dict[str, str], bool]:
        if self.kube is not None:
            found = self.kube.namespace(name)
            if found is not None:
                return dict(found[0]), found[1]
        m = self.manifests.namespaces.get(name)
        return (dict(m.labels), m.audit) if m is not None else ({}, False)

    def _manifest_remote(self, local: list[Any]) -> list[Any]:
        """Pod manifests with addresses that are not a local endpoint's: pods on other nodes."""
        here = {ip for p in local for ip in p.ips}
        return [
            (m.namespace, m.name, m.labels, m.ports, m.ips)
            for m in self.manifests.pods.values()
            if m.ips and not here.intersection(m.ips)
        ]

    def _index_remote(self, remote: list[Any]) -> None:
        """Remote pods by address, with their node: the far end of a cross-node flow gets a name."""
        node_of = getattr(self.kube, "node_of", None)
        out: dict[str, RemotePod] = {}
        for ns, name, labels, _ports, ips in remote:
            m = self.manifests.pods.get(f"{ns}/{name}")
            node = (node_of(ns, name) if node_of else "") or (m.node if m is not None else "")
            for ip in ips:
                out[str(ip)] = RemotePod(ns, name, node, dict(labels))
        self.remote_pods = out

    # -- sync --------------------------------------------------------------------------------------

    def sync(self) -> bool:
        """Bring the maps up to date; True when a new generation was applied."""
        with self._lock:
            return self._sync()

    def _sync(self) -> bool:
        self._reload()
        self.directory.refresh()
        policies = self.policies()
        local = [p for p in self.directory.pods if p.state == "ready"]
        pod_keys = {(p.namespace, p.pod) for p in local} | {
            (m.namespace, m.name) for m in self.manifests.pods.values()
        }
        namespaces = (
            {ns for ns, _ in pod_keys} | set(self.manifests.namespaces) | {p.namespace for p in policies}
        )
        remote = (self.kube.remote_pods() if self.kube is not None else []) + self._manifest_remote(local)
        self._index_remote(remote)
        namespaces |= {ns for ns, *_ in remote}
        ns_facts = {ns: self._namespace_facts(ns) for ns in namespaces if ns}
        remote_ips: dict[str, int] = {}
        remote_sets: list[LabelSet] = []
        for ns, _name, labels, ports, ips in remote:
            ls = LabelSet.of(ns, labels, ports)
            remote_sets.append(ls)
            remote_ips.update({ip: self.identities.identity(ls) for ip in ips})
        facts = {key: self._pod_facts(*key) for key in pod_keys}
        pod_sets = {key: LabelSet.of(key[0], *facts[key]) for key in pod_keys}
        ns_sets = {ns: LabelSet(ns) for ns in ns_facts}
        pod_ids = {f"{ns}/{name}": self.identities.identity(ls) for (ns, name), ls in pod_sets.items()}
        ns_ids = {ns: self.identities.identity(ls) for ns, ls in ns_sets.items()}
        by_id = {
            self.identities.identity(ls): ls for ls in (*pod_sets.values(), *ns_sets.values(), *remote_sets)
        }

        compiler = Compiler(
            by_id,
            {ns: labels for ns, (labels, _) in ns_facts.items()},
            [ns for ns, (_, audit) in ns_facts.items() if audit],
        )
        compiled = compiler.compile(policies)
        applied = False
        if compiled != self.compiled or self.status.generation == 0:
            t0 = time.monotonic()
            self.status.generation = self.dp.apply_policy(compiled, self.audit)
            self.status.applied_at = time.time()
            self.compiled = compiled
            self.policy_names.update(compiled.policy_names)
            self.status.policies = [p.key for p in policies]
            self.status.summary = summary(compiled)
            applied = True
            log.info(
                "policy applied",
                extra={
                    "generation": self.status.generation,
                    "summary": self.status.summary,
                    "seconds": round(time.monotonic() - t0, 3),
                },
            )
        self.identities.publish(pod_ids, ns_ids)
        self.pod_identities = pod_ids

        current = self.dp.endpoint_identities()
        changed = False
        for p in local:
            want = pod_ids.get(f"{p.namespace}/{p.pod}")
            ips = list(p.ips) + list(p.record.get("linkLocal", []))
            if want is not None and any(ip in current and current[ip] != want for ip in ips):
                self.dp.set_endpoint_identity(ips, want)
                changed = True
        if changed and not applied:
            self.status.generation = self.dp.bump_policy_generation()
        try:
            host_ips = list(self._host_addresses())
        except OSError as e:
            log.warning("cannot list the node's addresses", extra={"error": str(e)})
            host_ips = []
        else:
            self.address_identities = {**remote_ips, **{ip: int(abi.Identity.HOST) for ip in host_ips}}
            self.dp.set_ipcache(self.address_identities)

        self.engine = Engine(policies, self._cluster(local, facts, ns_facts, remote, host_ips))
        return applied

    def _cluster(
        self,
        local: list[Any],
        facts: Mapping[tuple[str, str], tuple[dict[str, str], tuple[ContainerPort, ...]]],
        ns_facts: Mapping[str, tuple[dict[str, str], bool]],
        remote: list[Any],
        host_ips: list[str],
    ) -> Cluster:
        """What explain and what-if decide on: the same pods and labels the maps were compiled from."""
        pods: dict[str, Pod] = {}
        for ns, name, labels, ports, ips in remote:
            pods[f"{ns}/{name}"] = Pod(ns, name, dict(labels), tuple(ips), tuple(ports))
        for m in self.manifests.pods.values():
            pods[m.key] = Pod(m.namespace, m.name, dict(m.labels), tuple(map(ip_address, m.ips)), m.ports)
        for p in local:
            labels, ports = facts[(p.namespace, p.pod)]
            pods[f"{p.namespace}/{p.pod}"] = Pod(p.namespace, p.pod, labels, tuple(p.ips), ports)
        namespaces = [Namespace(ns, labels) for ns, (labels, _) in ns_facts.items()]
        return Cluster(pods.values(), namespaces, host_ips=host_ips)
