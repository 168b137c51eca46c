"""Real container runtimes, isolated from the host's own CNI paths and state.

containerd: a private daemon (root, state, sockets under a temp dir, CRI disabled); `ctr run --cni` reads
only /etc/cni/net.d and /opt/cni/bin, so each ctr call runs in a private mount namespace with those two
bind-mounted from temp dirs. podman: CONTAINERS_CONF / CONTAINERS_STORAGE_CONF under a temp dir, CNI
backend, `--rootfs` (no image). See FACTS.md "Real runtimes".

Every runtime client runs inside a network namespace the test creates (`LumenNetwork.ns`): the CNI
plugins run as children of the client, so Lumen's bridge, its routes and sysctls, and portmap's iptables
chains and MASQUERADE land there and vanish with it. The root namespace is never changed; the test
reaches the bridge gateway and the containers from inside that namespace (tests.cluster_harness.ns_socket).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.cni_harness import PREFIX, install_plugin, netns_add, netns_del

BUSYBOX = "/bin/busybox"


def make_rootfs(root: Path) -> Path:
    """A busybox-static root filesystem (bin/ with applet links, the usual mount points)."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "run", "var", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "nc", "ip", "ping", "sleep", "cat", "echo", "ifconfig", "hostname", "true"):
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    for f in ("hosts", "resolv.conf", "hostname"):
        (root / "etc" / f).touch()
    return root


