#!/usr/bin/env python3
"""Write the node's Lumen conflist from its pod CIDRs.

In a cluster the pod CIDRs are the Node object's `spec.podCIDRs` (or the older `spec.podCIDR`), which
the downward API cannot expose: the DaemonSet's init container runs this script with `--from-node
$(NODE_NAME)`, and it reads the Node from the API server with the pod's service account (RBAC: get
nodes). On a bare node, deploy/install.sh passes `--pod-cidr` instead.

Stdlib only, so it runs in the image and on a bare node alike. The file is replaced atomically, and left
alone when unchanged, because the runtime watches /etc/cni/net.d and must never read half a file.

    cniconf.py --from-node NAME [--api-server URL] --output /host/etc/cni/net.d/10-lumen.conflist
    cniconf.py --pod-cidr 10.244.1.0/24 [--pod-cidr fd00:10:244:1::/64] --output FILE

The pods' MTU follows the agent's routing mode (`--routing-mode`, env LUMEN_ROUTING_MODE, the same key the
agent reads): in `vxlan` mode 50 bytes below the uplink's (the VXLAN header; the uplink is the device of
the default route), in `direct` mode the plugin's default (the bridge's).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
VXLAN_OVERHEAD = 50  # outer Ethernet, IPv4, UDP and VXLAN headers (exporter/routing.py)
CNI_VERSION = "1.1.0"


def build_conflist(
    pod_cidrs: list[str],
    name: str = "lumen",
    bridge: str = "lumen0",
    mtu: int | None = None,
    portmap: bool = True,
    state_dir: str = "/run/lumen",
    pin_dir: str = "/sys/fs/bpf/lumen",
    data_dir: str = "/var/lib/cni/lumen",
    log_file: str = "/var/log/lumen/cni.log",
) -> dict[str, Any]:
    """One range set per CIDR (two CIDRs of different families make the node dual stack)."""
    nets = [ipaddress.ip_network(c, strict=True) for c in pod_cidrs]
    if not nets:
        raise ValueError("no pod CIDR")
    if len({n.version for n in nets}) != len(nets):
        raise ValueError(f"one CIDR per address family, got {pod_cidrs}")
    ranges = [[{"subnet": str(n)}] for n in sorted(nets, key=lambda n: n.version)]
    routes = [
        {"dst": "0.0.0.0/0" if n.version == 4 else "::/0"} for n in sorted(nets, key=lambda n: n.version)
    ]
    lumen: dict[str, Any] = {
        "type": "lumen",
        "bridge": bridge,
        "isGateway": True,
        "stateDir": state_dir,
        "logFile": log_file,
        "bpfPinDir": pin_dir,
        "ipam": {"type": "lumen", "dataDir": data_dir, "ranges": ranges, "routes": routes},
    }
    if mtu is not None:
        lumen["mtu"] = mtu
    plugins: list[dict[str, Any]] = [lumen]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    return {"cniVersion": CNI_VERSION, "name": name, "plugins": plugins}


def uplink_mtu(proc_route: str = "/proc/net/route", sys_net: str = "/sys/class/net") -> int:
    """MTU of the device holding the IPv4 default route (1500 if there is none)."""
    try:
        with open(proc_route) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    with open(f"{sys_net}/{fields[0]}/mtu") as m:
                        return int(m.read().strip())
    except (OSError, ValueError):
        pass
    return 1500


def pod_mtu(mode: str, mtu: int | None, uplink: int) -> int | None:
    """The conflist's mtu: as given; in vxlan mode the uplink's less the VXLAN header."""
    if mode not in ("direct", "vxlan"):
        raise ValueError(f"routing mode must be direct or vxlan, got {mode!r}")
    if mtu is not None:
        return mtu
    return uplink - VXLAN_OVERHEAD if mode == "vxlan" else None


def node_pod_cidrs(node: dict[str, Any]) -> list[str]:
    spec = node.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return [str(c) for c in cidrs]


def fetch_node(name: str, api_server: str, token: str, ca_file: str | None) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{api_server.rstrip('/')}/api/v1/nodes/{name}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    ctx = ssl.create_default_context(cafile=ca_file) if api_server.startswith("https") else None
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        node: dict[str, Any] = json.load(resp)
        return node


def wait_for_pod_cidrs(
    name: str, api_server: str, token: str, ca_file: str | None, timeout_s: float
) -> list[str]:
    """The node controller assigns podCIDR shortly after the Node registers: poll until it has."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        try:
            cidrs = node_pod_cidrs(fetch_node(name, api_server, token, ca_file))
            if cidrs:
                return cidrs
            last = f"node {name} has no spec.podCIDR yet (is --allocate-node-cidrs on?)"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = f"reading node {name}: {exc}"
        if time.monotonic() >= deadline:
            raise TimeoutError(last)
        print(f"cniconf: {last}; retrying", file=sys.stderr)
        time.sleep(2)


def write_if_changed(path: str, conflist: dict[str, Any]) -> bool:
    text = json.dumps(conflist, indent=2) + "\n"
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lumen-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def default_api_server() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return ""
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pod-cidr", action="append", help="a pod CIDR of this node (repeat for dual stack)")
    src.add_argument(
        "--from-node", metavar="NAME", help="read spec.podCIDRs of this Node from the API server"
    )
    p.add_argument("--api-server", default=default_api_server(), help="default: in-cluster service address")
    p.add_argument("--token-file", default=f"{SA_DIR}/token")
    p.add_argument("--ca-file", default=f"{SA_DIR}/ca.crt")
    p.add_argument("--wait", type=float, default=300, help="seconds to wait for the node's podCIDR")
    p.add_argument("--output", required=True, help="conflist path, e.g. /etc/cni/net.d/10-lumen.conflist")
    p.add_argument("--name", default="lumen", help="network name")
    p.add_argument("--bridge", default="lumen0")
    p.add_argument("--mtu", type=int, default=None, help="pods' MTU (default: from the routing mode)")
    p.add_argument(
        "--routing-mode",
        default=os.environ.get("LUMEN_ROUTING_MODE", "direct"),
        help="the agent's routing mode, direct or vxlan (env LUMEN_ROUTING_MODE): vxlan lowers the MTU",
    )
    p.add_argument("--no-portmap", action="store_true", help="do not chain the reference portmap plugin")
    args = p.parse_args(argv)

    try:
        if args.from_node:
            if not args.api_server:
                p.error("--from-node needs --api-server outside a cluster")
            with open(args.token_file) as f:
                token = f.read().strip()
            ca = args.ca_file if os.path.exists(args.ca_file) else None
            cidrs = wait_for_pod_cidrs(args.from_node, args.api_server, token, ca, args.wait)
        else:
            cidrs = args.pod_cidr
        mtu = pod_mtu(args.routing_mode, args.mtu, uplink_mtu())
        conflist = build_conflist(
            cidrs, name=args.name, bridge=args.bridge, mtu=mtu, portmap=not args.no_portmap
        )
    except (ValueError, TimeoutError, OSError) as exc:
        print(f"cniconf: {exc}", file=sys.stderr)
        return 1
    changed = write_if_changed(args.output, conflist)
    print(f"cniconf: {args.output} {'written' if changed else 'unchanged'} for {', '.join(cidrs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
