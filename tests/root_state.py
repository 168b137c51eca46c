"""The root network namespace's state, read (never written) before and after a test session.

Tests may build anything inside network namespaces they create, and nothing in the root namespace:
no link, route, rule, nftables/iptables table or chain, and no forwarding sysctl (tests/conftest.py
fails the session when the end state differs from the start). Links a test adds and removes again are
not seen; what stays behind is.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess

#: what is compared, each read as lines (a missing tool reads as no lines, at both ends alike)
COMMANDS: dict[str, list[str]] = {
    "links": ["ip", "-o", "-d", "link", "show"],
    "routes4": ["ip", "-4", "route", "show", "table", "all"],
    "routes6": ["ip", "-6", "route", "show", "table", "all"],
    "rules4": ["ip", "-4", "rule", "show"],
    "rules6": ["ip", "-6", "rule", "show"],
    # -s: stateless, without counters and quotas that move with traffic
    "nftables": ["nft", "-s", "list", "ruleset"],
}
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")

_EXPIRES = re.compile(r" expires \d+sec")
_ROUTE_TYPES = set("unicast local broadcast multicast anycast unreachable blackhole prohibit throw".split())


def link_names(text: str) -> list[str]:
    """Names only: flags, counters and the peer's ifindex (`veth0@if7`) change without anyone's doing."""
    names = []
    for line in text.splitlines():
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            names.append(parts[1].split("@")[0])
    return sorted(names)


def route_lines(text: str) -> list[str]:
    """Routes, minus the IPv6 link-local and multicast ones the kernel adds and drops with each link
    (the links themselves are compared by name) and the remaining lifetime of routes learned by RA."""
    kept = []
    for line in text.splitlines():
        words = line.split() or [""]
        dst = words[1] if words[0] in _ROUTE_TYPES and len(words) > 1 else words[0]
        if "proto kernel" in line and (dst.startswith("fe80:") or dst == "ff00::/8"):
            continue
        kept.append(_EXPIRES.sub("", line).rstrip())
    return sorted(kept)


def normalize(name: str, text: str) -> list[str]:
    if name == "links":
        return link_names(text)
    if name.startswith("routes"):
        return route_lines(text)
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _read(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout


def snapshot() -> dict[str, list[str]]:
    """The root namespace as the test process sees it (pytest runs there)."""
    state = {name: normalize(name, _read(argv)) for name, argv in COMMANDS.items()}
    for path in SYSCTLS:
        try:
            with open(f"/proc/sys/{path}") as f:
                state[path] = [f.read().strip()]
        except FileNotFoundError:
            state[path] = []
    return state


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> str:
    """A unified diff per part that changed ("" when none did)."""
    out = []
    for name in before:
        if before[name] != after.get(name, []):
            diff = difflib.unified_diff(before[name], after.get(name, []), "start", "end", lineterm="", n=0)
            out.append(f"{name}:\n" + "\n".join(line for line in diff if not line.startswith("@@")))
    return "\n".join(out)
