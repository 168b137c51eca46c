"""The datapath on a real kernel: pods wired by the plugin, programs loaded and pinned by bcc.

Byte counts: `bytes` is skb->len at TC (Ethernet header + IP packet), `payload_bytes` is what the
application wrote (L4 payload), so both are exact whatever GSO does to packet counts.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf import abi
from bpf.loader import Datapath, DatapathConfig, unpin_all
from bpf.ringbuf import EventReader
from plugin.netlink import Netlink
from tests.cni_harness import PREFIX, Node, Pod, ns_exec
from tests.privileged import dp_tools as t

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

TCP, UDP, ICMP, ICMP6 = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6
L3 = {4: 20, 6: 40}
#: flow_key.dport (type << 8 | code) of an echo request and its reply, by IP version
ECHO = {
    4: (abi.IcmpType.ECHO_REQUEST << 8, abi.IcmpType.ECHO_REPLY << 8),
    6: (abi.IcmpType.ICMP6_ECHO_REQUEST << 8, abi.IcmpType.ICMP6_ECHO_REPLY << 8),
}
ETH = 14


@pytest.fixture
def pin_dir() -> Iterator[str]:
    path = f"/sys/fs/bpf/{PREFIX}_{secrets.token_hex(4)}"
    try:
        yield path
    finally:
        unpin_all(path)


def load(pin_dir: str, **kw: object) -> Datapath:
    return Datapath.load(DatapathConfig(pin_dir=pin_dir, **kw))  # type: ignore[arg-type]


@pytest.fixture
def dp(pin_dir: str) -> Iterator[Datapath]:
    d = load(pin_dir)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def reader(dp: Datapath) -> Iterator[EventReader]:
    r = EventReader(dp.cfg.pin_dir)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def dnode(cni_bin: Path, pin_dir: str) -> Iterator[Node]:
    """The test runs on the node's host side: netlink, `ip` and pings from the host are the node's."""
    n = Node(binary=cni_bin, extra={"bpfPinDir": pin_dir})
    try:
        with n.host():
            yield n
    finally:
        n.cleanup()


def test_add_attaches_pinned_programs_and_fills_the_endpoint_map(dp: Datapath, dnode: Node):
    a = dnode.add_pod("a")
    record = json.loads((dnode.state_dir / "endpoints" / f"{a.container_id}_eth0.json").read_text())
    assert record["observed"] is True
    with Netlink() as nl:
        ifindex = nl.link(t.host_veth(a)).index
        assert nl.tc_bpf_list(ifindex, "ingress") == [abi.PROG_INGRESS]
        assert nl.tc_bpf_list(ifindex, "egress") == [abi.PROG_EGRESS]
    table = dp._map(abi.MAP_ENDPOINTS)
    for ip in a.ips:
        info = table[abi.endpoint_key(ip)]
        assert info.ifindex == ifindex and info.endpoint_id == ifindex
        assert ":".join(f"{b:02x}" for b in info.mac) == a.result["interfaces"][2]["mac"]
    (link_local,) = record["linkLocal"]
    assert link_local.startswith("fe80:") and table[abi.endpoint_key(link_local)].ifindex == ifindex
    assert dnode.del_pod("a").ok
    for ip in [*a.ips, link_local]:
        with pytest.raises(KeyError):
            table[abi.endpoint_key(ip)]


def test_a_pods_multicast_is_counted_once(dp: Datapath, dnode: Node):
    """Neighbour discovery floods every bridge port; once a pod is attached it is accounted at the
    sender's veth only. (A pod's very first packets, sent as its link comes up before ADD attaches the
    programs, can still be seen at the other pods' veths.)"""
    a, b, c = dnode.add_pod("a"), dnode.add_pod("b"), dnode.add_pod("c")
    link_locals = set()
    for pod in (a, b, c):
        rec = json.loads((dnode.state_dir / "endpoints" / f"{pod.container_id}_eth0.json").read_text())
        link_locals.update(rec["linkLocal"])
    pod_sources = link_locals | {p.ip(6) for p in (a, b, c)}

    def seen_at_others() -> dict:
        flows = t.flows(dp).items()
        return {k: v.packets for k, v in flows if k[0] in pod_sources and k[5] == abi.Direction.INGRESS}

    before = seen_at_others()
    assert ns_exec(a.ns, "ping", "-6", "-c", "2", "-i", "0.2", b.ip(6)).returncode == 0
    assert ns_exec(c.ns, "ping", "-6", "-c", "1", a.ip(6)).returncode == 0
    sends = [k for k in t.flows(dp) if k[0] in pod_sources and k[5] == abi.Direction.EGRESS]
    assert any(k[1].startswith("ff02::1:ff") for k in sends), "neighbour solicitations were sent"
    assert seen_at_others() == before, "a pod's packets were accounted again at another pod's veth"


