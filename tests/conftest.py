"""Shared fixtures: the installed plugin and a private Lumen network that is always cleaned up; and the
guard that fails the session when the root network namespace is left changed (tests/root_state.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import root_state
from tests.cni_harness import Node, install_plugin

#: how long the end state may take to settle: a deleted namespace's veths go asynchronously
ROOT_STATE_SETTLE_S = 5.0


@pytest.fixture(scope="session", autouse=True)
def root_netns_unchanged() -> Iterator[None]:
    """Tests never change the root network namespace: its links, routes, rules, nftables ruleset and
    forwarding sysctls are the same at the end of the session as at its start. Set up first, so torn
    down last, after every other fixture has cleaned up."""
    if os.geteuid() != 0:
        yield  # unprivileged runs cannot change it
        return
    before = root_state.snapshot()
    yield
    deadline = time.monotonic() + ROOT_STATE_SETTLE_S
    while diff := root_state.differences(before, root_state.snapshot()):
        if time.monotonic() > deadline:
            pytest.fail(
                "the root network namespace changed during the session (tests must change only "
                f"namespaces they create; other sessions on this host may too):\n{diff}",
                pytrace=False,
            )
        time.sleep(0.5)


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin as `make cni-bin` installs it, in a private bin dir."""
    return install_plugin(tmp_path_factory.mktemp("cni-bin"))


@pytest.fixture
def node(cni_bin: Path) -> Iterator[Node]:
    """A Lumen network in a namespace of its own; the test runs on its host side (`Node.host`)."""
    n = Node(binary=cni_bin)
    try:
        with n.host():
            yield n
    finally:
        n.cleanup()
