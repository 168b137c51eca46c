"""bench/cluster: what Lumen costs on a path that crosses nodes, and what the relay costs over one agent.

Simulated nodes (tests/cluster_harness.py): a client pod on node 1, a server pod on node 2, in each routing
mode (direct, vxlan). Per round, two variants on the very same routes, VXLAN device and pods:
  bare   no programs on either pod's host veth (clsact removed)
  lumen  Lumen's programs attached (as the plugin attaches them, from the agent's pins)
the order alternating each round. Measures: iperf3 TCP throughput, sockperf TCP ping-pong latency
(client and server pinned to one CPU with taskset, or vCPU wake-ups dominate). Prints medians and the
lumen/bare ratios against the goals (>= 0.95x throughput, <= 1.05x RR latency) with PASS or MISS.

Relay fan-out with real agents: three nodes with flows in every agent; p50 of `/api/flows?limit=100`
through the relay (as it runs by default: the newest page from its copies of the agents' flows) against
the same query to one agent, interleaved, goal relay <= 2x (bench/cluster/relay.py measures the same on
loopback with synthetic stores, and the relay that asks every agent for every page, --mirror 0).

Needs root, iperf3, sockperf. Numbers on a shared machine are noisy: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.datapath.run import rr_latency, throughput  # noqa: E402 - the same iperf3/sockperf runs
from plugin.pinned import PROG_EGRESS, PROG_INGRESS, PROG_PINS  # noqa: E402
from tests.cluster_harness import Cluster, ClusterPod, SimNode, ns_http  # noqa: E402

GOALS = (("gbps", 0.95, False), ("rr_us", 1.05, True))  # (measure, bound, at most?)
FANOUT_GOAL = 2.0
PY = "/usr/bin/python3"


def wire(pods: list[ClusterPod], with_programs: bool) -> None:
    """Detach or attach Lumen's programs on the pods' host veths, inside their nodes."""
    for pod in pods:
        node: SimNode = pod.node
        dev = pod.host_veth
        node.exec("tc", "qdisc", "del", "dev", dev, "clsact", check=False)
        if with_programs:
            node.exec("tc", "qdisc", "add", "dev", dev, "clsact")
            for hook, prog in (("ingress", PROG_PINS[PROG_INGRESS]), ("egress", PROG_PINS[PROG_EGRESS])):
                node.exec(
                    "tc", "filter", "replace", "dev", dev, hook, "prio", "1", "handle", "1",
                    "bpf", "da", "object-pinned", str(node.pin_dir / prog),
                )  # fmt: skip


def path_bench(
    mode: str, rounds: int, seconds: int, nodes: int
) -> tuple[dict[str, dict[str, float]], Cluster]:
    c = Cluster(nodes=nodes, mode=mode, prefix="clb")
    c.__enter__()
    try:
        return _path_rounds(c, rounds, seconds), c
    except BaseException:
        c.cleanup()
        raise


def _path_rounds(c: Cluster, rounds: int, seconds: int) -> dict[str, dict[str, float]]:
    c.start_agents()
    n1, n2 = c.nodes[0], c.nodes[1]
    client, server = n1.add_pod("cli", "bench"), n2.add_pod("srv", "bench")
    log = c.workdir / "servers.log"
    c.run(server.ns, ["iperf3", "-s"], log)
    c.run(
        server.ns,
        ["taskset", "-c", "0", "sockperf", "server", "--tcp", "-i", server.ip(4), "-p", "11111"],
        log,
    )
    time.sleep(1)
    assert client.ping(server.ip(4), count=3), "no path between the pods"
    results: dict[str, dict[str, list[float]]] = {v: {"gbps": [], "rr_us": []} for v in ("bare", "lumen")}
    for r in range(rounds):
        for variant in ("bare", "lumen") if r % 2 == 0 else ("lumen", "bare"):
            wire([client, server], variant == "lumen")
            results[variant]["gbps"].append(throughput(client.ns, server.ip(4), seconds))
            results[variant]["rr_us"].append(rr_latency(client.ns, server.ip(4), seconds))
    wire([client, server], True)
    return {v: {k: statistics.median(x) for k, x in m.items()} for v, m in results.items()}


def fill_flows(c: Cluster, per_node: int) -> None:
    """`per_node` short UDP flows from a pod on each node to a pod on the next: every agent holds flows."""
    sender = (
        "import socket, sys\n"
        "for p in range(int(sys.argv[2])):\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    s.sendto(b'x', (sys.argv[1], 7000 + p)); s.close()\n"
    )
    pods = [n.add_pod(f"fill{n.index}", "bench") for n in c.nodes if not n.pods or len(n.pods) < 2]
    for i, pod in enumerate(pods):
        peer = pods[(i + 1) % len(pods)]
        pod.exec(PY, "-c", sender, peer.ip(4), str(per_node), check=True)


def fanout_bench(c: Cluster, requests: int) -> tuple[float, float]:
    c.start_relay()
    fill_flows(c, 300)
    time.sleep(2)
    path = "/api/flows?limit=100"
    n1 = c.nodes[0]
    deadline = time.monotonic() + 30
    while not copies_answered(c):  # the relay's copies of the agents' flows fill from their streams
        if time.monotonic() > deadline:
            raise SystemExit("the relay never answered from its copies")
        c.relay_api(path)
        time.sleep(0.2)

    def once(get: object) -> float:
        t0 = time.perf_counter()
        status, body = get()  # type: ignore[operator]
        assert status == 200 and len(body["flows"]) == 100, (status, str(body)[:300])
        return (time.perf_counter() - t0) * 1000

    direct = lambda: ns_http(n1.ns, n1.address4, c.agent_port, path, c.token)  # noqa: E731
    relayed = lambda: c.relay_api(path)  # noqa: E731
    times: dict[str, list[float]] = {"agent": [], "relay": []}
    for _ in range(requests):  # interleaved: noise hits both alike
        times["agent"].append(once(direct))
        times["relay"].append(once(relayed))
    agent, relay = statistics.median(times["agent"]), statistics.median(times["relay"])
    return agent, relay


def copies_answered(c: Cluster) -> bool:
    status, text = c.relay_api("/metrics")
    return any(
        line.startswith('lumen_relay_flow_pages_total{source="copies"}') for line in str(text).splitlines()
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="more, shorter rounds: background load drifts")
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--modes", default="direct,vxlan")
    ap.add_argument("--requests", type=int, default=40, help="relay fan-out: requests per p50")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/cluster needs root")
    print(f"bench/cluster: {args.rounds} interleaved rounds of {args.seconds} s per variant, medians")
    fanout: tuple[float, float] | None = None
    for mode in args.modes.split(","):
        med, c = path_bench(
            mode, args.rounds, args.seconds, nodes=3 if mode == args.modes.split(",")[0] else 2
        )
        try:
            bare, lumen = med["bare"], med["lumen"]
            print(f"  {mode:<6} bare   {bare['gbps']:7.2f} Gbit/s  RR {bare['rr_us']:7.2f} us")
            print(f"  {mode:<6} lumen  {lumen['gbps']:7.2f} Gbit/s  RR {lumen['rr_us']:7.2f} us")
            for what, bound, at_most in GOALS:
                ratio = lumen[what] / bare[what]
                ok = ratio <= bound if at_most else ratio >= bound
                goal = f"{'<=' if at_most else '>='} {bound}x"
                print(f"  {mode:<6} {what:<5} lumen/bare {ratio:.3f}x ({goal}) {verdict(ok)}")
            if fanout is None and len(c.nodes) >= 3:
                fanout = fanout_bench(c, args.requests)
        finally:
            c.cleanup()
    if fanout is not None:
        agent, relay = fanout
        ratio = relay / agent
        print(
            f"  relay fan-out /api/flows?limit=100, 3 nodes: p50 {relay:.1f} ms vs one agent {agent:.1f} ms"
        )
        print(f"  relay fan-out ratio {ratio:.2f}x (<= {FANOUT_GOAL}x) {verdict(ratio <= FANOUT_GOAL)}")


if __name__ == "__main__":
    main()
