"""The agent's policy routes through `lumen relay`: real agent apps on loopback, each with the agent's own
Enforcer over its manifest directory (datapath faked), and the relay asking them all. Status names the
nodes that run another set, refused a change or did not answer; explain says when nodes disagree;
what-if sums every node's replay and names the nodes each change was seen on; bad input is the relay's
400/413 with the agents' reason; and `lumen policy ... --server <relay>` prints it (hypothesis: the
merges' properties)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from hypothesis import given
from hypothesis import strategies as st

from exporter.policy_api import MAX_BODY
from exporter.relay import policy as merge
from exporter.relay.discovery import Target
from tests.relay_harness import Agent, Policy, Served, agents, free_port, relay
from tests.unit.exporter_fixtures import NOW_NS, make_flow
from tests.unit.test_relay import run_cli

CLUSTER = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.1.0.5}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {nodeName: n2}
status: {podIPs: [{ip: 10.2.0.7}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cache, namespace: shop, labels: {app: cache}}
spec: {nodeName: n3}
status: {podIPs: [{ip: 10.3.0.4}]}
"""

DB_FROM_WEB = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"""


def isolate(app: str) -> str:
    return f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {app}-deny, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: {app}}}}}
  policyTypes: [Ingress]
"""


SAME = {"cluster.yaml": CLUSTER, "db.yaml": DB_FROM_WEB}
OTHER = {"cluster.yaml": CLUSTER, "db.yaml": isolate("db")}  # db isolated, web not let in


def node_policy(root: Path, name: str, files: Mapping[str, str]) -> Policy:
    manifests = root / name / "policies"
    manifests.mkdir(parents=True)
    for fname, text in files.items():
        (manifests / fname).write_text(text)
    return Policy(manifests, root / name / "state")


@contextmanager
def cluster(
    root: Path, files: Mapping[str, Mapping[str, str]], without_policy: tuple[str, ...] = (), dead: int = 0
) -> Iterator[tuple[list[Agent], Served]]:
    """Agents named by `files` (each its manifest files), agents running no policy enforcement, `dead`
    nodes that do not answer, and a relay over all of them."""
    policies = {name: node_policy(root, name, f) for name, f in files.items()}
    with ExitStack() as stack:
        nodes = stack.enter_context(agents([*files, *without_policy], policies=policies))
        down = [Target(f"n{9 - i}", f"http://127.0.0.1:{free_port()}") for i in range(dead)]
        served = stack.enter_context(relay([*(Target(a.name, a.url) for a in nodes), *down]))
        yield nodes, served


def get(base: str, path: str, **params: object) -> httpx.Response:
    return httpx.get(base + path, params=params, timeout=10)


# -- /api/policy -------------------------------------------------------------------------------------


def test_status_through_the_relay_is_the_agents_when_they_agree(tmp_path):
    with cluster(tmp_path, {"n1": SAME, "n2": SAME, "n3": SAME}) as (nodes, r):
        mine = get(nodes[0].url, "/api/policy").json()
        body = get(r.url, "/api/policy").json()
        out = run_cli("policy", "status", "--server", r.url)
    assert {k: body[k] for k in mine} == mine
    assert (body["reference"], body["consistent"], body["unreachable"]) == ("n1", True, [])
    assert set(body["nodes"]) == {"n1", "n2", "n3"}
    assert not any(n["differs"] or n["error"] or n["missing"] or n["extra"] for n in body["nodes"].values())
    assert body["nodes"]["n2"]["summary"] == mine["summary"]
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"Generation: {mine['generation']}  audit=off  {mine['summary']}",
        f"Sources:    {mine['dirs'][0]} (2 files)",
        "  shop/db-from-web",
        "Nodes:      3/3 run these policies",
    ]


