"""CNI results: built in the 1.1 shape, converted to the version the configuration asks for.

0.3.x and 0.4.0 differ from 1.x only in `ips[].version`; 1.1 adds optional fields (interface mtu,
socketPath, pciID; route mtu, advmss, priority, table, scope) that older readers must not see.
"""

from __future__ import annotations

from plugin.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, CNIError
from plugin.ip import ip_address, ip_interface, ip_network

TYPE_CHECKING = False  # typing costs ~3 ms of start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any

_V11_INTERFACE_KEYS = ("mtu", "socketPath", "pciID")
_V11_ROUTE_KEYS = ("mtu", "advmss", "priority", "table", "scope")


def _clone(value: Any) -> Any:
    """Deep copy of JSON data (copy.deepcopy costs a millisecond of imports)."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split(".")
    return int(parts[0]), int(parts[1])


def _parses(parse: Any, value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse(value)
    except ValueError:
        return False
    return True


def check_result(result: object, what: str, code: int = DECODE_FAILURE) -> dict[str, Any]:
    """A result from outside (prevResult, a delegated IPAM plugin's answer) in the shape the verbs rely
    on: lists of objects, parseable addresses, interface indexes in range. Else CNIError(code) naming
    the field (the spec's 'failed to decode content' unless the caller says otherwise)."""

    def bad(why: str) -> CNIError:
        return CNIError(code, f"invalid {what}", why)

    if not isinstance(result, dict):
        raise bad("not a JSON object")
    for key in ("interfaces", "ips", "routes"):
        items = result.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise bad(f"{key} must be a list of objects")
    if not isinstance(result.get("dns", {}), dict):
        raise bad("dns must be an object")
    interfaces = len(result.get("interfaces", []))
    for i, ip in enumerate(result.get("ips", [])):
        if not _parses(ip_interface, ip.get("address")):
            raise bad(f"ips[{i}].address {ip.get('address')!r:.100} is not an address with a prefix")
        if "gateway" in ip and not _parses(ip_address, ip["gateway"]):
            raise bad(f"ips[{i}].gateway {ip['gateway']!r:.100} is not an IP address")
        index = ip.get("interface")
        if index is not None and (type(index) is not int or not 0 <= index < interfaces):
            raise bad(f"ips[{i}].interface {index!r:.100} is not an index into interfaces")
    for i, route in enumerate(result.get("routes", [])):
        if not _parses(lambda v: ip_network(v, strict=False), route.get("dst")):
            raise bad(f"routes[{i}].dst {route.get('dst')!r:.100} is not a network")
        if "gw" in route and not _parses(ip_address, route["gw"]):
            raise bad(f"routes[{i}].gw {route['gw']!r:.100} is not an IP address")
    return result


def to_current(result: dict[str, Any]) -> dict[str, Any]:
    """Normalise a result of any supported version (a prevResult, a delegated IPAM answer) to 1.1."""
    version = result.get("cniVersion", "")
    if not isinstance(version, str) or not version or version.startswith("0.1") or version.startswith("0.2"):
        raise CNIError(INCOMPATIBLE_VERSION, "unsupported result version", f"{version!r}")
    out: dict[str, Any] = _clone(result)
    for ip in out.get("ips", []):
        ip.pop("version", None)
    out["cniVersion"] = "1.1.0"
    return out


def convert(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A 1.1-shaped result expressed in `version`."""
    out: dict[str, Any] = _clone(result)
    out["cniVersion"] = version
    if _major_minor(version) < (1, 1):
        for iface in out.get("interfaces", []):
            for key in _V11_INTERFACE_KEYS:
                iface.pop(key, None)
        for route in out.get("routes", []):
            for key in _V11_ROUTE_KEYS:
                route.pop(key, None)
    if _major_minor(version) < (1, 0):
        for ip in out.get("ips", []):
            ip["version"] = str(ip_interface(ip["address"]).version)
    return out


def merge(prev: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """Chain onto a prevResult: keep what earlier plugins reported, append ours with shifted indexes."""
    if not prev:
        return ours
    merged = to_current(prev)
    shift = len(merged.get("interfaces", []))
    merged.setdefault("interfaces", []).extend(ours.get("interfaces", []))
    for ip in ours.get("ips", []):
        ip = dict(ip)
        if "interface" in ip:
            ip["interface"] += shift
        merged.setdefault("ips", []).append(ip)
    merged.setdefault("routes", []).extend(ours.get("routes", []))
    if ours.get("dns") and not merged.get("dns"):
        merged["dns"] = ours["dns"]
    return merged
