"""The node agent: wiring only. Loads the datapath, consumes the ring buffer on one thread, sweeps idle
flows and follows the endpoint records on another, and serves the API (uvicorn) on the main thread.

    kernel -> ring buffer -> events.Decoder -> FlowStore -> API / SSE
                                            -> FlowTracer (OTLP)
    kernel maps (pinned) --------------------> metrics.LumenCollector at scrape time
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from exporter.enrich import EndpointDirectory, KubeLabels, LabelSource, Pod
from exporter.flows import DEFAULT_CAPACITY, FlowStore
from exporter.metrics import AgentHealth, LumenCollector
from plugin import endpoint as records

log = logging.getLogger("lumen.agent")

VERSION = "0.1.0"


@dataclass
class AgentConfig:
    state_dir: str = "/run/lumen"
    pin_dir: str = "/sys/fs/bpf/lumen"
    host: str = "127.0.0.1"
    port: int = 9465
    token: str | None = None
    node: str = field(default_factory=socket.gethostname)
    flow_store_size: int = DEFAULT_CAPACITY
    flow_table_size: int = 65536
    pod_slots: int = 256  # local pods with exact counters (lumen_pods)
    ringbuf_pages: int = 256
    aggregation: str = "default"  # or "none": one event per packet (debugging, benchmarks)
    report_interval_s: float = 5.0
    wakeup_batch: int = 64
    redirect: bool = True
    idle_timeout_s: float = 60.0
    housekeeping_s: float = 1.0
    poll_timeout_ms: int = 100
    otel: bool = False
    plugin_socket: str | None = None  # serve the plugin's handed-over calls here
    policy_dirs: list[str] = field(default_factory=lambda: ["/etc/lumen/policies"])
    policy_audit: bool = False  # every policy drop becomes an AUDIT verdict (forwarded)
    # the cluster network (exporter/network.py): routes to other nodes' pods, masquerade
    routing_mode: str = "direct"  # or "vxlan"
    vxlan_device: str = "lumen-vxlan"
    vxlan_vni: int = 1
    vxlan_port: int = 8472
    masquerade: bool = True
    non_masquerade: list[str] = field(default_factory=list)


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.started_at = time.time()
        labels: LabelSource | None = None
        self.kube: KubeLabels | None = None
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube = KubeLabels(cfg.node)
            try:
                kube.start()
                labels = self.kube = kube
            except Exception as exc:  # noqa: BLE001 - labels are optional; flows still get pod names
                log.warning("no pod labels: kubernetes client unavailable", extra={"error": str(exc)})
        self.directory = EndpointDirectory(cfg.state_dir, labels)
        self.store = FlowStore(cfg.flow_store_size)
        self.health = AgentHealth()
        self.health.count_attached = self.count_attached
        self.attached: set[int] = set()
        self.registry = CollectorRegistry(auto_describe=False)
        self.tracer: Any = None
        self.dp: Any = None
        self.decoder: Any = None
        self.source: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._plugin_server: subprocess.Popen[bytes] | None = None
        self._last_flow: Any = None
        self.error = ""
        self.loaded_at = float("inf")
        self._plugin_attached: set[int] = set()
        self.enforcer: Any = None
        self.policy_names: dict[int, str] = {}
        self.network: Any = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        from bpf import abi
        from bpf.loader import Datapath, DatapathConfig
        from exporter.events import DatapathSource, Decoder

        os.makedirs(self.cfg.state_dir, exist_ok=True)
        dcfg = DatapathConfig(
            pin_dir=self.cfg.pin_dir,
            flow_table_size=self.cfg.flow_table_size,
            pod_slots=self.cfg.pod_slots,
            ringbuf_pages=self.cfg.ringbuf_pages,
            aggregation=abi.Aggregation[self.cfg.aggregation.upper()],
            report_interval_s=self.cfg.report_interval_s,
            redirect=self.cfg.redirect,
            wakeup_batch=self.cfg.wakeup_batch,
        )
        t0 = time.monotonic()
        self.dp = Datapath.load(dcfg)
        self.loaded_at = time.time()
        if self.dp.retired_pins:
            log.warning(
                "maps pinned by an incompatible older agent were replaced; their counters restart",
                extra={"maps": self.dp.retired_pins},
            )
        from exporter.enforcer import Enforcer

        for d in self.cfg.policy_dirs:
            if not os.path.exists(d):
                log.warning("policy directory does not exist (yet): no policies from it", extra={"dir": d})
        self.enforcer = Enforcer(
            self.cfg.state_dir,
            self.cfg.policy_dirs,
            self.dp,
            self.directory,
            cluster_source=self.kube,
            audit=self.cfg.policy_audit,
        )
        self.policy_names = self.enforcer.policy_names
        if self.kube is None:
            from exporter.enrich import ManifestLabels

            self.directory.label_source = ManifestLabels(lambda: self.enforcer.manifests)
        self.network = self._node_network()
        self.decoder = Decoder(self.directory, self.cfg.node, self.policy_names)
        self.source = DatapathSource(self.dp)
        self.registry.register(
            LumenCollector(self.source, self.directory, self.health, self.store, self.policy_names)
        )
        if self.cfg.otel:
            from exporter.tracing import FlowTracer

            self.tracer = FlowTracer(self.cfg.node)
        self.dp.open_ring_buffer(self._on_event, raw=True)
        self._sync_endpoints()
        # identities and policy maps before the plugin server takes its first ADD
        self.enforcer.sync()
        self.directory.set_remote(self.enforcer.remote_pods)
        self.network.sync(force=True)
        log.info(
            "datapath loaded",
            extra={
                "pin_dir": self.cfg.pin_dir,
                "seconds": round(time.monotonic() - t0, 3),
                "attached": len(self.attached),
            },
        )
        if self.cfg.plugin_socket:
            # The plugin's warm server forks per call; it runs as our child so the agent owns its life.
            self._plugin_server = subprocess.Popen(
                [sys.executable, "-m", "plugin.server", "--socket", self.cfg.plugin_socket]
            )
        for target in (self._poll_loop, self._housekeeping_loop):
            t = threading.Thread(target=target, name=target.__name__, daemon=True)
            t.start()
            self._threads.append(t)

    def _node_network(self) -> Any:
        """Routes, VXLAN and masquerade from the node list: the API server's Nodes in a cluster, else
        the `Node` manifests of the policy directories."""
        from exporter.masquerade import Masquerade, table_exists
        from exporter.network import NodeNetwork
        from exporter.nodes import KubeNodes
        from exporter.routing import RoutingConfig

        cfg = self.cfg
        routing = RoutingConfig(cfg.node, cfg.routing_mode, cfg.vxlan_device, cfg.vxlan_vni, cfg.vxlan_port)
        nodes: Any = lambda: self.enforcer.manifests.nodes  # noqa: E731
        if self.kube is not None:
            kube_nodes = KubeNodes()
            kube_nodes.start()
            nodes = kube_nodes.nodes
        masq = Masquerade(non_masquerade=cfg.non_masquerade) if cfg.masquerade else None
        if masq is None and table_exists():
            Masquerade().remove()  # switched off: our table goes, whole
            log.info("egress masquerade off: Lumen's nftables table removed")
        return NodeNetwork(routing, nodes, masq)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        if self._plugin_server is not None:
            self._plugin_server.terminate()
            try:
                self._plugin_server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._plugin_server.kill()
        if self.tracer is not None:
            self.tracer.shutdown()
        if self.dp is not None:
            # Pinned maps and attached programs stay: traffic keeps flowing and counting without us.
            self.dp.close()
        log.info("agent stopped")

    # -- ring buffer thread --------------------------------------------------------------------

    def _on_event(self, ev: Any) -> None:
        try:
            flow = self.decoder.flow(ev)
        except Exception:  # noqa: BLE001 - one bad record must not stop consumption
            self.health.decode_errors += 1
            return
        self.store.add(flow)
        if self.tracer is not None:
            self.tracer.on_flow(flow)
        self.health.events_consumed += 1
        self._last_flow = flow

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dp.poll(self.cfg.poll_timeout_ms)
            except Exception as exc:  # noqa: BLE001 - keep consuming; the error shows in /readyz
                self.error = f"ring buffer poll failed: {exc}"
                log.error("ring buffer poll failed", extra={"error": str(exc)})
                self._stop.wait(1)
                continue
            self.health.last_poll_monotonic = time.monotonic()
            flow, self._last_flow = self._last_flow, None
            if flow is not None:
                self.health.poll_lag_seconds = max(0.0, (time.time_ns() - flow.time_ns) / 1e9)

    # -- housekeeping thread -------------------------------------------------------------------

    def _housekeeping_loop(self) -> None:
        last_sweep = time.monotonic()
        while not self._stop.wait(self.cfg.housekeeping_s):
            try:
                self._sync_endpoints()
                self.enforcer.sync()
                self.directory.set_remote(self.enforcer.remote_pods)
                self.network.sync()
                self.decoder.sync_clock()
                if time.monotonic() - last_sweep >= min(self.cfg.idle_timeout_s / 2, 10.0):
                    last_sweep = time.monotonic()
                    self.sweep()
            except Exception:  # noqa: BLE001 - housekeeping retries next round
                log.exception("housekeeping failed")

    def sweep(self) -> int:
        """Remove idle flows from the kernel table and put their END in the store (counters are kept
        apart from flow entries, so nothing is lost with them); free counter slots an ADD killed half
        way left behind."""
        now = time.monotonic_ns()
        ended = self.dp.sweep_idle(int(self.cfg.idle_timeout_s * 1e9), now)
        for key, st in ended:
            try:
                flow = self.decoder.ended(key, st, now)
            except Exception:  # noqa: BLE001 - only this record is lost
                self.health.decode_errors += 1
                continue
            self.store.add(flow)
            if self.tracer is not None:
                self.tracer.on_flow(flow)
        self.health.swept_flows += len(ended)
        freed = self.dp.release_stale_slots({p.endpoint_id for p in self.directory.pods})
        if freed:
            log.info("freed counter slots of pods that are gone", extra={"slots": freed})
        return len(ended)

    def _attached_by_plugin(self, pod: Pod) -> bool:
        # The plugin attaches the pinned programs at ADD, then writes the record "ready". A record written
        # after we pinned ours names a pod running our programs; older ones run a previous agent's, whose
        # ring buffer nobody reads, and get re-attached.
        if not pod.observed:
            return False
        if pod.host_ifindex in self._plugin_attached:
            return True
        try:
            mtime = os.stat(records.record_path(self.cfg.state_dir, pod.container_id, pod.ifname)).st_mtime
        except FileNotFoundError:
            return False
        if mtime > self.loaded_at:
            self._plugin_attached.add(pod.host_ifindex)
            return True
        return False

    def _is_attached(self, pod: Pod) -> bool:
        return pod.host_ifindex in self.attached or self._attached_by_plugin(pod)

    def _sync_endpoints(self) -> None:
        self.directory.refresh()
        ready = [p for p in self.directory.pods if p.state == "ready" and p.host_ifindex]
        missing = [p for p in ready if not self._is_attached(p)]
        if missing:
            try:
                self.attached = set(self.dp.sync_endpoints(self.cfg.state_dir))
            except OSError as exc:
                log.warning("attaching endpoints failed", extra={"error": str(exc)})
        alive = {p.host_ifindex for p in ready}
        self.attached &= alive
        self._plugin_attached &= alive
        self.health.attached_endpoints = self.count_attached()

    def count_attached(self) -> int:
        self.directory.refresh()
        return sum(1 for p in self.directory.pods if p.state == "ready" and self._is_attached(p))

    def _network_status(self) -> dict[str, Any]:
        if self.network is None:
            return {}
        st = self.network.status
        return {
            "mode": self.cfg.routing_mode,
            "masquerade": self.cfg.masquerade,
            "nodes": st.nodes,
            "routes": st.routes,
            "problems": st.problems,
            "error": st.error,
        }

    # -- api.AgentView ---------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.dp is None:
            return False, "datapath not loaded"
        if self.error:
            return False, self.error
        last = self.health.last_poll_monotonic
        if not last or time.monotonic() - last > 5:
            return False, "ring buffer not polled in the last 5 s"
        return True, "ok"

    def policy_view(self) -> Any:
        """exporter.policy_api.PolicyView, or None before the datapath is loaded."""
        return self if self.enforcer is not None else None

    @property
    def engine(self) -> Any:
        return self.enforcer.engine

    def status_dict(self) -> dict[str, Any]:
        st = self.enforcer.status
        cfg = self.dp.config()
        return {
            "generation": int(cfg.policy_gen),
            "applied_at": st.applied_at,
            "audit": bool(cfg.audit),
            "dirs": self.cfg.policy_dirs,
            "files": st.files,
            "policies": st.policies,
            "summary": st.summary,
            "error": st.error,
            "map_entries": self.dp.policy_entries(),
        }

    def endpoints(self) -> list[dict[str, Any]]:
        self.directory.refresh()
        return [
            {
                "namespace": p.namespace,
                "pod": p.pod,
                "containerId": p.container_id,
                "ifname": p.ifname,
                "ips": list(p.ips),
                "hostVeth": p.host_veth,
                "hostIfindex": p.host_ifindex,
                "endpointId": p.endpoint_id,
                "identity": (
                    self.enforcer.pod_identities.get(f"{p.namespace}/{p.pod}") if self.enforcer else None
                )
                or p.record.get("identity"),
                "state": p.state,
                "attached": self._is_attached(p),
            }
            for p in self.directory.pods
        ]

    def status(self) -> dict[str, Any]:
        stats = dict(self.source.datapath_stats()) if self.source else {}
        entries = self.source.flow_table_entries() if self.source else 0
        capacity = self.cfg.flow_table_size
        ok, reason = self.ready()
        return {
            "version": VERSION,
            "node": self.cfg.node,
            "ready": ok,
            "reason": reason,
            "uptime_s": round(time.time() - self.started_at, 1),
            "pin_dir": self.cfg.pin_dir,
            "state_dir": self.cfg.state_dir,
            "aggregation": self.cfg.aggregation,
            "flow_table": {
                "entries": entries,
                "capacity": capacity,
                "fill_ratio": round(entries / capacity, 4),
            },
            "flow_store": {
                "flows": len(self.store),
                "capacity": self.store.capacity,
                "evicted": self.store.evicted,
            },
            "events": {
                "consumed": self.health.events_consumed,
                "emitted": stats.get("events", 0),
                "lost": stats.get("lost_events", 0),
                "decode_errors": self.health.decode_errors,
                "poll_lag_s": round(self.health.poll_lag_seconds, 6),
            },
            "otel": self.tracer is not None,
            "network": self._network_status(),
            "endpoints": self.endpoints(),
        }