@pytest.mark.parametrize("version", [4, 6])
def test_udp_datagrams_are_counted_exactly_once(dp: Datapath, dnode: Node, version: int):
    a, b = dnode.add_pod("a"), dnode.add_pod("b")
    count, size = 200, 300
    assert t.udp(a, b, version, count, size) == count
    fwd = t.find(dp, a.ip(version), b.ip(version), UDP, 5005)
    assert len(fwd) == 1, "one flow entry: accounted at the source only"
    st = fwd[0]
    assert st.packets == count
    assert st.payload_bytes == count * size
    assert st.bytes == count * (size + 8 + L3[version] + ETH)
    with Netlink() as nl:
        assert (st.src_ep, st.dst_ep) == (nl.link(t.host_veth(a)).index, nl.link(t.host_veth(b)).index)
    # The pod's own counters agree with the flow table (nothing was evicted here).
    from_a = [v for k, v in t.flows(dp).items() if k[5] == abi.Direction.EGRESS and v.src_ep == st.src_ep]
    tx_packets, tx_bytes, *_ = dp.pod_counters()[st.src_ep]
    assert (tx_packets, tx_bytes) == (sum(v.packets for v in from_a), sum(v.bytes for v in from_a))
    assert a.ip(version) not in dp.source_counters(), "a local pod's traffic is counted in its slot"


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_transfer_counts_payload_and_emits_new_and_end(
    dp: Datapath, reader: EventReader, dnode: Node, version: int
):
    events: list[abi.FlowEvent] = []
    a, b = dnode.add_pod("a"), dnode.add_pod("b")
    nbytes = 3_000_000
    received, on_wire = t.tcp(a, b, version, nbytes)
    assert received == nbytes
    (fwd,) = t.find(dp, a.ip(version), b.ip(version), TCP, 5006)
    (rev,) = t.find(dp, b.ip(version), a.ip(version), TCP)
    # Exactly what the sender's TCP transmitted: the transfer, plus retransmissions if any occurred.
    assert fwd.payload_bytes == on_wire >= nbytes
    assert rev.payload_bytes == 0
    assert fwd.tcp_flags & 0x02 and fwd.tcp_flags & 0x01, "SYN and FIN seen"
    assert rev.tcp_flags & 0x12 == 0x12, "SYN+ACK seen"
    flags = dp.tcp_flags()
    assert flags.get((version, 0x02), 0) >= 1 and flags.get((version, 0x12), 0) >= 1, "SYN, SYN-ACK counted"
    assert sum(n for (v, f), n in flags.items() if v == version and f & 0x01) >= 2, "a FIN each way"
    for _ in range(20):
        events.extend(map(abi.FlowEvent.from_buffer_copy, reader.read(50)))
    ours = [(e.type, abi.addr_str(e.key.saddr, e.key.family)) for e in events if e.key.proto == TCP]
    for ip in (a.ip(version), b.ip(version)):
        assert (abi.EventType.NEW, ip) in ours
        assert (abi.EventType.END, ip) in ours
    end = next(
        e
        for e in events
        if e.type == abi.EventType.END and abi.addr_str(e.key.saddr, e.key.family) == a.ip(version)
    )
    assert end.last_seen_ns >= end.first_seen_ns > 0


