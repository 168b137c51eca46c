"""`make lint` as a test, so `make test` (and CI) fails on a lint or type error: ruff check, ruff format
--check, and mypy over plugin, exporter and bpf (settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.lint


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_check():
    out = run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
    out = run(str(BIN / "ruff"), "format", "--check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_plugin_exporter_bpf():
    out = run(sys.executable, "-m", "mypy", "plugin", "exporter", "bpf")
    assert out.returncode == 0, out.stdout + out.stderr
