"""Egress masquerade: a packet from this node's pods to an address outside every pod CIDR of the cluster
(and outside the configured non-masquerade list) leaves with the node's address, so the world can answer.

One nftables table of Lumen's own (`inet lumen`), written whole by Debian's `nft` in one transaction
(`nft -f -`: the table is declared, flushed by deletion and declared again, so there is never a moment
without the rule), and deleted whole when masquerade is switched off. Nothing else in the ruleset is read
or touched. Sets with `flags interval` hold the CIDRs, so the rule count is fixed however many nodes.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence

log = logging.getLogger("lumen.masquerade")

TABLE = "lumen"
NFT = "nft"


def _set(name: str, kind: str, cidrs: list[str]) -> str:
    elements = f" elements = {{ {', '.join(cidrs)} }};" if cidrs else ""
    return f"    set {name} {{ type {kind}; flags interval; auto-merge;{elements} }}\n"


def ruleset(
    local_cidrs: Iterable[str],
    cluster_cidrs: Iterable[str],
    non_masquerade: Iterable[str] = (),
    table: str = TABLE,
) -> str:
    """The nft script that (re)creates the table. Pure: tested without root."""
    by = {4: ([], [], []), 6: ([], [], [])}  # type: dict[int, tuple[list[str], list[str], list[str]]]
    for i, group in enumerate((local_cidrs, cluster_cidrs, non_masquerade)):
        for c in group:
            net = ipaddress.ip_network(c, strict=False)
            by[net.version][i].append(str(net))
    lines = [f"table inet {table} {{}}\n", f"delete table inet {table}\n", f"table inet {table} {{\n"]
    rules = []
    for version, (local, cluster, keep) in by.items():
        kind, ip = ("ipv4_addr", "ip") if version == 4 else ("ipv6_addr", "ip6")
        if not local:
            continue
        lines.append(_set(f"pods{version}", kind, sorted(set(local))))
        lines.append(_set(f"cluster{version}", kind, sorted(set(cluster) | set(local))))
        lines.append(_set(f"keep{version}", kind, sorted(set(keep))))
        rules.append(
            f"        {ip} saddr @pods{version} {ip} daddr != @cluster{version} "
            f"{ip} daddr != @keep{version} masquerade\n"
        )
    lines.append("    chain postrouting {\n")
    lines.append("        type nat hook postrouting priority srcnat; policy accept;\n")
    lines.extend(rules)
    lines.append("    }\n}\n")
    return "".join(lines)


class Masquerade:
    """Keeps Lumen's table equal to the last ruleset asked for; `nft` runs only when it changes."""

    def __init__(self, table: str = TABLE, non_masquerade: Sequence[str] = ()) -> None:
        for c in non_masquerade:
            ipaddress.ip_network(c, strict=False)  # a bad CIDR fails at start, not at the first node
        self.table = table
        self.non_masquerade = tuple(non_masquerade)
        self._applied: str | None = None

    def apply(self, local_cidrs: Sequence[str], cluster_cidrs: Sequence[str]) -> None:
        if not local_cidrs:
            # this node's pod CIDRs are not known yet: nothing of ours can be masqueraded correctly
            return
        script = ruleset(local_cidrs, cluster_cidrs, self.non_masquerade, self.table)
        if script == self._applied:
            return
        _nft(script)
        if self._applied is None:
            log.info(
                "egress masquerade on",
                extra={"table": f"inet {self.table}", "pods": list(local_cidrs), "keep": self.non_masquerade},
            )
        self._applied = script

    def remove(self) -> None:
        """Delete our table if it is there (the off switch, and a clean uninstall)."""
        _nft(f"table inet {self.table} {{}}\ndelete table inet {self.table}\n")
        self._applied = None


def _nft(script: str) -> None:
    if shutil.which(NFT) is None:
        raise OSError("nft not found: install Debian's nftables package (or turn masquerade off)")
    proc = subprocess.run([NFT, "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise OSError(f"nft refused the ruleset: {proc.stderr.strip()}")


def table_exists(table: str = TABLE) -> bool:
    proc = subprocess.run([NFT, "list", "table", "inet", table], capture_output=True, text=True)
    return proc.returncode == 0