@pytest.mark.parametrize("version", [4, 6])
def test_ping_is_counted_both_ways(dp: Datapath, dnode: Node, version: int):
    a, b = dnode.add_pod("a"), dnode.add_pod("b")
    assert ns_exec(a.ns, "ping", f"-{version}", "-c", "3", "-i", "0.2", b.ip(version)).returncode == 0
    proto = ICMP if version == 4 else ICMP6
    request, reply = ECHO[version]
    (req,) = [
        v
        for k, v in t.flows(dp).items()
        if k[:3] == (a.ip(version), b.ip(version), proto) and k[4] == request
    ]
    (rep,) = [
        v for k, v in t.flows(dp).items() if k[:3] == (b.ip(version), a.ip(version), proto) and k[4] == reply
    ]
    assert (req.packets, rep.packets) == (3, 3)
    assert req.payload_bytes == 3 * 56 and req.bytes == 3 * (56 + 8 + L3[version] + ETH)
    assert rep.flags & abi.FlowFlag.REPLY and not req.flags & abi.FlowFlag.REPLY


@pytest.mark.parametrize("version", [4, 6])
def test_separate_ping_sessions_are_separate_flows_with_their_icmp_type(
    dp: Datapath, reader: EventReader, dnode: Node, version: int
):
    """Two pings at once between the same pods: each session (echo identifier) is its own request flow
    and its own reply flow, the reply marked as the answer of its request; events carry type and code."""
    events: list[abi.FlowEvent] = []
    a, b = dnode.add_pod("a"), dnode.add_pod("b")
    pings = [
        subprocess.Popen(
            ["ip", "netns", "exec", a.ns, "ping", f"-{version}", "-c", str(n), "-i", "0.2", b.ip(version)]
        )
        for n in (2, 4)
    ]
    assert [p.wait(timeout=20) for p in pings] == [0, 0]
    proto = ICMP if version == 4 else ICMP6
    request, reply = ECHO[version]
    flows = t.flows(dp).items()
    requests = {
        k[3]: v for k, v in flows if k[:3] == (a.ip(version), b.ip(version), proto) and k[4] == request
    }
    replies = {k[3]: v for k, v in flows if k[:3] == (b.ip(version), a.ip(version), proto) and k[4] == reply}
    assert len(requests) == 2 and set(replies) == set(requests), "one flow per session and way, by echo id"
    assert sorted(v.packets for v in requests.values()) == [2, 4]
    for echo_id, rep in replies.items():
        assert rep.packets == requests[echo_id].packets
        assert rep.flags & abi.FlowFlag.REPLY and not requests[echo_id].flags & abi.FlowFlag.REPLY
    for _ in range(10):
        events.extend(map(abi.FlowEvent.from_buffer_copy, reader.read(50)))
    seen = {
        (abi.icmp_from_key(e.key.sport, e.key.dport), e.type)
        for e in events
        if e.key.proto == proto and abi.addr_str(e.key.saddr, e.key.family) in (a.ip(version), b.ip(version))
    }
    for echo_id in requests:
        assert ((request >> 8, 0, echo_id), abi.EventType.NEW) in seen
        assert ((reply >> 8, 0, echo_id), abi.EventType.NEW) in seen


def test_direct_forwarding_bypasses_the_bridge_and_still_counts_once(dp: Datapath, dnode: Node):
    a, b = dnode.add_pod("a"), dnode.add_pod("b")
    assert t.udp(a, b, 4, 5, 100, port=5100) == 5  # resolves ARP through the bridge first
    count = 300
    before_tx = t.link_stat(t.host_veth(b), "tx_packets")
    before_redirect = dp.stat(abi.Stat.REDIRECTED)
    assert t.udp(a, b, 4, count, 100) == count
    # Only bridge-flooded chatter (ARP, IPv6 ND/MLD of other pods) may reach b's host veth now.
    assert t.link_stat(t.host_veth(b), "tx_packets") - before_tx < count // 10, "packets crossed the bridge"
    assert dp.stat(abi.Stat.REDIRECTED) - before_redirect >= count
    (st,) = t.find(dp, a.ip(4), b.ip(4), UDP, 5005)
    assert st.packets == count

    dp.cfg.redirect = False
    dp.set_config()
    before_tx = t.link_stat(t.host_veth(b), "tx_packets")
    assert t.udp(a, b, 4, count, 100, port=5007) == count
    assert t.link_stat(t.host_veth(b), "tx_packets") - before_tx >= count, "redirect off: via the bridge"
    (st,) = t.find(dp, a.ip(4), b.ip(4), UDP, 5007)
    assert st.packets == count, "still counted once with the bridge in the path"


