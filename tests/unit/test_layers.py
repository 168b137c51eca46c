"""Data flows one way: kernel -> bpf/ -> exporter/. Nothing in bpf/ imports from exporter/ (the policy
encoding takes the compiled set by its shape), and plugin/ imports from neither."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imports(package: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        out[str(path.relative_to(REPO))] = names
    return out


def test_bpf_never_imports_the_agent():
    up = {f: sorted(n for n in names if n.split(".")[0] == "exporter") for f, names in imports("bpf").items()}
    assert not {f: n for f, n in up.items() if n}


def test_the_plugin_imports_neither_bpf_nor_the_agent():
    up = {
        f: sorted(n for n in names if n.split(".")[0] in ("exporter", "bpf"))
        for f, names in imports("plugin").items()
    }  # noqa: E501
    assert not {f: n for f, n in up.items() if n}
