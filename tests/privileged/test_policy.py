"""NetworkPolicy enforced by the datapath, probed with real traffic (cyclonus-style truth tables).

Six pods in three namespaces (x, y, z; pods a and b in each), each serving TCP and UDP echo on ports
80 and 81. For each policy set the enforcer compiles the manifests into the pinned maps, every
ordered pod pair is probed on every port and protocol, and the matrix must equal what the policy
engine (exporter/policy/engine.py, itself checked against hand-written tables in tests/unit) decides.
The kernel's flow entries must carry the verdicts the probes saw. SCTP is probed over raw sockets.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf import abi
from bpf.loader import Datapath, DatapathConfig, unpin_all
from exporter.enforcer import Enforcer
from exporter.enrich import EndpointDirectory
from tests.cni_harness import Node, Pod
from tests.privileged import dp_tools as t
from tests.privileged import probe

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

CASES = [("TCP", 80), ("TCP", 81), ("UDP", 80)]
NAMESPACES = {"x": {"team": "red"}, "y": {"team": "blue"}, "z": {"team": "blue"}}
PODS = {f"{ns}{p}": (ns, p) for ns in NAMESPACES for p in ("a", "b")}


def cluster_manifests(audit: str = "") -> str:
    docs = []
    for ns, labels in NAMESPACES.items():
        ann = '\n  annotations: {lumen.dev/policy-audit: "true"}' if ns == audit else ""
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {labels}{ann}")
    for name, (ns, p) in PODS.items():
        ports = "[{name: web, containerPort: 80}" + (", {name: alt, containerPort: 81}]" if p == "b" else "]")
        docs.append(
            f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {p}}}}}\n"
            f"spec:\n  containers: [{{name: c, image: busybox, ports: {ports}}}]"
        )
    return "\n---\n".join(docs) + "\n"


def netpol(name: str, ns: str, spec: str) -> str:
    return (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )


class Lab:
    def __init__(self, node: Node, dp: Datapath, enforcer: Enforcer, policy_dir: Path) -> None:
        self.node, self.dp, self.enforcer, self.policy_dir = node, dp, enforcer, policy_dir
        self.pods: dict[str, Pod] = {}

    def apply(self, *policies: str, audit: str = "") -> int:
        (self.policy_dir / "cluster.yaml").write_text(cluster_manifests(audit))
        (self.policy_dir / "policies.yaml").write_text("\n---\n".join(policies))
        self.enforcer.sync()
        assert not self.enforcer.status.error
        return self.enforcer.status.generation

    def expected(self) -> dict[probe.Cell, bool]:
        engine = self.enforcer.engine
        out = {}
        for src, (sns, _) in PODS.items():
            for dst, (dns, _) in PODS.items():
                if src != dst:
                    for proto, port in CASES:
                        conn = engine.connection(f"{sns}/{src}", f"{dns}/{dst}", proto, port)
                        out[(src, dst, proto, port)] = engine.decide(conn).allowed
        return out

    def check(self) -> dict[probe.Cell, bool]:
        """Probe everything; the matrix must be the engine's, and the flow table must agree."""
        started = time.monotonic_ns()
        result = probe.matrix(self.pods, CASES)
        expected = self.expected()
        assert result == expected, "probes differ from the policy:\n" + probe.render(result, expected)
        verdicts = self.flow_verdicts(started)
        for (src, dst, proto, port), ok in result.items():
            seen = verdicts.get((self.pods[src].ip(), self.pods[dst].ip(), proto, port))
            assert seen, f"no flow for {src} -> {dst} {proto}/{port}"
            assert seen == {"FORWARDED" if ok else "DROPPED"}, (src, dst, proto, port, seen)
        return result

    def flow_verdicts(self, since_ns: int) -> dict[tuple[str, str, str, int], set[str]]:
        """Verdicts of the flows seen since `since_ns`. By last packet, not first: an ephemeral port can
        repeat an earlier probe's 5-tuple, whose entry is then decided again under the new policy."""
        out: dict[tuple[str, str, str, int], set[str]] = {}
        names = {6: "TCP", 17: "UDP"}
        for (src, dst, proto, _sport, dport, direction), st in t.flows(self.dp).items():
            if (
                st.last_seen_ns < since_ns
                or direction != abi.Direction.EGRESS
                or st.flags & abi.FlowFlag.REPLY
            ):
                continue
            if proto in names:
                out.setdefault((src, dst, names[proto], dport), set()).add(abi.Verdict(st.verdict).name)
        return out