def test_a_reused_address_gets_the_new_pods_traffic_on_the_same_flow(dp: Datapath, dnode: Node):
    """Direct forwarding caches the destination in the flow entry: when the destination pod is deleted
    and its address given to a new pod, the same 5-tuple must reach the new pod (not the gone veth)."""
    a, b = dnode.add_pod("a"), dnode.add_pod("b")
    ip = b.ip(4)
    assert t.udp(a, b, 4, 50, 100, sport=42000) == 50
    assert dnode.del_pod("b").ok
    conf = dnode.conf()
    conf["runtimeConfig"] = {"ips": [ip]}
    c = dnode.add_pod("c", conf=conf)
    assert c.ip(4) == ip
    before_redirect = dp.stat(abi.Stat.REDIRECTED)
    # a still holds b's MAC for this address: only the redirect (MAC rewritten to c's) delivers these
    assert t.udp(a, c, 4, 50, 100, sport=42000) == 50
    assert dp.stat(abi.Stat.REDIRECTED) - before_redirect >= 50
    (st,) = t.find(dp, a.ip(4), ip, UDP, 5005)
    assert st.packets == 100, "one flow entry across both pods"
    with Netlink() as nl:
        c_ifindex = nl.link(t.host_veth(c)).index
    assert st.fwd_ifindex == c_ifindex
    # ... and counts for the new pod from its first packet: its own slot, from zero
    assert st.dst_ep == c_ifindex and dp.pod_counters()[c_ifindex][2] == 50


def test_a_full_ring_buffer_counts_exactly_the_lost_events(pin_dir: str, dnode: Node):
    dp = load(pin_dir, ringbuf_pages=1, aggregation=abi.Aggregation.NONE)
    reader = EventReader(dp.cfg.pin_dir)
    try:
        a, b = dnode.add_pod("a"), dnode.add_pod("b")
        events: list[abi.FlowEvent] = []

        def settled() -> tuple[int, int, int, int]:
            """(accounted packets, lost, submitted, delivered), read twice alike: the pods' own IPv6
            chatter (router solicitations, MLD) may land between two reads."""
            last = None
            for _ in range(50):
                events.extend(map(abi.FlowEvent.from_buffer_copy, reader.read(20)))
                now = (
                    sum(v.packets for v in t.flows(dp).values()),
                    dp.lost_events(),
                    dp.stat(abi.Stat.EVENTS),
                    len(events),
                )
                if now == last:
                    return now
                last = now
            raise AssertionError(f"counters never settled: {last}")

        packets0, lost0, sent0, got0 = settled()
        assert t.udp(a, b, 4, 2000, 64) == 2000  # nobody consumes while this runs
        packets1, lost1, sent1, got1 = settled()
        lost = lost1 - lost0
        assert lost > 0, "a 4 KiB ring buffer cannot hold 2000 events"
        assert got1 - got0 == sent1 - sent0, "every submitted event was delivered"
        assert (got1 - got0) + lost == packets1 - packets0, "each packet is an event or a lost one"
    finally:
        reader.close()
        dp.close()


def test_agent_restart_keeps_every_counter(pin_dir: str, dnode: Node):
    dp = load(pin_dir)
    a, b = dnode.add_pod("a"), dnode.add_pod("b")
    assert t.udp(a, b, 4, 100, 200, sport=41000) == 100
    before = t.flows(dp)
    pods = dp.pod_counters()
    dp.close()  # the agent stops; pinned maps and attached programs stay

    dp = load(pin_dir)
    try:
        after = t.flows(dp)
        for key, st in before.items():
            assert after[key].packets >= st.packets and after[key].bytes >= st.bytes
        now = dp.pod_counters()  # the pods' IPv6 chatter may add packets between two reads
        assert all(x >= y for ep, c in pods.items() for x, y in zip(now[ep], c, strict=True))
        assert set(dp.sync_endpoints(str(dnode.state_dir))) == {
            int(json.loads(p.read_text())["hostIfindex"])
            for p in (dnode.state_dir / "endpoints").glob("*.json")
        }
        assert t.udp(a, b, 4, 100, 200, sport=41000) == 100
        (st,) = t.find(dp, a.ip(4), b.ip(4), UDP, 5005)
        assert st.packets == 200, "the same flow's counter continued across the restart"
    finally:
        dp.close()


