"""NetworkPolicy through the running agent: `lumen agent --policy-dir`, a watched manifests directory,
real traffic dropped and admitted, and the same verdicts in /api/flows, /metrics, /api/policy and the
`lumen policy explain|whatif` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cni_harness import Node, Pod
from tests.e2e.test_agent import Agent, agent_with_pods
from tests.privileged import probe

pytestmark = [pytest.mark.e2e, pytest.mark.bpf, pytest.mark.netns]

CLUSTER = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {tier: prod}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5d4f8b7c9-x2x7k
  namespace: shop
  labels: {app: web, pod-template-hash: 5d4f8b7c9}
  ownerReferences: [{kind: ReplicaSet, name: web-5d4f8b7c9, controller: true}]
spec: {containers: [{name: web, image: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: db, image: postgres, ports: [{name: pg, containerPort: 5432}]}]}
"""

DB_ONLY_FROM_API = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: pg}]
"""

DB_FROM_WEB = DB_ONLY_FROM_API.replace("db-from-api", "db-from-web").replace("app: api", "app: web")


@dataclass
class Env:
    node: Node
    agent: Agent
    policy_dir: Path
    web: Pod
    db: Pod


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("agent-policy")
    policy_dir = workdir / "policies"
    policy_dir.mkdir()
    (policy_dir / "00-cluster.yaml").write_text(CLUSTER)
    (policy_dir / "10-db.yaml").write_text(DB_ONLY_FROM_API)
    pods = [("web-5d4f8b7c9-x2x7k", "shop"), ("db", "shop")]
    with agent_with_pods(workdir, pods, args=["--policy-dir", str(policy_dir)]) as (node, agent, (web, db)):
        with probe.servers([db], [5432]):
            yield Env(node, agent, policy_dir, web, db)


def reach(env: Env) -> bool:
    return probe.matrix({"web": env.web, "db": env.db}, [("TCP", 5432)])[("web", "db", "TCP", 5432)]


def wait_policy(env: Env, pred, timeout: float = 10.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        st = env.agent.get("/api/policy")
        if pred(st) or time.monotonic() > deadline:
            return st
        time.sleep(0.2)


def cli(env: Env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "policy", *args, "--server", env.agent.url],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def flows(env: Env, **query: str) -> list[dict]:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return env.agent.get(f"/api/flows?{q}")["flows"]


def metric(env: Env, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{env.agent.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_a_denied_connection_is_dropped_and_every_surface_says_why(env: Env):
    st = env.agent.get("/api/policy")
    assert st["policies"] == ["shop/db-from-api"] and st["generation"] > 0 and not st["error"]
    assert not reach(env)
    deadline = time.monotonic() + 5
    while (
        not (dropped := flows(env, verdict="DROPPED", from_pod="shop/web-", to_port="5432"))
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert dropped, "no DROPPED flow in the API"
    f = dropped[-1]
    assert f["drop_reason"] == "policy_denied" and f["source"]["pod"] == "web-5d4f8b7c9-x2x7k"
    assert f["policy"]["ingress"] == "" and f["policy"]["summary"] == "no policy allows ingress"
    assert metric(env, "lumen_drop_total", reason="policy_denied") > 0
    # the denial is named by the policy isolating shop/db (its default deny), not "none"
    deny = {
        "verdict": "DROPPED",
        "direction": "ingress",
        "policy": "shop/db-from-api",
        "match": "default-deny",
    }
    assert metric(env, "lumen_policy_verdicts_total", **deny) > 0
    out = cli(env, "explain", "shop/web-5d4f8b7c9-x2x7k", "shop/db", "--port", "5432")
    assert out.returncode == 0, out.stderr
    assert "DENIED" in out.stdout and "shop/db-from-api" in out.stdout


def test_a_changed_manifest_is_applied_while_running(env: Env):
    before = env.agent.get("/api/policy")["generation"]
    (env.policy_dir / "20-web.yaml").write_text(DB_FROM_WEB)
    try:
        st = wait_policy(env, lambda s: s["generation"] != before)
        assert "shop/db-from-web" in st["policies"], st
        assert reach(env)
        deadline = time.monotonic() + 5
        while not (ok := flows(env, verdict="FORWARDED", from_pod="shop/web-", to_port="5432")) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert ok and ok[-1]["policy"]["allowed_by"] == ["shop/db-from-web"], json.dumps(ok, indent=1)
        assert (
            metric(
                env,
                "lumen_policy_verdicts_total",
                verdict="FORWARDED",
                direction="ingress",
                policy="shop/db-from-web",
            )
            > 0
        )
        # what-if: the stored flows replayed against a set without db-from-web
        out = cli(env, "whatif", str(env.policy_dir / "00-cluster.yaml"), str(env.policy_dir / "10-db.yaml"))
        assert out.returncode == 0, out.stderr
        assert "FORWARDED -> DROPPED" in out.stdout and "shop/web" in out.stdout
    finally:
        (env.policy_dir / "20-web.yaml").unlink()
    wait_policy(env, lambda s: "shop/db-from-web" not in s["policies"])
    assert not reach(env)


def test_an_invalid_manifest_is_refused_and_changes_nothing(env: Env):
    before = env.agent.get("/api/policy")
    (env.policy_dir / "30-bad.yaml").write_text(
        DB_FROM_WEB.replace("podSelector: {matchLabels: {app: db}}", "podSelecter: {}")
    )
    try:
        st = wait_policy(env, lambda s: bool(s["error"]))
        assert "podSelecter" in st["error"] and "30-bad.yaml" in st["error"]
        assert st["generation"] == before["generation"] and st["policies"] == before["policies"]
        assert not reach(env)
        status = cli(env, "status")
        assert "Refused" in status.stdout
    finally:
        (env.policy_dir / "30-bad.yaml").unlink()
    st = wait_policy(env, lambda s: not s["error"])
    assert not st["error"]


def test_explain_rejects_bad_input_with_a_reason(env: Env):
    req = urllib.request.Request(f"{env.agent.url}/api/policy/explain?src=shop/nope&dst=shop/db&port=1")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 400 and "shop/nope" in json.load(exc.value)["detail"]
    bad = cli(env, "whatif", "-", stdin="")
    assert bad.returncode != 0


def test_flows_name_both_ends_and_icmp_sessions_by_message(env: Env):
    """Two pings at once from db to web: two connections (echo identifiers), each an echo-request and its
    echo-reply; both ends carry labels, workload and identity; label filters work in the API and the CLI."""
    pings = [
        subprocess.Popen(["ip", "netns", "exec", env.db.ns, "ping", "-c", "3", "-i", "0.2", env.web.ip()])
        for _ in range(2)
    ]
    assert [p.wait(timeout=20) for p in pings] == [0, 0]
    deadline = time.monotonic() + 5
    while len(icmp := flows(env, protocol="icmp", from_label="app=db")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    requests = [f for f in icmp if f["icmp"]["name"] == "echo-request"]
    assert len({f["icmp"]["id"] for f in requests}) == 2, "one flow per ping session"
    f = requests[-1]
    assert f["source"]["port"] == 0 and f["destination"]["port"] == 0, "no ports for ICMP"
    src, dst = f["source"], f["destination"]
    assert src["labels"]["app"] == "db" and dst["labels"]["app"] == "web"
    assert dst["workload"] == {"kind": "Deployment", "name": "web"}
    assert src["identity"] >= 256 and dst["identity"] >= 256 and src["identity"] != dst["identity"]
    replies = flows(env, protocol="icmp", to_label="app=db", is_reply="true")
    assert {r["icmp"]["name"] for r in replies} == {"echo-reply"}
    q = "view=connections&protocol=icmp&label=app=db"
    conns = env.agent.get(f"/api/flows?{q}")["connections"]
    pinged = [c for c in conns if c["client"]["pod"] == "db" and c["request"] and c["reply"]]
    # (a record holds what its latest event counted: NEW, then REPORTs and END)
    assert len(pinged) >= 2 and all(c["icmp"]["name"] == "echo-request" for c in pinged)
    assert all(c["reply"]["message"] == "echo-reply" and c["server_port"] is None for c in pinged)
    out = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "observe", "--server", env.agent.url, "--from-label", "app=db",
         "--protocol", "icmp", "-o", "jsonl", "--last", "50"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert lines and all(x["source"]["labels"]["app"] == "db" for x in lines)
