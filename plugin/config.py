"""The plugin's inputs: CNI_* environment and the network configuration on stdin, validated."""

from __future__ import annotations

from plugin import jsonio
from plugin.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENV, CNIError

TYPE_CHECKING = False  # typing costs ~3 ms of start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")
_IFNAME_BAD = frozenset("/:% \t\n\r\v\f")


def _is_name(value: str) -> bool:
    """[a-zA-Z0-9][a-zA-Z0-9_.-]* without `re` (its import costs ~5 ms per pod)."""
    return bool(value) and value[0] in _ALNUM and all(c in _NAME_CHARS for c in value)


def _bad_ifname_chars(value: str) -> bool:
    return any(c in _IFNAME_BAD for c in value)


def _encodable(value: str) -> bytes | None:
    """The UTF-8 bytes a kernel call will carry, or None (a lone surrogate from a JSON escape or a
    non-UTF-8 environment cannot be sent anywhere)."""
    try:
        return value.encode()
    except UnicodeEncodeError:
        return None


def _is_ifname(value: str) -> bool:
    """A name the kernel takes: 1-15 bytes (IFNAMSIZ less the NUL), none of / : % or whitespace."""
    raw = _encodable(value)
    return (
        raw is not None and 0 < len(raw) <= 15 and value not in (".", "..") and not _bad_ifname_chars(value)
    )


_HEX = frozenset("0123456789abcdefABCDEF")


def is_unicast_mac(value: object) -> bool:
    """aa:bb:cc:dd:ee:ff that a veth accepts: the kernel refuses multicast and all-zero addresses."""
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 6 or not all(len(p) == 2 and p[0] in _HEX and p[1] in _HEX for p in parts):
        return False
    return not int(parts[0], 16) & 1 and any(int(p, 16) for p in parts)


def _ip_list(values: list[object]) -> str | None:
    """The first value that is not an IP address (with or without a prefix length), or None."""
    from plugin.ip import ip_interface

    for value in values:
        try:
            ip_interface(value.strip() if isinstance(value, str) else "")
        except ValueError:
            return repr(value)
    return None


