"""bench/cluster/relay.py: what `lumen relay` costs a flow query.

`/api/flows?limit=100` answered by one agent directly, against the same query through `lumen relay` over
three agents (each agent a process of its own: the agent's real API app over a FlowStore filled with
synthetic flows, as the flow source is not what is measured). The relay is the real `lumen relay`
process: as it runs by default (the newest page from its copies of the agents' flows) and with
--mirror 0 (every page asks every agent). Rounds interleave them, so machine noise hits all alike;
medians of per-request latency.

Goal (issue 13): relay p50 at most 2x a single agent's. Runs unprivileged on loopback.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
GOAL = 2.0

AGENT = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import uvicorn
from exporter.api import create_app
from exporter.flows import FlowStore
from tests.unit.exporter_fixtures import View, make_flow

port, node, flows, offset = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
view = View()
view.store = FlowStore(max(flows, 1))
now = time.time_ns()
for i in range(flows):
    f = make_flow(src=f"10.{offset}.{i // 250 % 250}.{i % 250 + 1}", sport=1024 + i % 60000, dport=80 + i % 7,
                  time_ns=now - (flows - i) * 1_000_000 + offset * 1000)
    f.node = node
    view.store.add(f)
uvicorn.run(create_app(view), host="127.0.0.1", port=port, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(client: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        resp = client.get(url)
        out.append(time.perf_counter() - t)
        body = resp.json()
        if resp.status_code != 200 or len(body["flows"]) != 100:
            raise SystemExit(f"{url}: {resp.status_code} {str(body)[:200]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--flows", type=int, default=10000, help="flows stored per agent")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=40, help="requests per series per round")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: list[subprocess.Popen[bytes]] = []

    def start_relay(agent_urls: list[str], *extra: str) -> tuple[str, int]:
        port = free_port()
        agent_args = [a for i, u in enumerate(agent_urls) for a in ("--agent", f"node-{i}={u}")]
        cmd = [sys.executable, "-m", "exporter.cli", "relay", "--port", str(port), "--log-level", "warning"]
        procs.append(subprocess.Popen([*cmd, *agent_args, *extra], env=env, cwd=REPO))
        return f"http://127.0.0.1:{port}", procs[-1].pid

    try:
        urls = []
        for i in range(args.agents):
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-c", AGENT, str(REPO), str(port), f"node-{i}", str(args.flows), str(i + 1)],
                env=env,
            ))  # fmt: skip
            urls.append(f"http://127.0.0.1:{port}")
        agent_pid = procs[0].pid
        relay, relay_pid = start_relay(urls)
        relay1, _ = start_relay(urls[:1], "--mirror", "0")
        fanout, _ = start_relay(urls, "--mirror", "0")  # every page asks every agent
        for u in [*urls, relay, relay1, fanout]:
            wait_up(u)
        query = "/api/flows?limit=100"
        wait_for_copies(relay + query)
        series: dict[str, list[float]] = {
            "single": [],
            "relay": [],
            "fanout": [],
            "relay1": [],
            "parallel": [],
        }
        cpu = {"relay": 0.0, "agent": 0.0}
        ratios = []
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(args.agents) as pool:
            clients = [httpx.Client(timeout=30) for _ in urls]

            def direct_all() -> float:
                # what the relay waits for at best: every agent asked at once, the slowest answer
                t = time.perf_counter()
                list(pool.map(lambda cu: cu[0].get(f"{cu[1]}/api/flows?limit=101").raise_for_status(),
                              zip(clients, urls, strict=True)))  # fmt: skip
                return time.perf_counter() - t

            for u in (urls[0], relay, relay1, fanout):  # warm: imports, connection pools
                timed(client, u + query, 5)
            direct_all()
            for r in range(args.rounds):
                c0 = cpu_s(agent_pid)
                s = timed(client, urls[0] + query, args.requests)
                cpu["agent"] += cpu_s(agent_pid) - c0
                c0 = cpu_s(relay_pid)
                f = timed(client, relay + query, args.requests)
                cpu["relay"] += cpu_s(relay_pid) - c0
                series["relay1"] += timed(client, relay1 + query, args.requests)
                series["fanout"] += timed(client, fanout + query, args.requests)
                series["parallel"] += [direct_all() for _ in range(args.requests)]
                series["single"] += s
                series["relay"] += f
                ratios.append(statistics.median(f) / statistics.median(s))
                print(f"round {r + 1}: single p50 {statistics.median(s) * 1e3:.2f} ms, "
                      f"relay p50 {statistics.median(f) * 1e3:.2f} ms, ratio {ratios[-1]:.2f}")  # fmt: skip
            for c in clients:
                c.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    n = args.rounds * args.requests
    print(
        f"\n/api/flows?limit=100, {args.flows} flows per agent, {args.rounds}x{args.requests} requests per "
        f"series, interleaved (2 vCPU shared with other work: compare ratios, not times)"
    )
    for what, key in (
        ("one agent directly", "single"),
        (f"relay over {args.agents} agents", "relay"),
        ("  the same, --mirror 0", "fanout"),
        ("relay over 1, --mirror 0", "relay1"),
        (f"{args.agents} agents at once, directly", "parallel"),
    ):
        xs = series[key]
        print(
            f"  {what:<28} p50 {statistics.median(xs) * 1e3:7.2f} ms  p90 {quantile(xs, 0.9) * 1e3:7.2f} ms  "
            f"min {min(xs) * 1e3:6.2f} ms"
        )
    print("  (the agents share these CPUs: the last line is the floor of a fan-out on this machine; each hop")
    print("   through another process waits for a CPU, which min leaves out)")
    print(f"  CPU per request: agent {cpu['agent'] / n * 1e3:.2f} ms, relay over {args.agents} "
          f"{cpu['relay'] / n * 1e3:.2f} ms (/proc, summed over {n})")  # fmt: skip
    med = {k: statistics.median(v) for k, v in series.items()}
    ratio = med["relay"] / med["single"]
    one, fan = med["relay1"] / med["single"], med["fanout"] / med["parallel"]
    asked = med["fanout"] / med["single"]
    print(f"  --mirror 0: over one agent {one:.2f}x that agent; over {args.agents}: {asked:.2f}x one agent, "
          f"{fan:.2f}x all {args.agents} asked at once directly")  # fmt: skip
    print(f"  relay over {args.agents} agents / one agent: {ratio:.2f}x (rounds {min(ratios):.2f}-"
          f"{max(ratios):.2f}); goal <= {GOAL:.1f}x: {'PASS' if ratio <= GOAL else 'MISS'}")  # fmt: skip
    return 0


def wait_for_copies(url: str, timeout: float = 30) -> None:
    """Until the relay answers from its copies of the agents (they fill from each agent's stream)."""
    base = url.split("/api/")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        httpx.get(url, timeout=10).raise_for_status()
        text = httpx.get(base + "/metrics", timeout=10).text
        if any(
            line.startswith('lumen_relay_flow_pages_total{source="copies"}') for line in text.splitlines()
        ):
            return
        time.sleep(0.2)
    raise SystemExit(f"{base}: the relay never answered from its copies")


def quantile(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


if __name__ == "__main__":
    sys.exit(main())
