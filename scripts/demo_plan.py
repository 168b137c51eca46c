"""Names, subnets and ports of one `make demo`, chosen so that a second demo on the same machine takes
others: every netns, link, bridge, state and pin directory carries the demo's prefix plus random hex; the
subnet octet N (pods 10.N.x.0/24 and fd00:N:x::/64, underlay 192.168.N.0/24) is claimed in a directory of
claims (one file per octet holding the demo's PID, freed when that PID is gone); the UI's port is 9465 when
free, else any free port.

Pure but for the claim files and a port probe; scripts/demo.py uses it, tests/unit/test_demo_plan.py
checks that two demos planned on one machine share no name, directory, subnet or port.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

CLAIMS_DIR = Path("/run/lumen-demo-claims")
FIRST_OCTET = 244
DEFAULT_PORT = 9465


class PlanError(RuntimeError):
    """A flag asks for what another running demo holds; the message says which demo."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _young(path: Path, seconds: float = 10.0) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def claimed(claims: Path) -> dict[int, int]:
    """octet -> PID of the running demos' claims; claims of demos that are gone are removed."""
    out: dict[int, int] = {}
    if not claims.is_dir():
        return out
    for path in claims.iterdir():
        try:
            octet, pid = int(path.name), int(path.read_text().strip() or 0)
        except (ValueError, OSError):
            continue
        if pid and _alive(pid):
            out[octet] = pid
        elif not pid and _young(path):
            out[octet] = 0  # created, its PID not written yet: a demo starting this instant holds it
        else:
            path.unlink(missing_ok=True)
    return out


def claim_octet(claims: Path, wanted: int | None, pid: int | None = None) -> int:
    """Claim `wanted`, or the first free octet from 244 on (wrapping within 1..254). A claim is a file
    created with O_EXCL, so two demos starting at once cannot take the same octet."""
    pid = os.getpid() if pid is None else pid
    claims.mkdir(parents=True, exist_ok=True)
    held = claimed(claims)
    if wanted is not None:
        if wanted in held and held[wanted] != pid:
            holder = f"the demo of PID {held[wanted]}" if held[wanted] else "a demo starting now"
            raise PlanError(f"--octet {wanted}: used by {holder}; leave --octet out")
        order = [wanted]
    else:
        order = [FIRST_OCTET + i if FIRST_OCTET + i <= 254 else FIRST_OCTET + i - 254 for i in range(254)]
    for octet in order:
        if octet in held:
            continue
        try:
            fd = os.open(claims / str(octet), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # another demo claimed it between our look and now
        with os.fdopen(fd, "w") as f:
            f.write(str(pid))
        return octet
    raise PlanError("every subnet octet 1..254 is claimed by a running demo")


def release_octet(claims: Path, octet: int, pid: int | None = None) -> None:
    path = claims / str(octet)
    try:
        if int(path.read_text().strip()) == (os.getpid() if pid is None else pid):
            path.unlink()
    except (OSError, ValueError):
        pass


def free_port(wanted: int) -> int:
    """`wanted` if nothing listens on 127.0.0.1:wanted, else a port the kernel picks (0: always that)."""
    for port in (wanted, 0) if wanted else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            return int(s.getsockname()[1])
    raise PlanError("no free port on 127.0.0.1")


@dataclass(frozen=True)
class Plan:
    prefix: str  # the --prefix plus random hex: every netns, link and bridge name starts with it
    octet: int
    port: int
    nodes: int
    workdir: Path
    bridge: str  # the one-node demo's bridge (the cluster's bridges live in its node namespaces)
    state_dir: Path
    pin_dir: Path
    subnets: tuple[str, ...] = field(default=())

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(s) for s in self.subnets]


def subnets(octet: int, nodes: int) -> tuple[str, ...]:
    """Every subnet a demo uses: the pods' per node (one node: 10.N.0.0/24), and a cluster's underlay."""
    if nodes == 1:
        return (f"10.{octet}.0.0/24", f"fd00:{octet}::/64")
    pods = [s for i in range(1, nodes + 1) for s in (f"10.{octet}.{i}.0/24", f"fd00:{octet}:{i}::/64")]
    return (*pods, f"192.168.{octet}.0/24", f"fd01:{octet}::/64")


def make_plan(
    prefix: str,
    nodes: int,
    octet: int,
    port: int,
    workdir: str | None = None,
    bridge: str | None = None,
    state_dir: str | None = None,
    pin_dir: str | None = None,
) -> Plan:
    """The demo's names from its flags (None: derived from the prefix) and its claimed octet and port."""
    unique = prefix + secrets.token_hex(3)
    return Plan(
        prefix=unique,
        octet=octet,
        port=port,
        nodes=nodes,
        workdir=Path(workdir or f"/tmp/lumen-demo-{unique}"),
        bridge=bridge or f"{unique}br",
        state_dir=Path(state_dir or f"/run/lumen-demo-{unique}"),
        pin_dir=Path(pin_dir or f"/sys/fs/bpf/lumen-demo-{unique}"),
        subnets=subnets(octet, nodes),
    )
