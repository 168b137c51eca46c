"""`make demo`: a Lumen cluster on this machine. Three simulated nodes (network namespaces on a shared
underlay, tests/cluster_harness.py), each with its own agent; pods spread over them, wired by the plugin
run inside their node; live traffic within and across nodes and to an "internet" address (masqueraded);
a policy that visibly drops a cross-node connection; `lumen relay` serving one UI and API for all nodes.

`--nodes 1` runs the one-node demo instead: one node namespace standing in for this machine (its bridge,
pods and agent), the agent's port forwarded to this machine's loopback. Neither demo changes the
machine's own network namespace.
Ctrl-C, SIGINT (also when started in the background) and SIGTERM stop it and clean up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.demo_plan import CLAIMS_DIR, PlanError, claim_octet, free_port, make_plan, release_octet  # noqa: E402
from tests.cluster_harness import Cluster, ClusterPod, PortForward  # noqa: E402
from tests.cni_harness import Node, Pod, install_plugin  # noqa: E402

SYS_PY = "/usr/bin/python3"
TRAFFIC = str(REPO / "scripts" / "traffic.py")
POLICIES = REPO / "deploy" / "policies" / "demo"

# (k8s namespace, pod name)
PODS = [("shop", "frontend"), ("shop", "cart"), ("shop", "catalog"), ("ops", "monitor"), ("ops", "probe")]


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: list[subprocess.Popen[bytes]] = []
        self.node: Node | None = None
        self.forward: PortForward | None = None
        self.logdir = Path(args.workdir)
        self.policy_dir = self.logdir / "policies"

    def spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.logdir / log, "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def in_pod(self, pod: Pod, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        return self.spawn(["ip", "netns", "exec", pod.ns, *argv], log)

    def start_plugin_server(self, binary: Path) -> None:
        """The warm server the plugin hands calls to (the agent runs it on a real node)."""
        support = str(binary.parent / "lumen.d")
        sock = Path(self.args.state_dir) / "plugin.sock"
        code = f"import sys; sys.path.insert(0, {support!r}); from plugin.server import serve; serve({str(sock)!r})"  # noqa: E501
        self.spawn([SYS_PY, "-I", "-c", code], "plugin-server.log")
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"demo: plugin server on {sock} (ADD/DEL skip the interpreter's start-up)")

    def start_agent(self) -> str | None:
        """`lumen agent` on the node (the caller is inside `node.host()`); its URL there."""
        lumen = REPO / ".venv" / "bin" / "lumen"
        if self.args.no_agent or not lumen.exists():
            return None
        probe = subprocess.run([str(lumen), "agent", "--help"], capture_output=True)
        if probe.returncode != 0:
            return None
        # a copy the user may edit while the demo runs; the agent watches it
        self.policy_dir = self.logdir / "policies"
        shutil.rmtree(self.policy_dir, ignore_errors=True)
        shutil.copytree(POLICIES, self.policy_dir)
        self.spawn(
            [
                str(lumen),
                "agent",
                "--state-dir",
                self.args.state_dir,
                "--pin-dir",
                self.args.pin_dir,
                "--port",
                str(self.args.port),
                "--policy-dir",
                str(self.policy_dir),
            ],
            "agent.log",
        )
        url = f"http://127.0.0.1:{self.args.port}"
        deadline = time.monotonic() + 60
        import urllib.request

        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return url
            except OSError:
                time.sleep(0.5)
        print(f"demo: the agent did not become ready; see {self.logdir / 'agent.log'}", file=sys.stderr)
        return None

    def run(self) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        binary = install_plugin(self.logdir / "cni-bin")
        print(f"demo: installed the CNI plugin at {binary}")

        o = self.args.octet  # claimed for this demo: a second demo on this machine takes another
        # the node namespace and pod netns are <prefix><hex>...: this demo's own, like its bridge and dirs
        node = Node(
            binary=binary, tag="", subnet_octet=o, workdir=self.logdir / "node", ns_prefix=self.args.prefix
        )
        self.node = node
        node.workdir.mkdir(parents=True, exist_ok=True)
        node.bridge = self.args.bridge
        node.subnet4, node.gateway4 = f"10.{o}.0.0/24", f"10.{o}.0.1"
        node.subnet6, node.gateway6 = f"fd00:{o}::/64", f"fd00:{o}::1"
        node.extra = {
            "name": f"lumen-demo-{self.args.prefix}",
            "stateDir": self.args.state_dir,
            "bpfPinDir": self.args.pin_dir,
            "logFile": str(self.logdir / "cni.log"),
        }
        node.env = {"LUMEN_PLUGIN_SOCKET": str(Path(self.args.state_dir) / "plugin.sock")}
        # the plugin server and the agent run on the node: the host side of every pod is made there
        with node.host():
            self.start_plugin_server(binary)
            agent_url = self.start_agent()
        pods = {name: node.add_pod(name, namespace=ns) for ns, name in PODS}
        if agent_url:
            # the UI on this machine's loopback, forwarded to the agent's port on the node's
            self.forward = PortForward(node.host_ns, "127.0.0.1", self.args.port, listen_port=self.args.port)
            agent_url = f"http://127.0.0.1:{self.forward.listen_port}"

        print(f"\n{'NAMESPACE':<10} {'POD':<10} {'IPv4':<14} {'IPv6':<18} HOST VETH")
        for ns, name in PODS:
            p = pods[name]
            print(f"{ns:<10} {name:<10} {p.ip(4):<14} {p.ip(6):<18} {p.result['interfaces'][1]['name']}")

        for p in pods.values():
            self.in_pod(
                p, [SYS_PY, TRAFFIC, "server", "--tcp", "8080", "--tcp", "9090", "--udp", "5353"], "srv.log"
            )
        time.sleep(0.5)
        f, c, k, m, pr = (pods[n] for n in ("frontend", "cart", "catalog", "monitor", "probe"))
        self.in_pod(f, [SYS_PY, TRAFFIC, "client", f"{c.ip(4)}:8080:tcp", f"{k.ip(4)}:8080:tcp"], "cli.log")
        self.in_pod(c, [SYS_PY, TRAFFIC, "client", f"{k.ip(4)}:5353:udp", f"{k.ip(6)}:8080:tcp"], "cli.log")
        self.in_pod(pr, [SYS_PY, TRAFFIC, "client", "--interval", "2", f"{f.ip(4)}:9090:tcp"], "cli.log")
        for target in (f, c, k):
            self.in_pod(m, ["ping", "-q", "-i", "2", target.ip(4)], "ping.log")

        print(
            "\ndemo: traffic: frontend->cart,catalog tcp/8080; cart->catalog udp/5353 + tcp/8080 over IPv6;"
        )
        print("      probe->frontend tcp/9090; monitor pings frontend, cart, catalog")
        if agent_url:
            print(f"demo: agent API  {agent_url}/api/flows   (live: {agent_url}/api/flows/stream)")
            print(f"demo: web UI     {agent_url}/")
            print(f"demo: metrics    {agent_url}/metrics")
            print(f"demo: policies   {self.policy_dir} (watched: edit them live; `lumen policy status`)")
            print("      shop/frontend admits only its namespace: probe->frontend and monitor's pings of")
            print("      frontend are DROPPED (policy_denied): `.venv/bin/lumen observe --verdict dropped`")
            print(f"demo: live flows .venv/bin/lumen observe --server {agent_url} -f")
        print(f"demo: logs in {self.logdir}; Ctrl-C stops and cleans up\n")

        deadline = time.monotonic() + self.args.duration if self.args.duration else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(5)
            print(f"demo: {time.strftime('%H:%M:%S')} {self.traffic_summary()}", flush=True)

    def traffic_summary(self) -> str:
        """Packets the pods sent, from their host veths' rx counters (direct forwarding skips the
        destination's host veth, so what pods receive is the agent's to report: see /metrics)."""
        sent = 0
        if self.node is not None:
            veths = {pod.result["interfaces"][1]["name"] for pod in self.node.pods.values()}
            shown = self.node.exec("ip", "-j", "-s", "link", "show").stdout
            for link in json.loads(shown or "[]"):
                if link.get("ifname") in veths:
                    sent += int(link["stats64"]["rx"]["packets"])
        return f"{len(PODS)} pods; packets sent by pods so far: {sent}"

    def cleanup(self) -> None:
        if self.forward is not None:
            self.forward.close()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self.node is not None:
            self.node.cleanup()
        for path in (self.args.pin_dir, self.args.state_dir):
            shutil.rmtree(path, ignore_errors=True)  # bpffs pins unlink like files
        print("demo: cleaned up pods, the node namespace and its bridge, pinned maps and processes")


class ClusterDemo:
    """The three-node demo: every namespace and link is named `<prefix><hex>...`; only the UI's port is
    opened on this machine's loopback (a port-forward into the underlay, where the relay listens)."""

    # (namespace, pod, node index): cross-node by design
    PLACEMENT = [
        ("shop", "frontend", 1),
        ("shop", "cart", 2),
        ("shop", "catalog", 3),
        ("ops", "monitor", 2),
        ("ops", "probe", 3),
    ]

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cluster: Cluster | None = None
        self.forwards: list[PortForward] = []

    def run(self) -> None:
        args = self.args
        workdir = Path(args.workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        c = self.cluster = Cluster(
            nodes=args.nodes,
            mode=args.mode,
            prefix=args.prefix,
            octet=args.octet,
            workdir=workdir,
            unique_prefix=True,
        )
        c.build()
        print(f"demo: {args.nodes} nodes, {args.mode} routing, underlay 192.168.{c.octet}.0/24, {c.prefix}*")
        pods_doc = _pod_specs()
        c.write_manifest("00-namespaces.yaml", [d for d in _docs() if d.get("kind") == "Namespace"])
        shutil.copy(POLICIES / "10-shop.yaml", c.manifests / "10-shop.yaml")
        if not args.no_agent:
            c.start_agents()
        pods: dict[str, ClusterPod] = {}
        for ns, name, i in self.PLACEMENT:
            node = c.nodes[(i - 1) % len(c.nodes)]
            labels, containers = pods_doc[(ns, name)]
            pods[name] = node.add_pod(name, ns, labels, containers)
        print(f"\n{'NAMESPACE':<10} {'POD':<10} {'NODE':<16} {'IPv4':<14} IPv6")
        for ns, name, _ in self.PLACEMENT:
            p = pods[name]
            print(f"{ns:<10} {name:<10} {p.node.name:<16} {p.ip(4):<14} {p.ip(6)}")
        for n in c.nodes:
            print(f"node {n.name}: {n.address4}, pods {n.pod_cidr4} {n.pod_cidr6}, agent {n.url}")

        logs = workdir
        for p in pods.values():
            c.run(
                p.ns,
                [SYS_PY, TRAFFIC, "server", "--tcp", "8080", "--tcp", "9090", "--udp", "5353"],
                logs / "srv.log",
            )
        c.run(c.internet, [SYS_PY, TRAFFIC, "server", "--tcp", "443"], logs / "internet.log")
        time.sleep(0.5)
        f, k, m, pr = (pods[n] for n in ("frontend", "catalog", "monitor", "probe"))
        cart = pods["cart"]
        run = c.run
        run(
            f.ns,
            [SYS_PY, TRAFFIC, "client", f"{cart.ip(4)}:8080:tcp", f"{k.ip(4)}:8080:tcp"],
            logs / "cli.log",
        )
        run(
            cart.ns,
            [SYS_PY, TRAFFIC, "client", f"{k.ip(4)}:5353:udp", f"{k.ip(6)}:8080:tcp"],
            logs / "cli.log",
        )
        run(pr.ns, [SYS_PY, TRAFFIC, "client", "--interval", "2", f"{f.ip(4)}:9090:tcp"], logs / "cli.log")
        run(k.ns, [SYS_PY, TRAFFIC, "client", "--interval", "3", f"{c.internet4}:443:tcp"], logs / "cli.log")
        for target in (f, cart, k):
            run(m.ns, ["ping", "-q", "-i", "2", target.ip(4)], logs / "ping.log")

        print("\ndemo: traffic: frontend(n1) -> cart(n2), catalog(n3) tcp/8080; cart -> catalog udp/5353 and")
        print("      tcp/8080 over IPv6; catalog -> the internet (masqueraded to its node's address);")
        print("      probe(n3) -> frontend(n1) tcp/9090 and monitor(n2)'s pings of frontend: DROPPED")
        print("      (shop/frontend admits its own namespace only): `lumen observe --verdict dropped`")
        if not args.no_agent:
            url = self.start_ui()
            print(f"demo: web UI     {url}/   (one view of all nodes)")
            print(f"demo: flows      LUMEN_TOKEN={c.token} .venv/bin/lumen observe --server {url} -f")
            print(f"demo: policies   {c.manifests} (watched by every node: edit them live)")
        print(f"demo: logs in {workdir}; Ctrl-C stops and cleans up\n")
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.1, (deadline or 1e18) - time.monotonic())))
            print(f"demo: {time.strftime('%H:%M:%S')} {self.summary()}", flush=True)

    def summary(self) -> str:
        """Recent flows by verdict across the nodes, as the relay sees them."""
        c = self.cluster
        assert c is not None
        text = f"{len(c.pods)} pods on {len(c.nodes)} nodes"
        if c.relay is None:
            return text
        try:
            status, body = c.relay_api("/api/flows?limit=1000", timeout=5)
        except (OSError, http.client.HTTPException):
            return text
        if status != 200:
            return text
        verdicts: dict[str, int] = {}
        for f in body.get("flows", []):
            verdicts[f["verdict"]] = verdicts.get(f["verdict"], 0) + 1
        cross = sum(1 for f in body.get("flows", []) if f.get("paired"))
        shown = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
        return f"{text}; recent flows: {shown}; {cross} paired across nodes"

    def start_ui(self) -> str:
        """The relay on the underlay, forwarded to 127.0.0.1:<port>; without a relay, node 1's agent."""
        c = self.cluster
        assert c is not None
        try:
            c.start_relay()
            target = (c.underlay, c.underlay4, c.relay_port)
        except RuntimeError as e:
            print(f"demo: no relay ({str(e).splitlines()[0]}); the UI shows node 1 only", file=sys.stderr)
            n1 = c.nodes[0]
            target = (n1.ns, n1.address4, c.agent_port)
        fwd = PortForward(*target, listen_port=self.args.port)
        self.forwards.append(fwd)
        return f"http://127.0.0.1:{fwd.listen_port}"

    def cleanup(self) -> None:
        for fwd in self.forwards:
            fwd.close()
        if self.cluster is not None:
            self.cluster.cleanup()
        print("demo: cleaned up nodes, pods, underlay, pinned maps and processes")


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((POLICIES / "00-cluster.yaml").read_text()) if d]


