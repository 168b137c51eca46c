"""The agent's settings (`lumen agent` flags) and their checks, made before anything is locked,
compiled, pinned or attached: a bad one is a usage error naming the flag."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field

from exporter.flows import DEFAULT_CAPACITY


class ConfigError(ValueError):
    """A flag or setting the agent cannot run with; the message names it (CLI usage error)."""


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
    # flow history (exporter/history/): off, sqlite (<state_dir>/history.sqlite), sqlite:///path,
    # clickhouse://host:port/db
    history: str = "sqlite"
    history_retention_s: float = 24 * 3600.0
    history_max_bytes: int = 1 << 30  # SQLite only

    def validate(self) -> None:
        """Every setting checked before anything is compiled, pinned or locked."""

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(what)

        def count(name: str, value: int, low: int, high: int) -> None:
            need(low <= value <= high, f"{name} {value}: expected {low} to {high}")

        def seconds(name: str, value: float, low: float, high: float) -> None:
            need(math.isfinite(value) and low <= value <= high, f"{name} {value}: expected {low} to {high} s")

        pages = self.ringbuf_pages
        need(
            1 <= pages <= 1 << 18 and pages & (pages - 1) == 0,
            f"--ringbuf-pages {pages}: expected a power of two from 1 to 262144 (the kernel's rule)",
        )
        count("--flow-table-size", self.flow_table_size, 1, 1 << 24)
        count("--flow-store-size", self.flow_store_size, 1, 1 << 24)
        # slot 0 means "no pod"; the pair matrix is pod_slots^2 x 32 bytes of kernel memory (2048: 128 MiB)
        count("--pod-slots", self.pod_slots, 2, 2048)
        count("--port", self.port, 0, 65535)
        count("wakeup batch", self.wakeup_batch, 1, 1 << 20)
        count("poll timeout", self.poll_timeout_ms, 1, 60000)
        seconds("--report-interval", self.report_interval_s, 0.001, 86400 * 365)
        seconds("--idle-timeout", self.idle_timeout_s, 0.001, 86400 * 365)
        seconds("housekeeping", self.housekeeping_s, 0.001, 3600)
        need(self.aggregation in ("default", "none"), f"--aggregation {self.aggregation!r}: default or none")
        need(bool(self.node.strip()), "--node: empty")
        from exporter.history import check_spec

        try:
            check_spec(self.history)
        except ValueError as exc:
            need(False, f"--history {exc}")
        seconds("--history-retention", self.history_retention_s, 60, 86400 * 3650)
        count("--history-max-size", self.history_max_bytes, 1 << 20, 1 << 50)
        for name, path in (("--pin-dir", self.pin_dir), ("--state-dir", self.state_dir)):
            need(os.path.isabs(path), f"{name} {path!r}: expected an absolute path")
            need("\0" not in path and '"' not in path, f"{name} {path!r}: not a usable path")