def test_status_names_a_disagreeing_a_refusing_and_a_down_node(tmp_path):
    files = {"n1": SAME, "n2": SAME, "n3": OTHER}
    with cluster(tmp_path, files, without_policy=("n4",), dead=1) as (nodes, r):
        n2 = nodes[1].policy
        assert n2 is not None
        (Path(n2.dirs[0]) / "broken.yaml").write_text("kind: NetworkPolicy\nmetadata: [\n")
        n2.sync()  # the agent refuses the change and keeps what it runs
        body = get(r.url, "/api/policy").json()
        out = run_cli("policy", "status", "--server", r.url)
    assert body["reference"] == "n1" and body["policies"] == ["shop/db-from-web"]
    assert body["consistent"] is False
    n3 = body["nodes"]["n3"]
    assert n3["differs"] and n3["missing"] == ["shop/db-from-web"] and n3["extra"] == ["shop/db-deny"]
    assert not body["nodes"]["n2"]["differs"] and body["nodes"]["n2"]["error"].startswith("rejected")
    assert body["unreachable"] == ["n4", "n9"]
    assert "policy enforcement is not running" in body["errors"]["n4"]
    assert "cannot connect" in body["errors"]["n9"]
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "Nodes:      2/5 run these policies (shown: n1)" in lines, out.stdout
    said = {line.split()[0]: line for line in lines if line.startswith("  n")}
    assert "REFUSED a change: rejected" in said["n2"]
    assert "DIFFERS (without shop/db-from-web; with shop/db-deny)" in said["n3"]
    assert "UNREACHABLE (HTTP 503: policy enforcement is not running" in said["n4"]
    assert "UNREACHABLE (cannot connect" in said["n9"]


def test_status_when_no_node_answers_says_why(tmp_path):
    with cluster(tmp_path, {}, without_policy=("n1",), dead=1) as (_, r):
        resp = get(r.url, "/api/policy")
        out = run_cli("policy", "status", "--server", r.url)
    assert resp.status_code == 503
    assert resp.json()["detail"].startswith("no agent answered: n1: HTTP 503: policy enforcement")
    assert out.returncode == 1 and "n9: cannot connect" in out.stderr


# -- /api/policy/explain -----------------------------------------------------------------------------

WEB_TO_DB = {"src": "shop/web", "dst": "shop/db", "port": 5432}


def test_explain_through_the_relay_is_the_agents_answer_with_its_nodes(tmp_path):
    with cluster(tmp_path, {"n1": SAME, "n2": SAME}, dead=1) as (nodes, r):
        mine = get(nodes[0].url, "/api/policy/explain", **WEB_TO_DB).json()
        body = get(r.url, "/api/policy/explain", **WEB_TO_DB).json()
        out = run_cli("policy", "explain", "shop/web", "shop/db", "--port", "5432", "--server", r.url)
    assert {k: body[k] for k in mine} == mine and mine["allowed"]
    assert (body["agree"], body["nodes"], body["unreachable"]) == (True, ["n1", "n2"], ["n9"])
    assert set(body["verdicts"]) == {"n1", "n2"} and body["verdicts"]["n2"]["verdict"] == "FORWARDED"
    assert out.returncode == 0 and out.stdout.strip() == mine["text"]
    assert "lumen policy explain: 1 node(s) did not answer: n9: cannot connect" in out.stderr


def test_explain_says_when_nodes_disagree(tmp_path):
    with cluster(tmp_path, {"n1": SAME, "n2": OTHER, "n3": SAME}) as (nodes, r):
        theirs = get(nodes[1].url, "/api/policy/explain", **WEB_TO_DB).json()
        body = get(r.url, "/api/policy/explain", **WEB_TO_DB).json()
        out = run_cli("policy", "explain", "shop/web", "shop/db", "--port", "5432", "--server", r.url)
    assert body["agree"] is False and body["nodes"] == ["n1", "n3"] and body["allowed"]
    assert body["verdicts"]["n2"] == {k: theirs[k] for k in ("allowed", "verdict", "policies", "reason")}
    assert body["verdicts"]["n2"]["verdict"] == "DROPPED"
    assert body["text"].startswith("nodes disagree (n1, n3: ALLOWED; n2: DENIED)\n[n1, n3]\n")
    assert f"\n[n2]\n{theirs['text']}" in body["text"]
    assert out.returncode == 0 and out.stdout.strip() == body["text"]


