"""Verdict details, explain text and what-if replay."""

import ipaddress

import pytest

from exporter.policy.cluster import Cluster, ContainerPort, Namespace, Pod
from exporter.policy.engine import Connection, Engine, RuleRef
from exporter.policy.explain import FlowRecord, explain, whatif
from exporter.policy.model import load_policies

CLUSTER = Cluster(
    [
        Pod("shop", "web", {"app": "web"}, ("10.0.0.1",), (ContainerPort(8080, "TCP", "http"),)),
        Pod("shop", "db", {"app": "db"}, ("10.0.0.2",)),
        Pod("ops", "probe", {"app": "probe"}, ("10.0.1.1",)),
    ],
    [Namespace("shop"), Namespace("ops", {"team": "ops"})],
)

POLICIES = load_policies(
    """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
  - from: [{namespaceSelector: {matchLabels: {team: ops}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-open, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: http}]
  - from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
"""
)
ENGINE = Engine(POLICIES, CLUSTER)


def test_verdict_names_every_rule_that_allowed():
    v = ENGINE.decide(ENGINE.connection("shop/web", "shop/db", "TCP", 5432))
    assert v.allowed
    assert v.allowed_by == (
        RuleRef("shop/web-egress", "egress", 0),
        RuleRef("shop/db-from-web", "ingress", 0),
    )
    assert v.policies == ("shop/web-egress", "shop/db-from-web")


def test_verdict_says_which_direction_denied():
    v = ENGINE.decide(ENGINE.connection("shop/web", "shop/db", "TCP", 22))
    assert not v.allowed and v.denied_in == ("ingress",)
    assert v.egress.allowed and v.reason == "denied: no ingress rule of shop/db-from-web admits it"
    v = ENGINE.decide(ENGINE.connection("shop/web", "ops/probe", "TCP", 80))
    assert v.denied_in == ("egress",) and not v.ingress.isolated


def test_ip_of_a_pod_stands_for_the_pod():
    v = ENGINE.decide(ENGINE.connection("10.0.1.1", "10.0.0.2", "UDP", 53))
    assert v.allowed and v.allowed_by == (RuleRef("shop/db-from-web", "ingress", 1),)


def test_external_sources_ipblock_except_and_named_port():
    web = CLUSTER.endpoint("shop/web")

    def from_ip(ip: str, port: int) -> bool:
        return ENGINE.decide(Connection(CLUSTER.endpoint(ip), web, "TCP", port)).allowed

    assert from_ip("192.0.2.10", 9999)  # ipBlock
    assert not from_ip("192.0.2.200", 9999)  # in the except
    assert not from_ip("198.51.100.1", 9999)
    assert from_ip("198.51.100.1", 8080)  # named port http -> 8080 on web, from anyone
    # An external destination: only the source's egress counts; web may only reach db.
    ext = CLUSTER.endpoint("198.51.100.1")
    assert ext.pod is None and ext.ip == ipaddress.ip_address("198.51.100.1")
    assert not ENGINE.decide(Connection(web, ext, "TCP", 443)).allowed
    assert ENGINE.decide(Connection(CLUSTER.endpoint("shop/db"), ext, "TCP", 443)).allowed


def test_icmp_only_through_rules_without_ports():
    assert ENGINE.decide(ENGINE.connection("ops/probe", "shop/db", "ICMP")).allowed
    assert not ENGINE.decide(ENGINE.connection("shop/db", "shop/web", "ICMP")).allowed
    with pytest.raises(ValueError):
        ENGINE.connection("ops/probe", "shop/db", "TCP")


def test_explain_text():
    text = explain(ENGINE, ENGINE.connection("shop/web", "shop/db", "TCP", 5432))
    assert text.splitlines()[0] == "shop/web -> shop/db:5432/TCP: ALLOWED"
    assert "allowed by shop/web-egress egress[0]: to pods [app=db] on any port" in text
    assert "allowed by shop/db-from-web ingress[0]: from pods [app=web] on 5432/TCP" in text
    text = explain(ENGINE, ENGINE.connection("ops/probe", "shop/web", "TCP", 22))
    assert "DENIED" in text.splitlines()[0]
    assert "egress: no policy selects source ops/probe for egress: allowed" in text
    assert "destination shop/web is selected by shop/web-open: DENIED" in text
    text = explain(ENGINE, Connection(CLUSTER.endpoint("192.0.2.5"), CLUSTER.endpoint("shop/web"), "TCP", 1))
    assert (
        "source 192.0.2.5 is not a pod" in text and "from ipBlock 192.0.2.0/24 except 192.0.2.128/25" in text
    )


def test_whatif_lists_flows_that_change_both_ways():
    flows = [
        FlowRecord("TCP", 5432, "shop", "web", "10.0.0.1", "shop", "db", "10.0.0.2"),  # stays allowed
        FlowRecord("TCP", 8080, src_ip="198.51.100.1", dst_namespace="shop", dst_pod="web"),  # to be denied
        FlowRecord("TCP", 22, "shop", "web", None, "shop", "db", None),  # stays denied
        FlowRecord("UDP", 53, "ops", "probe", None, "shop", "web", None),  # denied now, allowed after
        FlowRecord("TCP", 80, "ops", "gone", "10.9.9.9", "shop", "db", None),  # deleted pod: just an IP
    ]
    proposed = [p for p in POLICIES if p.name != "web-open"] + load_policies(
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-ops, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: ops}}}]}]
"""
    )
    changes = whatif(flows, POLICIES, proposed, CLUSTER)
    assert [(c.flow, c.before.allowed, c.after.allowed) for c in changes] == [
        (flows[1], True, False),
        (flows[3], False, True),
    ]
    assert (
        str(changes[1])
        == "ops/probe -> shop/web:53/UDP: denied -> allowed (allowed by shop/web-from-ops ingress[0])"
    )
    assert whatif(flows, POLICIES, POLICIES, CLUSTER) == []


def test_whatif_needs_a_pod_or_an_ip():
    with pytest.raises(LookupError, match="pod ops/gone is unknown"):
        whatif([FlowRecord("TCP", 80, "ops", "gone", None, "shop", "db", None)], [], [], CLUSTER)
