"""Drive CNI plugins exactly as a runtime does: exec with CNI_* env and the config on stdin.

Shared by the privileged plugin tests, the datapath and agent end-to-end tests, the demo and the benches.
Everything created (netns, plugin state) carries a unique suffix and is removed by `Node.cleanup()`.

A `Node` is a network namespace of its own (`<prefix><tag>-host`), standing in for the node's root
namespace: the plugin runs inside it, so the bridge, the host veths, the gateway addresses and their
routes are made there, and the machine's root namespace is never changed. Code that acts as the node's
host (reads its links, attaches programs, runs an agent, pings a pod from the host) runs inside
`node.host()`; the `node` fixtures run the whole test there.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugin.netlink import in_netns

REPO = Path(__file__).resolve().parent.parent
REFERENCE_CNI_DIR = "/usr/lib/cni"
#: first letters of every netns, bridge and pin dir a test or bench creates (several sessions can share
#: a host: each sets its own)
PREFIX = os.environ.get("LUMEN_TEST_PREFIX", "lt")


def install_plugin(dest: str | Path) -> Path:
    """`make cni-bin DEST=dest`, the install contract a runtime relies on."""
    subprocess.run(["bash", str(REPO / "scripts/install-cni.sh"), str(dest)], check=True, capture_output=True)
    return Path(dest) / "lumen"


@dataclass
class Invocation:
    rc: int
    out: dict[str, Any] | None
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def invoke(
    binary: str | Path,
    command: str,
    conf: dict[str, Any],
    container_id: str = "",
    netns: str = "",
    ifname: str = "eth0",
    cni_path: str = "",
    cni_args: str = "",
    extra_env: dict[str, str] | None = None,
    timeout: float = 30,
    wrap: list[str] | None = None,
) -> Invocation:
    """`wrap` runs the plugin under a command, e.g. `ip netns exec <node>` for a simulated node."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path or f"{Path(binary).parent}:{REFERENCE_CNI_DIR}",
        # Cold plugin unless a test hands calls to a warm server on purpose.
        "LUMEN_PLUGIN_SOCKET": "",
    }
    if cni_args:
        env["CNI_ARGS"] = cni_args
    env.update(extra_env or {})
    proc = subprocess.run(
        [*(wrap or []), str(binary)],
        input=json.dumps(conf).encode(),
        env=env,
        capture_output=True,
        timeout=timeout,
    )
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return Invocation(proc.returncode, out, proc.stderr.decode())


def netns_add(name: str) -> str:
    subprocess.run(["ip", "netns", "add", name], check=True)
    return f"/run/netns/{name}"


def netns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def ns_exec(
    ns: str, *argv: str, timeout: float = 20, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=check
    )


def ping(ns: str, address: str, count: int = 1) -> bool:
    return ns_exec(ns, "ping", "-c", str(count), "-W", "2", "-i", "0.2", address).returncode == 0


@dataclass
class Pod:
    name: str
    ns: str
    netns: str
    container_id: str
    result: dict[str, Any]

    @property
    def ips(self) -> list[str]:
        return [ip["address"].split("/")[0] for ip in self.result.get("ips", [])]

    def ip(self, version: int = 4) -> str:
        return next(a for a in self.ips if (":" in a) == (version == 6))


