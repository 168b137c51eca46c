"""The agent end to end on a real kernel: `lumen agent` as a process, pods wired by the plugin, known
traffic. /metrics equals the traffic sent, /api/flows names the pods, the SSE stream delivers a new flow,
OTLP spans reach a receiver started here, counters survive an agent restart, SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from bpf.loader import unpin_all
from exporter.sse import iter_sse
from tests.cni_harness import REPO, Node, Pod
from tests.privileged import dp_tools as t

pytestmark = [pytest.mark.e2e, pytest.mark.bpf, pytest.mark.netns]

ETH, IP4, UDP_HDR = 14, 20, 8


class Spans:
    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()

    def add(self, req: ExportTraceServiceRequest) -> None:
        for rs in req.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    a = {}
                    for kv in span.attributes:
                        a[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
                    with self.lock:
                        self.spans.append(
                            {
                                "resource": resource,
                                "attrs": a,
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                            }
                        )


@dataclass
class Agent:
    """`lumen agent` as a child process."""

    state_dir: str
    pin_dir: str
    workdir: Path
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "agent.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        argv = [sys.executable, "-m", "exporter.cli", "agent", "--state-dir", self.state_dir, "--pin-dir",
                self.pin_dir, "--port", str(self.port), "--node", "e2e-node", "--otel", "--idle-timeout", "3",
                "--report-interval", "1", *self.args]  # fmt: skip
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"agent exited:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"agent not ready:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
            return json.load(r)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }


def pod_metric(m: dict, name: str, pod: Pod, namespace: str) -> float:
    return m.get((name, (("namespace", namespace), ("pod", pod.name))), 0.0)


@dataclass
class Env:
    node: Node
    agent: Agent
    spans: Spans
    a: Pod
    b: Pod


@contextmanager
def otlp_receiver(spans: Spans) -> Iterator[str]:
    """An OTLP/HTTP receiver collecting into `spans`, on this thread's loopback; yields its endpoint."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            req = ExportTraceServiceRequest()
            req.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
            spans.add(req)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{receiver.server_address[1]}"
    finally:
        receiver.shutdown()
        receiver.server_close()


@contextmanager
def agent_with_pods(
    workdir: Path,
    pods: list[tuple[str, str]],
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    spans: Spans | None = None,
) -> Iterator[tuple[Node, Agent, list[Pod]]]:
    """`lumen agent` on its own pin dir, then pods (name, namespace) wired by the plugin, quieted; all of
    it removed afterwards. The caller's block runs on the node's host side (`Node.host`), where the
    agent runs and listens; with `spans`, the agent exports its spans to a receiver there."""
    from tests.cni_harness import install_plugin

    pin_dir = f"/sys/fs/bpf/lt_{secrets.token_hex(4)}"
    node = Node(binary=install_plugin(workdir / "bin"), ipv6=False, extra={"bpfPinDir": pin_dir})
    try:
        with node.host(), ExitStack() as stack:
            agent_env = dict(env or os.environ)
            if spans is not None:
                agent_env.update(
                    OTEL_EXPORTER_OTLP_ENDPOINT=stack.enter_context(otlp_receiver(spans)),
                    OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                    OTEL_BSP_SCHEDULE_DELAY="200",
                )
            agent = Agent(str(node.state_dir), pin_dir, workdir, agent_env, args=list(args))
            stack.callback(agent.kill)  # before the receiver closes and the namespace goes
            agent.start()
            added = [node.add_pod(name, namespace=ns) for name, ns in pods]
            for pod in added:
                t.quiet(pod)
            yield node, agent, added
    finally:
        node.cleanup()
        unpin_all(pin_dir)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("agent-e2e")
    spans = Spans()
    pods = [("alpha", "shop"), ("beta", "shop")]
    with agent_with_pods(workdir, pods, spans=spans) as (node, agent, (a, b)):
        yield Env(node, agent, spans, a, b)


def test_pods_are_attached_and_status_shows_them(env: Env):
    status = env.agent.get("/api/status")
    assert status["ready"] and status["node"] == "e2e-node"
    pods = {(e["namespace"], e["pod"]): e for e in status["endpoints"]}
    assert pods[("shop", "alpha")]["attached"] and pods[("shop", "beta")]["attached"]
    proc = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "status", "--server", env.agent.url],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Agent:       ready" in proc.stdout and "shop/alpha" in proc.stdout and "attached" in proc.stdout


def test_metrics_equal_the_traffic_sent(env: Env):
    before = env.agent.metrics()
    count, size = 300, 400
    assert t.udp(env.a, env.b, 4, count, size, port=5101) == count
    frame = ETH + IP4 + UDP_HDR + size
    after = env.agent.metrics()
    for name, pod, want in [
        ("lumen_pod_tx_packets_total", env.a, count),
        ("lumen_pod_tx_bytes_total", env.a, count * frame),
        ("lumen_pod_rx_packets_total", env.b, count),
        ("lumen_pod_rx_bytes_total", env.b, count * frame),
        ("lumen_source_packets_total", env.a, count),
        ("lumen_source_bytes_total", env.a, count * frame),
    ]:
        got = pod_metric(after, name, pod, "shop") - pod_metric(before, name, pod, "shop")
        assert got == want, name
    flows = after[("lumen_flows_processed_total", (("direction", "egress"), ("protocol", "UDP"),
                                                   ("verdict", "FORWARDED")))]  # fmt: skip
    assert flows >= 1
    assert after[("lumen_lost_events_total", ())] == 0
    assert after[("lumen_attached_endpoints", ())] == 2


