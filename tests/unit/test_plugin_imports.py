"""The cold plugin's start-up budget: no module on its import path may pull in the stdlib's heavy
modules. Each costs milliseconds per pod on this machine (`python3 -X importtime`): re 5, enum 3 (with
re), typing 3, json 10 (re and enum), platform 4 (re), dataclasses 6, subprocess 4 (signal, selectors,
threading, re). A cold ADD is about 16 ms against 8 for the reference: see docs/architecture.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("re", "enum", "typing", "json", "platform", "dataclasses", "subprocess", "signal", "ctypes")
# Everything a cold CNI call (any verb, built-in or delegated IPAM, observed pod) imports. Not here:
# plugin.server (the warm server, a long-lived daemon) and plugin.ipam.fake (tests only).
PLUGIN_PATH = [
    "plugin.launcher",
    "plugin.__main__",
    "plugin.verbs",
    "plugin.ipam",
    "plugin.delegate",
    "plugin.attach",
]
# ctypes is loaded on first use by the bpf(2) calls of an observed pod and by setns failures only.


@pytest.mark.parametrize("module", PLUGIN_PATH)
def test_plugin_modules_import_nothing_heavy(module):
    """Run as the installed plugin runs: system python, isolated, no site."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules); "
        f"import {module}; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", probe, str(REPO)], capture_output=True, text=True, check=True
    ).stdout.split()
    heavy = sorted(m for m in out if m.split(".")[0] in FORBIDDEN)
    assert not heavy, f"{module} imports {heavy}"


def test_the_check_sees_a_heavy_import():
    """The probe itself works: a module that imports json is caught."""
    probe = "import sys; before = set(sys.modules); import json; print(' '.join(set(sys.modules) - before))"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True).stdout
    assert "json" in out.split() and "re" in out.split()
