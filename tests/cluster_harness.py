"""A Lumen cluster on one machine, for the multi-node tests, `make demo` and bench/cluster.

    root namespace        (nothing added: no address, route or rule; only processes and a bpffs mount)
    <p>u  underlay        a bridge <p>ul joining every node's uplink, and the "internet"
    <p>i  internet        one address on the underlay, no route to any pod: it answers only what is
                          masqueraded to a node's address
    <p>n1..nN  nodes      uplink <p>up (on the underlay, address .N), Lumen bridge <p>bN, pod CIDRs
                          10.<o>.N.0/24 and fd00:<o>:N::/64, own plugin config/state/pin/IPAM dirs and
                          its own `lumen agent` (run with `ip netns exec`)
    pods                  network namespaces wired by the plugin run inside their node's namespace

Every name starts with the cluster's prefix (caller's, plus random hex). `ip netns exec` mounts a fresh
/sys, which hides /sys/fs/bpf: the nodes' pin dirs live on a bpffs instance mounted in the cluster's work
dir instead. The agents learn the nodes (and the pods on other nodes) from `Node` and `Pod` manifests in
one directory they all watch, as agents outside Kubernetes do (docs/scale-out.md).

One way the simulation differs from separate hosts: an skb keeps its `tc_index` across namespaces, so
the mark a source node's program leaves (bpf/lumen.c, naming the source veth's ifindex) still rides the
packet when it reaches the destination node, where it is trusted only if it names the device the
packet came in on there (the uplink, ifindex 2, or the VXLAN device, made before any pod's veth). Agents
therefore start before pods here, as they do on a node; a real NIC never delivers a tc_index.

The test process stays in the root namespace; it talks to agents (and the relay) inside namespaces with
sockets opened there (`ns_socket`), and `PortForward` exposes one of them on the root's loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugin.netlink import in_netns
from tests.cni_harness import REPO, Invocation, install_plugin, invoke, netns_add, netns_del

AGENT_PORT = 9470
RELAY_PORT = 9466
UNDERLAY_MTU = 1500


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def nsx(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


# -- sockets inside a namespace ----------------------------------------------------------------------


def ns_socket(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside network namespace `ns`: it stays there, while this thread enters the
    namespace only for the socket(2) call (plugin.netlink.in_netns, the repository's one setns user)."""
    with in_netns(f"/run/netns/{ns}"):
        return socket.socket(family, kind)


