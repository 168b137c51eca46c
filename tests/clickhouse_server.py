"""A private clickhouse-server for tests and bench/history: own config, data directory and loopback ports
(chosen free), started from Debian's package binary and stopped by its PID. ZSTD for parts, as
docs/scale-out.md recommends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BINARY = "/usr/sbin/clickhouse-server"

CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/error.log</errorlog></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <path>{root}/data/</path>
    <tmp_path>{root}/tmp/</tmp_path>
    <user_files_path>{root}/user_files/</user_files_path>
    <format_schema_path>{root}/format_schemas/</format_schema_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>67108864</mark_cache_size>
    <max_concurrent_queries>50</max_concurrent_queries>
    <compression><case><method>zstd</method></case></compression>
</yandex>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return os.access(BINARY, os.X_OK)


@dataclass
class ClickHouse:
    root: Path
    tcp_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"clickhouse://127.0.0.1:{self.tcp_port}/lumen"

    def start(self, timeout: float = 30.0) -> None:
        for d in ("data", "tmp", "user_files", "format_schemas"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        cfg = self.root / "config.xml"
        cfg.write_text(CONFIG.format(root=self.root, tcp_port=self.tcp_port, http_port=self.http_port))
        self.proc = subprocess.Popen(
            [BINARY, f"--config-file={cfg}"],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "stderr.log", "ab"),  # noqa: SIM115 - the child owns it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"clickhouse-server exited: {(self.root / 'stderr.log').read_text()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=0.2):
                    pass
                from clickhouse_driver import Client

                Client("127.0.0.1", port=self.tcp_port).execute("SELECT 1")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("clickhouse-server did not start in time")

    def stop(self) -> None:
        """Stop the server we started (by PID), and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as an outage: the data directory stays for a restart."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def start(root: Path) -> ClickHouse:
    ch = ClickHouse(root, free_port(), free_port())
    ch.start()
    return ch


def remove(ch: ClickHouse) -> None:
    ch.stop()
    shutil.rmtree(ch.root, ignore_errors=True)
