"""Truth tables in the style of the upstream netpol e2e suite and cyclonus.

Pods x, y, z in namespaces a, b, c; every pod pair is probed on 80/TCP, 81/TCP and 53/UDP. A cell holds
the three outcomes in that order ('.' allowed, 'X' denied); rows are sources, columns destinations.
A pod's traffic to itself is always allowed (it never leaves the pod), as upstream's AllowLoopback.
"""

import pytest

from exporter.policy.cluster import Cluster, ContainerPort, Namespace, Pod
from exporter.policy.engine import Engine
from exporter.policy.model import load_policies

NAMESPACES = ("a", "b", "c")
PODS = ("x", "y", "z")
PROBES = (("TCP", 80), ("TCP", 81), ("UDP", 53))


def _pod(ns: str, name: str) -> Pod:
    ports = [
        ContainerPort(80, "TCP", "serve-80-tcp"),
        ContainerPort(81, "TCP", "serve-81-tcp"),
        ContainerPort(53, "UDP", "serve-53-udp"),
    ]
    # "http" names 80 on x and y but 81 on z: a named port resolves per destination pod.
    ports.append(ContainerPort(81 if name == "z" else 80, "TCP", "http"))
    ip = f"10.{NAMESPACES.index(ns) + 1}.0.{PODS.index(name) + 1}"
    return Pod(ns, name, {"pod": name}, (ip,), tuple(ports))


CLUSTER = Cluster(
    [_pod(ns, p) for ns in NAMESPACES for p in PODS],
    [Namespace(ns, {"ns": ns}) for ns in NAMESPACES],
)
KEYS = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]


def matrix(manifests: str) -> str:
    engine = Engine(load_policies(manifests), CLUSTER)
    lines = ["     " + " ".join(KEYS)]
    for src in KEYS:
        cells = []
        for dst in KEYS:
            verdicts = [
                engine.decide(engine.connection(src, dst, proto, port)).allowed for proto, port in PROBES
            ]
            cells.append("".join("." if ok else "X" for ok in verdicts) + " ")
        lines.append(f"{src}  " + "".join(cells).rstrip())
    return "\n".join(lines)


def expected(table: str) -> str:
    rows = [line.split() for line in table.strip().splitlines()]
    assert rows[0] == KEYS and [r[0] for r in rows[1:]] == KEYS
    return "\n".join(["     " + " ".join(KEYS)] + [f"{r[0]}  " + " ".join(r[1:]) for r in rows[1:]])


