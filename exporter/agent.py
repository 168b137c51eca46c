"""The node agent: wiring only. Loads the datapath, runs the flow pipeline on one thread and housekeeping
(endpoint records, policy, the idle sweep, clock) on another, and serves the API (uvicorn) on the main one.

    kernel -> ring buffer -> bpf/ringbuf EventReader -> decode (enrich) -> sinks: memory FlowStore, tracer,
                                                                          history (exporter/history/)
    kernel flow table -> sweep (idle flows) ----------------------------> the same sinks
    kernel maps (pinned) -----------------------------------------------> metrics.LumenCollector at scrape
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry

from exporter import status
from exporter.attachments import Attachments
from exporter.config import AgentConfig
from exporter.enrich import EndpointDirectory, Enricher, LabelSource
from exporter.flows import FlowStore
from exporter.metrics import AgentHealth, LumenCollector
from exporter.pipeline import Pipeline
from exporter.store import FlowSource

log = logging.getLogger("lumen.agent")

VERSION = "0.1.0"
#: /readyz fails when the ring buffer was not polled for this long, or the kernel emitted events for
#: this long while the agent consumed none
STALL_S = 5.0


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.started_at = time.time()
        labels: LabelSource | None = None
        self.kube: Any = None  # exporter.kube.KubeWatch in a cluster
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            from exporter.kube import KubeWatch

            kube = KubeWatch(cfg.node)
            try:
                kube.start()
                labels = self.kube = kube
            except Exception as exc:  # noqa: BLE001 - labels are optional; flows still get pod names
                log.warning("no pod labels: kubernetes client unavailable", extra={"error": str(exc)})
        self.directory = EndpointDirectory(cfg.state_dir, labels)
        self.store = FlowStore(cfg.flow_store_size)
        self.history: FlowSource | None = None  # a FlowSource of older flows (exporter/history/), if kept
        self.history_sink: Any = None  # exporter.history.sink.HistorySink
        self.history_error = ""  # why there is no history although one was asked for
        self.health = AgentHealth()
        self.registry = CollectorRegistry(auto_describe=False)
        self.policy_names: dict[int, str] = {}
        self.enricher: Enricher | None = None
        self.attachments: Attachments | None = None
        self.pipeline: Pipeline | None = None
        self.tracer: Any = None
        self.dp: Any = None
        self.decoder: Any = None
        self.source: Any = None
        self.sweeper: Any = None
        self.enforcer: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._plugin_server: subprocess.Popen[bytes] | None = None
        self._stall = ""  # why the kernel's events are not reaching us, if they are not
        self._emitted_seen = (-1, 0, 0.0)  # (kernel events, consumed, when) at the last change
        self.network: Any = None  # exporter.network.NodeNetwork: routes to other nodes' pods

    def _sync_policy(self) -> None:
        """Policy, identities and remote pods up to date; flows name their ends again when identities or
        labels changed."""
        before = (dict(self.enforcer.pod_identities), dict(self.enforcer.address_identities))
        self.enforcer.sync()
        self.directory.set_remote(self.enforcer.remote_pods)
        if (self.enforcer.pod_identities, self.enforcer.address_identities) != before:
            self.directory.invalidate()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        from bpf import abi
        from bpf.loader import Datapath, DatapathConfig
        from bpf.ringbuf import EventReader
        from exporter.decode import Decoder
        from exporter.enforcer import Enforcer
        from exporter.mapsource import DatapathSource
        from exporter.sweep import Sweeper

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
        self.attachments = Attachments(self.cfg.state_dir, self.directory, self.dp.sync_endpoints)
        self.attachments.loaded_at = time.time()
        self.health.count_attached = self.attachments.count
        if self.dp.retired_pins:
            log.warning(
                "maps pinned by an incompatible older agent were replaced; their counters restart",
                extra={"maps": self.dp.retired_pins},
            )
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
        # the enforcer names policies as it compiles them; flows and metrics read its dict
        self.policy_names = self.enforcer.policy_names
        if self.kube is None:
            from exporter.enrich import ManifestLabels

            self.directory.label_source = ManifestLabels(lambda: self.enforcer.manifests)
        self.network = self._node_network()
        self.enricher = Enricher(self.directory, self.cfg.node, self.policy_names, self.enforcer)
        self.decoder = Decoder(self.enricher)
        self.pipeline = Pipeline(EventReader(self.cfg.pin_dir), self.decoder, self.health)
        self.pipeline.register(self.store)
        self._start_history()
        if self.cfg.otel:
            from exporter.tracing import FlowTracer

            self.tracer = FlowTracer(self.cfg.node)
            self.pipeline.register(self.tracer)
        self.source = DatapathSource(self.dp)
        self.registry.register(
            LumenCollector(self.source, self.directory, self.health, self.store, self.policy_names)
        )
        self.sweeper = Sweeper(
            self.dp, self.decoder, self.pipeline.publish, self.health, self._alive_endpoints
        )
        self.health.attached_endpoints = self.attachments.sync()
        # identities and policy maps before the plugin server takes its first ADD
        self._sync_policy()
        self.network.sync(force=True)
        log.info(
            "datapath loaded",
            extra={
                "pin_dir": self.cfg.pin_dir,
                "seconds": round(time.monotonic() - t0, 3),
                "attached": self.health.attached_endpoints,
            },
        )
        if self.cfg.plugin_socket:
            # The plugin's warm server forks per call; it runs as our child so the agent owns its life.
            self._plugin_server = subprocess.Popen(
                [sys.executable, "-m", "plugin.server", "--socket", self.cfg.plugin_socket]
            )
        pipeline = self.pipeline
        for name, target in (
            ("pipeline", lambda: pipeline.run(self._stop, self.cfg.poll_timeout_ms)),
            ("housekeeping", self._housekeeping_loop),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _start_history(self) -> None:
        """The history sink, when --history is not off. A store that cannot be opened costs the history,
        said in the log, /readyz's detail and `lumen status`, never the agent."""
        if self.cfg.history == "off":
            return
        from exporter.history import open_store
        from exporter.history.sink import HistoryCollector, HistorySink

        try:
            store = open_store(
                self.cfg.history, self.cfg.state_dir, self.cfg.history_retention_s, self.cfg.history_max_bytes
            )
        except Exception as exc:  # noqa: BLE001 - no history, live flows as ever
            self.history_error = f"cannot open the history store: {exc}"
            log.error("no flow history", extra={"history": self.cfg.history, "error": str(exc)})
            return
        assert self.pipeline is not None
        self.history_sink = HistorySink(store)
        self.history = store
        self.pipeline.register(self.history_sink)
        self.registry.register(HistoryCollector(self.history_sink))

    def history_status(self) -> dict[str, Any]:
        if self.history_sink is not None:
            return dict(self.history_sink.status())
        if self.cfg.history == "off":
            return {"backend": "off"}
        return {"backend": self.cfg.history.split(":")[0], "ok": False, "error": self.history_error}

    def ready_detail(self) -> dict[str, str]:
        """Parts that are degraded without making the agent unready (/readyz's `detail`)."""
        if self.history_sink is not None:
            return {"history": self.history_sink.health()}
        if self.history_error:
            return {"history": f"degraded: {self.history_error} (live flows served)"}
        return {"history": "off"}

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
        if self.pipeline is not None:
            self.pipeline.close()  # the sinks: the tracer flushes its spans
        if self.dp is not None:
            # Pinned maps and attached programs stay: traffic keeps flowing and counting without us.
            self.dp.close()
        log.info("agent stopped")

    # -- housekeeping thread -------------------------------------------------------------------

    def _housekeeping_loop(self) -> None:
        last_sweep = time.monotonic()
        while not self._stop.wait(self.cfg.housekeeping_s):
            try:
                assert self.attachments is not None
                self.health.attached_endpoints = self.attachments.sync()
                self._sync_policy()
                self.network.sync()
                self.decoder.sync_clock()
                self._check_consumption()
                if time.monotonic() - last_sweep >= min(self.cfg.idle_timeout_s / 2, 10.0):
                    last_sweep = time.monotonic()
                    self.sweep()
            except Exception:  # noqa: BLE001 - housekeeping retries next round
                log.exception("housekeeping failed")

    def sweep(self) -> int:
        """End idle flows: their END records to the sinks; free counter slots of pods that are gone."""
        return int(self.sweeper.sweep(self.cfg.idle_timeout_s))

    def _alive_endpoints(self) -> set[int]:
        return {p.endpoint_id for p in self.directory.pods}

    def _check_consumption(self) -> None:
        """The kernel emitting events while none reach us (another agent took the ring buffer, a reader
        on a stale map) turns /readyz 503."""
        emitted = int(self.source.datapath_stats().get("events", 0))
        consumed = self.health.events_consumed
        now = time.monotonic()
        base_emitted, base_consumed, since = self._emitted_seen
        if base_emitted < 0 or consumed != base_consumed or emitted == base_emitted:
            # consuming, or nothing emitted since the last look: the window starts again here
            self._emitted_seen = (emitted, consumed, now)
            self._stall = ""
        elif now - since >= STALL_S:
            self._stall = (
                f"the kernel emitted {emitted - base_emitted} events in {now - since:.0f} s and this agent "
                "received none (is another agent reading this datapath?)"
            )

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
        if self.dp is None or self.pipeline is None:
            return False, "datapath not loaded"
        if self.pipeline.error:
            return False, self.pipeline.error
        if self._threads and not self._threads[0].is_alive():
            return False, "the ring buffer consumer stopped"
        last = self.health.last_poll_monotonic
        if not last or time.monotonic() - last > STALL_S:
            return False, f"ring buffer not polled in the last {STALL_S:.0f} s"
        if self._stall:
            return False, self._stall
        return True, "ok"

    def policy_view(self) -> Any:
        """exporter.policy_api.PolicyView, or None before the datapath is loaded."""
        return self if self.enforcer is not None else None

    @property
    def engine(self) -> Any:
        return self.enforcer.engine

    def status_dict(self) -> dict[str, Any]:
        return status.policy_status(
            self.enforcer, self.dp.config(), self.dp.policy_entries(), self.cfg.policy_dirs
        )

    def endpoints(self) -> list[dict[str, Any]]:
        if self.attachments is None:
            return []
        identities = self.enforcer.pod_identities if self.enforcer else {}
        return status.endpoints(self.directory, self.attachments, identities)

    def status(self) -> dict[str, Any]:
        return {
            **self._agent_status(),
            "history": self.history_status(),
        }

    def _agent_status(self) -> dict[str, Any]:
        return status.agent_status(
            version=VERSION,
            cfg=self.cfg,
            started_at=self.started_at,
            ready=self.ready(),
            source=self.source,
            store=self.store,
            health=self.health,
            tracing=self.tracer is not None,
            network=self._network_status(),
            endpoint_list=self.endpoints,
        )
