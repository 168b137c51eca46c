"""The set-up both datapath benches share: a plugin-wired node under a temp dir, a private pin dir, the
processes a bench starts in its pods, and a clean-up that runs whatever happened.

The node is a network namespace of its own (tests/cni_harness.py) and the bench's block runs on its
host side: the bridge, the host veths and the programs the bench attaches by ifindex are there, never
in the machine's root namespace."""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bpf.loader import Datapath, DatapathConfig, unpin_all
from tests.cni_harness import PREFIX, Node, install_plugin

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


@dataclass
class Bed:
    work: Path
    pin: str
    node: Node
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    dp: Datapath | None = None

    def load(self) -> Datapath:
        self.dp = Datapath.load(DatapathConfig(pin_dir=self.pin))
        return self.dp

    def start(self, argv: list[str]) -> None:
        """A server in a pod (argv already wrapped in `ip netns exec`), stopped at clean-up."""
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stats(self, on: bool) -> None:
        BPF_STATS.write_text("1" if on else "0")


@contextmanager
def bed(name: str) -> Iterator[Bed]:
    work = Path(tempfile.mkdtemp(prefix=f"lumen-bench-{name}-"))
    pin = f"/sys/fs/bpf/{PREFIX}_{name}_{secrets.token_hex(3)}"
    node = Node(
        binary=install_plugin(work / "bin"), ipv6=False, extra={"bpfPinDir": pin}, workdir=work / "node"
    )
    node.workdir.mkdir(parents=True, exist_ok=True)
    b = Bed(work, pin, node)
    stats_was = BPF_STATS.read_text().strip()
    try:
        with node.host():
            yield b
    finally:
        BPF_STATS.write_text(stats_was)
        for p in b.procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        if b.dp is not None:
            b.dp.close()
        node.cleanup()
        unpin_all(pin)
        shutil.rmtree(work, ignore_errors=True)
