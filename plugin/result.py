"""CNI results: built in the 1.1 shape, converted to the version the configuration asks for.

0.3.x and 0.4.0 differ from 1.x only in `ips[].version`; 1.1 adds optional fields (interface mtu,
socketPath, pciID; route mtu, advmss, priority, table, scope) that older readers must not see.
"""

from __future__ import annotations

import ipaddress

from plugin.errors import INCOMPATIBLE_VERSION, CNIError

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


def to_current(result: dict[str, Any]) -> dict[str, Any]:
    """Normalise a result of any supported version (a prevResult, a delegated IPAM answer) to 1.1."""
    version = result.get("cniVersion", "")
    if not isinstance(version, str) or not version or version.startswith("0.1") or version.startswith("0.2"):
        raise CNIError(INCOMPATIBLE_VERSION, "unsupported result version", f"{version!r}")
    out = _clone(result)
    for ip in out.get("ips", []):
        ip.pop("version", None)
    out["cniVersion"] = "1.1.0"
    return out


def convert(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A 1.1-shaped result expressed in `version`."""
    out = _clone(result)
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
            ip["version"] = str(ipaddress.ip_interface(ip["address"]).version)
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