def _pod_specs() -> dict[tuple[str, str], tuple[dict[str, str], list[dict]]]:
    """Labels and containers (named ports) of the demo's pods, as declared in deploy/policies/demo."""
    out = {}
    for d in _docs():
        if d.get("kind") == "Pod":
            meta = d["metadata"]
            out[(meta["namespace"], meta["name"])] = (meta.get("labels") or {}, d["spec"]["containers"])
    return out


def stop_on_signals() -> None:
    """Ctrl-C, SIGINT and SIGTERM all raise KeyboardInterrupt, so `finally` cleans up. SIGINT's handler is
    set explicitly: a background job of a non-interactive shell starts with SIGINT ignored, and Python
    then keeps it ignored."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get("DEMO_DURATION", "0")),
        help="seconds to run (0: until Ctrl-C)",
    )
    ap.add_argument("--nodes", type=int, default=3, help="simulated nodes (1: the one-node demo)")
    ap.add_argument("--mode", choices=["direct", "vxlan"], default="direct", help="routing between nodes")
    # A second demo on this machine gets names, subnets and a port of its own (scripts/demo_plan.py).
    ap.add_argument(
        "--prefix", default="ld", help="name prefix of namespaces, links and directories (random hex follows)"
    )
    ap.add_argument(
        "--octet",
        type=int,
        default=None,
        help="subnets: pods 10.N.<node>.0/24 (one node: 10.N.0.0/24), underlay 192.168.N.0/24 (default: the "
        "first from 244 on that no other running demo holds)",
    )
    ap.add_argument("--bridge", default=None, help="the one-node demo's bridge (default <prefix><hex>br)")
    # The demo is a node of its own: its state and pinned maps are made fresh and removed on exit.
    ap.add_argument("--state-dir", default=None, help="default /run/lumen-demo-<prefix><hex>")
    ap.add_argument("--pin-dir", default=None, help="default /sys/fs/bpf/lumen-demo-<prefix><hex>")
    ap.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("LUMEN_PORT", "9465")),
        help="the UI's port on 127.0.0.1 (taken: any free port; 0: any free port)",
    )
    ap.add_argument("--workdir", default=None, help="logs and state (default /tmp/lumen-demo-<prefix><hex>)")
    ap.add_argument("--no-agent", action="store_true")
    args = ap.parse_args()
    octet_ok = args.octet is None or 1 <= args.octet <= 254
    if not 1 <= args.nodes <= 9 or not octet_ok or not 1 <= len(args.prefix) <= 6:
        ap.error("--nodes is 1..9, --octet 1..254, --prefix 1..6 characters (link names are short)")
    if os.geteuid() != 0:
        sys.exit("demo: needs root (network namespaces, veths, bpf)")
    stop_on_signals()  # before anything is built: a signal from now on cleans up
    try:
        octet = claim_octet(CLAIMS_DIR, args.octet)
    except PlanError as exc:
        ap.error(str(exc))
    try:
        plan = make_plan(
            args.prefix, args.nodes, octet, free_port(args.port), args.workdir, args.bridge, args.state_dir,
            args.pin_dir,
        )  # fmt: skip
        if plan.port != args.port and args.port:
            print(f"demo: port {args.port} is taken (another demo?): the UI uses {plan.port}")
        args.prefix, args.octet, args.port = plan.prefix, plan.octet, plan.port
        args.workdir, args.bridge = str(plan.workdir), plan.bridge
        args.state_dir, args.pin_dir = str(plan.state_dir), str(plan.pin_dir)
        run(args)
    finally:
        release_octet(CLAIMS_DIR, octet)


def run(args: argparse.Namespace) -> None:
    if args.nodes > 1:
        cluster_demo = ClusterDemo(args)
        try:
            cluster_demo.run()
        except KeyboardInterrupt:
            pass
        finally:
            cluster_demo.cleanup()
        return
    for stale in (Path(args.workdir) / "node", Path(args.pin_dir), Path(args.state_dir)):
        shutil.rmtree(stale, ignore_errors=True)  # a previous demo killed before its clean-up
    demo = Demo(args)
    try:
        demo.run()
    except KeyboardInterrupt:
        pass
    finally:
        demo.cleanup()


if __name__ == "__main__":
    main()