@dataclass
class Node:
    """A unique Lumen network on this host: its own bridge, subnet, data/state dirs and pods."""

    binary: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet_octet: int = 0
    ipv6: bool = True
    cni_version: str = "1.1.0"
    extra: dict[str, Any] = field(default_factory=dict)
    #: environment added to every call (e.g. LUMEN_PLUGIN_SOCKET to use a warm server)
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lumen-node-")))
    pods: dict[str, Pod] = field(default_factory=dict)
    #: first letters of every pod netns name (the demo gives its own, so two demos never share one)
    ns_prefix: str = PREFIX
    #: the node's own network namespace (default `<ns_prefix><tag>-host`), made here, removed by cleanup
    host_ns: str = ""

    def __post_init__(self) -> None:
        self.host_ns = self.host_ns or f"{self.ns_prefix}{self.tag}-host"
        netns_add(self.host_ns)
        ns_exec(self.host_ns, "ip", "link", "set", "lo", "up", check=True)  # agents listen on its loopback
        if not self.subnet_octet:
            self.subnet_octet = 100 + secrets.randbelow(150)
        self.bridge = f"{PREFIX}b{self.tag}"
        try:
            third = int(self.tag[:2], 16)
        except ValueError:
            third = 0  # a tag that is not hex (the demo's empty one): the caller sets the subnets
        self.subnet4 = f"10.{self.subnet_octet}.{third}.0/24"
        self.gateway4 = self.subnet4.replace(".0/24", ".1")
        # Canonical text form: results carry addresses the way the kernel prints them. A tag that is not
        # hex (the demo's) gets a subnet the caller sets itself.
        try:
            net6 = ipaddress.ip_network(f"fd00:{self.subnet_octet}:{self.tag[:4]}::/64")
        except ValueError:
            net6 = ipaddress.ip_network(f"fd00:{self.subnet_octet}::/64")
        self.subnet6, self.gateway6 = str(net6), str(net6[1])

    @property
    def host_netns(self) -> str:
        return f"/run/netns/{self.host_ns}"

    def host(self) -> in_netns:
        """`with node.host():` this thread is on the node: the processes it starts, the sockets and
        netlink sockets it opens and the /proc/sys files it reads are the node namespace's. (/sys stays
        the root's: read a link's counters with `ip -s link`, not /sys/class/net.)"""
        return in_netns(self.host_netns)

    def exec(self, *argv: str, timeout: float = 20, check: bool = False) -> subprocess.CompletedProcess[str]:
        """A command on the node's host side."""
        return ns_exec(self.host_ns, *argv, timeout=timeout, check=check)

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "ipam"

    @property
    def log_file(self) -> Path:
        return self.workdir / "cni.log"

    def conf(self, **overrides: Any) -> dict[str, Any]:
        ranges = [[{"subnet": self.subnet4, "gateway": self.gateway4}]]
        if self.ipv6:
            ranges.append([{"subnet": self.subnet6, "gateway": self.gateway6}])
        conf: dict[str, Any] = {
            "cniVersion": self.cni_version,
            "name": f"lt-{self.tag}",
            "type": "lumen",
            "bridge": self.bridge,
            "isGateway": True,
            "ipam": {"type": "lumen", "ranges": ranges, "dataDir": str(self.data_dir)},
            "stateDir": str(self.state_dir),
            "logFile": str(self.log_file),
            "bpfPinDir": str(self.workdir / "no-bpf"),
        }
        conf.update(self.extra)
        conf.update(overrides)
        return conf

    def call(self, command: str, conf: dict[str, Any], *args: Any, **kw: Any) -> Invocation:
        """`invoke(binary, command, conf, ...)` with this node's plugin, inside the node namespace."""
        with self.host():
            return invoke(self.binary, command, conf, *args, **kw)

    def invoke(
        self, command: str, pod: str = "", conf: dict[str, Any] | None = None, **kw: Any
    ) -> Invocation:
        p = self.pods.get(pod)
        kw.setdefault("container_id", p.container_id if p else "")
        kw.setdefault("netns", p.netns if p else "")
        kw["extra_env"] = {**self.env, **(kw.get("extra_env") or {})}
        return self.call(command, conf or self.conf(), **kw)

    def add_pod(self, name: str, namespace: str = "default", **kw: Any) -> Pod:
        ns = f"{self.ns_prefix}{self.tag}{name}"[:15]
        netns = netns_add(ns)
        cid = secrets.token_hex(32)
        uid = secrets.token_hex(8)
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}"
        kw["extra_env"] = {**self.env, **(kw.get("extra_env") or {})}
        res = self.call("ADD", kw.pop("conf", None) or self.conf(), cid, netns, cni_args=args, **kw)
        if not res.ok:
            netns_del(ns)
            raise RuntimeError(f"ADD {name} failed: {res.out} {res.stderr}\nlog:\n{self.log()}")
        assert res.out is not None
        pod = Pod(name, ns, netns, cid, res.out)
        self.pods[name] = pod
        return pod

    def del_pod(self, name: str) -> Invocation:
        pod = self.pods.pop(name)
        res = self.call("DEL", self.conf(), pod.container_id, pod.netns, extra_env=self.env)
        netns_del(pod.ns)
        return res

    def log(self) -> str:
        try:
            return self.log_file.read_text()[-4000:]
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        """Pods first (DEL, as a runtime would), then the node namespace: the bridge and whatever the
        plugin left on it go with it."""
        for name in list(self.pods):
            try:
                self.del_pod(name)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        netns_del(self.host_ns)
        shutil.rmtree(self.workdir, ignore_errors=True)


def host_links(prefix: str) -> list[str]:
    """Links named `prefix...` in this thread's namespace (inside `node.host()`: the node's)."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix)]


def ipam_records(node: Node) -> list[str]:
    """Addresses the built-in IPAM holds on disk for this node's network (one file per IP)."""
    import ipaddress

    root = node.data_dir / f"lt-{node.tag}"
    if not root.exists():
        return []
    held = []
    for p in root.iterdir():
        try:
            held.append(str(ipaddress.ip_address(p.name)))
        except ValueError:
            continue
    return sorted(held)


def cleanup_netns_prefix(prefix: str) -> None:
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix):
            netns_del(name)


__all__ = ["Node", "Pod", "invoke", "install_plugin", "ns_exec", "ping", "netns_add", "netns_del", "os"]