def test_api_flows_show_the_flow_with_pod_names(env: Env):
    assert t.udp(env.a, env.b, 4, 50, 100, port=5102) == 50

    def found() -> list[dict]:
        return env.agent.get("/api/flows?from_pod=shop/alpha&to_port=5102&protocol=udp")["flows"]

    assert t.wait_for(lambda: found() and found()[-1]["packets"] >= 1, timeout=5)
    flow = found()[-1]
    assert (flow["source"]["namespace"], flow["source"]["pod"]) == ("shop", "alpha")
    assert (flow["destination"]["namespace"], flow["destination"]["pod"]) == ("shop", "beta")
    assert flow["source"]["ip"] == env.a.ip(4) and flow["destination"]["ip"] == env.b.ip(4)
    assert flow["protocol"] == "UDP" and flow["verdict"] == "FORWARDED" and flow["direction"] == "egress"
    # The CLI reads the same flows through the same filters.
    argv = ["observe", "--server", env.agent.url, "--to-port", "5102", "-o", "jsonl"]
    proc = subprocess.run(
        [sys.executable, "-m", "exporter.cli", *argv], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[-1])["source"]["pod"] == "alpha"


def test_sse_stream_delivers_a_new_flow_and_its_span_is_exported(env: Env):
    port = 5200 + secrets.randbelow(500)
    events: list[dict] = []

    def listen() -> None:
        with httpx.stream("GET", f"{env.agent.url}/api/flows/stream?to_port={port}", timeout=30) as resp:
            for _event, data in iter_sse(resp.iter_lines()):
                events.append(json.loads(data))
                if any(e["type"] == "END" for e in events):
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert t.wait_for(lambda: env.agent.metrics()[("lumen_flow_subscribers", ())] >= 1, timeout=10)
    received, _ = t.tcp(env.a, env.b, 4, 200_000, port=port)
    assert received == 200_000
    listener.join(15)
    types = [e["type"] for e in events]
    assert types[0] == "NEW" and "END" in types
    assert events[0]["source"]["pod"] == "alpha" and events[0]["destination"]["pod"] == "beta"

    def span() -> dict | None:
        with env.spans.lock:
            return next((s for s in env.spans.spans if s["attrs"].get("destination.port") == port), None)

    assert t.wait_for(lambda: span() is not None, timeout=10)
    s = span()
    assert s["resource"]["k8s.node.name"] == "e2e-node"
    a = s["attrs"]
    assert (a["k8s.namespace.name"], a["k8s.pod.name"]) == ("shop", "alpha")
    assert a["network.transport"] == "tcp" and a["source.address"] == env.a.ip(4)
    assert a["lumen.verdict"] == "FORWARDED" and a["lumen.packets"] >= 1
    assert s["start"] <= s["end"] and abs(s["start"] / 1e9 - time.time()) < 60


def test_restart_loses_no_counter_and_sigterm_stops_cleanly(env: Env):
    agent = env.agent
    before = agent.metrics()
    assert agent.stop() == 0
    assert "agent stopped" in agent.log.read_text()
    # Traffic while no agent runs: the pinned maps and attached programs keep counting.
    count, size = 120, 300
    assert t.udp(env.a, env.b, 4, count, size, port=5103) == count
    agent.start()
    after = agent.metrics()
    frame = ETH + IP4 + UDP_HDR + size
    for name, pod, want in [
        ("lumen_pod_tx_packets_total", env.a, count),
        ("lumen_pod_tx_bytes_total", env.a, count * frame),
        ("lumen_pod_rx_packets_total", env.b, count),
    ]:
        assert pod_metric(after, name, pod, "shop") - pod_metric(before, name, pod, "shop") == want, name
    # The idle sweep moves ended flows out of the kernel table; the totals must not move.
    swept = lambda: agent.metrics()[("lumen_agent_swept_flows_total", ())] > 0  # noqa: E731
    assert t.wait_for(swept, timeout=20, step=0.5)
    later = agent.metrics()
    assert pod_metric(later, "lumen_pod_tx_packets_total", env.a, "shop") == pod_metric(
        after, "lumen_pod_tx_packets_total", env.a, "shop"
    )


def test_a_deleted_pod_loses_its_series(env: Env):
    gamma = env.node.add_pod("gamma", namespace="ops")
    t.quiet(gamma)
    before = env.agent.metrics()
    assert t.udp(gamma, env.a, 4, 10, 100, port=5104) == 10
    m = env.agent.metrics()
    assert (
        pod_metric(m, "lumen_pod_tx_packets_total", gamma, "ops")
        - pod_metric(before, "lumen_pod_tx_packets_total", gamma, "ops")
        == 10
    )
    env.node.del_pod("gamma")
    m = env.agent.metrics()
    assert all(dict(labels).get("pod") != "gamma" for _, labels in m)


def test_the_history_keeps_finished_flows_across_a_restart(env: Env):
    agent = env.agent
    since = time.time() - 1
    assert t.udp(env.a, env.b, 4, 20, 100, port=5106) == 20
    window = f"since={since:.6f}&to_port=5106&type=end"

    def kept() -> list[dict]:
        # the END comes from the idle sweep (--idle-timeout 3), then the history sink writes within ~1 s
        status = agent.get("/api/status")["history"]
        return agent.get(f"/api/flows?{window}")["flows"] if status["written"] else []

    assert t.wait_for(lambda: kept() and kept()[0]["source"]["pod"] == "alpha", timeout=30, step=0.5)
    before = agent.get(f"/api/flows?{window}")
    assert before["flows"][0]["destination"]["port"] == 5106
    assert agent.stop() == 0
    agent.start()
    after = agent.get(f"/api/flows?{window}")
    assert after["source"] == "history" and after["flows"] == before["flows"]  # every field
    assert agent.get("/readyz")["detail"] == {"history": "ok"}
    out = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "status", "--server", agent.url],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert "History:     sqlite" in out.stdout and "written" in out.stdout