def test_explain_of_an_unknown_pod_is_the_relays_400_with_the_agents_reason(tmp_path):
    bad = {**WEB_TO_DB, "src": "shop/nope"}
    with cluster(tmp_path, {"n1": SAME, "n2": SAME}) as (nodes, r):
        mine = get(nodes[0].url, "/api/policy/explain", **bad)
        resp = get(r.url, "/api/policy/explain", **bad)
        metrics = get(r.url, "/metrics").text
        out = run_cli("policy", "explain", "shop/nope", "shop/db", "--server", r.url)
    assert mine.status_code == 400 and resp.status_code == 400
    assert resp.json()["detail"] == mine.json()["detail"]
    # the agents answered: a bad question does not make them down
    assert (
        'lumen_relay_agent_up{node="n1"} 1.0' in metrics and 'lumen_relay_agent_up{node="n2"} 1.0' in metrics
    )
    assert out.returncode == 1 and mine.json()["detail"] in out.stderr


def test_explain_of_a_pod_only_some_nodes_know_is_a_disagreement(tmp_path):
    known = {**SAME, "extra.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: new, namespace: shop}\n"}
    with cluster(tmp_path, {"n1": known, "n2": SAME}) as (nodes, r):
        refused = get(nodes[1].url, "/api/policy/explain", src="shop/new", dst="shop/db", port=5432)
        body = get(r.url, "/api/policy/explain", src="shop/new", dst="shop/db", port=5432).json()
    assert refused.status_code == 400
    assert body["agree"] is False and body["nodes"] == ["n1"] and body["unreachable"] == []
    assert body["verdicts"]["n2"] == {"error": refused.json()["detail"]}
    assert "n2: refused" in body["text"].splitlines()[0]


# -- /api/policy/whatif ------------------------------------------------------------------------------

PROPOSED = isolate("db") + "---" + isolate("cache")


def cross(direction: str) -> object:
    """web on n1 to db on n2: recorded as egress on n1 and ingress on n2, each naming its own pod."""
    return make_flow(
        src="10.1.0.5", dst="10.2.0.7", sport=41000, dport=5432, direction=direction,
        src_pod=("shop", "web") if direction == "egress" else None,
        dst_pod=("shop", "db") if direction == "ingress" else None, time_ns=NOW_NS,
    )  # fmt: skip


def fill(nodes: list[Agent]) -> None:
    n1, n2, n3 = nodes
    n1.store.add(cross("egress"))
    n2.store.add(cross("ingress"))
    n3.store.add(
        make_flow(src="10.1.0.5", dst="10.3.0.4", dport=6379, src_pod=None, dst_pod=("shop", "cache"))
    )
    n3.store.add(
        make_flow(src="10.3.0.4", dst="10.9.9.9", dport=443, src_pod=("shop", "cache"), dst_pod=None)
    )


def whatif(base: str, body: str | bytes) -> httpx.Response:
    return httpx.post(base + "/api/policy/whatif", content=body, timeout=30)


def test_whatif_sums_every_nodes_replay_and_names_the_nodes_of_each_change(tmp_path):
    with cluster(tmp_path, {"n1": SAME, "n2": SAME, "n3": SAME}) as (nodes, r):
        fill(nodes)
        mine = {a.name: whatif(a.url, PROPOSED).json() for a in nodes}
        body = whatif(r.url, PROPOSED).json()
        manifests = tmp_path / "proposed.yaml"
        manifests.write_text(PROPOSED)
        out = run_cli("policy", "whatif", str(manifests), "--server", r.url)
    assert body["flows_checked"] == sum(m["flows_checked"] for m in mine.values()) == 4
    assert body["proposed"] == mine["n1"]["proposed"] == ["shop/db-deny", "shop/cache-deny"]
    web_cache, web_db = body["changes"]  # ordered by connection
    assert (
        mine["n1"]["changes"] == mine["n2"]["changes"] == [{k: v for k, v in web_db.items() if k != "nodes"}]
    )
    assert (
        web_db["nodes"] == ["n1", "n2"] and web_db["before"] == "FORWARDED" and web_db["after"] == "DROPPED"
    )
    assert web_cache["nodes"] == ["n3"] and "-> shop/cache (10.3.0.4):6379" in web_cache["connection"]
    assert body["nodes"] == {
        "n1": {"flows_checked": 1, "changes": 1},
        "n2": {"flows_checked": 1, "changes": 1},
        "n3": {"flows_checked": 2, "changes": 1},
    }
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "4 stored flows replayed on 3 nodes; 2 would change"
    assert lines[1].endswith("[n3]") and web_cache["connection"] in lines[1]
    assert lines[2].endswith("[n1, n2]") and web_db["connection"] in lines[2]


