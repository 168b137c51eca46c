"""A real Prometheus in the loop: Debian's prometheus scrapes a running `lumen agent` (started with only
the capabilities the DaemonSet grants) while pods wired by the plugin send traffic; then every dashboard
expression and every alert rule is run through Prometheus's HTTP API, and `promtool check metrics`
lints the agent's /metrics.

The agent enforces two NetworkPolicies (shop's pods admit only their own namespace), so the ops probe's
pings are dropped and every drop and policy-verdict panel has data too. Only what needs an hour of
history (the drop-spike baseline, `offset 5m`) cannot have data in a fresh Prometheus.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cni_harness import Node
from tests.privileged import dp_tools as t
from tests.unit.test_dashboards import dashboard_exprs, rule_exprs

pytestmark = [pytest.mark.e2e, pytest.mark.bpf, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]
LUMEN = REPO / ".venv/bin/lumen"
RULES = REPO / "deploy/prometheus/rules.yaml"
JOB = "lumen-agent"
RELAY_JOB = "lumen-relay"
PINGS = 25
# Data that only a Prometheus running for more than a few minutes has.
NEEDS_HISTORY = re.compile(r"offset 5m|lumen:drops:rate1h_before")
POLICIES = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-namespace, namespace: shop}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body: bytes = r.read()
        return body


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _get(url, timeout=1)
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def daemonset_capabilities() -> list[str]:
    docs = yaml.safe_load_all((REPO / "deploy/kubernetes/daemonset.yaml").read_text())
    ds = next(d for d in docs if d and d["kind"] == "DaemonSet")
    agent = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")
    caps: list[str] = agent["securityContext"]["capabilities"]["add"]
    return caps


@dataclass
class Agent:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> dict[str, Any]:
        qs = urllib.parse.urlencode({"query": expr})
        try:
            body = _get(f"{self.url}/api/v1/query?{qs}")
        except urllib.error.HTTPError as exc:  # 400/422 carry the parser's error
            body = exc.read()
        answer: dict[str, Any] = json.loads(body)
        return answer

    def api(self, path: str) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(_get(f"{self.url}/api/v1/{path}"))
        return answer


@pytest.fixture(scope="module")
def pin_dir() -> Iterator[str]:
    from bpf.loader import unpin_all

    path = f"/sys/fs/bpf/ltprom{secrets.token_hex(3)}"
    try:
        yield path
    finally:
        unpin_all(path)


@pytest.fixture(scope="module")
def node(cni_bin: Path, pin_dir: str) -> Iterator[Node]:
    """The module runs on the node's host side: the agent, the relay and Prometheus run in the node's
    namespace and talk over its loopback."""
    n = Node(binary=cni_bin, extra={"bpfPinDir": pin_dir})
    try:
        with n.host():
            yield n
    finally:
        n.cleanup()


@pytest.fixture(scope="module")
def agent(node: Node, pin_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """`lumen agent` as the DaemonSet runs it: root, with only the listed capabilities in its bounding set."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop capabilities"
    caps = ",".join(f"+{c.lower()}" for c in daemonset_capabilities())
    port = _free_port()
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    argv = [setpriv, f"--bounding-set=-all,{caps}", "--inh-caps=-all", "--no-new-privs", str(LUMEN), "agent"]
    argv += ["--state-dir", str(node.state_dir), "--pin-dir", pin_dir, "--port", str(port)]
    argv += ["--node", f"lt-{node.tag}"]
    policy_dir = tmp_path_factory.mktemp("policies")
    (policy_dir / "shop.yaml").write_text(POLICIES)
    argv += ["--policy-dir", str(policy_dir)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
        yield Agent(port, proc)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def relay(node: Node, agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """`lumen relay` over the agent, scraped as job lumen-relay (the relay's alert rule selects it)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("relay") / "relay.log"
    argv = [
        str(LUMEN),
        "relay",
        "--port",
        str(port),
        "--agent",
        f"lt-{node.tag}=http://127.0.0.1:{agent.port}",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
        yield Agent(port, proc)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def traffic(node: Node, agent: Agent) -> dict[str, str]:
    """Three pods in two namespaces (added once the datapath is pinned, so ADD attaches it); pings, those
    from ops into shop dropped by policy."""
    pods = {"shop/front": node.add_pod("front", "shop"), "shop/cart": node.add_pod("cart", "shop")}
    pods["ops/probe"] = node.add_pod("probe", "ops")
    front, cart, probe = pods["shop/front"], pods["shop/cart"], pods["ops/probe"]
    procs = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                src.ns,
                "ping",
                "-q",
                "-c",
                str(PINGS),
                "-i",
                "0.2",
                "-W",
                "2",
                dst.ip(4),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for src, dst in ((front, cart), (probe, front))
    ]
    allowed, denied = procs
    assert allowed.wait(timeout=60) == 0, "ping within shop failed"
    assert denied.wait(timeout=60) != 0, "ping from ops into shop must be dropped by policy"
    # a TCP flow too, so flows of more than one protocol are counted
    received, _ = t.tcp(front, cart, 4, 6000, port=8080)
    assert received == 6000
    return {k: p.ip(4) for k, p in pods.items()}


@pytest.fixture(scope="module")
def prometheus(
    agent: Agent, relay: Agent, traffic: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not on PATH: run `make setup` (Debian package prometheus)"
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{agent.port}"]}]},
            {"job_name": RELAY_JOB, "static_configs": [{"targets": [f"127.0.0.1:{relay.port}"]}]},
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = work / "prometheus.log"
    argv = [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}"]
    argv += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/-/ready", proc, log)
        prom = Prometheus(url)
        # rate() needs two samples of a series in its window; wait for a few scrapes after the traffic
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            res = prom.query(f'count_over_time(lumen_pod_tx_packets_total{{job="{JOB}", pod="front"}}[1m])')
            if res["data"]["result"] and float(res["data"]["result"][0]["value"][1]) >= 4:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus has no pod series after 30 s:\n{log.read_text()[-3000:]}")
        yield prom
    finally:
        _stop(proc)


CAP_BITS = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}


def _bounding(pid: int | str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^CapBnd:\s*(\w+)", status, re.M).group(1), 16)  # type: ignore[union-attr]


def test_agent_runs_with_only_the_daemonset_capabilities(agent: Agent) -> None:
    wanted = sum(1 << CAP_BITS[c] for c in daemonset_capabilities())
    # this machine's root may lack some of them itself (here: CAP_SYS_RESOURCE, needed before 5.11 only)
    assert _bounding(agent.proc.pid) == wanted & _bounding("self")
    assert not _bounding(agent.proc.pid) & (1 << CAP_BITS["SYS_ADMIN"])
    text = _get(agent.metrics_url).decode()
    assert re.search(r"^lumen_flow_table_capacity \d", text, re.M), "the datapath is loaded"


def test_metrics_pass_promtool_check_metrics(agent: Agent, traffic: dict[str, str]) -> None:
    promtool = shutil.which("promtool")
    assert promtool
    text = _get(agent.metrics_url)
    assert b'lumen_pod_tx_packets_total{namespace="shop",pod="front"}' in text
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert res.returncode == 0, (res.stdout + res.stderr).decode()


def test_prometheus_sees_the_pods_traffic(prometheus: Prometheus) -> None:
    res = prometheus.query(f'lumen_pod_tx_packets_total{{job="{JOB}"}}')
    sent = {
        (s["metric"]["namespace"], s["metric"]["pod"]): float(s["value"][1]) for s in res["data"]["result"]
    }
    assert set(sent) == {("shop", "front"), ("shop", "cart"), ("ops", "probe")}
    # every echo request and reply is one packet the sender's tx counts
    assert sent[("shop", "front")] >= PINGS and sent[("ops", "probe")] >= PINGS
    up = prometheus.query(f'up{{job="{JOB}"}}')["data"]["result"]
    assert [s["value"][1] for s in up] == ["1"]
    # the relay reaches the agent and says so
    relayed = prometheus.query(f'lumen_relay_agent_up{{job="{RELAY_JOB}"}}')["data"]["result"]
    assert [s["value"][1] for s in relayed] == ["1"]


def test_every_dashboard_expression_returns_data(prometheus: Prometheus) -> None:
    empty, failed = [], []
    for where, expr in dashboard_exprs():
        res = prometheus.query(expr)
        if res.get("status") != "success":
            failed.append(f"{where}: {res.get('error')}")
        elif not res["data"]["result"]:
            empty.append(f"{where}: {expr}")
    assert not failed, "\n".join(failed)
    assert not empty, "no data for:\n" + "\n".join(empty)


def test_every_alert_rule_evaluates_on_live_data(prometheus: Prometheus) -> None:
    # Prometheus has loaded and evaluated the rule file without error
    deadline = time.monotonic() + 10
    while True:
        groups = prometheus.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if (
            rules
            and all(r.get("lastEvaluation", "").startswith("2") for r in rules)
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.5)
    assert len(rules) == len(rule_exprs())
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # a healthy node under light traffic raises no alert
    assert [a for a in prometheus.api("alerts")["data"]["alerts"]] == []
    # each alert's condition watches series that exist: its left-hand side, without the threshold
    empty = []
    for where, expr in rule_exprs():
        lhs = re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[\d.]+\s*$", "", expr.strip())
        res = prometheus.query(lhs)
        assert res["status"] == "success", f"{where}: {res.get('error')}"
        if not res["data"]["result"] and not NEEDS_HISTORY.search(expr):
            empty.append(f"{where}: {lhs}")
    assert not empty, "no data for:\n" + "\n".join(empty)
    # the drop-spike alert compares with the hour before; its current rate is there already
    assert prometheus.query("lumen:drops:rate5m")["data"]["result"]


def test_only_history_is_exempt(agent: Agent) -> None:
    """No dashboard expression is exempt; of the rules only the hour-before baseline and what uses it."""
    assert not [e for _, e in dashboard_exprs() if NEEDS_HISTORY.search(e)]
    assert len([e for _, e in rule_exprs() if NEEDS_HISTORY.search(e)]) == 2
    assert 'lumen_drop_total{protocol="ICMP",reason="policy_denied"}' in _get(agent.metrics_url).decode()