class _NsConnection(http.client.HTTPConnection):
    def __init__(self, ns: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.ns = ns

    def connect(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = ns_socket(self.ns, family)
        self.sock.settimeout(self.timeout)
        self.sock.connect((self.host, self.port))


def ns_http(
    ns: str, host: str, port: int, path: str, token: str | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """GET inside a namespace: (status, JSON body or text)."""
    conn = _NsConnection(ns, host, port, timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        body = resp.read().decode()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body
    finally:
        conn.close()


class PortForward:
    """127.0.0.1:<port> in the root namespace -> host:port inside `ns`, like `kubectl port-forward`."""

    def __init__(self, ns: str, host: str, port: int, listen_port: int = 0) -> None:
        self.ns, self.host, self.port = ns, host, port
        self.server = socket.create_server(("127.0.0.1", listen_port))
        self.listen_port = self.server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="port-forward").start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = ns_socket(self.ns, socket.AF_INET6 if ":" in self.host else socket.AF_INET)
            upstream.connect((self.host, self.port))
        except OSError:
            client.close()
            return

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    b.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        t.start()
        pump(client, upstream)
        t.join(timeout=30)
        client.close()
        upstream.close()

    def close(self) -> None:
        self._stop.set()
        self.server.close()


# -- the cluster --------------------------------------------------------------------------------------


@dataclass
class ClusterPod:
    name: str
    namespace: str
    node: SimNode
    ns: str  # network namespace
    container_id: str
    result: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    #: the Pod manifest's containers (named ports for policies)
    containers: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "main"}])

    @property
    def ips(self) -> list[str]:
        return [ip["address"].split("/")[0] for ip in self.result.get("ips", [])]

    def ip(self, version: int = 4) -> str:
        return next(a for a in self.ips if (":" in a) == (version == 6))

    @property
    def host_veth(self) -> str:
        return str(self.result["interfaces"][1]["name"])  # [0] is the bridge

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def exec(self, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def ping(self, address: str, count: int = 1) -> bool:
        return self.exec("ping", "-c", str(count), "-W", "2", "-i", "0.2", address).returncode == 0


@dataclass
class SimNode:
    cluster: Cluster
    index: int
    name: str
    ns: str
    address4: str
    address6: str
    pod_cidr4: str
    pod_cidr6: str
    bridge: str
    workdir: Path
    agent: subprocess.Popen[bytes] | None = None
    pods: dict[str, ClusterPod] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def pin_dir(self) -> Path:
        return self.cluster.bpffs / self.name

    @property
    def agent_log(self) -> Path:
        return self.workdir / "agent.log"

    def conf(self) -> dict[str, Any]:
        c = self.cluster
        gw4 = self.pod_cidr4.replace(".0/24", ".1")
        gw6 = self.pod_cidr6.replace("::/64", "::1")
        return {
            "cniVersion": "1.1.0",
            "name": f"{c.prefix}net",
            "type": "lumen",
            "bridge": self.bridge,
            "mtu": c.pod_mtu,
            "isGateway": True,
            "stateDir": str(self.state_dir),
            "logFile": str(self.workdir / "cni.log"),
            "bpfPinDir": str(self.pin_dir),
            "ipam": {
                "type": "lumen",
                "dataDir": str(self.workdir / "ipam"),
                "ranges": [
                    [{"subnet": self.pod_cidr4, "gateway": gw4}],
                    [{"subnet": self.pod_cidr6, "gateway": gw6}],
                ],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            },
        }

    def invoke(self, command: str, **kw: Any) -> Invocation:
        return invoke(self.cluster.binary, command, self.conf(), wrap=["ip", "netns", "exec", self.ns], **kw)

    def add_pod(
        self,
        name: str,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        containers: list[dict[str, Any]] | None = None,
    ) -> ClusterPod:
        c = self.cluster
        ns = f"{c.prefix}p{next(c._pod_seq)}"
        netns = netns_add(ns)
        cid = secrets.token_hex(32)
        uid = secrets.token_hex(8)
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}"
        res = self.invoke("ADD", container_id=cid, netns=netns, cni_args=args)
        if not res.ok or res.out is None:
            netns_del(ns)
            raise RuntimeError(f"ADD {name} on {self.name} failed: {res.out} {res.stderr}")
        pod = ClusterPod(name, namespace, self, ns, cid, res.out, dict(labels or {}))
        if containers:
            pod.containers = containers
        self.pods[pod.key] = pod
        c.write_pod_manifests()
        return pod

    def del_pod(self, key: str) -> None:
        pod = self.pods.pop(key)
        self.invoke("DEL", container_id=pod.container_id, netns=f"/run/netns/{pod.ns}")
        netns_del(pod.ns)
        self.cluster.write_pod_manifests()

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return nsx(self.ns, *argv, check=check)

    # -- agent ------------------------------------------------------------------------------------

    def start_agent(self, *extra: str, wait: float = 90) -> None:
        self.spawn_agent(*extra)
        self.wait_ready(wait)

    def spawn_agent(self, *extra: str) -> None:
        c = self.cluster
        argv = [
            "ip", "netns", "exec", self.ns,
            str(REPO / ".venv" / "bin" / "python"), "-m", "exporter.cli", "agent",
            "--node", self.name,
            "--state-dir", str(self.state_dir),
            "--pin-dir", str(self.pin_dir),
            "--host", "0.0.0.0",
            "--port", str(c.agent_port),
            "--token", c.token,
            "--policy-dir", str(c.manifests),
            "--routing-mode", c.mode,
            "--vxlan-device", f"{c.prefix}vx",
            *c.agent_args,
            *extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = open(self.agent_log, "ab")  # noqa: SIM115 - lives as long as the process
        self.agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        log.close()

    def wait_ready(self, wait: float = 90) -> None:
        assert self.agent is not None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise RuntimeError(f"agent on {self.name} exited: {self.agent_log.read_text()[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = self.api("/readyz", timeout=1)
                if status == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"agent on {self.name} not ready: {self.agent_log.read_text()[-3000:]}")

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.agent = None

    def api(self, path: str, timeout: float = 10) -> tuple[int, Any]:
        return ns_http(self.ns, self.address4, self.cluster.agent_port, path, self.cluster.token, timeout)

    @property
    def url(self) -> str:
        return f"http://{self.address4}:{self.cluster.agent_port}"

    def routes(self) -> list[str]:
        """Lumen's routes in this node (`ip route show proto 176`, both families), one line each."""
        out = []
        for fam in ("-4", "-6"):
            shown = self.exec("ip", fam, "route", "show", "proto", "176").stdout
            out += [line.strip() for line in shown.splitlines() if line.strip()]
        return sorted(out)


class Cluster:
    def __init__(
        self,
        nodes: int = 3,
        mode: str = "direct",
        prefix: str = "cl",
        octet: int | None = None,
        workdir: Path | None = None,
        agent_args: tuple[str, ...] = (),
        binary: Path | None = None,
        unique_prefix: bool = False,
    ) -> None:
        # a caller that made its prefix unique itself (the demo) keeps it; else random hex makes it so
        self.prefix = prefix if unique_prefix else prefix + secrets.token_hex(3)
        self.mode = mode
        self.octet = octet if octet is not None else 100 + secrets.randbelow(150)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.manifests = self.workdir / "manifests"
        self.bpffs = self.workdir / "bpf"
        self.token = secrets.token_hex(16)
        self.agent_port = AGENT_PORT
        self.agent_args = agent_args
        self.pod_mtu = UNDERLAY_MTU - 50 if mode == "vxlan" else UNDERLAY_MTU
        self.underlay = f"{self.prefix}u"
        self.internet = f"{self.prefix}i"
        self.internet4 = f"192.168.{self.octet}.200"
        self.internet6 = f"fd01:{self.octet}::c8"
        self.underlay4 = f"192.168.{self.octet}.254"
        self.relay_port = RELAY_PORT
        self.relay: subprocess.Popen[bytes] | None = None
        self.nodes: list[SimNode] = []
        self._pod_seq = iter(range(1, 10**6))
        self._binary = binary
        self._n = nodes
        self._mounted = False
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- build and tear down ---------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.build()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def build(self) -> None:
        self.binary = self._binary or install_plugin(self.workdir / "cni-bin")
        self.manifests.mkdir(exist_ok=True)
        self.bpffs.mkdir(exist_ok=True)
        sh("mount", "-t", "bpf", "bpf", str(self.bpffs))
        self._mounted = True
        netns_add(self.underlay)
        nsx(self.underlay, "ip", "link", "set", "lo", "up")
        br = f"{self.prefix}ul"
        nsx(self.underlay, "ip", "link", "add", br, "type", "bridge")
        nsx(self.underlay, "ip", "link", "set", br, "up")
        # the underlay's own address: where the relay (a cluster Deployment in real life) listens
        nsx(self.underlay, "ip", "addr", "add", f"{self.underlay4}/24", "dev", br)
        self._attach(self.internet, "i", self.internet4, self.internet6)
        for i in range(1, self._n + 1):
            self.add_node(i)
        self.write_node_manifests()

    def _attach(self, ns: str, tag: str, addr4: str, addr6: str) -> None:
        """A namespace with an uplink on the underlay bridge (the link is made directly in both)."""
        netns_add(ns)
        nsx(ns, "ip", "link", "set", "lo", "up")
        up, peer = f"{self.prefix}up", f"{self.prefix}{tag}"
        sh("ip", "link", "add", up, "netns", ns, "type", "veth", "peer", "name", peer, "netns", self.underlay)
        nsx(self.underlay, "ip", "link", "set", peer, "master", f"{self.prefix}ul", "up")
        nsx(ns, "ip", "addr", "add", f"{addr4}/24", "dev", up)
        nsx(ns, "ip", "addr", "add", f"{addr6}/64", "dev", up, "nodad")
        nsx(ns, "ip", "link", "set", up, "mtu", str(UNDERLAY_MTU), "up")

    def add_node(self, i: int) -> SimNode:
        name = f"{self.prefix}-n{i}"
        node = SimNode(
            self,
            i,
            name,
            f"{self.prefix}n{i}",
            f"192.168.{self.octet}.{i}",
            f"fd01:{self.octet}::{i}",
            f"10.{self.octet}.{i}.0/24",
            f"fd00:{self.octet}:{i}::/64",
            f"{self.prefix}b{i}",
            self.workdir / name,
        )
        node.workdir.mkdir(parents=True, exist_ok=True)
        self._attach(node.ns, f"n{i}", node.address4, node.address6)
        self.nodes.append(node)
        return node

    def node_manifest(self, node: SimNode) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name},
            "spec": {"podCIDRs": [node.pod_cidr4, node.pod_cidr6]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": node.address4},
                    {"type": "InternalIP", "address": node.address6},
                    {"type": "Hostname", "address": node.name},
                ]
            },
        }

    def write_node_manifests(self, nodes: list[SimNode] | None = None) -> None:
        docs = [self.node_manifest(n) for n in (self.nodes if nodes is None else nodes)]
        _write_yaml(self.manifests / "00-nodes.yaml", docs)

    def write_pod_manifests(self) -> None:
        docs = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
                "spec": {"nodeName": p.node.name, "containers": p.containers},
                "status": {"podIPs": [{"ip": ip} for ip in p.ips]},
            }
            for n in self.nodes
            for p in n.pods.values()
        ]
        _write_yaml(self.manifests / "01-pods.yaml", docs)

    def write_manifest(self, filename: str, docs: list[dict[str, Any]]) -> Path:
        path = self.manifests / filename
        _write_yaml(path, docs)
        return path

    def start_agents(self, *extra: str) -> None:
        for n in self.nodes:  # compiles run side by side
            n.spawn_agent(*extra)
        for n in self.nodes:
            n.wait_ready()

    # -- relay --------------------------------------------------------------------------------------

    def start_relay(self, *extra: str, wait: float = 30) -> None:
        """`lumen relay` on the underlay, asking every node's agent (with the agents' token)."""
        argv = [
            "ip", "netns", "exec", self.underlay,
            str(REPO / ".venv" / "bin" / "python"), "-m", "exporter.cli", "relay",
            "--host", self.underlay4,
            "--port", str(self.relay_port),
            "--token", self.token,
            "--agent-token", self.token,
            *[f"--agent={n.name}={n.url}" for n in self.nodes],
            *extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.workdir / "relay.log", "ab") as log:
            self.relay = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        self._procs.append(self.relay)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.relay.poll() is not None:
                raise RuntimeError(f"relay exited: {(self.workdir / 'relay.log').read_text()[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.relay_api("/readyz", timeout=1)[0] in (200, 503):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"relay not up: {(self.workdir / 'relay.log').read_text()[-3000:]}")

    def relay_api(self, path: str, timeout: float = 10) -> tuple[int, Any]:
        return ns_http(self.underlay, self.underlay4, self.relay_port, path, self.token, timeout)

    @property
    def pods(self) -> list[ClusterPod]:
        return [p for n in self.nodes for p in n.pods.values()]

    def run(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """A long-running process inside a namespace (killed by PID at clean-up)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT)
        self._procs.append(proc)
        return proc

    def cleanup(self) -> None:
        # The relay and the traffic first: an agent's graceful stop waits for the relay's open streams.
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    proc.wait(timeout=10)
        agents = [n.agent for n in self.nodes if n.agent is not None and n.agent.poll() is None]
        for agent in agents:  # every agent told at once, so their stops overlap
            agent.terminate()
        for agent in agents:
            try:
                agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        for n in self.nodes:
            n.agent = None
        for n in self.nodes:
            for p in n.pods.values():
                netns_del(p.ns)
            netns_del(n.ns)
        netns_del(self.internet)
        netns_del(self.underlay)
        if self._mounted:
            sh("umount", str(self.bpffs), check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _write_yaml(path: Path, docs: list[dict[str, Any]]) -> None:
    """Atomically (the agents watch the directory): JSON is YAML."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n---\n".join(json.dumps(d) for d in docs) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def cluster(**kw: Any) -> Iterator[Cluster]:
    with Cluster(**kw) as c:
        yield c
