"""networking.k8s.io/v1 NetworkPolicy: the objects you would `kubectl apply`, parsed and validated.

Validation follows the API server's (plus strict field checking, as `kubectl apply --validate=strict`):
a typo such as `namespaceSelecter` would otherwise silently widen a policy. Every problem is a
PolicyError naming the field, e.g. `spec.ingress[0].ports[1].endPort: must be >= port (8080)`.
Defaulting is the API server's: protocol TCP, policyTypes [Ingress] plus Egress when spec.egress is
non-empty, namespace from the caller (kubectl's context namespace) when metadata has none.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml  # type: ignore[import-untyped]

from bpf.vocab import PORTED_PROTOCOLS
from exporter.policy.errors import PolicyError
from exporter.policy.selectors import LabelSelector, parse_selector

Direction = Literal["ingress", "egress"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

API_VERSION = "networking.k8s.io/v1"
#: libyaml's safe loader when PyYAML has it (10x faster on thousands of policies), else the pure one
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PROTOCOLS = PORTED_PROTOCOLS  # what a NetworkPolicy port may name
POLICY_TYPES = {"Ingress": "ingress", "Egress": "egress"}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # IANA_SVC_NAME, plus the rules below


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    except_: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        return ip in self.cidr and not any(ip in e for e in self.except_)

    def __str__(self) -> str:
        return f"{self.cidr}" + (f" except {', '.join(map(str, self.except_))}" if self.except_ else "")


@dataclass(frozen=True)
class Peer:
    """One `from`/`to` entry. Either ip_block alone, or pod and/or namespace selector; None = absent."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def __str__(self) -> str:
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block}"
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaces [{self.namespace_selector}]")
        if self.pod_selector is not None:
            parts.append(f"pods [{self.pod_selector}]")
        return " and ".join(parts)


