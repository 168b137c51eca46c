"""Compile, load and pin the datapath with bcc, in a process of its own (the agent runs this as a child).

    python -m bpf.compile '<DatapathConfig as JSON>'

Pins both programs and the ring buffer next to the maps (maps.h pins those as bcc creates them), prints
one JSON line and exits: LLVM's memory goes with this process, the agent opens the pins (bpf/maps.py).
Programs and the ring buffer are pinned under a temporary name first and renamed over the old pins, so
the CNI plugin always opens a complete program.
"""

from __future__ import annotations

import json
import os
import sys
import time

from bcc import BPF  # noqa: TID251 - the one place bcc is imported at run time

from bpf import abi
from bpf.abi import PROG_PINS
from bpf.maps import obj_pin


def _pin_replace(fd: int, path: str) -> None:
    tmp = f"{path}_new"
    if os.path.exists(tmp):
        os.unlink(tmp)
    obj_pin(fd, tmp)
    os.replace(tmp, path)


def compile_and_pin(pin_dir: str, cflags: list[str]) -> dict[str, object]:
    t0 = time.monotonic()
    os.makedirs(pin_dir, exist_ok=True)
    b = BPF(src_file=str(abi.SOURCE).encode(), cflags=cflags)
    progs = {name: b.load_func(name.encode(), BPF.SCHED_CLS) for name in PROG_PINS}
    for name, pin in PROG_PINS.items():
        _pin_replace(progs[name].fd, os.path.join(pin_dir, pin))
    _pin_replace(b[abi.MAP_EVENTS.encode()].map_fd, os.path.join(pin_dir, abi.MAP_EVENTS))
    return {"ok": True, "seconds": round(time.monotonic() - t0, 3)}


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
