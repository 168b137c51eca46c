"""bench/datapath/policy: what NetworkPolicy costs per packet as the number of rules grows.

Two pods (client, server) wired by the plugin with the pinned datapath, direct forwarding on. Variants:
0, 10, 1,000 and 10,000 rules, interleaved round by round so drift hits all alike. With N > 0 rules
the server's ingress and the client's egress are isolated and one rule on each side admits the
measured traffic; the other N - 2 rules are distinct and match nothing measured (ipBlock /32 peers
outside the pod subnet, or the same peer on other ports, which share the longest key prefix with the
admitting entry), so the LPM policy and CIDR maps hold thousands of entries.
Per round and variant, from kernel.bpf_stats_enabled (run_time_ns / run_cnt of lumen_ingress, which
decides both sides where the packet enters):
  established  iperf3 TCP throughput and ns/packet over it: flows decided once, lookups not repeated
  new-flow     one UDP datagram from each of many source ports, the flow table emptied first: every
               packet is a flow's first, so every packet pays the policy lookups (and the flow insert)
Prints medians and ratios to 0 rules. Goal (issue): per-packet cost at 10,000 rules <= 1.1x of 0 rules.
Needs root, bcc, iperf3. Everything it creates carries a unique suffix and is removed at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.datapath.bed import bed  # noqa: E402
from bench.datapath.run import in_ns, prog_stats, throughput  # noqa: E402
from bpf import abi  # noqa: E402
from bpf.loader import Datapath  # noqa: E402
from bpf.ringbuf import EventReader  # noqa: E402
from exporter.enforcer import Enforcer  # noqa: E402
from exporter.enrich import EndpointDirectory  # noqa: E402
from exporter.policy.compiler import Compiled  # noqa: E402

RULE_COUNTS = (0, 10, 1000, 10000)
NAMESPACE = "bench"
IPERF_PORT = 5201
UDP_PORT = 9000
DENIED_PORT = 9001  # not admitted by any rule: proves the pods are isolated
FILLER_PORTS = 10000  # filler rules use ports from here on; the measured ports lie below
FILLER_NET = ipaddress.ip_address("172.16.0.0")  # filler ipBlocks: never a pod address (pods are 10.x)
RULES_PER_POLICY = 100
GOAL = 1.1
PY = "/usr/bin/python3"
T = TypeVar("T")

# One datagram per source port; binding each port explicitly (not ephemeral) keeps every 5-tuple
# distinct, so with the flow table emptied every packet is a flow's first.
SENDER = r"""
import socket, sys
dst, port, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for p in range(first, first + count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", p))
    s.sendto(b"x" * 64, (dst, port))
    s.close()
"""

SINK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    s.recv(2048)
"""


def cluster_manifests() -> str:
    ns = f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}"
    pods = [
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}, "
        f"labels: {{app: {name}}}}}\nspec:\n  containers: [{{name: c, image: busybox}}]"
        for name in ("client", "server")
    ]
    return "\n---\n".join([ns, *pods]) + "\n"


def _ports(*ports: tuple[str, int]) -> str:
    return "[" + ", ".join(f"{{protocol: {proto}, port: {port}}}" for proto, port in ports) + "]"


def _rule(direction: str, peer: str, ports: str) -> str:
    key = "from" if direction == "ingress" else "to"
    return f"  - {key}:\n    - {peer}\n    ports: {ports}"


def policy_manifests(rules: int) -> str:
    """`rules` rules in NetworkPolicies of at most RULES_PER_POLICY: one admitting the measured traffic
    on each side (server ingress, client egress), the rest fillers taking turns over four kinds."""
    if rules == 0:
        return ""
    measured = _ports(("TCP", IPERF_PORT), ("UDP", UDP_PORT))
    by_side: dict[str, list[str]] = {
        "ingress": [_rule("ingress", "podSelector: {matchLabels: {app: client}}", measured)],
        "egress": [_rule("egress", "podSelector: {matchLabels: {app: server}}", measured)],
    }
    for i in range(rules - 2):
        side = "ingress" if i % 2 == 0 else "egress"
        other = "client" if side == "ingress" else "server"
        if i % 4 < 2:
            # another peer (a CIDR identity) on the measured port
            peer = f"ipBlock: {{cidr: {FILLER_NET + i}/32}}"
            ports = _ports(("TCP", IPERF_PORT))
        else:
            # the measured peer on another port: deepest shared prefix with the admitting entry
            peer = f"podSelector: {{matchLabels: {{app: {other}}}}}"
            ports = _ports(("TCP", FILLER_PORTS + i))
        by_side[side].append(_rule(side, peer, ports))
    docs = []
    for side, subject in (("ingress", "server"), ("egress", "client")):
        items = by_side[side]
        for n, start in enumerate(range(0, len(items), RULES_PER_POLICY)):
            body = "\n".join(items[start : start + RULES_PER_POLICY])
            docs.append(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                f"metadata: {{name: {side}-{n:03d}, namespace: {NAMESPACE}}}\n"
                f"spec:\n  podSelector: {{matchLabels: {{app: {subject}}}}}\n"
                f"  policyTypes: [{side.capitalize()}]\n  {side}:\n{body}"
            )
    return "\n---\n".join(docs) + "\n"