@dataclass(frozen=True)
class PolicyPort:
    """A port entry: port None = every port of the protocol; a str port is a named container port."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return f"any/{self.protocol}"
        if self.end_port is not None:
            return f"{self.port}-{self.end_port}/{self.protocol}"
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule. Empty peers = every peer; empty ports = every port and protocol."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    policy_types: frozenset[Direction] = frozenset({"ingress"})

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction == "ingress" else self.egress


# -- parsing -------------------------------------------------------------------------------------


def _mapping(raw: object, path: str, allowed: Iterable[str]) -> dict:
    if not isinstance(raw, dict):
        raise PolicyError(path, f"must be a mapping, got {type(raw).__name__}")
    allowed = tuple(allowed)
    for k in raw:
        if k not in allowed:
            raise PolicyError(
                f"{path}.{k}" if path else str(k), f"unknown field (expected {', '.join(allowed)})"
            )
    return raw


def _list(raw: object, path: str) -> list:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise PolicyError(path, f"must be a list, got {type(raw).__name__}")
    return raw


def _network(raw: object, path: str) -> IPNetwork:
    if not isinstance(raw, str):
        raise PolicyError(path, f"must be a CIDR string, got {raw!r}")
    try:
        # Host bits are tolerated (as the API server's sloppy CIDR parsing does) and cleared.
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise PolicyError(path, f"{raw!r} is not a valid CIDR (e.g. 10.0.0.0/8)") from None


def _ip_block(raw: object, path: str) -> IPBlock:
    raw = _mapping(raw, path, ("cidr", "except"))
    if "cidr" not in raw:
        raise PolicyError(f"{path}.cidr", "required")
    cidr = _network(raw["cidr"], f"{path}.cidr")
    excepts = []
    for i, e in enumerate(_list(raw.get("except"), f"{path}.except")):
        net = _network(e, f"{path}.except[{i}]")
        if net.version != cidr.version or not net.subnet_of(cidr) or net == cidr:  # type: ignore[arg-type]
            raise PolicyError(f"{path}.except[{i}]", f"{net} must be a strict subset of cidr {cidr}")
        excepts.append(net)
    return IPBlock(cidr, tuple(excepts))


def _peer(raw: object, path: str) -> Peer:
    raw = _mapping(raw, path, ("podSelector", "namespaceSelector", "ipBlock"))
    if not raw:
        raise PolicyError(path, "must specify podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in raw:
        if len(raw) > 1:
            raise PolicyError(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
        return Peer(ip_block=_ip_block(raw["ipBlock"], f"{path}.ipBlock"))
    return Peer(
        pod_selector=parse_selector(raw["podSelector"], f"{path}.podSelector")
        if "podSelector" in raw
        else None,
        namespace_selector=(
            parse_selector(raw["namespaceSelector"], f"{path}.namespaceSelector")
            if "namespaceSelector" in raw
            else None
        ),
    )


def _port_number(raw: object, path: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
        raise PolicyError(path, f"must be a port number between 1 and 65535, got {raw!r}")
    return raw


def _port(raw: object, path: str) -> PolicyPort:
    raw = _mapping(raw, path, ("protocol", "port", "endPort"))
    protocol = raw.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise PolicyError(f"{path}.protocol", f"must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    port = raw.get("port")
    if isinstance(port, str):
        # IntOrString: a quoted "80" is a name to Kubernetes, and names need a letter, so it is rejected.
        if len(port) > 15 or not _PORT_NAME.match(port) or "--" in port or not re.search("[a-z]", port):
            raise PolicyError(
                f"{path}.port",
                f"{port!r} is not a valid port name (1-15 lowercase letters, digits and '-', "
                "at least one letter, no '--', alphanumeric at both ends; numbers go unquoted)",
            )
    elif port is not None:
        port = _port_number(port, f"{path}.port")
    end_port = raw.get("endPort")
    if end_port is not None:
        end_port = _port_number(end_port, f"{path}.endPort")
        if port is None:
            raise PolicyError(f"{path}.endPort", "requires port")
        if isinstance(port, str):
            raise PolicyError(f"{path}.endPort", f"cannot be used with a named port ({port!r})")
        if end_port < port:
            raise PolicyError(f"{path}.endPort", f"must be >= port ({port})")
    return PolicyPort(protocol, port, end_port)


def _rule(raw: object, path: str, peers_key: str) -> Rule:
    raw = _mapping({} if raw is None else raw, path, (peers_key, "ports"))
    peers = tuple(
        _peer(p, f"{path}.{peers_key}[{i}]")
        for i, p in enumerate(_list(raw.get(peers_key), f"{path}.{peers_key}"))
    )
    ports = tuple(
        _port(p, f"{path}.ports[{i}]") for i, p in enumerate(_list(raw.get("ports"), f"{path}.ports"))
    )
    return Rule(peers, ports)


def _name(raw: object, path: str, pattern: re.Pattern[str], limit: int) -> str:
    if not isinstance(raw, str) or not raw:
        raise PolicyError(path, "required (a non-empty string)")
    if len(raw) > limit or not pattern.match(raw):
        raise PolicyError(
            path, f"{raw!r}: lowercase letters, digits, '-' (and '.'), at most {limit} characters"
        )
    return raw


def parse_policy(obj: object, default_namespace: str = "default") -> NetworkPolicy:
    """One decoded object (a dict, as from YAML or JSON) -> NetworkPolicy, or PolicyError."""
    obj = _mapping(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    if obj.get("kind") != "NetworkPolicy":
        raise PolicyError("kind", f"expected NetworkPolicy, got {obj.get('kind')!r}")
    if obj.get("apiVersion") != API_VERSION:
        raise PolicyError("apiVersion", f"expected {API_VERSION}, got {obj.get('apiVersion')!r}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise PolicyError("metadata", "required (a mapping with at least a name)")
    name = _name(meta.get("name"), "metadata.name", _DNS_SUBDOMAIN, 253)
    namespace = _name(meta.get("namespace", default_namespace), "metadata.namespace", _DNS_LABEL, 63)
    spec = _mapping(obj.get("spec"), "spec", ("podSelector", "ingress", "egress", "policyTypes"))
    if "podSelector" not in spec:
        raise PolicyError("spec.podSelector", "required (use {} to select every pod in the namespace)")
    pod_selector = parse_selector(spec["podSelector"], "spec.podSelector")
    ingress = tuple(
        _rule(r, f"spec.ingress[{i}]", "from")
        for i, r in enumerate(_list(spec.get("ingress"), "spec.ingress"))
    )
    egress = tuple(
        _rule(r, f"spec.egress[{i}]", "to") for i, r in enumerate(_list(spec.get("egress"), "spec.egress"))
    )
    types: set[Direction] = set()
    for i, t in enumerate(_list(spec.get("policyTypes"), "spec.policyTypes")):
        if t not in POLICY_TYPES:
            raise PolicyError(f"spec.policyTypes[{i}]", f"must be Ingress or Egress, got {t!r}")
        if POLICY_TYPES[t] in types:
            raise PolicyError(f"spec.policyTypes[{i}]", f"duplicate value {t!r}")
        types.add(POLICY_TYPES[t])  # type: ignore[arg-type]
    if not types:  # the API server's defaulting
        types = {"ingress", "egress"} if egress else {"ingress"}
    return NetworkPolicy(namespace, name, pod_selector, ingress, egress, frozenset(types))


def yaml_objects(text: str, source: str) -> list[tuple[str, object]]:
    """The objects of a (multi-document) YAML text with where each was, `kind: List` unpacked as kubectl
    does; invalid YAML raises PolicyError with the line and column."""
    try:
        docs = list(yaml.load_all(text, Loader=SAFE_LOADER))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise PolicyError("", f"not valid YAML{at}: {getattr(e, 'problem', None) or e}", source) from None
    objects: list[tuple[str, object]] = []
    for n, doc in enumerate(docs, 1):
        if doc is None:  # an empty document (`---` at the end) is fine
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List":
            for i, item in enumerate(_list(doc.get("items"), "items")):
                objects.append((f"{source}, document {n}, items[{i}]", item))
        else:
            objects.append((f"{source}, document {n}", doc))
    return objects


def load_policies(
    text: str, source: str = "<manifest>", default_namespace: str = "default"
) -> list[NetworkPolicy]:
    """Every NetworkPolicy in a (multi-document) YAML text; `kind: List` is unpacked as kubectl does.

    All or nothing: the first invalid document raises PolicyError naming the source, document and field,
    so a caller can keep the policies already in force. A NetworkPolicy given twice is an error too.
    """
    policies: dict[str, NetworkPolicy] = {}
    for where, obj in yaml_objects(text, source):
        try:
            policy = parse_policy(obj, default_namespace)
        except PolicyError as e:
            named = (
                obj.get("metadata", {}).get("name")
                if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict)
                else None
            )
            raise e.located(f"{where}" + (f" (NetworkPolicy {named})" if named else "")) from None
        if policy.key in policies:
            raise PolicyError("metadata.name", f"NetworkPolicy {policy.key} is defined twice", where)
        policies[policy.key] = policy
    return list(policies.values())


def load_paths(paths: Iterable[Path], default_namespace: str = "default") -> list[NetworkPolicy]:
    """Policies from files and directories (*.yaml, *.yml, *.json, sorted), all or nothing."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json") and f.is_file())
        else:
            files.append(p)
    seen: dict[str, str] = {}
    out: list[NetworkPolicy] = []
    for f in files:
        try:
            text = f.read_text()
        except OSError as e:
            raise PolicyError("", f"cannot read: {e.strerror}", str(f)) from None
        for policy in load_policies(text, str(f), default_namespace):
            if policy.key in seen:
                raise PolicyError(
                    "metadata.name",
                    f"NetworkPolicy {policy.key} is also defined in {seen[policy.key]}",
                    str(f),
                )
            seen[policy.key] = str(f)
            out.append(policy)
    return out