def test_whatif_names_the_nodes_that_did_not_answer(tmp_path):
    with cluster(tmp_path, {"n1": SAME, "n2": SAME, "n3": SAME}, without_policy=("n4",), dead=1) as (
        nodes,
        r,
    ):
        fill(nodes[:3])
        body = whatif(r.url, PROPOSED).json()
    assert body["flows_checked"] == 4 and len(body["changes"]) == 2
    assert body["unreachable"] == ["n4", "n9"] and set(body["nodes"]) == {"n1", "n2", "n3"}


def test_whatif_bad_manifests_are_the_relays_400_and_a_large_body_its_413(tmp_path):
    bad = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: 3}\n"
    )
    with cluster(tmp_path, {"n1": SAME, "n2": SAME}) as (nodes, r):
        mine = whatif(nodes[0].url, bad)
        resp = whatif(r.url, bad)
        large = whatif(r.url, b"#" * (MAX_BODY + 1))
        metrics = get(r.url, "/metrics").text
        path = tmp_path / "bad.yaml"
        path.write_text(bad)
        out = run_cli("policy", "whatif", str(path), "--server", r.url)
    assert mine.status_code == resp.status_code == 400
    assert resp.json()["detail"] == mine.json()["detail"]
    assert large.status_code == 413 and str(MAX_BODY) in large.json()["detail"]
    assert 'lumen_relay_fanout_seconds_count{route="/api/policy/whatif"}' not in metrics, "no agent was asked"
    assert out.returncode == 1 and mine.json()["detail"] in out.stderr


def ghost() -> object:
    """A stored flow what-if cannot place: its pod is unknown to the node and it has no address."""
    return make_flow(src="", dst="10.2.0.7", dport=5432, src_pod=("shop", "ghost"), dst_pod=None)


def test_manifests_the_agents_refuse_are_the_relays_400_with_their_reason(tmp_path):
    with cluster(tmp_path, {"n1": SAME, "n2": SAME, "n3": SAME}) as (nodes, r):
        fill(nodes)
        nodes[2].store.add(ghost())
        refused = whatif(nodes[2].url, PROPOSED)
        partial = whatif(r.url, PROPOSED).json()  # n3 refuses, n1 and n2 answer
        for a in nodes[:2]:
            a.store.add(ghost())
        everyone = whatif(r.url, PROPOSED)
    assert refused.status_code == 400 and "shop/ghost" in refused.json()["detail"]
    assert (
        partial["unreachable"] == ["n3"]
        and partial["errors"]["n3"] == f"HTTP 400: {refused.json()['detail']}"
    )
    assert partial["flows_checked"] == 2 and [c["nodes"] for c in partial["changes"]] == [["n1", "n2"]]
    assert everyone.status_code == 400 and everyone.json()["detail"] == refused.json()["detail"]


# -- the merges' properties --------------------------------------------------------------------------

NODES = st.sampled_from(["n1", "n2", "n3", "n4", "n5"])
POLICIES = st.frozensets(st.sampled_from(["a/x", "a/y", "b/z"]), max_size=3)
STATUS = st.fixed_dictionaries(
    {
        "generation": st.integers(1, 9),
        "audit": st.booleans(),
        "policies": POLICIES.map(sorted),
        "summary": st.text(max_size=5),
        "error": st.sampled_from(["", "rejected"]),
    }
)


