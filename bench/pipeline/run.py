"""bench/pipeline: what the agent costs and how much it keeps up with.

1. Events/s the agent consumes end to end (ring buffer -> decode -> pod lookup -> flow store), driven by
   BPF_PROG_TEST_RUN on the loaded tc program at aggregation "none" (one event per run) from a separate
   producer process; the agent's CPU share; and the accounting: emitted == consumed + lost (in-kernel).
   Two runs: the producer flat out (more than one core can take), and paced at the 250k/s goal.
2. RSS of the agent process with a full flow store (64k flows, imports included).
3. /metrics scrape time with 250 pods of 8 flows each (2000 kernel flow entries, 250 source entries).

Goals (issue 4): >= 250k events/s on one core with no unaccounted loss; RSS <= 150 MB with 64k flows;
scrape <= 50 ms. Needs root, bcc and a BPF-capable kernel. Everything it creates carries a unique suffix.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import platform
import resource
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


PRODUCER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from plugin import bpfsys
prog_fd = bpfsys.obj_get(sys.argv[2])
seconds, rate = float(sys.argv[3]), float(sys.argv[4])
batch = 1000
run = bpfsys.TestRun(prog_fd, bytes.fromhex(sys.argv[5]), repeat=batch)
runs = 0
start = time.monotonic()
while True:
    now = time.monotonic() - start
    if now >= seconds:
        break
    if rate and runs > rate * now:
        time.sleep(0.0005)
        continue
    run()
    runs += batch
print(runs, flush=True)
"""


