"""Compile, load and pin the datapath with bcc, in a process of its own (the agent runs this as a child).

    python -m bpf.compile '<DatapathConfig as JSON>'

Pins both programs and the ring buffer next to the maps (maps.h pins those as bcc creates them), prints
one JSON line and exits: LLVM's memory goes with this process, the agent opens the pins (bpf/maps.py
over plugin/bpfsys.py).
Programs and the ring buffer are pinned under a temporary name first and renamed over the old pins, so
the CNI plugin always opens a complete program.
"""

from __future__ import annotations

import json
import os
import sys
import time

from bcc import BPF  # type: ignore[import-untyped]  # noqa: TID251 - the one place bcc is imported at run time

from bpf import abi
from bpf.abi import PROG_PINS
from plugin.bpfsys import obj_pin


def _pin_replace(fd: int, path: str) -> None:
    tmp = f"{path}_new"
    if os.path.exists(tmp):
        os.unlink(tmp)
    obj_pin(fd, tmp)
    os.replace(tmp, path)


#: pinned map -> the -D flag that sizes it (bpf/loader.py DatapathConfig.cflags passes each), a fixed
#: size, or (flag, power): lumen_pairs holds a counter per (source slot, destination slot)
MAP_SIZES: dict[str, str | int | tuple[str, int]] = {
    abi.MAP_FLOWS: "LUMEN_FLOW_TABLE_SIZE",
    abi.MAP_SOURCES: "LUMEN_SOURCE_TABLE_SIZE",
    abi.MAP_ENDPOINTS: "LUMEN_ENDPOINT_TABLE_SIZE",
    abi.MAP_IPCACHE: "LUMEN_IPCACHE_SIZE",
    abi.MAP_CIDRS: "LUMEN_CIDR_MAP_SIZE",
    abi.MAP_POLICY: "LUMEN_POLICY_MAP_SIZE",
    abi.MAP_STATS: abi.STAT_MAX,
    abi.MAP_CONFIG: 1,
    abi.MAP_SLOTS: "LUMEN_POD_SLOTS",
    abi.MAP_ENDPOINT_GEN: 1,
    abi.MAP_PODS: "LUMEN_POD_SLOTS",
    abi.MAP_PAIRS: ("LUMEN_POD_SLOTS", 2),
    abi.MAP_FLOW_COUNTS: 256 << 3,
    abi.MAP_DROPS: abi.DROP_MAX << 8,
    abi.MAP_POLICY_COUNTS: "LUMEN_POLICY_COUNT_SIZE",
    abi.MAP_TCP_FLAGS: 2 << 8,
}


def expected_layouts(cflags: list[str]) -> dict[str, tuple[int, int, int]]:
    """Pinned map -> (key size, value size, max entries) this build creates: sizes from the ctypes mirrors
    and the -D flags (tests/unit/test_abi.py checks this against the compiled maps)."""
    import ctypes as ct

    flags = dict(f[2:].split("=", 1) for f in cflags if f.startswith("-D") and "=" in f)
    out = {}
    for name, (key, value, _) in abi.PINNED_LAYOUTS.items():
        size = MAP_SIZES[name]
        if isinstance(size, tuple):
            entries = int(flags[size[0]]) ** size[1]
        else:
            entries = int(flags[size]) if isinstance(size, str) else size
        out[name] = (ct.sizeof(key), ct.sizeof(value), entries)
    return out


def retire_incompatible_pins(pin_dir: str, cflags: list[str]) -> list[str]:
    """Unpin maps an older build (or other sizes) left: bcc would reuse them and the verifier refuse the
    programs. Pods still running the old programs keep the old maps until they are re-attached; the new
    maps start empty (counters restart, the agent refills endpoints and policy)."""
    from plugin.bpfsys import map_info, obj_get

    retired = []
    for name, want in expected_layouts(cflags).items():
        path = os.path.join(pin_dir, name)
        if not os.path.exists(path):
            continue
        fd = obj_get(path)
        try:
            info = map_info(fd)
        finally:
            os.close(fd)
        if (info.key_size, info.value_size, info.max_entries) != want:
            os.unlink(path)
            retired.append(
                f"{name} (key {info.key_size}, value {info.value_size}, {info.max_entries} entries)"
            )
    return retired


def compile_and_pin(pin_dir: str, cflags: list[str]) -> dict[str, object]:
    t0 = time.monotonic()
    os.makedirs(pin_dir, exist_ok=True)
    retired = retire_incompatible_pins(pin_dir, cflags)
    b = BPF(src_file=str(abi.SOURCE).encode(), cflags=cflags)
    progs = {name: b.load_func(name.encode(), BPF.SCHED_CLS) for name in PROG_PINS}
    for name, pin in PROG_PINS.items():
        _pin_replace(progs[name].fd, os.path.join(pin_dir, pin))
    _pin_replace(b[abi.MAP_EVENTS.encode()].map_fd, os.path.join(pin_dir, abi.MAP_EVENTS))
    return {"ok": True, "seconds": round(time.monotonic() - t0, 3), "retired": retired}


def main() -> int:
    cfg = json.loads(sys.argv[1])
    try:
        result = compile_and_pin(cfg["pin_dir"], cfg["cflags"])
    except Exception as e:  # noqa: BLE001 - the agent reads the reason from this line
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