def new_flows(client: str, server_ip: str, count: int) -> None:
    subprocess.run(
        in_ns(client, PY, "-c", SENDER, server_ip, str(UDP_PORT), "20000", str(count)),
        capture_output=True,
        timeout=120,
        check=True,
    )


Verdicts = dict[tuple[int, int], set[int]]


def flush(dp: Datapath, pods: set[str]) -> tuple[Verdicts, list[str]]:
    """Empty the flow table, so the next packets start flows. Returns the verdicts of the flows between
    the two pods by (protocol, destination port), and the other flows policy dropped."""
    between: Verdicts = {}
    others = []
    for key, st in dp.sweep_idle(0, time.monotonic_ns() + 10**9):
        src, dst = abi.addr_str(key.saddr, key.family), abi.addr_str(key.daddr, key.family)
        if {src, dst} == pods:
            between.setdefault((key.proto, key.dport), set()).add(st.verdict)
        elif st.verdict == abi.Verdict.DROPPED:
            others.append(f"proto {key.proto} {src}:{key.sport} -> {dst}:{key.dport}")
    return between, others


def cost(fd: int, run: Callable[[], T]) -> tuple[float, int, T]:
    """ns per run of the program and the number of runs while `run()` executes, and what it returned."""
    ns0, cnt0 = prog_stats(fd)
    out = run()
    ns1, cnt1 = prog_stats(fd)
    return (ns1 - ns0) / max(cnt1 - cnt0, 1), cnt1 - cnt0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--flows", type=int, default=20000, help="new flows (datagrams) per new-flow run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/datapath/policy needs root")
    if not 0 < args.flows <= 45000:
        sys.exit("--flows: 1..45000 (one source port each, from 20000)")

    with bed("bpol") as b:
        node, work = b.node, b.work
        manifests = work / "manifests"
        manifests.mkdir()
        dp = b.load()
        # Events are drained before each run, so every run starts with the same empty ring.
        reader = EventReader(dp.cfg.pin_dir)
        (manifests / "cluster.yaml").write_text(cluster_manifests())
        enforcer = Enforcer(str(node.state_dir), [str(manifests)], dp, EndpointDirectory(str(node.state_dir)))
        enforcer.sync()  # identities published before the pods exist: the plugin puts them in the map
        client = node.add_pod("client", namespace=NAMESPACE)
        server = node.add_pod("server", namespace=NAMESPACE)
        server_ip = server.ip(4)

        # Compile each rule count once through the agent's enforcer; rounds then swap the compiled
        # maps in with apply_policy, as the enforcer does (compiling 10k rules is the agent's cost, not
        # the datapath's).
        compiled: dict[int, Compiled] = {}
        setup: dict[int, tuple[int, int, float]] = {}
        for n in RULE_COUNTS:
            (manifests / "policies.yaml").write_text(policy_manifests(n))
            t0 = time.monotonic()
            enforcer.sync()
            if enforcer.status.error or enforcer.compiled is None:
                raise RuntimeError(f"{n} rules: {enforcer.status.error or 'nothing compiled'}")
            compiled[n] = enforcer.compiled
            setup[n] = (len(enforcer.status.policies), dp.policy_entries(), time.monotonic() - t0)

        b.start(in_ns(server.ns, "iperf3", "-s"))
        b.start(in_ns(server.ns, PY, "-c", SINK, str(UDP_PORT)))
        time.sleep(0.5)
        # Isolation is real: with rules in force a port no rule admits is dropped, the measured one not.
        pods = {client.ip(4), server_ip}
        others: list[str] = []
        for n in RULE_COUNTS:
            dp.apply_policy(compiled[n])
            flush(dp, pods)
            subprocess.run(
                in_ns(client.ns, PY, "-c", SENDER, server_ip, str(DENIED_PORT), "19000", "1"), check=True
            )
            new_flows(client.ns, server_ip, 10)
            seen, _ = flush(dp, pods)
            denied = abi.Verdict.DROPPED if n else abi.Verdict.FORWARDED
            if seen.get((17, DENIED_PORT)) != {denied} or seen.get((17, UDP_PORT)) != {abi.Verdict.FORWARDED}:
                raise RuntimeError(f"{n} rules: the policy does not isolate or admit as built: {seen}")
        b.stats(True)

        def check(found: tuple[Verdicts, list[str]]) -> None:
            seen, other = found
            bad = {k: v for k, v in seen.items() if abi.Verdict.DROPPED in v}
            if bad:
                raise RuntimeError(f"measured traffic dropped by policy: (proto, port) {sorted(bad)}")
            others.extend(other)

        fd = dp.progs[abi.PROG_INGRESS].fd
        res: dict[int, dict[str, list[float]]] = {n: {"gbps": [], "est": [], "new": []} for n in RULE_COUNTS}
        runs = {"est": 0, "new": 0}
        for r in range(args.rounds):
            order = RULE_COUNTS[r % len(RULE_COUNTS) :] + RULE_COUNTS[: r % len(RULE_COUNTS)]
            for n in order:
                dp.apply_policy(compiled[n])
                while reader.read(0):  # drained: every run starts with an empty ring
                    pass
                ns, cnt, gbps = cost(fd, lambda: throughput(client.ns, server_ip, args.seconds))
                res[n]["gbps"].append(gbps)
                res[n]["est"].append(ns)
                runs["est"] += cnt
                check(flush(dp, pods))  # every datagram below starts a flow
                while reader.read(0):  # drained: every run starts with an empty ring
                    pass
                ns, cnt, _ = cost(fd, lambda: new_flows(client.ns, server_ip, args.flows))
                res[n]["new"].append(ns)
                runs["new"] += cnt
                check(flush(dp, pods))

        med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in res.items()}
        base = med[0]
        print(
            f"bench/datapath/policy: {args.rounds} interleaved rounds, {args.seconds} s iperf3 + "
            f"{args.flows} new UDP flows each, medians; lumen_ingress ns/packet from bpf_stats"
        )
        print(f"{'rules':>6} {'policies':>8} {'map entries':>11} {'compile+apply s':>15}")
        for n in RULE_COUNTS:
            pols, entries, secs = setup[n]
            print(f"{n:>6} {pols:>8} {entries:>11} {secs:15.2f}")
        print(
            f"{'rules':>6} {'TCP Gbit/s':>10} {'ratio':>6} {'est ns/pkt':>10} {'ratio':>6} "
            f"{'new-flow ns/pkt':>15} {'ratio':>6}"
        )
        for n in RULE_COUNTS:
            m = med[n]
            print(
                f"{n:>6} {m['gbps']:10.2f} {m['gbps'] / base['gbps']:6.2f} {m['est']:10.0f} "
                f"{m['est'] / base['est']:6.2f} {m['new']:15.0f} {m['new'] / base['new']:6.2f}"
            )
        print(f"program runs: {runs['est']} established, {runs['new']} new-flow")
        if others:
            print(f"other flows dropped by policy (not measured): {len(others)}, e.g. {others[0]}")
        top = RULE_COUNTS[-1]
        print(f"goal: per-packet cost at {top:,} rules <= {GOAL}x of 0 rules")
        for label, key in (("established", "est"), ("new-flow", "new")):
            ratio = med[top][key] / base[key]
            print(f"  {label:<11} {ratio:.2f}x {'PASS' if ratio <= GOAL else 'MISS'}")
        # 0 rules skips the lookups (no isolation marker); 10 rules already pays them all, so this
        # separates growing the maps from having a policy at all
        few = RULE_COUNTS[1]
        print(
            f"scaling alone, {top:,} vs {few} rules: established {med[top]['est'] / med[few]['est']:.2f}x, "
            f"new-flow {med[top]['new'] / med[few]['new']:.2f}x"
        )


if __name__ == "__main__":
    main()
