"""Shared fixtures: the installed plugin and a private Lumen network that is always cleaned up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cni_harness import Node, install_plugin


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin as `make cni-bin` installs it, in a private bin dir."""
    return install_plugin(tmp_path_factory.mktemp("cni-bin"))


@pytest.fixture
def node(cni_bin: Path) -> Iterator[Node]:
    n = Node(binary=cni_bin)
    try:
        yield n
    finally:
        n.cleanup()