def check_container_id(value: str) -> str:
    """CNI_CONTAINERID names files under dataDir and stateDir: nothing may escape them."""
    if len(value) > 255 or not _is_name(value):
        raise CNIError(INVALID_ENV, "invalid CNI_CONTAINERID", f"{value!r}: want [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    return value


def check_ifname(value: str) -> str:
    if not _is_ifname(value):
        raise CNIError(
            INVALID_ENV, "invalid CNI_IFNAME", f"{value!r}: 1-15 bytes of UTF-8, no '/', ':', '%' or spaces"
        )
    return value


class Env:
    """The CNI_* variables of one invocation, validated."""

    __slots__ = ("command", "container_id", "netns", "ifname", "path", "args")

    def __init__(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        path: tuple[str, ...] = (),
        args: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.path = path
        self.args = args or {}


def parse_env(environ: dict[str, str]) -> Env:
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(INVALID_ENV, "invalid CNI_COMMAND", f"{command!r}: want one of {', '.join(COMMANDS)}")
    path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
    if command == "VERSION":
        return Env(command=command)
    if command in ("GC", "STATUS"):
        if not path:
            raise CNIError(INVALID_ENV, "CNI_PATH is required")
        return Env(command=command, path=path)
    container_id = check_container_id(environ.get("CNI_CONTAINERID", ""))
    ifname = check_ifname(environ.get("CNI_IFNAME", ""))
    netns = environ.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise CNIError(INVALID_ENV, f"CNI_NETNS is required for {command}")
    if command != "DEL" and not path:
        raise CNIError(INVALID_ENV, "CNI_PATH is required")
    args = parse_cni_args(environ.get("CNI_ARGS", ""))
    # The runtime's own keys that change what ADD builds (podman passes them on a restart).
    if args.get("MAC") and not is_unicast_mac(args["MAC"]):
        raise CNIError(
            INVALID_ENV, "invalid CNI_ARGS MAC", f"{args['MAC']!r}: want a unicast aa:bb:cc:dd:ee:ff"
        )
    if args.get("IP") and (bad := _ip_list(list(args["IP"].split(",")))):
        raise CNIError(INVALID_ENV, "invalid CNI_ARGS IP", f"{bad} is not an IP address")
    return Env(command, container_id, netns, ifname, path, args)


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is `K=V;K2=V2`. Unknown keys are ignored (runtimes add their own)."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENV, "invalid CNI_ARGS", f"{pair!r} is not KEY=VALUE")
        out[key] = value
    return out


class NetConf:
    """The network configuration, validated; `raw` is what the runtime sent (delegated IPAM gets it)."""

    cni_version: str
    name: str
    type: str
    bridge: str
    mtu: int | None
    is_gateway: bool
    hairpin_mode: bool
    ipam: dict[str, Any]
    dns: dict[str, Any]
    state_dir: str
    log_file: str
    bpf_pin_dir: str
    prev_result: dict[str, Any] | None
    runtime_config: dict[str, Any]
    args: dict[str, Any]
    raw: dict[str, Any]

    def __init__(self, **fields: Any) -> None:
        for key in self.__annotations__:
            setattr(self, key, fields[key])


def load_json(data: bytes) -> dict[str, Any]:
    try:
        obj = jsonio.loads(data or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(DECODE_FAILURE, "failed to decode network configuration", str(e)) from None
    if not isinstance(obj, dict):
        raise CNIError(DECODE_FAILURE, "network configuration must be a JSON object")
    return obj


def check_version(version: object) -> str:
    if not isinstance(version, str) or not version:
        raise CNIError(INVALID_CONFIG, "cniVersion is required")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


def _opt(raw: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = raw.get(key, default)
    # bool is an int subclass: keep "mtu": true out.
    if value is not default and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise CNIError(INVALID_CONFIG, f"invalid {key}", f"want {kind.__name__}, got {value!r:.200}")
    return value


def _path(raw: dict[str, Any], key: str, default: str) -> str:
    """A file system path the plugin will open: no NUL, nothing the OS cannot encode, not empty."""
    value: str = _opt(raw, key, str, default)
    raw_bytes = _encodable(value)
    if not value or raw_bytes is None or b"\0" in raw_bytes or len(raw_bytes) > 4095:
        raise CNIError(INVALID_CONFIG, f"invalid {key}", f"{value!r:.200} is not a usable path")
    return value


def _runtime_config(raw: dict[str, Any]) -> dict[str, Any]:
    """runtimeConfig capabilities the plugin uses (mac, ips); the rest belongs to other plugins."""
    rc: dict[str, Any] = _opt(raw, "runtimeConfig", dict, {})
    if rc.get("mac") and not is_unicast_mac(rc["mac"]):
        raise CNIError(INVALID_CONFIG, "invalid runtimeConfig.mac", f"{rc['mac']!r:.200}: want unicast")
    ips = rc.get("ips") or []
    if not isinstance(ips, list) or _ip_list(ips):
        raise CNIError(INVALID_CONFIG, "invalid runtimeConfig.ips", "want a list of IP addresses")
    return rc


def _args(raw: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = _opt(raw, "args", dict, {})
    cni = args.get("cni")
    ips = (cni.get("ips") or []) if isinstance(cni, dict) else []
    if not isinstance(ips, list) or _ip_list(ips):
        raise CNIError(INVALID_CONFIG, "invalid args.cni.ips", "want a list of IP addresses")
    return args


def parse_netconf(raw: dict[str, Any]) -> NetConf:
    version = check_version(raw.get("cniVersion"))
    name = raw.get("name")
    if not isinstance(name, str) or len(name) > 255 or not _is_name(name):
        raise CNIError(INVALID_CONFIG, "invalid name", f"{name!r}: want [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    bridge = _opt(raw, "bridge", str, "lumen0")
    if not _is_ifname(bridge):
        raise CNIError(INVALID_CONFIG, "invalid bridge", f"{bridge!r:.200}: an interface name of 1-15 bytes")
    mtu = _opt(raw, "mtu", int, None)
    if mtu is not None and not 68 <= mtu <= 65535:
        raise CNIError(INVALID_CONFIG, "invalid mtu", f"{mtu} is outside 68..65535")
    ipam = _opt(raw, "ipam", dict, None)
    if not ipam or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise CNIError(INVALID_CONFIG, "ipam.type is required")
    if "/" in ipam["type"] or "\0" in ipam["type"] or _encodable(ipam["type"]) is None:
        raise CNIError(INVALID_CONFIG, "invalid ipam.type", "a plugin name, not a path")
    if ipam["type"] == "lumen" and not isinstance(ipam.get("dns") or {}, dict):
        raise CNIError(INVALID_CONFIG, "invalid ipam.dns", "want a JSON object")
    prev = _opt(raw, "prevResult", dict, None)
    if prev is not None:
        from plugin.result import check_result

        check_result(prev, "prevResult")
    return NetConf(
        cni_version=version,
        name=name,
        type=_opt(raw, "type", str, "lumen"),
        bridge=bridge,
        mtu=mtu,
        is_gateway=_opt(raw, "isGateway", bool, True),
        hairpin_mode=_opt(raw, "hairpinMode", bool, False),
        ipam=ipam,
        dns=_opt(raw, "dns", dict, {}),
        state_dir=_path(raw, "stateDir", "/run/lumen"),
        log_file=_path(raw, "logFile", "/var/log/lumen/cni.log"),
        bpf_pin_dir=_path(raw, "bpfPinDir", "/sys/fs/bpf/lumen"),
        prev_result=prev,
        runtime_config=_runtime_config(raw),
        args=_args(raw),
        raw=raw,
    )