def test_pod_created_while_no_agent_ran_is_attached_on_start(pin_dir: str, dnode: Node):
    a = dnode.add_pod("a")  # no pins yet: the pod is wired but unobserved
    record = json.loads((dnode.state_dir / "endpoints" / f"{a.container_id}_eth0.json").read_text())
    assert record["observed"] is False
    with Netlink() as nl:
        assert nl.tc_bpf_list(record["hostIfindex"], "ingress") == []
    dp = load(pin_dir)
    try:
        assert record["hostIfindex"] in dp.sync_endpoints(str(dnode.state_dir))
        with Netlink() as nl:
            assert nl.tc_bpf_list(record["hostIfindex"], "ingress") == [abi.PROG_INGRESS]
        b = dnode.add_pod("b")
        assert t.udp(b, a, 4, 50, 100) == 50
        (st,) = t.find(dp, b.ip(4), a.ip(4), UDP, 5005)
        assert st.packets == 50 and st.dst_ep == record["hostIfindex"]
    finally:
        dp.close()


def test_traffic_from_the_host_is_counted_at_the_pod(dp: Datapath, dnode: Node):
    a = dnode.add_pod("a")
    before = time.monotonic()
    out = subprocess.run(
        ["ping", "-c", "2", "-i", "0.2", "-W", "2", a.ip(4)], capture_output=True, timeout=20
    )
    assert out.returncode == 0 and time.monotonic() - before < 20
    (req,) = t.find(dp, dnode.gateway4, a.ip(4), ICMP)
    assert req.packets == 2 and req.dst_ep > 0 and req.src_ep == 0


def test_broken_pins_leave_the_pod_wired_and_unobserved(cni_bin: Path, tmp_path: Path):
    """Observability never costs a pod its network: files that are not BPF objects where pins should be."""
    pins = tmp_path / "pins"
    pins.mkdir()
    for name in (*abi.PROG_PINS.values(), abi.MAP_ENDPOINTS):
        (pins / name).write_text("not a bpf object")
    node = Node(binary=cni_bin, extra={"bpfPinDir": str(pins)})
    try:
        a, b = node.add_pod("a"), node.add_pod("b")
        record = json.loads((node.state_dir / "endpoints" / f"{a.container_id}_eth0.json").read_text())
        assert record["observed"] is False
        assert ns_exec(a.ns, "ping", "-c", "1", "-W", "2", b.ip(4)).returncode == 0
        assert "unobserved" in node.log()
    finally:
        node.cleanup()


def test_a_full_flow_table_is_visible(pin_dir: str, dnode: Node):
    """The LRU flow table evicts when full; the churn is counted, never silent."""
    dp = load(pin_dir, flow_table_size=256)
    try:
        a, b = dnode.add_pod("a"), dnode.add_pod("b")
        created_before = dp.stat(abi.Stat.FLOWS_CREATED)
        code = (
            "import socket, sys\n"
            "for p in range(20000, 21000):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "    s.bind(('0.0.0.0', p)); s.sendto(b'x', (sys.argv[1], 9)); s.close()\n"
        )
        assert ns_exec(a.ns, "/usr/bin/python3", "-c", code, b.ip(4), timeout=60).returncode == 0
        created = dp.stat(abi.Stat.FLOWS_CREATED) - created_before
        present = dp.flow_table_entries()
        assert created >= 1000, "every new 5-tuple was created"
        assert present <= 256, "the table holds at most its size"
        assert created - present >= 1000 - 256, "evictions = created - present, visible to the agent"
    finally:
        dp.close()


