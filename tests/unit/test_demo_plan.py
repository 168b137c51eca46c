"""Two `make demo`s on one machine: each gets a prefix of its own for every netns, link, bridge and
directory, a subnet octet no other running demo holds (claimed with O_EXCL, freed when its demo is gone),
and a free UI port. Nothing here needs root: the claims live in a temporary directory."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from scripts import demo_plan
from scripts.demo_plan import PlanError, claim_octet, claimed, free_port, make_plan, release_octet

PODS = ["frontend", "cart", "catalog", "monitor", "probe"]  # scripts/demo.py's pods
IFNAMSIZ = 15


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def names(plan: demo_plan.Plan) -> set[str]:
    """Every name the demo creates on this machine, from the plan (as scripts/demo.py and the cluster
    harness derive them)."""
    p = plan.prefix
    out = {str(plan.workdir), str(plan.state_dir), str(plan.pin_dir)}
    if plan.nodes == 1:
        out |= {plan.bridge, *(f"{p}{pod}"[:IFNAMSIZ] for pod in PODS)}
    else:
        out |= {f"{p}u", f"{p}i", f"{p}ul", f"{p}up", f"{p}vx"}
        out |= {f"{p}{kind}{i}" for i in range(1, plan.nodes + 1) for kind in ("n", "b")}
        out |= {f"{p}p{i}" for i in range(1, len(PODS) + 1)}  # pod netns
    return out


@pytest.mark.parametrize(("first_nodes", "second_nodes"), [(3, 3), (1, 1), (1, 3)])
def test_two_demos_share_no_name_subnet_or_port(tmp_path: Path, first_nodes: int, second_nodes: int) -> None:
    claims = tmp_path / "claims"
    ui = socket.create_server(("127.0.0.1", 0))  # the first demo's UI, listening
    first = make_plan("ld", first_nodes, claim_octet(claims, None, pid=os.getpid()), ui.getsockname()[1])
    # the second demo: another process, started with the same flags
    with ui:
        second = make_plan(
            "ld", second_nodes, claim_octet(claims, None, pid=os.getppid()), free_port(first.port)
        )
    assert first.octet != second.octet and first.port != second.port
    assert first.prefix != second.prefix and first.prefix.startswith("ld") and second.prefix.startswith("ld")
    assert not names(first) & names(second)
    for a, b in itertools.product(first.networks(), second.networks()):
        assert a.version != b.version or not a.overlaps(b), (a, b)
    # within one demo too: no subnet overlaps another, every link name fits the kernel's limit
    for plan in (first, second):
        nets = plan.networks()
        assert all(a == b or a.version != b.version or not a.overlaps(b) for a in nets for b in nets)
        assert all(len(n) <= IFNAMSIZ for n in names(plan) if "/" not in n)


def test_the_longest_prefix_still_gives_every_pod_its_own_netns() -> None:
    plan = make_plan("abcdef", 1, 250, 0)
    pod_ns = [f"{plan.prefix}{pod}"[:IFNAMSIZ] for pod in PODS]
    assert len(set(pod_ns)) == len(PODS) and len(plan.bridge) <= IFNAMSIZ


def test_an_octet_another_demo_holds_is_refused_with_its_pid(tmp_path: Path) -> None:
    claim_octet(tmp_path, 244, pid=os.getppid())
    with pytest.raises(PlanError, match=f"used by the demo of PID {os.getppid()}"):
        claim_octet(tmp_path, 244, pid=os.getpid())
    assert claim_octet(tmp_path, 245, pid=os.getpid()) == 245


def test_a_claim_is_freed_by_its_demo_or_when_its_demo_is_gone(tmp_path: Path) -> None:
    assert claim_octet(tmp_path, None, pid=dead_pid()) == 244  # a demo killed before its clean-up
    assert claim_octet(tmp_path, None, pid=os.getpid()) == 244  # its octet is free again
    assert claimed(tmp_path) == {244: os.getpid()}
    release_octet(tmp_path, 244, pid=os.getppid())  # not the holder: kept
    assert claimed(tmp_path) == {244: os.getpid()}
    release_octet(tmp_path, 244, pid=os.getpid())
    assert claimed(tmp_path) == {}


def test_demos_starting_at_once_claim_different_octets(tmp_path: Path) -> None:
    got: list[int] = []
    pids = [os.getpid(), os.getppid(), 1]  # three live processes stand for three demos
    threads = [
        threading.Thread(target=lambda p=p: got.append(claim_octet(tmp_path, None, pid=p))) for p in pids
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [244, 245, 246]


def test_octets_wrap_past_254(tmp_path: Path) -> None:
    for octet in range(244, 255):
        claim_octet(tmp_path, octet, pid=os.getpid())
    assert claim_octet(tmp_path, None, pid=os.getppid()) == 1


def test_a_taken_port_gives_way_to_a_free_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        other = free_port(port)
        assert other != port and other > 0
    assert free_port(0) > 0
