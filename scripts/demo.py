"""`make demo`: a local Lumen node. Pods wired by the plugin (exec'd exactly as a runtime does), live
traffic between them, and the node agent with its API and UI when it is available. Ctrl-C cleans up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

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
        self.start_plugin_server(binary)
        agent_url = self.start_agent()

        node = Node(binary=binary, tag="demo", subnet_octet=244, workdir=self.logdir / "node")
        node.workdir.mkdir(parents=True, exist_ok=True)
        node.bridge = self.args.bridge
        node.subnet4, node.gateway4 = "10.244.0.0/24", "10.244.0.1"
        node.subnet6, node.gateway6 = "fd00:244::/64", "fd00:244::1"
        node.extra = {
            "name": "lumen-demo",
            "stateDir": self.args.state_dir,
            "bpfPinDir": self.args.pin_dir,
            "logFile": str(self.logdir / "cni.log"),
        }
        node.env = {"LUMEN_PLUGIN_SOCKET": str(Path(self.args.state_dir) / "plugin.sock")}
        self.node = node
        pods = {name: node.add_pod(name, namespace=ns) for ns, name in PODS}

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
            print("demo: live flows .venv/bin/lumen observe -f")
        print(f"demo: logs in {self.logdir}; Ctrl-C stops and cleans up\n")

        deadline = time.monotonic() + self.args.duration if self.args.duration else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(5)
            print(f"demo: {time.strftime('%H:%M:%S')} {self.traffic_summary()}", flush=True)

    def traffic_summary(self) -> str:
        """Packets the pods sent, from their host veths' rx counters (direct forwarding skips the
        destination's host veth, so what pods receive is the agent's to report: see /metrics)."""
        sent = 0
        for pod in self.node.pods.values() if self.node else []:
            stats = Path(f"/sys/class/net/{pod.result['interfaces'][1]['name']}/statistics")
            try:
                sent += int((stats / "rx_packets").read_text())
            except OSError:
                continue
        return f"{len(PODS)} pods; packets sent by pods so far: {sent}"

    def cleanup(self) -> None:
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
        print("demo: cleaned up pods, bridge, pinned maps and processes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get("DEMO_DURATION", "0")),
        help="seconds to run (0: until Ctrl-C)",
    )
    ap.add_argument("--bridge", default="lumen0")
    # The demo is a node of its own: its state and pinned maps are made fresh and removed on exit.
    ap.add_argument("--state-dir", default="/run/lumen-demo")
    ap.add_argument("--pin-dir", default="/sys/fs/bpf/lumen-demo")
    ap.add_argument("--port", type=int, default=int(os.environ.get("LUMEN_PORT", "9465")))
    ap.add_argument("--workdir", default="/tmp/lumen-demo")
    ap.add_argument("--no-agent", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("demo: needs root (network namespaces, veths, bpf)")
    for stale in (Path(args.workdir) / "node", Path(args.pin_dir), Path(args.state_dir)):
        shutil.rmtree(stale, ignore_errors=True)  # a previous demo killed before its clean-up
    demo = Demo(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        demo.run()
    except KeyboardInterrupt:
        pass
    finally:
        demo.cleanup()


if __name__ == "__main__":
    main()
