"""The CNI verbs. Each takes the validated environment and configuration and returns the JSON to print."""

from __future__ import annotations

import os
import time

from plugin import addressing, endpoint, log, wiring
from plugin.config import SUPPORTED_VERSIONS, Env, NetConf
from plugin.errors import (
    ALREADY_EXISTS,
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENV,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CNIError,
)
from plugin.faults import checkpoint
from plugin.ip import ip_address, ip_interface, ip_network
from plugin.netlink import IPAddr, IPNet, Netlink, is_netns
from plugin.result import convert, merge, to_current

TYPE_CHECKING = False  # typing costs ~3 ms of start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any

VALID_ATTACHMENTS = "cni.dev/valid-attachments"


class Rollback:
    """Undo steps registered as ADD builds; on failure they run last first, as the reference bridge's
    deferred clean-ups do. `pop_all()` on success keeps everything.

    Not contextlib.ExitStack: contextlib imports functools and collections (~3 ms of CPU per cold ADD,
    see plugin/ip.py). Unlike ExitStack, a failing step does not replace the error that caused the
    rollback (the runtime must see why ADD failed): it is logged and the other steps still run.
    """

    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: list[tuple[Any, tuple[Any, ...]]] = []

    def callback(self, fn: Any, *args: Any) -> None:
        self._steps.append((fn, args))

    def pop_all(self) -> None:
        self._steps.clear()

    def __enter__(self) -> Rollback:
        return self

    def __exit__(self, *exc: object) -> None:
        while self._steps:
            fn, args = self._steps.pop()
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - keep undoing; the original error is what matters
                log.warn(f"rollback step {getattr(fn, '__name__', fn)} failed: {e!r}")


