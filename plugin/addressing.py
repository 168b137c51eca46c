"""IPAM dispatch: the built-in allocator in process for `"type": "lumen"`, any other type by exec."""

from __future__ import annotations

from plugin.config import Env, NetConf
from plugin.errors import INVALID_CONFIG, PLUGIN_NOT_AVAILABLE, CNIError
from plugin.ip import Address, ip_interface
from plugin.result import check_result, to_current

TYPE_CHECKING = False  # typing costs ~3 ms of start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any

BUILTIN = "lumen"


class Addressing:
    """What IPAM decided for one attachment, in result form (1.1 shape, no interface index yet)."""

    __slots__ = ("ips", "routes", "dns")

    def __init__(self, ips: list[dict[str, Any]], routes: list[dict[str, Any]], dns: dict[str, Any]) -> None:
        self.ips = ips
        self.routes = routes
        self.dns = dns


def requested_ips(conf: NetConf, env: Env) -> list[Address]:
    """A static IP may come from CNI_ARGS IP= (podman re-adds), runtimeConfig ips, or args.cni.ips."""
    raw: list[str] = []
    if env.args.get("IP"):
        raw.extend(env.args["IP"].split(","))
    raw.extend(conf.runtime_config.get("ips") or [])
    cni_args = conf.args.get("cni")
    if not isinstance(cni_args, dict):
        cni_args = {}
    raw.extend(cni_args.get("ips") or [])
    out = []
    for value in raw:
        try:
            out.append(ip_interface(str(value).strip()).ip)
        except ValueError:
            raise CNIError(INVALID_CONFIG, "invalid requested IP", f"{value!r}") from None
    return list(dict.fromkeys(out))


def _builtin(conf: NetConf) -> Any:
    from plugin import ipam

    return ipam, ipam.parse_ipam_config(conf.name, conf.ipam)


def add(conf: NetConf, env: Env, environ: dict[str, str]) -> Addressing:
    if conf.ipam["type"] == BUILTIN:
        ipam, ipconf = _builtin(conf)
        allocated = ipam.allocate(ipconf, env.container_id, env.ifname, requested_ips(conf, env))
        ips = [
            {"address": str(a.address), **({"gateway": str(a.gateway)} if a.gateway else {})}
            for a in allocated
        ]
        routes = [{"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw else {})} for r in ipconf.routes]
        return Addressing(ips=ips, routes=routes, dns=dict(conf.ipam.get("dns") or {}))
    from plugin import delegate

    result = delegate.exec_plugin(conf.ipam["type"], "ADD", conf.raw, environ, env.path)
    if result is not None:
        result = check_result(result, f"result of IPAM plugin {conf.ipam['type']!r}")
    if not result or not result.get("ips"):
        raise CNIError(INVALID_CONFIG, f"IPAM plugin {conf.ipam['type']!r} returned no IP addresses")
    current = to_current(result)
    for ip in current["ips"]:
        ip.pop("interface", None)
    return Addressing(ips=current["ips"], routes=current.get("routes", []), dns=current.get("dns", {}))


def delete(conf: NetConf, env: Env, environ: dict[str, str]) -> None:
    if conf.ipam["type"] == BUILTIN:
        ipam, ipconf = _builtin(conf)
        ipam.release(ipconf, env.container_id, env.ifname)
        return
    from plugin import delegate

    delegate.exec_plugin(conf.ipam["type"], "DEL", conf.raw, environ, env.path)


def check(conf: NetConf, env: Env, environ: dict[str, str], expected: list[str]) -> None:
    """The allocator still holds exactly the addresses the pod was given."""
    if conf.ipam["type"] != BUILTIN:
        from plugin import delegate

        delegate.exec_plugin(conf.ipam["type"], "CHECK", conf.raw, environ, env.path)
        return
    ipam, ipconf = _builtin(conf)
    held = sorted(str(a.address.ip) for a in ipam.get(ipconf, env.container_id, env.ifname))
    want = sorted(str(ip_interface(a).ip) for a in expected)
    if held != want:
        raise CNIError(100, "IPAM allocations do not match", f"allocator holds {held}, pod has {want}")


def gc(conf: NetConf, env: Env, environ: dict[str, str], valid: set[tuple[str, str]]) -> list[str]:
    if conf.ipam["type"] == BUILTIN:
        ipam, ipconf = _builtin(conf)
        return [str(r[0]) for r in ipam.gc(ipconf, valid)]
    from plugin import delegate

    delegate.exec_plugin(conf.ipam["type"], "GC", conf.raw, environ, env.path)
    return []


def status(conf: NetConf) -> None:
    """STATUS for the built-in pool: no free address means ADD cannot succeed (spec code 50)."""
    if conf.ipam["type"] != BUILTIN:
        return
    ipam, ipconf = _builtin(conf)
    if ipam.free_count(ipconf) == 0:
        raise CNIError(
            PLUGIN_NOT_AVAILABLE, "no free IP addresses", f"every address of network {conf.name} is in use"
        )
