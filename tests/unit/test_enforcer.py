"""The enforcer and the policy compiler without a kernel: a fake datapath records what would be written,
and a Python model of the kernel's lookups (bpf/lumen.c lumen_side) over the compiled tables must
decide every connection as the policy engine does."""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path

import pytest

from exporter.enforcer import Enforcer
from exporter.enrich import EndpointDirectory
from exporter.kube import KubeWatch
from exporter.policy.cluster import Cluster, ContainerPort, Namespace, Pod
from exporter.policy.compiler import Compiled, Compiler, LabelSet, port_prefixes
from exporter.policy.engine import Engine
from exporter.policy.model import load_policies
from tests.unit.exporter_fixtures import write_record

POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: blue}}
      podSelector: {matchExpressions: [{key: app, operator: In, values: [api, db]}]}
    ports: [{port: 8000, endPort: 8100}, {protocol: UDP, port: dns}]
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.0.2.7/32]}}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8}}]
    ports: [{protocol: UDP}]
  - ports: [{port: http}]
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: b}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{namespaceSelector: {}}]
    ports: [{protocol: SCTP, port: 9}, {port: http}]
"""

PODS = [
    Pod("a", "web", {"app": "web"}, ("10.0.1.5",), (ContainerPort(53, "UDP", "dns"),)),
    Pod("a", "api", {"app": "api"}, ("10.0.2.7",), (ContainerPort(8080, "TCP", "http"),)),
    Pod("b", "api", {"app": "api"}, ("10.0.3.9",), (ContainerPort(8081, "TCP", "http"),)),
    Pod("b", "db", {"app": "db"}, ("10.0.3.10",)),
    Pod("c", "web", {"app": "web"}, ("10.1.0.4",), (ContainerPort(80, "TCP", "http"),)),
]
NAMESPACES = [Namespace("a", {"team": "red"}), Namespace("b", {"team": "blue"}), Namespace("c")]
PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1}


class KernelModel:
    """What bpf/lumen.c does with the compiled tables (LPM: the longest matching entry wins)."""

    def __init__(self, compiled: Compiled, ids: dict[str, int]) -> None:
        self.c, self.ids = compiled, ids

    def cidr(self, ip: str) -> int:
        addr = ipaddress.ip_address(ip)
        best = max((n for n in self.c.cidrs if addr in n), key=lambda n: n.prefixlen, default=None)
        return self.c.cidrs[best] if best is not None else 0

    def lookup(self, direction: str, subject: int, peer: int, proto: int, port: int) -> str | None:
        if (direction, subject) not in self.c.markers:
            return None
        for e in self.c.allows:
            if (e.direction, e.subject, e.peer) != (direction, subject, peer):
                continue
            if e.port_bits is None or (
                e.proto == proto and (port >> (16 - e.port_bits)) == (e.port >> (16 - e.port_bits))
            ):
                return "allow"
        return "isolate"

    def side(self, direction: str, subject: int | None, peer: int, cidr: int, proto: int, port: int) -> bool:
        if subject is None:
            return True
        first = self.lookup(direction, subject, peer, proto, port)
        if first in (None, "allow"):
            return True
        return any(
            self.lookup(direction, subject, p, proto, port) == "allow"
            for p in ((cidr,) if cidr else ()) + (0,)
        )

    def allowed(self, src: Pod | str, dst: Pod | str, protocol: str, port: int | None) -> bool:
        proto, port_ = PROTO[protocol], port or 0
        s_id = self.ids[src.key] if isinstance(src, Pod) else None
        d_id = self.ids[dst.key] if isinstance(dst, Pod) else None
        s_ip = src.ips[0] if isinstance(src, Pod) else src
        d_ip = dst.ips[0] if isinstance(dst, Pod) else dst
        world = 2
        return self.side("egress", s_id, d_id or world, self.cidr(str(d_ip)), proto, port_) and self.side(
            "ingress", d_id, s_id or world, self.cidr(str(s_ip)), proto, port_
        )


def test_compiled_tables_decide_like_the_engine():
    policies = load_policies(POLICIES)
    sets = {p.key: LabelSet.of(p.namespace, p.labels, p.ports) for p in PODS}
    ids = {key: 256 + i for i, key in enumerate(sets)}
    compiler = Compiler({ids[k]: ls for k, ls in sets.items()}, {n.name: n.labels for n in NAMESPACES})
    compiled = compiler.compile(policies)
    engine = Engine(policies, Cluster(PODS, NAMESPACES))
    kernel = KernelModel(compiled, ids)
    rng = random.Random(7)
    externals = ["10.0.1.200", "10.0.2.6", "10.0.2.8", "10.0.9.9", "10.9.0.1", "192.168.1.1"]
    checked = 0
    for _ in range(3000):
        src = rng.choice([*PODS, *externals])
        dst = rng.choice([*PODS, *externals])
        if isinstance(src, str) and isinstance(dst, str) or src is dst:
            continue
        protocol = rng.choice(["TCP", "UDP", "SCTP", "ICMP"])
        port = None if protocol == "ICMP" else rng.choice([9, 53, 80, 8000, 8050, 8080, 8081, 8100, 8101])
        conn = engine.connection(src if isinstance(src, Pod) else src, dst, protocol, port)
        want = engine.decide(conn).allowed
        assert kernel.allowed(src, dst, protocol, port) == want, f"{conn}: engine says {want}"
        checked += 1
    assert checked > 2000


@pytest.mark.parametrize("first,last", [(80, 80), (8000, 8100), (1, 65535), (1024, 2047), (32767, 32769)])
def test_port_ranges_become_exact_prefixes(first: int, last: int):
    covered = set()
    for value, bits in port_prefixes(first, last):
        size = 1 << (16 - bits)
        assert value % size == 0
        covered |= set(range(value, value + size))
    assert covered == set(range(first, last + 1))


class FakeDatapath:
    def __init__(self) -> None:
        self.applied: list[Compiled] = []
        self.identities: dict[str, int] = {}
        self.ipcache: dict[str, int] = {}

    def apply_policy(self, compiled: Compiled, audit: bool = False) -> int:
        self.applied.append(compiled)
        return len(self.applied)

    def bump_policy_generation(self) -> int:
        return len(self.applied) + 100

    def endpoint_identities(self) -> dict[str, int]:
        return dict(self.identities)

    def set_endpoint_identity(self, ips: list[str], identity: int) -> None:
        for ip in ips:
            self.identities[ip] = identity

    def set_ipcache(self, identities: dict[str, int]) -> None:
        self.ipcache = identities


CLUSTER = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored, namespace: shop}
"""