def reordered(d: Mapping[str, object]) -> dict[str, object]:
    return dict(reversed(list(d.items())))


@given(st.dictionaries(NODES, STATUS, min_size=1))
def test_the_reference_set_is_the_one_most_nodes_run(answers):
    out = merge.status(answers)
    sets = {n: merge.policy_set(a) for n, a in answers.items()}
    ref = sets[out["reference"]]
    assert all(list(sets.values()).count(ref) >= list(sets.values()).count(s) for s in sets.values())
    assert {k: out[k] for k in answers[out["reference"]]} == answers[out["reference"]]
    assert set(out["nodes"]) == set(answers)
    assert all(out["nodes"][n]["differs"] == (sets[n] != ref) for n in answers)
    assert out["consistent"] == (len(set(sets.values())) == 1)
    assert merge.status(reordered(answers)) == out


CHANGE = st.fixed_dictionaries(
    {
        "connection": st.sampled_from(["a -> b:80/TCP", "c -> b:80/TCP", "a -> d/UDP"]),
        "before": st.sampled_from(["FORWARDED", "DROPPED"]),
        "after": st.sampled_from(["FORWARDED", "DROPPED"]),
        "reason": st.sampled_from(["r1", "r2"]),
    }
)
WHATIF = st.fixed_dictionaries(
    {
        "flows_checked": st.integers(0, 100),
        "proposed": st.just(["a/x"]),
        "changes": st.lists(CHANGE, max_size=4),
    }
)


@given(st.dictionaries(NODES, WHATIF, min_size=1))
def test_whatif_keeps_every_change_once_with_every_node_that_saw_it(answers):
    out = merge.whatif(answers)
    key = json.dumps
    seen = {(key(c, sort_keys=True), n) for n, a in answers.items() for c in a["changes"]}
    merged = [({k: v for k, v in c.items() if k != "nodes"}, c["nodes"]) for c in out["changes"]]
    assert {(key(c, sort_keys=True), n) for c, nodes in merged for n in nodes} == seen
    assert len({key(c, sort_keys=True) for c, _ in merged}) == len(merged), "one change, its nodes named"
    assert all(nodes == sorted(set(nodes)) for _, nodes in merged)
    assert out["flows_checked"] == sum(a["flows_checked"] for a in answers.values())
    assert merge.whatif(reordered(answers)) == out


VERDICT = st.sampled_from(
    [
        {"allowed": True, "verdict": "FORWARDED", "policies": ["a/x"], "reason": "allowed", "text": "ok"},
        {"allowed": False, "verdict": "DROPPED", "policies": ["a/x"], "reason": "denied", "text": "no"},
        {"allowed": True, "verdict": "FORWARDED", "policies": [], "reason": "not isolated", "text": "open"},
    ]
)


@given(st.dictionaries(NODES, VERDICT, min_size=1), st.dictionaries(NODES, st.sampled_from(["unknown"])))
def test_explain_gives_the_answer_with_exactly_the_nodes_that_gave_it(answers, refusals):
    refusals = {n: r for n, r in refusals.items() if n not in answers}
    out = merge.explain(answers, refusals)
    chosen = answers[out["nodes"][0]]
    assert out["nodes"] == sorted(n for n, a in answers.items() if a == chosen)
    assert all(out[k] == chosen[k] for k in chosen if k != "text")
    assert all(len(out["nodes"]) >= list(answers.values()).count(a) for a in answers.values())
    assert out["agree"] == (
        len({json.dumps(a, sort_keys=True) for a in answers.values()}) == 1 and not refusals
    )
    assert set(out["verdicts"]) == set(answers) | set(refusals)
    assert (out["text"] == answers[out["nodes"][0]]["text"]) == out["agree"]
    assert merge.explain(reordered(answers), reordered(refusals)) == out
