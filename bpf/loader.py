"""Compile, pin and configure the datapath; `Datapath` is every view over its pins in one object.

    bpf/pins.py        the pinned programs and maps of a pin dir (open, close, unpin)
    bpf/policymaps.py  policy encoding into lumen_policy / lumen_cidrs, generations
    bpf/endpoints.py   attaching to pods, endpoint entries, counter slots, identities, ipcache
    bpf/counters.py    reading flows and counters, the idle sweep
    bpf/ringbuf.py     the flow event reader (not part of Datapath: the pipeline owns it)

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
from dataclasses import dataclass, field
from pathlib import Path

from bpf import abi
from bpf.counters import CounterMaps
from bpf.endpoints import EndpointMaps
from bpf.pins import Prog, unpin_all
from bpf.policymaps import PolicyMaps

__all__ = ["Datapath", "DatapathConfig", "Prog", "source_text", "unpin_all"]

REPO = Path(__file__).resolve().parents[1]


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


class Datapath(PolicyMaps, EndpointMaps, CounterMaps):
    """The loaded programs and maps. Maps under the pin dir outlive this object and the agent."""

    def __init__(self, cfg: DatapathConfig) -> None:
        super().__init__(cfg)
        #: maps of an incompatible older layout the compile step unpinned (they start empty)
        self.retired_pins: list[str] = []

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