DENY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec: {podSelector: {}}
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Enforcer, FakeDatapath, Path]:
    state, manifests = tmp_path / "state", tmp_path / "policies"
    manifests.mkdir()
    (manifests / "cluster.yaml").write_text(CLUSTER)
    dp = FakeDatapath()
    enforcer = Enforcer(
        str(state), [str(manifests)], dp, EndpointDirectory(str(state)), host_addresses=lambda: ["192.0.2.1"]
    )
    return enforcer, dp, manifests


def test_identities_are_published_for_the_plugin_before_pods_exist(setup):
    enforcer, dp, _ = setup
    assert enforcer.sync()
    data = json.loads(Path(enforcer.identities.path).read_text())
    assert data["pods"]["shop/api"] >= 256 and data["namespaces"]["shop"] >= 256
    assert data["pods"]["shop/api"] != data["namespaces"]["shop"]  # labelled pod vs an unlabelled one
    assert dp.ipcache == {"192.0.2.1": 1}
    assert not enforcer.sync(), "nothing changed: no new generation"
    assert len(dp.applied) == 1


def test_a_pod_record_gets_its_identity_corrected(setup, tmp_path: Path):
    enforcer, dp, _ = setup
    enforcer.sync()
    write_record(str(tmp_path / "state"), "c1", "shop", "api", ["10.1.0.5/24"], 7)
    dp.identities["10.1.0.5"] = 3  # the plugin wrote UNMANAGED: the agent did not know it then
    enforcer.sync()
    assert (
        dp.identities["10.1.0.5"]
        == json.loads(Path(enforcer.identities.path).read_text())["pods"]["shop/api"]
    )


