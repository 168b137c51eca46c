"""bench/datapath: what observing costs the pods, and what direct forwarding gains, in one run.

Two pods wired by the plugin on one bridge. Variants, interleaved round by round so drift hits all alike:
  (a) bridge   plain bridge, no BPF attached
  (b) observe  Lumen programs attached, direct forwarding off (every packet still crosses the bridge)
  (c) redirect Lumen programs attached, bpf_redirect_peer into the destination pod
Per round: iperf3 TCP throughput, sockperf TCP ping-pong latency with client and server pinned to one
CPU (else it measures vCPU wake-ups), ping RTT, with kernel.bpf_stats_enabled off as in production
(bpf_stats reads the clock twice per program run). Then a second pass of the same traffic with it on
gives each program's per-packet cost (run_time_ns / run_cnt), next to a program that does nothing: the
floor bpf_stats charges any program here. Prints medians and ratios to (a).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.datapath.bed import bed  # noqa: E402
from bpf import abi  # noqa: E402
from bpf.maps import load_noop_tc_prog  # noqa: E402
from plugin.netlink import Netlink  # noqa: E402

VARIANTS = ("bridge", "observe", "redirect")
# (variant, measure, ratio bound, at most?) from the issue; plus per-packet cost <= GOAL_NS
GOALS = (
    ("observe", "gbps", 0.97, False),
    ("observe", "rr_us", 1.05, True),
    ("redirect", "gbps", 1.05, False),
    ("redirect", "rr_us", 0.90, True),
)
GOAL_NS = 150


def in_ns(ns: str, *argv: str, cpu: int | None = None) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return ["ip", "netns", "exec", ns, *pin, *argv]


def throughput(client: str, server_ip: str, seconds: int) -> float:
    out = subprocess.run(
        in_ns(client, "iperf3", "-c", server_ip, "-t", str(seconds), "-J"),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def rr_latency(client: str, server_ip: str, seconds: int) -> float:
    out = subprocess.run(
        in_ns(
            client,
            "sockperf",
            "ping-pong",
            "--tcp",
            "-i",
            server_ip,
            "-p",
            "11111",
            "-t",
            str(seconds),
            cpu=0,
        ),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    m = re.search(r"<MEDIAN>\s*observation\s*=\s*([\d.]+)", out.stdout + out.stderr) or re.search(
        r"avg-latency=([\d.]+)", out.stdout + out.stderr
    )
    if not m:
        raise RuntimeError(f"cannot parse sockperf output: {out.stdout[-500:]}")
    return float(m.group(1))


def ping_rtt(client: str, server_ip: str, count: int) -> float:
    out = subprocess.run(
        in_ns(client, "ping", "-q", "-c", str(count), "-i", "0.02", server_ip),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return float(re.search(r"= [\d.]+/([\d.]+)/", out.stdout).group(1)) * 1000  # type: ignore[union-attr]


def prog_stats(fd: int) -> tuple[int, int]:
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    run_ns = int(re.search(r"run_time_ns:\s*(\d+)", text).group(1))  # type: ignore[union-attr]
    run_cnt = int(re.search(r"run_cnt:\s*(\d+)", text).group(1))  # type: ignore[union-attr]
    return run_ns, run_cnt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--cost-seconds", type=int, default=2, help="per test of the bpf_stats pass")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/datapath needs root")

    with bed("dp") as b:
        node = b.node
        client, server = node.add_pod("cli"), node.add_pod("srv")  # no pins yet: plain bridge
        dp = b.load()
        ifindexes = []
        with Netlink() as nl:
            for pod in (client, server):
                ifindexes.append(nl.link(pod.result["interfaces"][1]["name"]).index)
        dp.add_endpoint(client.ips, ifindexes[0], ifindexes[0], client.result["interfaces"][2]["mac"])
        dp.add_endpoint(server.ips, ifindexes[1], ifindexes[1], server.result["interfaces"][2]["mac"])
        b.start(in_ns(server.ns, "iperf3", "-s"))
        b.start(in_ns(server.ns, "sockperf", "server", "--tcp", "-i", server.ip(4), "-p", "11111", cpu=0))
        subprocess.run(in_ns(client.ns, "ping", "-c", "3", "-i", "0.2", server.ip(4)), capture_output=True)
        noop_fd = load_noop_tc_prog()

        def wire(variant: str) -> None:
            with Netlink() as nl:
                for ifindex in ifindexes:
                    nl.tc_clsact_del(ifindex)
                    if variant == "noop":
                        nl.tc_clsact_add(ifindex)
                        for hook in ("ingress", "egress"):
                            nl.tc_bpf_attach(ifindex, hook, noop_fd, "lumen_noop")
            if variant in ("observe", "redirect"):
                dp.cfg.redirect = variant == "redirect"
                dp.set_config()
                for ifindex in ifindexes:
                    dp.attach(ifindex)

        results: dict[str, dict[str, list[float]]] = {
            v: {"gbps": [], "rr_us": [], "ping_us": []} for v in VARIANTS
        }
        # per (program, variant): [run_time_ns, run_cnt]; "noop" is the do-nothing program
        fds = {name: fn.fd for name, fn in dp.progs.items()} | {"noop": noop_fd}
        cost: dict[tuple[str, str], list[int]] = {}
        for _ in range(args.rounds):
            b.stats(False)
            for variant in VARIANTS:
                wire(variant)
                r = results[variant]
                r["gbps"].append(throughput(client.ns, server.ip(4), args.seconds))
                r["rr_us"].append(rr_latency(client.ns, server.ip(4), args.seconds))
                r["ping_us"].append(ping_rtt(client.ns, server.ip(4), 50))
            b.stats(True)
            for variant in ("noop", "observe", "redirect"):
                wire(variant)
                progs = ["noop"] if variant == "noop" else list(dp.progs)
                before = {name: prog_stats(fds[name]) for name in progs}
                throughput(client.ns, server.ip(4), args.cost_seconds)
                rr_latency(client.ns, server.ip(4), args.cost_seconds)
                ping_rtt(client.ns, server.ip(4), 20)
                for name in progs:
                    ns, cnt = prog_stats(fds[name])
                    c = cost.setdefault((name, variant), [0, 0])
                    c[0] += ns - before[name][0]
                    c[1] += cnt - before[name][1]

        med = {v: {k: statistics.median(x) for k, x in r.items()} for v, r in results.items()}
        base = med["bridge"]
        print(f"bench/datapath: {args.rounds} interleaved rounds, {args.seconds} s each, medians")
        print(
            f"{'variant':<9} {'TCP Gbit/s':>10} {'ratio':>6} {'RR us':>8} {'ratio':>6} "
            f"{'ping us':>8} {'ratio':>6}"
        )
        for v in VARIANTS:
            m = med[v]
            print(
                f"{v:<9} {m['gbps']:10.2f} {m['gbps'] / base['gbps']:6.2f} {m['rr_us']:8.1f} "
                f"{m['rr_us'] / base['rr_us']:6.2f} {m['ping_us']:8.1f} {m['ping_us'] / base['ping_us']:6.2f}"
            )

        def per_run(c: list[int]) -> float:
            return c[0] / max(c[1], 1)

        floor = per_run(cost[("noop", "noop")])
        print(f"per-packet cost (bpf_stats, same traffic, {args.cost_seconds} s per test):")
        print(f"  a program that does nothing: {floor:.0f} ns (what bpf_stats charges every program here)")
        per_prog = {}
        for name in dp.progs:
            where = "host veth tc ingress" if name == abi.PROG_INGRESS else "host veth tc egress"
            mine = {v: c for (n, v), c in cost.items() if n == name}
            total = [sum(c[0] for c in mine.values()), sum(c[1] for c in mine.values())]
            per_prog[name] = per_run(total)
            by_variant = ", ".join(f"{v} {per_run(c):.0f} ns ({c[1]} runs)" for v, c in mine.items())
            print(
                f"  {name} ({where}): {per_run(total):.0f} ns, {per_run(total) - floor:.0f} above the floor; "
                f"by variant: {by_variant}"
            )
        print("goals (issue 3):")
        for variant, measure, bound, at_most in GOALS:
            ratio = med[variant][measure] / base[measure]
            ok = ratio <= bound if at_most else ratio >= bound
            what = "throughput" if measure == "gbps" else "RR latency"
            sign = "<=" if at_most else ">="
            print(f"  {variant} {what} {sign} {bound:.2f}x: {ratio:.2f}x {'PASS' if ok else 'MISS'}")
        for name, ns in per_prog.items():
            print(f"  {name} <= {GOAL_NS} ns/packet: {ns:.0f} ns {'PASS' if ns <= GOAL_NS else 'MISS'}")


if __name__ == "__main__":
    main()