CASES = {
    "no-policies": (
        "",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... ... ... ... ... ... ... ... ...
        a/y  ... ... ... ... ... ... ... ... ...
        a/z  ... ... ... ... ... ... ... ... ...
        b/x  ... ... ... ... ... ... ... ... ...
        b/y  ... ... ... ... ... ... ... ... ...
        b/z  ... ... ... ... ... ... ... ... ...
        c/x  ... ... ... ... ... ... ... ... ...
        c/y  ... ... ... ... ... ... ... ... ...
        c/z  ... ... ... ... ... ... ... ... ...
        """,
    ),
    "deny-all-ingress": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... XXX XXX ... ... ... ... ... ...
        a/y  XXX ... XXX ... ... ... ... ... ...
        a/z  XXX XXX ... ... ... ... ... ... ...
        b/x  XXX XXX XXX ... ... ... ... ... ...
        b/y  XXX XXX XXX ... ... ... ... ... ...
        b/z  XXX XXX XXX ... ... ... ... ... ...
        c/x  XXX XXX XXX ... ... ... ... ... ...
        c/y  XXX XXX XXX ... ... ... ... ... ...
        c/z  XXX XXX XXX ... ... ... ... ... ...
        """,
    ),
    "allow-same-namespace": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-ns, namespace: b}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... ... ... XXX XXX XXX ... ... ...
        a/y  ... ... ... XXX XXX XXX ... ... ...
        a/z  ... ... ... XXX XXX XXX ... ... ...
        b/x  ... ... ... ... ... ... ... ... ...
        b/y  ... ... ... ... ... ... ... ... ...
        b/z  ... ... ... ... ... ... ... ... ...
        c/x  ... ... ... XXX XXX XXX ... ... ...
        c/y  ... ... ... XXX XXX XXX ... ... ...
        c/z  ... ... ... XXX XXX XXX ... ... ...
        """,
    ),
    "allow-from-namespace-by-label": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-from-b, namespace: c}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: b}}
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... ... ... ... ... ... XXX ... ...
        a/y  ... ... ... ... ... ... XXX ... ...
        a/z  ... ... ... ... ... ... XXX ... ...
        b/x  ... ... ... ... ... ... ... ... ...
        b/y  ... ... ... ... ... ... ... ... ...
        b/z  ... ... ... ... ... ... ... ... ...
        c/x  ... ... ... ... ... ... ... ... ...
        c/y  ... ... ... ... ... ... XXX ... ...
        c/z  ... ... ... ... ... ... XXX ... ...
        """,
    ),
    "pod-and-namespace-selector-together": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-of-b-or-c, namespace: a}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [b, c]}]}
      podSelector: {matchLabels: {pod: y}}
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... XXX XXX ... ... ... ... ... ...
        a/y  XXX ... XXX ... ... ... ... ... ...
        a/z  XXX XXX ... ... ... ... ... ... ...
        b/x  XXX XXX XXX ... ... ... ... ... ...
        b/y  ... ... ... ... ... ... ... ... ...
        b/z  XXX XXX XXX ... ... ... ... ... ...
        c/x  XXX XXX XXX ... ... ... ... ... ...
        c/y  ... ... ... ... ... ... ... ... ...
        c/z  XXX XXX XXX ... ... ... ... ... ...
        """,
    ),
    "pod-or-namespace-selector-as-two-peers": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-or-y, namespace: a}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: b}}
    - podSelector: {matchLabels: {pod: y}}
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... XXX XXX ... ... ... ... ... ...
        a/y  ... ... ... ... ... ... ... ... ...
        a/z  XXX XXX ... ... ... ... ... ... ...
        b/x  ... ... ... ... ... ... ... ... ...
        b/y  ... ... ... ... ... ... ... ... ...
        b/z  ... ... ... ... ... ... ... ... ...
        c/x  XXX XXX XXX ... ... ... ... ... ...
        c/y  XXX XXX XXX ... ... ... ... ... ...
        c/z  XXX XXX XXX ... ... ... ... ... ...
        """,
    ),
    "ipblock-with-except": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: z-from-cidr, namespace: b}