def test_a_refused_change_keeps_the_policies_in_force(setup):
    enforcer, dp, manifests = setup
    (manifests / "deny.yaml").write_text(DENY)
    enforcer.sync()
    assert enforcer.status.policies == ["shop/deny"] and not enforcer.status.error
    (manifests / "deny.yaml").write_text(DENY.replace("podSelector", "podselector"))
    assert not enforcer.sync()
    assert "podselector" in enforcer.status.error and "deny.yaml" in enforcer.status.error
    assert enforcer.status.policies == ["shop/deny"] and len(dp.applied) == 1


def test_policies_from_the_api_server_watch():
    kube = KubeWatch("node-1")
    served = {
        "metadata": {"name": "deny", "namespace": "shop", "resourceVersion": "12", "uid": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    kube.on_policy_event("ADDED", served)
    assert [p.key for p in kube.policies()] == ["shop/deny"]
    kube.on_policy_event("MODIFIED", {**served, "spec": {"podSelector": {"bogus": 1}}})
    assert kube.policies() == [], "an object we cannot read is not enforced half-way"
    kube.on_policy_event("ADDED", served)
    kube.on_policy_event("DELETED", served)
    assert kube.policies() == []


class FakeKube:
    """exporter.enforcer.ClusterSource as the API-server watch fills it."""

    def __init__(self) -> None:
        self.kube = KubeWatch("node-1")
        meta = type("Meta", (), {})

        def m(ns: str, name: str, labels: dict[str, str]) -> object:
            o = meta()
            o.namespace, o.name, o.labels = ns, name, labels  # type: ignore[attr-defined]
            return o

        self.kube.on_pod_event("ADDED", m("shop", "api", {"app": "api"}), "node-1", ["10.1.0.5"])
        self.kube.on_pod_event("ADDED", m("other", "api", {"app": "api"}), "node-2", ["10.2.0.7"])
        self.kube.on_pod_event("ADDED", m("other", "web", {"app": "web"}), "node-2", ["10.2.0.8"])
        self.kube.on_policy_event(
            "ADDED",
            {
                "metadata": {"name": "from-api", "namespace": "shop"},
                "spec": {
                    "podSelector": {},
                    "ingress": [
                        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "api"}}}]}
                    ],
                },
            },
        )


def test_pods_on_other_nodes_get_identities_in_the_ipcache(tmp_path: Path):
    kube = FakeKube().kube
    assert kube.pod("shop", "api") == ({"app": "api"}, ())
    assert kube.pod("other", "api") is None and len(kube.remote_pods()) == 2
    dp = FakeDatapath()
    state = tmp_path / "state"
    write_record(str(state), "c1", "shop", "api", ["10.1.0.5/24"], 7)
    enforcer = Enforcer(
        str(state), [], dp, EndpointDirectory(str(state)), cluster_source=kube, host_addresses=lambda: []
    )
    enforcer.sync()
    api_id, web_id = dp.ipcache["10.2.0.7"], dp.ipcache["10.2.0.8"]
    assert api_id >= 256 and web_id >= 256 and api_id != web_id
    compiled = dp.applied[-1]
    peers = {e.peer for e in compiled.allows}
    assert api_id in peers and web_id not in peers  # the remote api pod is selected, the web pod not
    engine = enforcer.engine
    assert engine.decide(engine.connection("10.2.0.7", "shop/api", "TCP", 80)).allowed
    assert not engine.decide(engine.connection("10.2.0.8", "shop/api", "TCP", 80)).allowed
    kube.on_pod_event(
        "DELETED", type("M", (), {"namespace": "other", "name": "api", "labels": {}})(), None, []
    )
    enforcer.sync()
    assert "10.2.0.7" not in dp.ipcache