class LumenNetwork:
    """A conflist: lumen first, the reference portmap chained after it; unique bridge and subnet."""

    def __init__(self, workdir: Path, cni_version: str = "1.0.0") -> None:
        self.tag = secrets.token_hex(3)
        self.name = f"lt-{self.tag}"
        self.bridge = f"ltr{self.tag}"
        octet = 100 + secrets.randbelow(150)
        self.subnet = f"10.{octet}.{int(self.tag[:2], 16)}.0/24"
        self.gateway = self.subnet.replace(".0/24", ".1")
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.data_dir = workdir / "ipam"
        self.log_file = workdir / "cni.log"
        self.cni_version = cni_version
        #: the node's network namespace: every runtime client (and so every CNI plugin) runs in it
        self.ns = f"{PREFIX}rt{self.tag}"

    def create_ns(self) -> None:
        netns_add(self.ns)
        subprocess.run(["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"], check=True)

    def exec_argv(self) -> list[str]:
        """The prefix that runs a command inside the node namespace.

        nsenter enters the network namespace only. `ip netns exec` would also give the command a mount
        namespace with a fresh /sys: runc then finds no cgroup mount, and the netns files podman
        bind-mounts under /run/netns would stay inside that short-lived mount namespace."""
        return ["nsenter", f"--net=/run/netns/{self.ns}"]

    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": [
                {
                    "type": "lumen",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipam": {
                        "type": "lumen",
                        "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                        "dataDir": str(self.data_dir),
                    },
                    "stateDir": str(self.state_dir),
                    "logFile": str(self.log_file),
                    "bpfPinDir": str(self.workdir / "no-bpf"),
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"10-{self.name}.conflist"
        path.write_text(json.dumps(self.conflist(), indent=2))
        return path

    def endpoints(self) -> list[dict[str, Any]]:
        d = self.state_dir / "endpoints"
        return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.exists() else []

    def wait_endpoint(self, container_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.endpoints():
                # go-cni prefixes the namespace: "<ns>-<id>"
                ours = rec["containerId"] in (container_id, f"lumen-test-{container_id}")
                if ours and rec.get("state") == "ready":
                    return rec
            time.sleep(0.1)
        raise AssertionError(f"no endpoint for {container_id}; plugin log:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text()[-3000:] if self.log_file.exists() else "(no plugin log)"

    def cleanup(self) -> None:
        """After the containers are gone: the namespace takes the bridge, routes and portmap's rules."""
        # libcni's result cache for our attachments (ctr and podman both write it).
        for cached in Path("/var/lib/cni/results").glob(f"{self.name}-*"):
            cached.unlink(missing_ok=True)
        netns_del(self.ns)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class Containerd:
    """A private containerd and a ctr wrapper whose CNI dirs are private bind mounts."""

    def __init__(self, workdir: Path, net: LumenNetwork) -> None:
        self.workdir = workdir
        self.net = net
        self.sock = workdir / "run" / "containerd.sock"
        self.netd = workdir / "net.d"
        self.bindir = workdir / "cni-bin"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for d in ("root", "state", "run", "opt"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        install_plugin(self.bindir)
        for ref in ("portmap", "loopback", "host-local", "bridge"):
            shutil.copy2(f"/usr/lib/cni/{ref}", self.bindir / ref)
        self.net.write(self.netd)
        config = self.workdir / "config.toml"
        config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{self.workdir / "root"}"',
                    f'state = "{self.workdir / "state"}"',
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                    "[grpc]",
                    f'  address = "{self.sock}"',
                    "[ttrpc]",
                    f'  address = "{self.sock}.ttrpc"',
                    "[debug]",
                    f'  address = "{self.sock}.debug"',
                    "[metrics]",
                    '  address = ""',
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f'  path = "{self.workdir / "opt"}"',
                ]
            )
        )
        log = open(self.workdir / "containerd.log", "wb")  # noqa: SIM115 - lives with the daemon
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError((self.workdir / "containerd.log").read_text()[-2000:])
            if self.sock.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(
            "containerd did not start: " + (self.workdir / "containerd.log").read_text()[-2000:]
        )

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.net.exec_argv(), "ctr", "--address", str(self.sock), "--namespace", "lumen-test", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def run_argv(self, rootfs: Path, cid: str, *cmd: str) -> list[str]:
        """`ctr run --rm --cni` in the node namespace (ctr, not the daemon, runs the CNI plugins), in a
        private mount ns where /etc/cni/net.d and /opt/cni/bin are ours."""
        script = (
            f"mount --bind {self.netd} /etc/cni/net.d && mount --bind {self.bindir} /opt/cni/bin && "
            f"exec ctr --address {self.sock} --namespace lumen-test "
            f'run --rm --cni --rootfs {rootfs} {cid} "$@"'
        )
        return [
            *self.net.exec_argv(),
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mkdir -p /etc/cni/net.d /opt/cni/bin; {script}",
            "ctr-run",
            *cmd,
        ]

    def stop(self) -> None:
        if self.proc is not None:
            for line in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", line, check=False)
            for line in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "delete", "-f", line, check=False)
                self.ctr("containers", "delete", line, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
        subprocess.run(["umount", "-R", str(self.workdir / "state")], capture_output=True)
        subprocess.run(["umount", "-R", str(self.workdir / "root")], capture_output=True)


class Podman:
    """podman 4 with its CNI backend, every path under a temp dir."""

    def __init__(self, workdir: Path, net: LumenNetwork) -> None:
        self.workdir = workdir
        self.net = net
        self.bindir = workdir / "cni-bin"
        self.netd = workdir / "net.d"
        self.env = dict(os.environ)

    def setup(self) -> None:
        install_plugin(self.bindir)
        self.net.write(self.netd)
        w = self.workdir
        for d in ("storage/root", "storage/run", "engine/tmp", "engine/static", "engine/volumes"):
            (w / d).mkdir(parents=True, exist_ok=True)
        (w / "containers.conf").write_text(
            f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
netns = "private"
[network]
network_backend = "cni"
network_config_dir = "{self.netd}"
cni_plugin_dirs = ["{self.bindir}", "/usr/lib/cni"]
default_network = "{self.net.name}"
[engine]
tmp_dir = "{w / "engine/tmp"}"
static_dir = "{w / "engine/static"}"
volume_path = "{w / "engine/volumes"}"
events_logger = "none"
cgroup_manager = "cgroupfs"
"""
        )
        (w / "storage.conf").write_text(
            f"""[storage]
driver = "vfs"
graphroot = "{w / "storage/root"}"
runroot = "{w / "storage/run"}"
"""
        )
        self.env.update(
            CONTAINERS_CONF=str(w / "containers.conf"), CONTAINERS_STORAGE_CONF=str(w / "storage.conf")
        )

    def podman(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.net.exec_argv(), "podman", "--cgroup-manager", "cgroupfs", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=check,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.net.exec_argv(), "podman", "--cgroup-manager", "cgroupfs", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,
        )

    def cleanup(self, names: list[str]) -> None:
        for name in names:
            self.podman("rm", "-f", "-t", "0", name, check=False, timeout=60)
        w = self.workdir
        subprocess.run(["umount", "-R", str(w / "storage/root")], capture_output=True)
        subprocess.run(["umount", "-R", str(w / "storage/run")], capture_output=True)