def test_maps_pinned_by_an_incompatible_older_agent_are_replaced(pin_dir: str):
    """An upgrade that changes a map's layout must not leave the agent unable to load (bcc would reuse
    the old pin and the verifier refuse the programs)."""
    import ctypes as ct

    from plugin.bpfsys import map_create, map_info, obj_get, obj_pin

    os.makedirs(pin_dir, exist_ok=True)
    lru_hash = 9
    fd = map_create(lru_hash, ct.sizeof(abi.FlowKey), 72, 65536, "lumen_flows")
    obj_pin(fd, os.path.join(pin_dir, abi.MAP_FLOWS))
    os.close(fd)
    d = load(pin_dir)
    try:
        assert d.retired_pins and d.retired_pins[0].startswith("lumen_flows (key 40, value 72")
        fd = obj_get(os.path.join(pin_dir, abi.MAP_FLOWS))
        try:
            assert map_info(fd).value_size == ct.sizeof(abi.FlowStats)
        finally:
            os.close(fd)
    finally:
        d.close()


# -- counters documented as exact, past a full flow table ----------------------------------------------


def scrape(dp: Datapath, node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter sample the agent's Collector exposes over these maps, by (name, labels)."""
    from prometheus_client import CollectorRegistry

    from exporter.enrich import EndpointDirectory
    from exporter.mapsource import DatapathSource
    from exporter.metrics import AgentHealth, LumenCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(LumenCollector(DatapathSource(dp), EndpointDirectory(str(node.state_dir)), AgentHealth()))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in reg.collect()
        if fam.type == "counter"
        for s in fam.samples
        if s.name.endswith("_total")
    }


def pod_labels(pod: Pod, prefix: str = "") -> tuple[tuple[str, str], ...]:
    return ((f"{prefix}namespace", "default"), (f"{prefix}pod", pod.name))


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def sent_counters(a: Pod, b: Pod, packets: int, frame: int, flows: int) -> dict:
    """What every exact counter must have gained when `a` sent `packets` frames in `flows` UDP flows to
    `b` and nothing else moved."""
    pair = (*pod_labels(a, "source_"), *pod_labels(b, "destination_"))
    return {
        ("lumen_pod_tx_packets_total", pod_labels(a)): packets,
        ("lumen_pod_tx_bytes_total", pod_labels(a)): packets * frame,
        ("lumen_pod_rx_packets_total", pod_labels(b)): packets,
        ("lumen_pod_rx_bytes_total", pod_labels(b)): packets * frame,
        ("lumen_source_packets_total", pod_labels(a)): packets,
        ("lumen_source_bytes_total", pod_labels(a)): packets * frame,
        ("lumen_pod_to_pod_bytes_total", tuple(sorted((*pair, ("verdict", "FORWARDED"))))): packets * frame,
        (
            "lumen_flows_processed_total",
            (("direction", "egress"), ("protocol", "UDP"), ("verdict", "FORWARDED")),
        ): flows,
    }


#: counters that move with the traffic but are not per pod or per flow outcome: checked one by one
COUNTED_ELSEWHERE = (
    "lumen_flows_created_total",
    "lumen_datapath_events_total",
    "lumen_redirected_packets_total",
)


def ours(got: dict) -> dict:
    """The moved counters the pods' own traffic can move: not the host's multicast chatter into the pods
    (MLD, IGMP: flows in direction ingress from other sources)."""
    return {
        k: v
        for k, v in got.items()
        if k[0] not in COUNTED_ELSEWHERE
        and not k[0].startswith("lumen_other_source_")
        and ("direction", "ingress") not in k[1]
    }


@pytest.mark.parametrize("redirect", [True, False], ids=["redirect", "bridge"])
def test_every_exact_counter_equals_what_was_sent_past_a_full_flow_table(
    pin_dir: str, dnode: Node, redirect: bool
):
    """1000 UDP flows of 3 datagrams through a 64-entry flow table: the LRU evicts most flows while
    their packets still arrive, and every counter documented as exact must still equal what was sent."""
    dp = load(pin_dir, flow_table_size=64, redirect=redirect)
    try:
        a, b = dnode.add_pod("a"), dnode.add_pod("b")
        t.quiet(a), t.quiet(b)
        assert t.udp(a, b, 4, 3, 10, port=5300) == 3  # ARP resolved: nothing but the test's flows below
        flows, per_flow, size = 1000, 3, 100
        before = scrape(dp, dnode)
        assert t.udp_flows(a, b, flows, per_flow, size, port=5301, first_sport=30000) == flows * per_flow
        got = delta(scrape(dp, dnode), before)
        assert dp.flow_table_entries() <= 64, "the table was full: most flows were evicted"
        frame = ETH + L3[4] + 8 + size
        want = sent_counters(a, b, flows * per_flow, frame, flows)
        assert ours(got) == want
        processed = sum(v for k, v in got.items() if k[0] == "lumen_flows_processed_total")
        assert got[("lumen_flows_created_total", ())] == processed >= flows
        assert got.get(("lumen_redirected_packets_total", ()), 0) == (flows * per_flow if redirect else 0)
    finally:
        dp.close()