spec:
  podSelector: {matchLabels: {pod: z}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.3.0.3/32]}
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... ... ... ... ... XXX ... ... ...
        a/y  ... ... ... ... ... XXX ... ... ...
        a/z  ... ... ... ... ... XXX ... ... ...
        b/x  ... ... ... ... ... ... ... ... ...
        b/y  ... ... ... ... ... ... ... ... ...
        b/z  ... ... ... ... ... ... ... ... ...
        c/x  ... ... ... ... ... ... ... ... ...
        c/y  ... ... ... ... ... ... ... ... ...
        c/z  ... ... ... ... ... XXX ... ... ...
        """,
    ),
    "port-range-and-protocol-only": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: a}
spec:
  podSelector: {}
  ingress:
  - ports:
    - {port: 75, endPort: 80}
    - {protocol: UDP}
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... .X. .X. ... ... ... ... ... ...
        a/y  .X. ... .X. ... ... ... ... ... ...
        a/z  .X. .X. ... ... ... ... ... ... ...
        b/x  .X. .X. .X. ... ... ... ... ... ...
        b/y  .X. .X. .X. ... ... ... ... ... ...
        b/z  .X. .X. .X. ... ... ... ... ... ...
        c/x  .X. .X. .X. ... ... ... ... ... ...
        c/y  .X. .X. .X. ... ... ... ... ... ...
        c/z  .X. .X. .X. ... ... ... ... ... ...
        """,
    ),
    "named-ports": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: c}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: http
    - {port: serve-53-udp, protocol: UDP}
    - {port: serve-81-tcp, protocol: UDP}
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... ... ... ... ... ... .X. .X. X..
        a/y  ... ... ... ... ... ... .X. .X. X..
        a/z  ... ... ... ... ... ... .X. .X. X..
        b/x  ... ... ... ... ... ... .X. .X. X..
        b/y  ... ... ... ... ... ... .X. .X. X..
        b/z  ... ... ... ... ... ... .X. .X. X..
        c/x  ... ... ... ... ... ... ... .X. X..
        c/y  ... ... ... ... ... ... .X. ... X..
        c/z  ... ... ... ... ... ... .X. .X. ...
        """,
    ),
    "egress-only": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-dns-only, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {}
    ports:
    - {protocol: UDP, port: 53}
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... XX. XX. XX. XX. XX. XX. XX. XX.
        a/y  ... ... ... ... ... ... ... ... ...
        a/z  ... ... ... ... ... ... ... ... ...
        b/x  ... ... ... ... ... ... ... ... ...
        b/y  ... ... ... ... ... ... ... ... ...
        b/z  ... ... ... ... ... ... ... ... ...
        c/x  ... ... ... ... ... ... ... ... ...
        c/y  ... ... ... ... ... ... ... ... ...
        c/z  ... ... ... ... ... ... ... ... ...
        """,
    ),
    "both-directions-by-default": (
        # No policyTypes: Ingress always, Egress because spec.egress is non-empty.
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-both, namespace: b}
spec:
  podSelector: {matchLabels: {pod: y}}
  ingress:
  - from: [{podSelector: {}}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: c}}}]
    ports: [{port: 81}]
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... ... ... ... XXX ... ... ... ...
        a/y  ... ... ... ... XXX ... ... ... ...
        a/z  ... ... ... ... XXX ... ... ... ...
        b/x  ... ... ... ... ... ... ... ... ...
        b/y  XXX XXX XXX XXX ... XXX X.X X.X X.X
        b/z  ... ... ... ... ... ... ... ... ...
        c/x  ... ... ... ... XXX ... ... ... ...
        c/y  ... ... ... ... XXX ... ... ... ...
        c/z  ... ... ... ... XXX ... ... ... ...
        """,
    ),
    "policies-add-up": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-b, namespace: a}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: b}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-dns-from-c, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: c}}}]
    ports: [{port: 53, protocol: UDP}]
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... XXX XXX ... ... ... ... ... ...
        a/y  XXX ... XXX ... ... ... ... ... ...
        a/z  XXX XXX ... ... ... ... ... ... ...
        b/x  .XX .XX .XX ... ... ... ... ... ...
        b/y  .XX .XX .XX ... ... ... ... ... ...
        b/z  .XX .XX .XX ... ... ... ... ... ...
        c/x  XX. XXX XXX ... ... ... ... ... ...
        c/y  XX. XXX XXX ... ... ... ... ... ...
        c/z  XX. XXX XXX ... ... ... ... ... ...
        """,
    ),
    "match-expressions": (
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: exprs, namespace: b}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [x]}]}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [a]}]}
      podSelector: {matchExpressions: [{key: pod, operator: In, values: [x, z]}]}
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... ... ... ... XXX XXX ... ... ...
        a/y  ... ... ... ... XXX XXX ... ... ...
        a/z  ... ... ... ... XXX XXX ... ... ...
        b/x  ... ... ... ... ... ... ... ... ...
        b/y  ... ... ... ... ... XXX ... ... ...
        b/z  ... ... ... ... ... ... ... ... ...
        c/x  ... ... ... ... ... ... ... ... ...
        c/y  ... ... ... ... XXX XXX ... ... ...
        c/z  ... ... ... ... ... ... ... ... ...
        """,
    ),
    "both-sides-must-allow": (
        # a/x may only send to b; b/* only admit a/y. So a/x -> b is dropped at b's ingress, a/y -> b passes.
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-to-b, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: b}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-a-y, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: a}}, podSelector: {matchLabels: {pod: y}}}]
""",
        """
             a/x a/y a/z b/x b/y b/z c/x c/y c/z
        a/x  ... XXX XXX XXX XXX XXX XXX XXX XXX
        a/y  ... ... ... ... ... ... ... ... ...
        a/z  ... ... ... XXX XXX XXX ... ... ...
        b/x  ... ... ... ... XXX XXX ... ... ...
        b/y  ... ... ... XXX ... XXX ... ... ...
        b/z  ... ... ... XXX XXX ... ... ... ...
        c/x  ... ... ... XXX XXX XXX ... ... ...
        c/y  ... ... ... XXX XXX XXX ... ... ...
        c/z  ... ... ... XXX XXX XXX ... ... ...
        """,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_truth_table(case: str) -> None:
    manifests, table = CASES[case]
    assert matrix(manifests) == expected(table)