def udp_frame() -> bytes:
    """Ethernet + IPv4 + UDP, 10.77.0.2:40000 -> 10.77.0.3:5001, 64 bytes of payload."""
    payload = b"x" * 64
    udp = struct.pack("!HHHH", 40000, 5001, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, bytes([10, 77, 0, 2]),
                     bytes([10, 77, 0, 3]))  # fmt: skip
    eth = bytes.fromhex("0200000000030200000000020800")
    return eth + ip + udp


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def throughput(agent, pin: str, seconds: float, rate: float) -> dict:  # noqa: ANN001
    from bpf import abi

    dp = agent.dp
    before = {s: dp.stat(s) for s in (abi.Stat.EVENTS, abi.Stat.LOST_EVENTS)}
    consumed0 = agent.health.events_consumed
    cpu0 = time.process_time()
    t0 = time.monotonic()
    prog = os.path.join(pin, abi.PROG_PINS[abi.PROG_INGRESS])
    runs = int(
        subprocess.run(
            [
                sys.executable,
                "-c",
                PRODUCER,
                str(REPO),
                prog,
                str(seconds),
                str(rate),
                udp_frame().hex(),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # fmt: skip
    )
    emitted = dp.stat(abi.Stat.EVENTS) - before[abi.Stat.EVENTS]
    lost = dp.stat(abi.Stat.LOST_EVENTS) - before[abi.Stat.LOST_EVENTS]
    # Let the consumer drain what is still in the ring.
    deadline = time.monotonic() + 10
    while agent.health.events_consumed - consumed0 < emitted and time.monotonic() < deadline:
        time.sleep(0.01)
    wall = time.monotonic() - t0
    consumed = agent.health.events_consumed - consumed0
    cpu = time.process_time() - cpu0
    return {
        "offered_per_s": round(runs / seconds),
        "consumed_per_s": round(consumed / wall),
        "consumed_per_cpu_s": round(consumed / cpu) if cpu else None,
        "agent_cpu_share": round(cpu / wall, 3),
        "runs": runs,
        "emitted": emitted,
        "consumed": consumed,
        "lost_counted_in_kernel": lost,
        "unaccounted": runs - consumed - lost,
    }


def fill_store(agent, n: int) -> float:  # noqa: ANN001
    """n distinct flows through the real decoder into the store; returns RSS afterwards."""
    from bpf import abi

    ev = abi.FlowEvent(type=int(abi.EventType.NEW), verdict=1, packets=1, bytes=100)
    ev.key.family, ev.key.proto, ev.key.direction = 4, 6, 1
    ct.memmove(ev.key.saddr, bytes([10, 78, 0, 2]), 4)
    for i in range(n):
        ev.key.sport = i % 65536
        ev.key.daddr[2], ev.key.daddr[3] = (i >> 8) & 0xFF, i & 0xFF
        agent.store.add(agent.decoder.flow(bytes(ev)))
    return rss_mb()


def scrape(agent, state_dir: str, pods: int, flows_per_pod: int, rounds: int) -> dict:  # noqa: ANN001
    from prometheus_client import generate_latest

    from bpf import abi
    from tests.unit.exporter_fixtures import write_record

    flows = agent.dp._map(abi.MAP_FLOWS)
    sources = agent.dp._map(abi.MAP_SOURCES)
    for p in range(pods):
        ifindex = 100000 + p
        ip = f"10.79.{p // 250}.{p % 250 + 2}"
        write_record(state_dir, f"bench{p:04d}", f"ns{p % 10}", f"pod-{p}", [f"{ip}/16"], ifindex)
        sk = abi.endpoint_key(ip)
        per_cpu = (sources.sLeaf * sources.total_cpu)()
        per_cpu[0].packets, per_cpu[0].bytes = 10, 1000
        sources[sources.Key.from_buffer_copy(bytes(sk))] = per_cpu
        for f in range(flows_per_pod):
            key = abi.FlowKey(sport=30000 + f, dport=80, proto=6, family=4, direction=1)
            ct.memmove(key.saddr, abi.addr_bytes(ip)[0], 16)
            ct.memmove(key.daddr, abi.addr_bytes("10.80.0.1")[0], 16)
            st = abi.FlowStats(
                packets=10, bytes=1000, src_ep=ifindex, dst_ep=0, verdict=1, last_seen_ns=time.monotonic_ns()
            )
            flows[flows.Key.from_buffer_copy(bytes(key))] = flows.Leaf.from_buffer_copy(bytes(st))
    agent.directory.refresh(force=True)
    times = []
    size = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        text = generate_latest(agent.registry)
        times.append((time.perf_counter() - t0) * 1000)
        size = len(text)
    return {
        "pods": pods,
        "flow_entries": pods * flows_per_pod,
        "scrape_ms_median": round(statistics.median(times), 2),
        "scrape_ms_max": round(max(times), 2),
        "exposition_bytes": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--store", type=int, default=65536)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--history",
        default="off",
        help="the agent's --history (default off: the pipeline alone, comparable across versions)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/pipeline needs root (BPF)")

    from bpf.loader import unpin_all
    from exporter.agent import Agent
    from exporter.config import AgentConfig

    tag = secrets.token_hex(4)
    pin = f"/sys/fs/bpf/lbench_{tag}"
    state = tempfile.mkdtemp(prefix="lumen-bench-pipeline-")
    results: dict = {
        "machine": f"{os.cpu_count()} vCPU, kernel {platform.release()}",
        "history": args.history,
    }
    agent = Agent(
        AgentConfig(
            state_dir=state,
            pin_dir=pin,
            aggregation="none",
            ringbuf_pages=4096,
            history=args.history,
            flow_store_size=args.store,
            node="bench",
            idle_timeout_s=3600,
        )  # fmt: skip
    )
    from tests.unit.exporter_fixtures import write_record

    # The producer's packets come from a "pod" so the decoder names it, as on a real node.
    write_record(state, "benchsrc", "bench", "producer", ["10.77.0.2/24"], 1)
    write_record(state, "benchdst", "bench", "sink", ["10.77.0.3/24"], 2)
    try:
        agent.start()
        results["rss_mb_started"] = round(rss_mb(), 1)
        results["flat_out"] = throughput(agent, pin, args.seconds, 0)
        results["paced_250k"] = throughput(agent, pin, args.seconds, 250_000)
        results["rss_mb_full_store"] = round(fill_store(agent, args.store), 1)
        results["rss_mb_peak"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        results["store"] = {
            "flows": len(agent.store),
            "capacity": agent.store.capacity,
            "evicted": agent.store.evicted,
        }
        results["scrape"] = scrape(agent, state, 250, 8, 30)
    finally:
        agent.stop()
        unpin_all(pin)
        shutil.rmtree(state, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    fo, pc, sc = results["flat_out"], results["paced_250k"], results["scrape"]
    print(f"bench/pipeline ({results['machine']}, history {results['history']})")
    for name, r in (("flat out", fo), ("paced 250k/s", pc)):
        print(
            f"  {name:<13} offered {r['offered_per_s']:>9,}/s  consumed {r['consumed_per_s']:>9,}/s "
            f"({r['consumed_per_cpu_s'] or 0:,}/CPU-s, agent CPU {r['agent_cpu_share'] * 100:.0f}%)  "
            f"lost (counted in kernel) {r['lost_counted_in_kernel']:,}  unaccounted {r['unaccounted']}"
        )
    print(f"  RSS: {results['rss_mb_started']} MB started, {results['rss_mb_full_store']} MB with "
          f"{results['store']['flows']:,} flows stored (peak {results['rss_mb_peak']} MB)")  # fmt: skip
    print(f"  /metrics with {sc['pods']} pods x 8 flows: median {sc['scrape_ms_median']} ms, "
          f"max {sc['scrape_ms_max']} ms, {sc['exposition_bytes']:,} bytes")  # fmt: skip


if __name__ == "__main__":
    main()