def test_counters_survive_a_restart_and_a_reused_slot_starts_at_zero(pin_dir: str, dnode: Node):
    """Two counter slots for three pods: b's slot goes to c after b's DEL. c must not inherit b's
    counts, a's must go on, and an agent restart in between must lose nothing."""
    dp = load(pin_dir, pod_slots=3)  # slots 1 and 2 (0 is "none")
    try:
        a, b = dnode.add_pod("a"), dnode.add_pod("b")
        t.quiet(a), t.quiet(b)
        assert t.udp(a, b, 4, 3, 10, port=5310) == 3
        before = scrape(dp, dnode)
        assert t.udp_flows(a, b, 20, 5, 200, port=5311, first_sport=31000) == 100
        dp.close()  # the agent stops and starts again: the pinned maps carry on
        dp = load(pin_dir, pod_slots=3)
        after_b = scrape(dp, dnode)
        assert ours(delta(after_b, before)) == sent_counters(a, b, 100, ETH + L3[4] + 8 + 200, 20)

        b_slot = dp._map(abi.MAP_ENDPOINTS)[abi.endpoint_key(b.ip(4))].slot
        assert dnode.del_pod("b").ok
        assert b_slot not in dp.slot_claims(), "DEL frees the slot"
        c = dnode.add_pod("c")
        assert dp._map(abi.MAP_ENDPOINTS)[abi.endpoint_key(c.ip(4))].slot == b_slot, "c took b's slot"
        t.quiet(c)
        assert t.udp(a, c, 4, 3, 10, port=5312) == 3
        before_c = scrape(dp, dnode)
        assert before_c[("lumen_pod_rx_packets_total", pod_labels(c))] == 3, "c starts from zero"
        assert t.udp_flows(a, c, 30, 2, 300, port=5313, first_sport=32000) == 60
        got = delta(scrape(dp, dnode), before_c)
        assert ours(got) == sent_counters(a, c, 60, ETH + L3[4] + 8 + 300, 30)
    finally:
        dp.close()


def test_slots_run_out_cleanly_and_the_agent_frees_what_a_killed_add_left(pin_dir: str, dnode: Node):
    """A claim whose pod veth is gone (an ADD killed between claim and record) is freed by the agent;
    a live pod's is not. With every slot taken, ADD still wires the pod (counted by address)."""
    from plugin import slots

    dp = load(pin_dir, pod_slots=3)  # slots 1 and 2
    try:
        a = dnode.add_pod("a")
        fds = [dp._map(m).fd for m in (abi.MAP_SLOTS, abi.MAP_PODS)]
        gone = 0x7FFFFFF0  # no device has this ifindex
        leaked = slots.claim(*fds, gone)
        assert leaked and slots.claim(*fds, gone + 1) == 0, "two slots, both taken"
        b = dnode.add_pod("b")
        assert dp._map(abi.MAP_ENDPOINTS)[abi.endpoint_key(b.ip(4))].slot == 0
        assert t.udp(b, a, 4, 20, 100, port=5320) == 20, "a pod without a slot is still wired"
        assert dp.source_counters()[b.ip(4)][0] >= 20, "and its packets counted by address"
        a_ep = dp._map(abi.MAP_ENDPOINTS)[abi.endpoint_key(a.ip(4))].endpoint_id
        assert dp.release_stale_slots(alive=set()) == [leaked]
        assert set(dp.slot_claims().values()) == {a_ep}
    finally:
        dp.close()
