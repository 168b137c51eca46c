"""The pinned programs and maps of one pin dir, opened by this process: the base of every view over them
(bpf/policymaps.py, bpf/endpoints.py, bpf/counters.py). What is pinned outlives this object and the agent.
"""

from __future__ import annotations

import ctypes as ct
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf import abi
from bpf.abi import PROG_PINS
from bpf.maps import Map, map_info, obj_get


@dataclass
class Prog:
    name: str
    fd: int


class PinnedMaps:
    """Every program and map pinned under `cfg.pin_dir` (cfg: bpf.loader.DatapathConfig)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        pin = cfg.pin_dir
        self.progs = {name: Prog(name, obj_get(os.path.join(pin, p))) for name, p in PROG_PINS.items()}
        self.maps = {
            name: Map(os.path.join(pin, name), key, value, percpu=percpu)
            for name, (key, value, percpu) in abi.PINNED_LAYOUTS.items()
        }

    def _map(self, name: str) -> Map:
        return self.maps[name]

    def config(self) -> abi.Config:
        return abi.Config.from_buffer_copy(bytes(self._map(abi.MAP_CONFIG)[ct.c_uint32(0)]))

    def slot_claims(self) -> dict[int, int]:
        """Counter slot -> endpoint id of the pod holding it."""
        return {int(k.value): int(v) for k, v in self._map(abi.MAP_SLOTS).items()}

    def close(self) -> None:
        """Close this process's handles; pinned maps and programs stay, attached programs keep running."""
        for m in self.maps.values():
            m.close()
        for p in self.progs.values():
            os.close(p.fd)
        self.progs = {}


def table_entries(table: Map) -> int:
    return int(map_info(table.fd).max_entries)


def unpin_all(pin_dir: str) -> None:
    """Remove every pin (uninstall, tests). Attached programs keep running until their veth goes."""
    directory = Path(pin_dir)
    if not directory.exists():
        return
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()