@pytest.fixture(scope="module")
def lab(cni_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    pin_dir = f"/sys/fs/bpf/lt_{secrets.token_hex(4)}"
    dp = Datapath.load(DatapathConfig(pin_dir=pin_dir))
    node = Node(binary=cni_bin, extra={"bpfPinDir": pin_dir})
    policy_dir = tmp_path_factory.mktemp("policies")
    try:
        (policy_dir / "cluster.yaml").write_text(cluster_manifests())
        # the module runs on the node's host side: the enforcer reads the node's addresses
        with node.host():
            enforcer = Enforcer(
                str(node.state_dir), [str(policy_dir)], dp, EndpointDirectory(str(node.state_dir))
            )
            enforcer.sync()  # identities published before the pods exist: in place for their first packet
            lab = Lab(node, dp, enforcer, policy_dir)
            for name, (ns, _) in PODS.items():
                lab.pods[name] = node.add_pod(name, namespace=ns)
            with probe.servers(lab.pods.values(), [80, 81]):
                yield lab
    finally:
        node.cleanup()
        dp.close()
        unpin_all(pin_dir)


def test_each_pod_gets_its_label_identity_at_add(lab: Lab):
    idents = lab.dp.endpoint_identities()
    by_pod = {name: idents[pod.ip()] for name, pod in lab.pods.items()}
    assert all(i >= abi.Identity.FIRST_LABEL for i in by_pod.values()), by_pod
    assert len(set(by_pod.values())) == len(by_pod)  # labels or named ports differ for every pod


def test_no_policy_allows_everything(lab: Lab):
    lab.apply()
    assert all(lab.check().values())


def test_default_deny_ingress_in_one_namespace(lab: Lab):
    lab.apply(netpol("deny-all", "y", "  podSelector: {}\n  policyTypes: [Ingress]"))
    r = lab.check()
    assert not r[("xa", "ya", "TCP", 80)] and not r[("yb", "ya", "UDP", 80)]
    assert r[("ya", "xa", "TCP", 80)], "egress from y is not isolated"


def test_denials_are_counted_for_the_isolating_policy(lab: Lab):
    """lumen_policy_counts names a denied side by the policy whose default deny it is, not by "none"."""
    lab.apply(netpol("deny-all", "y", "  podSelector: {}\n  policyTypes: [Ingress]"))
    before = lab.dp.policy_decisions()
    assert not lab.check()[("xa", "ya", "TCP", 80)]
    ids = {name: pid for pid, name in lab.enforcer.policy_names.items()}
    key = (ids["y/deny-all"], int(abi.Verdict.DROPPED), int(abi.Direction.INGRESS), True)
    assert lab.dp.policy_decisions().get(key, 0) > before.get(key, 0)
    assert not any(pid == abi.POLICY_DENIED_ID for pid, *_ in lab.dp.policy_decisions())


def test_allow_same_namespace_only(lab: Lab):
    pols = [
        netpol("same-ns", ns, "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}")
        for ns in NAMESPACES
    ]
    lab.apply(*pols)
    r = lab.check()
    assert r[("xa", "xb", "TCP", 81)] and not r[("ya", "xb", "TCP", 81)]


def test_allow_from_namespace_by_label_on_one_port(lab: Lab):
    lab.apply(
        netpol(
            "from-red",
            "y",
            "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: red}}\n"
            "    ports: [{protocol: TCP, port: 80}]",
        )
    )
    r = lab.check()
    assert r[("xa", "ya", "TCP", 80)] and not r[("xa", "ya", "TCP", 81)] and not r[("za", "ya", "TCP", 80)]


def test_ip_block_with_except(lab: Lab):
    xa = lab.pods["xa"].ip()
    lab.apply(
        netpol(
            "from-subnet",
            "z",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n"
            f"    - ipBlock: {{cidr: {lab.node.subnet4}, except: [{xa}/32]}}",
        )
    )
    r = lab.check()
    assert not r[("xa", "za", "TCP", 80)] and r[("xb", "za", "TCP", 80)] and r[("xa", "zb", "TCP", 80)]


def test_port_range_and_named_port(lab: Lab):
    lab.apply(
        netpol(
            "range",
            "x",
            "  podSelector: {}\n  ingress:\n  - ports: [{protocol: TCP, port: 79, endPort: 80}]",
        ),
        netpol("named", "y", "  podSelector: {}\n  ingress:\n  - ports: [{protocol: TCP, port: alt}]"),
    )
    r = lab.check()
    assert r[("za", "xa", "TCP", 80)] and not r[("za", "xa", "TCP", 81)] and not r[("za", "xa", "UDP", 80)]
    # `alt` is 81 on the b pods only; ya declares no such port
    assert r[("za", "yb", "TCP", 81)] and not r[("za", "ya", "TCP", 81)] and not r[("za", "yb", "TCP", 80)]


def test_egress_only(lab: Lab):
    lab.apply(
        netpol(
            "to-b-udp",
            "x",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n"
            "    - namespaceSelector: {}\n      podSelector: {matchLabels: {pod: b}}\n"
            "    ports: [{protocol: UDP, port: 80}]",
        )
    )
    r = lab.check()
    assert r[("xa", "yb", "UDP", 80)] and not r[("xa", "yb", "TCP", 80)] and not r[("xa", "ya", "UDP", 80)]
    assert r[("ya", "xa", "TCP", 80)], "x's ingress is not isolated: answers to y go out as replies"


def test_both_directions_and_policies_adding_up(lab: Lab):
    lab.apply(
        netpol("lockdown", "y", "  podSelector: {}\n  policyTypes: [Ingress, Egress]"),
        netpol(
            "from-z",
            "y",
            "  podSelector: {}\n  ingress:\n  - from:\n"
            "    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}",
        ),
        netpol(
            "to-x-b",
            "y",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n"
            "    - namespaceSelector: {matchLabels: {team: red}}\n      podSelector: {matchLabels: {pod: b}}",
        ),
    )
    r = lab.check()
    assert r[("za", "ya", "TCP", 81)] and not r[("xa", "ya", "TCP", 80)]
    assert r[("ya", "xb", "UDP", 80)] and not r[("yb", "xb", "UDP", 80)] and not r[("ya", "xa", "TCP", 80)]


def test_audit_mode_forwards_and_says_so(lab: Lab):
    lab.apply(netpol("deny-all", "y", "  podSelector: {}\n  policyTypes: [Ingress]"), audit="y")
    started = time.monotonic_ns()
    result = probe.matrix(lab.pods, CASES)
    assert all(result.values()), "audit mode must not drop"
    verdicts = lab.flow_verdicts(started)
    assert verdicts[(lab.pods["xa"].ip(), lab.pods["ya"].ip(), "TCP", 80)] == {"AUDIT"}
    assert verdicts[(lab.pods["ya"].ip(), lab.pods["xa"].ip(), "TCP", 80)] == {"FORWARDED"}
    assert lab.dp.stat(abi.Stat.POLICY_AUDIT) > 0


def test_policy_change_applies_to_a_running_connection(lab: Lab):
    lab.apply()
    client = subprocess.Popen(
        ["ip", "netns", "exec", lab.pods["xa"].ns, probe.PY, "-c", LONG_CLIENT, lab.pods["ya"].ip(), "80"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None

    def echo(timeout: float) -> str:
        client.stdin.write(f"{timeout}\n")
        client.stdin.flush()
        return client.stdout.readline().strip()

    try:
        assert echo(2) == "ok"
        lab.apply(netpol("deny-all", "y", "  podSelector: {}\n  policyTypes: [Ingress]"))
        assert echo(1.5) == "blocked", "the established connection must be cut by the new policy"
        lab.apply()
        assert echo(10) == "ok", "and come back when the policy goes"
    finally:
        client.kill()
        client.wait()


LONG_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
for line in sys.stdin:
    s.settimeout(float(line))
    s.sendall(b"p")
    try:
        print("ok" if s.recv(64) else "closed", flush=True)
    except socket.timeout:
        print("blocked", flush=True)
"""


def test_metrics_carry_policy_verdicts(lab: Lab):
    from prometheus_client import CollectorRegistry

    from exporter.flows import FlowStore
    from exporter.mapsource import DatapathSource
    from exporter.metrics import AgentHealth, LumenCollector

    lab.apply(
        netpol("deny-all", "y", "  podSelector: {}\n  policyTypes: [Ingress]"),
        netpol("web", "y", "  podSelector: {}\n  ingress:\n  - ports: [{port: 80}]"),
    )
    lab.check()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(
        LumenCollector(
            DatapathSource(lab.dp),
            lab.enforcer.directory,
            AgentHealth(),
            FlowStore(8),
            lab.enforcer.policy_names,
        )
    )
    name = "lumen_policy_verdicts_total"
    side = {"direction": "ingress"}
    allowed = reg.get_sample_value(name, {**side, "verdict": "FORWARDED", "policy": "y/web", "match": "rule"})
    # a denial is named by a policy isolating the pod (its default deny), never "none"
    denied = sum(
        reg.get_sample_value(name, {**side, "verdict": "DROPPED", "policy": p, "match": "default-deny"}) or 0
        for p in ("y/deny-all", "y/web")
    )
    dropped = reg.get_sample_value("lumen_drop_total", {"reason": "policy_denied", "protocol": "TCP"})
    assert allowed and allowed > 0 and denied and denied > 0 and dropped and dropped > 0


def test_an_invalid_manifest_leaves_the_policies_in_force(lab: Lab):
    gen = lab.apply(netpol("deny-all", "y", "  podSelector: {}\n  policyTypes: [Ingress]"))
    (lab.policy_dir / "zz-broken.yaml").write_text(
        netpol(
            "bad", "y", "  podSelector: {}\n  ingress:\n  - ports: [{protocol: TCP, port: 80, endPort: 70}]"
        )
    )
    try:
        assert not lab.enforcer.sync()
        assert "endPort" in lab.enforcer.status.error and "zz-broken.yaml" in lab.enforcer.status.error
        assert lab.enforcer.status.generation == gen
        assert not probe.matrix({k: lab.pods[k] for k in ("xa", "ya")}, [("TCP", 80)])[
            ("xa", "ya", "TCP", 80)
        ]
    finally:
        (lab.policy_dir / "zz-broken.yaml").unlink()


# This kernel has no SCTP module, so SCTP is spoken over raw IP sockets: the datapath only needs the
# common header's ports, and the receiver reports which destination ports arrived.
SCTP_SEND = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
for port in map(int, sys.argv[2].split(",")):
    for _ in range(3):
        s.sendto(struct.pack("!HHII", 40000, port, 1, 0) + bytes(16), (sys.argv[1], 0))
"""

SCTP_RECV = r"""
import select, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
print("ready", flush=True)
seen, end = set(), time.time() + float(sys.argv[1])
while time.time() < end:
    if select.select([s], [], [], 0.1)[0]:
        data = s.recv(2048)
        ihl = (data[0] & 15) * 4
        seen.add(struct.unpack("!H", data[ihl + 2 : ihl + 4])[0])
print(",".join(map(str, sorted(seen))), flush=True)
"""


def test_sctp_ports(lab: Lab):
    lab.apply(
        netpol(
            "sctp-9",
            "z",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: SCTP, port: 9}]",
        )
    )
    engine = lab.enforcer.engine
    assert engine.decide(engine.connection("x/xa", "z/za", "SCTP", 9)).allowed
    assert not engine.decide(engine.connection("x/xa", "z/za", "SCTP", 10)).allowed
    started = time.monotonic_ns()
    za, xa = lab.pods["za"], lab.pods["xa"]
    recv = subprocess.Popen(
        ["ip", "netns", "exec", za.ns, probe.PY, "-c", SCTP_RECV, "2"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        subprocess.run(
            ["ip", "netns", "exec", xa.ns, probe.PY, "-c", SCTP_SEND, za.ip(), "9,10"], check=True, timeout=30
        )
        out, _ = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    assert out.strip() == "9", f"ports that arrived: {out.strip()!r}"
    verdicts = {
        k[4]: abi.Verdict(v.verdict).name
        for k, v in t.flows(lab.dp).items()
        if k[:3] == (xa.ip(), za.ip(), 132) and v.last_seen_ns >= started
    }
    assert verdicts == {9: "FORWARDED", 10: "DROPPED"}


def test_isolated_pods_keep_ipv6_neighbour_discovery(lab: Lab):
    """Policy governs IP traffic between endpoints; NDP (to multicast, from link-local) must still pass."""
    lab.apply(
        netpol(
            "same-ns-both-ways",
            "y",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"
            "  ingress: [{from: [{podSelector: {}}]}]\n  egress: [{to: [{podSelector: {}}]}]",
        )
    )
    pair = {k: lab.pods[k] for k in ("ya", "yb")}
    for pod in pair.values():
        subprocess.run(["ip", "netns", "exec", pod.ns, "ip", "-6", "neigh", "flush", "all"], check=True)
    result = probe.matrix(pair, [("TCP", 80)], version=6)
    assert all(result.values()), result