def _pid_alive(pid: int) -> bool:
    """Whether the ADD that wrote a "creating" record still runs. A killed one that its parent has not
    reaped yet (a plugin-server worker, a runtime busy elsewhere) is a zombie: dead, and its work is ours
    to reclaim."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # the state follows the parenthesised command name, which may itself hold ") "
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def _still_running(pid: int, grace_s: float = 0.5) -> bool:
    """Whether that ADD runs on. A caller that saw it die (the launcher, on its worker's closed socket)
    can get here while the kernel is still tearing the process down: give it a moment to finish dying."""
    import time

    deadline = time.monotonic() + grace_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.005)
    return False


def _attach_bpf(conf: NetConf, host_ifindex: int, ips: list[str], mac: str, record: dict[str, Any]) -> bool:
    if not os.path.isdir(conf.bpf_pin_dir):
        return False  # no agent has ever run: the pod is unobserved, and ADD skips the bpf(2) set-up cost
    from plugin import attach

    record["identity"] = attach.pod_identity(conf.state_dir, record["namespace"], record["pod"])
    try:
        return attach.attach_endpoint(
            conf.bpf_pin_dir, host_ifindex, ips, host_ifindex, mac, record["identity"]
        )
    except OSError as e:
        # Observability must never cost a pod its network: wire it, mark it unobserved, say why.
        log.warn(f"cannot attach the datapath pinned in {conf.bpf_pin_dir}: {e}; pod is unobserved")
        try:
            attach.detach_endpoint(conf.bpf_pin_dir, ips)
        except OSError:
            pass
        return False


def _detach_bpf(conf: NetConf, ips: list[str]) -> None:
    if not os.path.isdir(conf.bpf_pin_dir):
        return
    from plugin import attach

    attach.detach_endpoint(conf.bpf_pin_dir, ips)


def _teardown(conf: NetConf, env: Env, environ: dict[str, str], record: dict[str, Any] | None) -> None:
    """Undo everything one attachment owns; every step tolerates what is already gone."""
    host_name = record["hostVeth"] if record else endpoint.host_veth_name(env.container_id, env.ifname)
    if record and record.get("ips"):
        _detach_bpf(conf, record["ips"] + record.get("linkLocal", []))
    with Netlink() as nl:
        wiring.delete_host_veth(nl, host_name)
    addressing.delete(conf, env, environ)
    endpoint.remove(conf.state_dir, env.container_id, env.ifname)


def _routes_for(
    addr: addressing.Addressing,
) -> tuple[list[dict[str, Any]], list[tuple[IPNet, IPAddr | None]]]:
    """Result routes and the (dst, via) pairs to install; a default route per family via its gateway."""
    gateways: dict[int, IPAddr] = {}
    for ip in addr.ips:
        if ip.get("gateway"):
            gw = ip_address(ip["gateway"])
            gateways.setdefault(gw.version, gw)
    routes = [dict(r) for r in addr.routes]
    # strict=False: a dst with host bits set means its network, as in the reference plugins.
    have_default = {
        ip_network(r["dst"], strict=False).version
        for r in routes
        if ip_network(r["dst"], strict=False).prefixlen == 0
    }
    for version, gw in sorted(gateways.items()):
        if version not in have_default:
            routes.append({"dst": "0.0.0.0/0" if version == 4 else "::/0", "gw": str(gw)})
    install: list[tuple[IPNet, IPAddr | None]] = []
    for r in routes:
        dst = ip_network(r["dst"], strict=False)
        via = ip_address(r["gw"]) if r.get("gw") else gateways.get(dst.version)
        install.append((dst, via))
    return routes, install


def _check_netns(netns: str) -> None:
    if not os.path.exists(netns):
        raise CNIError(INVALID_ENV, "network namespace does not exist", netns)
    if not is_netns(netns):
        raise CNIError(INVALID_ENV, "CNI_NETNS is not a network namespace", netns)


def cmd_add(env: Env, conf: NetConf, environ: dict[str, str]) -> dict[str, Any]:
    _check_netns(env.netns)
    existing = endpoint.read(conf.state_dir, env.container_id, env.ifname)
    if existing is not None:
        if existing.get("state") == "ready":
            raise CNIError(
                ALREADY_EXISTS,
                f"container {env.container_id[:12]} already has {env.ifname} on {existing.get('network')}",
                "DEL it first",
            )
        if _still_running(int(existing.get("pid", 0))):
            raise CNIError(TRY_AGAIN_LATER, "another ADD for this attachment is in progress")
        log.warn(f"reclaiming attachment left by a killed ADD (pid {existing.get('pid')})")
        _teardown(conf, env, environ, existing)

    k8s = {k: env.args.get(k, "") for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID")}
    host_name = endpoint.host_veth_name(env.container_id, env.ifname)
    mac = env.args.get("MAC") or conf.runtime_config.get("mac") or None
    with Netlink() as nl, Rollback() as undo:
        addr = addressing.add(conf, env, environ)
        undo.callback(addressing.delete, conf, env, environ)
        checkpoint("after-ipam")
        ips = [ip["address"] for ip in addr.ips]
        record: dict[str, Any] = {
            "containerId": env.container_id,
            "ifname": env.ifname,
            "netns": env.netns,
            "network": conf.name,
            "namespace": k8s["K8S_POD_NAMESPACE"],
            "pod": k8s["K8S_POD_NAME"],
            "podUid": k8s["K8S_POD_UID"],
            "hostVeth": host_name,
            "bridge": conf.bridge,
            "ips": ips,
            "state": "creating",
            "pid": os.getpid(),
            "createdAt": int(time.time()),
        }
        endpoint.write(conf.state_dir, record)
        undo.callback(endpoint.remove, conf.state_dir, env.container_id, env.ifname)
        checkpoint("after-record")

        gateways = []
        if conf.is_gateway:
            for ip in addr.ips:
                if ip.get("gateway"):
                    net = ip_interface(ip["address"]).network
                    gateways.append(ip_interface(f"{ip['gateway']}/{net.prefixlen}"))
        bridge = wiring.ensure_bridge(nl, conf.bridge, conf.mtu, gateways)
        checkpoint("after-bridge")
        with Netlink(netns=env.netns) as pod:
            if pod.link(env.ifname) is not None:
                raise CNIError(ALREADY_EXISTS, f"{env.ifname} already exists in {env.netns}")
            undo.callback(wiring.delete_host_veth, nl, host_name)
            host, pod_link = wiring.create_veth(
                nl, pod, env.netns, host_name, env.ifname, conf.mtu, mac, bridge, conf.hairpin_mode
            )
            checkpoint("after-veth")
            routes, install = _routes_for(addr)
            pod_link = wiring.configure_pod(pod, env.netns, pod_link, [ip_interface(a) for a in ips], install)
            # The pod's link-local address speaks for it too (ND, MLD): known, its multicast is
            # accounted once at its own veth, not again at every port the bridge floods it to.
            link_local = [str(a.ip) for _, a in pod.addrs(pod_link.index) if a.ip.is_link_local]
        checkpoint("after-configure")
        datapath_ips = ips + link_local
        undo.callback(_detach_bpf, conf, datapath_ips)
        observed = _attach_bpf(conf, host.index, datapath_ips, pod_link.mac, record)
        checkpoint("after-attach")
        record.update(
            linkLocal=link_local,
            state="ready",
            hostIfindex=host.index,
            endpointId=host.index,
            mac=pod_link.mac,
            observed=observed,
        )
        endpoint.write(conf.state_dir, record)

        result: dict[str, Any] = {
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": bridge.name, "mac": bridge.mac},
                {"name": host.name, "mac": host.mac},
                {"name": pod_link.name, "mac": pod_link.mac, "sandbox": env.netns, "mtu": pod_link.mtu},
            ],
            "ips": [dict(ip, interface=2) for ip in addr.ips],
            "routes": routes,
            "dns": conf.dns or addr.dns,
        }
        undo.pop_all()
    log.info(f"ADD {env.ifname} ips={','.join(ips)} host={host_name} observed={observed} args={env.args}")
    return convert(merge(conf.prev_result, result), conf.cni_version)


def cmd_del(env: Env, conf: NetConf, environ: dict[str, str]) -> None:
    record = endpoint.read(conf.state_dir, env.container_id, env.ifname)
    _teardown(conf, env, environ, record)
    log.info(f"DEL {env.ifname} host={record['hostVeth'] if record else '-'}")


def cmd_check(env: Env, conf: NetConf, environ: dict[str, str]) -> None:
    if conf.prev_result is None:
        raise CNIError(INVALID_CONFIG, "CHECK needs prevResult (the result of ADD)")
    prev = to_current(conf.prev_result)
    record = endpoint.read(conf.state_dir, env.container_id, env.ifname)
    if record is None or record.get("state") != "ready":
        raise CNIError(UNKNOWN_CONTAINER, f"no attachment for container {env.container_id[:12]} {env.ifname}")
    _check_netns(env.netns)
    ours = [
        i
        for i, iface in enumerate(prev.get("interfaces", []))
        if iface.get("name") == env.ifname and iface.get("sandbox") == env.netns
    ]
    if not ours:
        raise CNIError(INTERNAL, f"prevResult has no interface {env.ifname} in {env.netns}")
    want = sorted(ip["address"] for ip in prev.get("ips", []) if ip.get("interface") in ours)
    with Netlink() as nl:
        host = nl.link(record["hostVeth"])
        bridge = nl.link(conf.bridge)
        if host is None or not host.up:
            raise CNIError(INTERNAL, f"host veth {record['hostVeth']} is missing or down")
        if bridge is None or host.master != bridge.index:
            raise CNIError(
                INTERNAL, f"host veth {record['hostVeth']} is not attached to bridge {conf.bridge}"
            )
        with Netlink(netns=env.netns) as pod:
            link = pod.link(env.ifname)
            if link is None or not link.up:
                raise CNIError(INTERNAL, f"{env.ifname} is missing or down in {env.netns}")
            have = sorted(str(a) for i, a in pod.addrs(link.index) if not a.ip.is_link_local)
            if have != want:
                raise CNIError(INTERNAL, f"{env.ifname} addresses {have} differ from the result {want}")
            for version in {ip_interface(a).version for a in want}:
                if not any(r.dst.prefixlen == 0 and r.oif == link.index for r in pod.routes(version)):
                    raise CNIError(INTERNAL, f"no IPv{version} default route via {env.ifname}")
    addressing.check(conf, env, environ, want)


def cmd_gc(env: Env, conf: NetConf, environ: dict[str, str]) -> None:
    if VALID_ATTACHMENTS not in conf.raw:
        # Without the list every attachment would look stale: refuse rather than tear down the node.
        raise CNIError(INVALID_CONFIG, f"GC needs {VALID_ATTACHMENTS}")
    raw_valid = conf.raw[VALID_ATTACHMENTS]
    if not isinstance(raw_valid, list) or not all(
        isinstance(a, dict) and isinstance(a.get("containerID"), str) and isinstance(a.get("ifname"), str)
        for a in raw_valid
    ):
        raise CNIError(INVALID_CONFIG, f"invalid {VALID_ATTACHMENTS}", "want a list of {containerID, ifname}")
    valid = {(a["containerID"], a["ifname"]) for a in raw_valid}
    released = addressing.gc(conf, env, environ, valid)
    stale = [
        r
        for r in endpoint.all_records(conf.state_dir)
        if r.get("network") == conf.name and (r.get("containerId"), r.get("ifname")) not in valid
    ]
    valid_hosts = {endpoint.host_veth_name(cid, ifname) for cid, ifname in valid}
    with Netlink() as nl:
        for r in stale:
            if r.get("ips"):
                _detach_bpf(conf, r["ips"] + r.get("linkLocal", []))
            wiring.delete_host_veth(nl, r["hostVeth"])
            endpoint.remove(conf.state_dir, r["containerId"], r["ifname"])
        bridge = nl.link(conf.bridge)
        if bridge is not None:
            # Host veths on our bridge with no valid owner (a record lost with a wiped state dir).
            for link in nl.links():
                if (
                    link.master == bridge.index
                    and link.name.startswith("lmn")
                    and link.name not in valid_hosts
                ):
                    wiring.delete_host_veth(nl, link.name)
    log.info(f"GC released {len(released)} addresses, removed {len(stale)} endpoints")


def cmd_status(env: Env, conf: NetConf, environ: dict[str, str]) -> None:
    addressing.status(conf)


def cmd_version(requested: object) -> dict[str, Any]:
    version = requested if requested in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
