"""Load, pin and attach the datapath, and read and write its maps.

bcc compiles in a child process (bpf/compile.py) that pins programs, maps and the ring buffer and exits;
this process opens the pins through libbpf (bpf/maps.py) and never maps LLVM. Cost: one clang compile per
agent start (~1-3 s here); per packet see bench/datapath. Needs bcc with headers at
/lib/modules/$(uname -r)/build (scripts/setup.sh links Debian's when the kernel has none), clsact,
bpf_redirect_peer (5.10+) and BPF ring buffers (5.8+).
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf import abi
from bpf.abi import PROG_PINS
from bpf.maps import Map, RingBuffer, map_info, obj_get
from exporter.policy.compiler import Compiled, network_key
from plugin import endpoint, pinned, slots
from plugin.netlink import Netlink

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Prog:
    name: str
    fd: int


@dataclass
class DatapathConfig:
    pin_dir: str = "/sys/fs/bpf/lumen"
    flow_table_size: int = 65536
    source_table_size: int = 16384
    endpoint_table_size: int = 4096
    ipcache_size: int = 65536
    policy_map_size: int = 262144
    cidr_map_size: int = 32768
    #: local pods with exact counters (lumen_pods, lumen_pairs: pod_slots^2 x 32 bytes); slot 0 is "none"
    pod_slots: int = 256
    policy_count_size: int = 16384
    ringbuf_pages: int = 256  # 1 MiB; must be a power of two
    aggregation: abi.Aggregation = abi.Aggregation.DEFAULT
    report_interval_s: float = 5.0
    redirect: bool = True
    wakeup_batch: int = 64
    extra_cflags: list[str] = field(default_factory=list)

    def cflags(self) -> list[str]:
        return [
            f"-I{abi.INCLUDE_DIR}",
            f'-DLUMEN_PIN_DIR="{self.pin_dir}"',
            f"-DLUMEN_FLOW_TABLE_SIZE={self.flow_table_size}",
            f"-DLUMEN_SOURCE_TABLE_SIZE={self.source_table_size}",
            f"-DLUMEN_ENDPOINT_TABLE_SIZE={self.endpoint_table_size}",
            f"-DLUMEN_IPCACHE_SIZE={self.ipcache_size}",
            f"-DLUMEN_POLICY_MAP_SIZE={self.policy_map_size}",
            f"-DLUMEN_CIDR_MAP_SIZE={self.cidr_map_size}",
            f"-DLUMEN_POD_SLOTS={self.pod_slots}",
            f"-DLUMEN_POLICY_COUNT_SIZE={self.policy_count_size}",
            f"-DLUMEN_RINGBUF_PAGES={self.ringbuf_pages}",
            *self.extra_cflags,
        ]


def source_text() -> str:
    """The C as bcc compiles it (for `lumen agent --print-bpf`)."""
    return abi.SOURCE.read_text()


class Datapath:
    """The loaded programs and maps. Maps under the pin dir outlive this object and the agent."""

    def __init__(self, cfg: DatapathConfig) -> None:
        self.cfg = cfg
        pin = cfg.pin_dir
        self.progs = {name: Prog(name, obj_get(os.path.join(pin, p))) for name, p in PROG_PINS.items()}
        self.maps = {
            name: Map(os.path.join(pin, name), key, value, percpu=percpu)
            for name, (key, value, percpu) in abi.PINNED_LAYOUTS.items()
        }
        self._events_fd = obj_get(os.path.join(pin, abi.MAP_EVENTS))
        #: maps of an incompatible older layout the compile step unpinned (they start empty)
        self.retired_pins: list[str] = []
        self._ring: RingBuffer | None = None

    @classmethod
    def load(cls, cfg: DatapathConfig) -> Datapath:
        """Compile and pin in a child process, then open what it pinned."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        arg = json.dumps({"pin_dir": cfg.pin_dir, "cflags": cfg.cflags()})
        proc = subprocess.run(
            [sys.executable, "-m", "bpf.compile", arg], capture_output=True, text=True, env=env, timeout=300
        )
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            result = {"ok": False, "error": proc.stderr.strip()[-4000:] or f"exit status {proc.returncode}"}
        if not result.get("ok"):
            raise RuntimeError(f"compiling the datapath failed: {result.get('error')}\n{proc.stderr[-4000:]}")
        dp = cls(cfg)
        dp.retired_pins = list(result.get("retired", []))
        dp.set_config()
        return dp

    def set_config(self) -> None:
        table = self._map(abi.MAP_CONFIG)
        old = abi.Config.from_buffer_copy(bytes(table[ct.c_uint32(0)]))
        cfg = abi.Config(
            aggregation=int(self.cfg.aggregation),
            redirect=1 if self.cfg.redirect else 0,
            report_interval_ns=int(self.cfg.report_interval_s * 1e9),
            wakeup_batch=max(1, self.cfg.wakeup_batch),
            # a restarted agent keeps enforcing what is in force until it has compiled its own
            policy_gen=old.policy_gen,
            policy_slot=old.policy_slot,
            audit=old.audit,
        )
        table[ct.c_uint32(0)] = cfg

    def config(self) -> abi.Config:
        return abi.Config.from_buffer_copy(bytes(self._map(abi.MAP_CONFIG)[ct.c_uint32(0)]))

    # -- policy ----------------------------------------------------------------------------------

    def apply_policy(self, compiled: Compiled, audit: bool = False) -> int:
        """Write `compiled` into the idle half of the policy and CIDR maps, then switch to it in one
        config write and bump the generation (flows decide again on their next packet); the old half
        is emptied after. Returns the new generation."""
        cfg = self.config()
        slot = (cfg.policy_slot ^ 1) & 1
        policy, cidrs = self._map(abi.MAP_POLICY), self._map(abi.MAP_CIDRS)
        self._clear_slot(slot)
        for net, ident in compiled.cidrs.items():
            addr, family, plen = network_key(net)
            ckey = abi.CidrKey(prefixlen=abi.CIDR_PREFIX_BASE + plen, slot=slot, family=family)
            ct.memmove(ckey.addr, addr, 16)
            cidrs[ckey] = ct.c_uint32(ident)
        for (direction, subject), (pid, audit_ns) in compiled.markers.items():
            key = abi.PolicyKey(
                prefixlen=abi.POLICY_PREFIX_SUBJECT, slot=slot, direction=_DIRS[direction], subject=subject
            )
            policy[key] = abi.PolicyValue(policy_id=pid, kind=abi.PolicyKind.ISOLATE, audit=int(audit_ns))
        for e, pid in compiled.allows.items():
            key = abi.PolicyKey(
                prefixlen=e.prefixlen,
                slot=slot,
                direction=_DIRS[e.direction],
                subject=e.subject,
                peer=e.peer,
                proto=e.proto,
                port=_htons(e.port),
            )
            policy[key] = abi.PolicyValue(policy_id=pid, kind=abi.PolicyKind.ALLOW)
        cfg.policy_slot = slot
        cfg.policy_gen = (cfg.policy_gen + 1) & 0xFFFFFFFF or 1
        cfg.audit = int(audit)
        self._map(abi.MAP_CONFIG)[ct.c_uint32(0)] = cfg
        self._clear_slot(slot ^ 1)
        return int(cfg.policy_gen)

    def bump_policy_generation(self) -> int:
        """Flows decide again on their next packet (a pod's identity changed)."""
        cfg = self.config()
        cfg.policy_gen = (cfg.policy_gen + 1) & 0xFFFFFFFF or 1
        self._map(abi.MAP_CONFIG)[ct.c_uint32(0)] = cfg
        return int(cfg.policy_gen)

    def _clear_slot(self, slot: int) -> None:
        for name in (abi.MAP_POLICY, abi.MAP_CIDRS):
            table = self._map(name)
            stale = [bytes(k) for k in table.keys() if k.slot == slot]
            for raw in stale:
                try:
                    del table[table.Key.from_buffer_copy(raw)]
                except KeyError:
                    pass

    def policy_entries(self) -> int:
        return sum(1 for _ in self._map(abi.MAP_POLICY).keys())

    def set_endpoint_identity(self, ips: list[str], identity: int) -> None:
        """Change the identity of a local pod's endpoint entries (its labels changed or became known)."""
        table = self._map(abi.MAP_ENDPOINTS)
        for ip in ips:
            key = pinned.endpoint_key(ip)
            try:
                value = bytes(table[key])
            except KeyError:
                continue
            if pinned.endpoint_identity(value) != identity:
                table[key] = pinned.with_identity(value, identity)

    def endpoint_identities(self) -> dict[str, int]:
        return {
            abi.addr_str(k.addr, k.family): int(v.identity)
            for k, v in self._map(abi.MAP_ENDPOINTS).items()
            if k.family != abi.EP_BY_IFINDEX
        }

    def set_ipcache(self, identities: dict[str, int]) -> None:
        """Exactly these non-pod addresses -> identity (the node's own addresses, remote pods)."""
        table = self._map(abi.MAP_IPCACHE)
        want = {bytes(abi.endpoint_key(ip)): ident for ip, ident in identities.items()}
        for k in [bytes(k) for k in table.keys()]:
            if k not in want:
                try:
                    del table[abi.EndpointKey.from_buffer_copy(k)]
                except KeyError:
                    pass
        for raw, ident in want.items():
            table[abi.EndpointKey.from_buffer_copy(raw)] = ct.c_uint32(ident)

    def _map(self, name: str) -> Map:
        return self.maps[name]

    # -- attaching -------------------------------------------------------------------------------

    def attach(self, ifindex: int) -> None:
        """clsact ingress + egress on a host veth; replaces older programs (idempotent)."""
        with Netlink() as nl:
            nl.tc_clsact_add(ifindex)
            nl.tc_bpf_attach(ifindex, "ingress", self.progs[abi.PROG_INGRESS].fd, abi.PROG_INGRESS)
            nl.tc_bpf_attach(ifindex, "egress", self.progs[abi.PROG_EGRESS].fd, abi.PROG_EGRESS)

    def add_endpoint(
        self, ips: list[str], ifindex: int, endpoint_id: int, mac: str, identity: int = abi.Identity.UNMANAGED
    ) -> int:
        """What the plugin's ADD writes, for a pod attached without it; keeps the pod's counter slot if
        its entries name one it still holds, else claims one. Returns the slot (0: every slot taken)."""
        table = self._map(abi.MAP_ENDPOINTS)
        slot = self._held_slot(ips, endpoint_id)
        if not slot:
            slot = slots.claim(self._map(abi.MAP_SLOTS).fd, self._map(abi.MAP_PODS).fd, endpoint_id)
        value = pinned.endpoint_info(ifindex, endpoint_id, mac, identity, slot)
        for ip in ips:
            table[pinned.endpoint_key(ip)] = value
        table[pinned.endpoint_key_ifindex(ifindex)] = value
        slots.bump_generation(self._map(abi.MAP_ENDPOINT_GEN).fd)
        return slot

    def _held_slot(self, ips: list[str], endpoint_id: int) -> int:
        claims = self._map(abi.MAP_SLOTS)
        for ip in ips:
            try:
                info = abi.EndpointInfo.from_buffer_copy(
                    bytes(self._map(abi.MAP_ENDPOINTS)[abi.endpoint_key(ip)])
                )
                held = claims[ct.c_uint32(info.slot)] if info.slot else 0
            except KeyError:
                continue
            if info.endpoint_id == endpoint_id and held == endpoint_id:
                return int(info.slot)
        return 0

    def slot_claims(self) -> dict[int, int]:
        """Counter slot -> endpoint id of the pod holding it."""
        return {int(k.value): int(v) for k, v in self._map(abi.MAP_SLOTS).items()}

    def release_stale_slots(self, alive: set[int]) -> list[int]:
        """Free the slots of endpoints that are not in `alive` and whose host veth is gone (an ADD killed
        between its claim and its record; DEL frees the others). Returns the slots freed."""
        freed = []
        claims, pods, pairs = (self._map(m).fd for m in (abi.MAP_SLOTS, abi.MAP_PODS, abi.MAP_PAIRS))
        with Netlink() as nl:
            for slot, ep in self.slot_claims().items():
                if ep in alive or nl.link(index=ep) is not None:
                    continue
                slots.release(claims, pods, pairs, slot, ep)
                freed.append(slot)
        return freed

    def sync_endpoints(self, state_dir: str) -> list[int]:
        """Attach to every ready pod veth of the endpoint records (pods added while no agent ran, and
        pods still running the previous agent's programs); returns the ifindexes attached."""
        attached = []
        with Netlink() as nl:
            for rec in endpoint.all_records(state_dir):
                if rec.get("state") != "ready" or not rec.get("hostIfindex"):
                    continue
                link = nl.link(index=int(rec["hostIfindex"]))
                if link is None or link.name != rec.get("hostVeth"):
                    continue  # the pod is gone; DEL or GC will remove its record
                ips = rec["ips"] + rec.get("linkLocal", [])
                self.add_endpoint(
                    ips,
                    link.index,
                    int(rec.get("endpointId", link.index)),
                    rec["mac"],
                    int(rec.get("identity") or abi.Identity.UNMANAGED),
                )
                self.attach(link.index)
                attached.append(link.index)
        return attached

    # -- reading ---------------------------------------------------------------------------------

    def open_ring_buffer(self, callback: Callable[[Any], None], raw: bool = False) -> None:
        """Deliver each flow_event to `callback`: an abi.FlowEvent, or with `raw` its bytes (one copy
        fewer; for a consumer that unpacks with struct)."""
        size = ct.sizeof(abi.FlowEvent)

        if raw:

            def _cb(data: int, length: int) -> None:
                if length >= size:
                    callback(ct.string_at(data, size))

        else:

            def _cb(data: int, length: int) -> None:
                if length >= size:
                    callback(abi.FlowEvent.from_buffer_copy(ct.string_at(data, size)))

        self._ring = RingBuffer(self._events_fd, _cb)

    def poll(self, timeout_ms: int = 100) -> None:
        """Wait up to `timeout_ms` for a wake-up, then drain: events submitted with BPF_RB_NO_WAKEUP
        never wake epoll, so the timer is what bounds their delay."""
        assert self._ring is not None, "open_ring_buffer first"
        self._ring.poll(timeout_ms)
        self._ring.consume()

    def consume(self) -> None:
        assert self._ring is not None, "open_ring_buffer first"
        self._ring.consume()

    def flows(self) -> Iterator[tuple[abi.FlowKey, abi.FlowStats]]:
        table = self._map(abi.MAP_FLOWS)
        try:
            yield from table.items_lookup_batch()
        except OSError:  # kernels without batch ops on LRU maps
            yield from table.items()

    def source_counters(self) -> dict[str, tuple[int, int]]:
        """Source address -> (packets, bytes) of sources that are not a local pod with a counter slot."""
        out = {}
        for key, per_cpu in self._map(abi.MAP_SOURCES).items():
            packets = sum(v.packets for v in per_cpu)
            nbytes = sum(v.bytes for v in per_cpu)
            out[abi.addr_str(key.addr, key.family)] = (packets, nbytes)
        return out

    def pod_counters(self) -> dict[int, tuple[int, int, int, int]]:
        """Endpoint id -> (tx packets, tx bytes, rx packets, rx bytes) of every pod holding a slot."""
        pods = self._map(abi.MAP_PODS)
        out = {}
        for slot, ep in self.slot_claims().items():
            try:
                per_cpu = pods[ct.c_uint32(slot)]
            except KeyError:
                continue
            if per_cpu[0].endpoint_id != ep:
                continue  # claimed, not yet zeroed for its pod
            out[ep] = (
                sum(v.tx_packets for v in per_cpu),
                sum(v.tx_bytes for v in per_cpu),
                sum(v.rx_packets for v in per_cpu),
                sum(v.rx_bytes for v in per_cpu),
            )
        return out

    def pair_bytes(self) -> dict[tuple[int, int, int], int]:
        """(source endpoint id, destination endpoint id, verdict) -> bytes, between pods holding slots."""
        claims = self.slot_claims()
        n = table_entries(self._map(abi.MAP_PODS))
        pairs = self._map(abi.MAP_PAIRS)
        out = {}
        for src, src_ep in claims.items():
            row = memoryview(pairs.raw_values(src * n, n)).cast("Q")  # n x u64[4]
            for dst, dst_ep in claims.items():
                for verdict in abi.Verdict:
                    nbytes = row[dst * 4 + verdict]
                    if nbytes:
                        out[(src_ep, dst_ep, int(verdict))] = int(nbytes)
        return out

    def _percpu_u64_array(self, name: str) -> list[int]:
        table = self._map(name)
        entries = table_entries(table)
        raw = memoryview(table.raw_values(0, entries)).cast("Q")
        cpus = table.total_cpu
        return [sum(raw[i * cpus : (i + 1) * cpus]) for i in range(entries)]

    def flow_counts(self) -> dict[tuple[int, int, int], int]:
        """(protocol number, verdict, direction) -> flows created."""
        out = {}
        for i, n in enumerate(self._percpu_u64_array(abi.MAP_FLOW_COUNTS)):
            if n:
                out[(i >> 3, i >> 1 & 3, (i & 1) + 1)] = n
        return out

    def drops(self) -> dict[tuple[int, int], int]:
        """(drop reason, protocol number) -> packets dropped."""
        return {(i >> 8, i & 0xFF): n for i, n in enumerate(self._percpu_u64_array(abi.MAP_DROPS)) if n}

    def policy_decisions(self) -> dict[tuple[int, int, int, bool], int]:
        """(policy id, verdict, direction of the side, denied) -> flow decisions. A denied side is named
        by the policy isolating it (0: not known)."""
        out: dict[tuple[int, int, int, bool], int] = {}
        for k, per_cpu in self._map(abi.MAP_POLICY_COUNTS).items():
            denied = bool(k.denied) or k.policy_id == abi.POLICY_DENIED_ID  # the latter: an older build's
            pid = 0 if k.policy_id == abi.POLICY_DENIED_ID else int(k.policy_id)
            key = (pid, int(k.verdict), int(k.direction), denied)
            out[key] = out.get(key, 0) + sum(per_cpu)
        return out

    def policy_counts(self) -> dict[tuple[int, int, int], int]:
        """(policy id, verdict, direction of the side) -> flow decisions; POLICY_DENIED_ID for a side no
        rule admitted."""
        out: dict[tuple[int, int, int], int] = {}
        for (pid, verdict, direction, denied), n in self.policy_decisions().items():
            key = (abi.POLICY_DENIED_ID if denied else pid, verdict, direction)
            out[key] = out.get(key, 0) + n
        return out

    def tcp_flags(self) -> dict[tuple[int, int], int]:
        """(IP version, TCP flag byte) -> packets, for packets with SYN, FIN or RST."""
        counts = self._percpu_u64_array(abi.MAP_TCP_FLAGS)
        return {(6 if i >> 8 else 4, i & 0xFF): n for i, n in enumerate(counts) if n}

    def stat(self, which: abi.Stat) -> int:
        return int(sum(self._map(abi.MAP_STATS)[ct.c_uint32(int(which))]))

    def lost_events(self) -> int:
        return self.stat(abi.Stat.LOST_EVENTS)

    def flow_table_entries(self) -> int:
        return sum(1 for _ in self.flows())

    def sweep_idle(self, idle_ns: int, now_ns: int) -> list[tuple[abi.FlowKey, abi.FlowStats]]:
        """Remove flows idle for `idle_ns` and return them: the agent emits their END."""
        table = self._map(abi.MAP_FLOWS)
        ended = [(k, v) for k, v in self.flows() if now_ns - v.last_seen_ns >= idle_ns]
        for key, _ in ended:
            try:
                del table[key]
            except KeyError:
                pass
        return ended

    def close(self) -> None:
        """Close this process's handles; pinned maps and programs stay, attached programs keep running."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for m in self.maps.values():
            m.close()
        for p in self.progs.values():
            os.close(p.fd)
        self.progs = {}
        os.close(self._events_fd)


_DIRS = {"egress": int(abi.Direction.EGRESS), "ingress": int(abi.Direction.INGRESS)}


def table_entries(table: Map) -> int:
    return int(map_info(table.fd).max_entries)


def _htons(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def unpin_all(pin_dir: str) -> None:
    """Remove every pin (uninstall, tests). Attached programs keep running until their veth goes."""
    directory = Path(pin_dir)
    if not directory.exists():
        return
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()
