"""deploy/install.sh against a temporary root, and deploy/cniconf.py against a fake API server: the
files a node gets, their modes, and a conflist the plugin itself accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from plugin.config import parse_netconf
from plugin.ipam.config import parse_ipam_config

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy/install.sh"
CNICONF = REPO / "deploy/cniconf.py"
LUMEN_BIN = REPO / ".venv/bin/lumen"


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--lumen-bin", str(LUMEN_BIN), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _check_with_plugin_parsers(conflist: dict[str, Any]) -> None:
    """The first plugin's config as the runtime hands it to `lumen` (name and version injected)."""
    first = dict(conflist["plugins"][0], cniVersion=conflist["cniVersion"], name=conflist["name"])
    net = parse_netconf(first)
    parse_ipam_config(net.name, net.ipam)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    res = _install(root, "--pod-cidr", "10.244.7.0/24", "--pod-cidr", "fd00:10:244:7::/64", "--mtu", "1450")
    assert res.returncode == 0, res.stderr
    return root


def test_plugin_installed_executable(installed: Path) -> None:
    plugin = installed / "opt/cni/bin/lumen"
    assert plugin.stat().st_mode & 0o777 == 0o755
    assert (installed / "opt/cni/bin/lumen.d/plugin/__init__.py").exists()
    # it answers VERSION like any CNI plugin
    out = subprocess.run(
        [str(plugin)], input=b"{}", env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "1.1.0" in json.loads(out.stdout)["supportedVersions"]


def test_conflist_is_valid_and_accepted_by_the_plugin(installed: Path) -> None:
    path = installed / "etc/cni/net.d/10-lumen.conflist"
    assert path.stat().st_mode & 0o777 == 0o644
    conflist = json.loads(path.read_text())
    assert conflist["cniVersion"] == "1.1.0" and conflist["name"] == "lumen"
    assert [p["type"] for p in conflist["plugins"]] == ["lumen", "portmap"]
    lumen = conflist["plugins"][0]
    assert lumen["mtu"] == 1450
    assert lumen["ipam"]["ranges"] == [[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:10:244:7::/64"}]]
    _check_with_plugin_parsers(conflist)


def test_systemd_unit(installed: Path) -> None:
    unit = installed / "etc/systemd/system/lumen-agent.service"
    assert unit.stat().st_mode & 0o777 == 0o644
    text = unit.read_text()
    assert f"ExecStart={LUMEN_BIN} agent --state-dir /run/lumen --pin-dir /sys/fs/bpf/lumen" in text
    # the same capabilities as the DaemonSet's agent container, no more
    ds = next(
        d
        for d in yaml.safe_load_all((REPO / "deploy/kubernetes/daemonset.yaml").read_text())
        if d and d["kind"] == "DaemonSet"
    )
    caps = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    bounding = next(line for line in text.splitlines() if line.startswith("CapabilityBoundingSet="))
    assert set(bounding.split("=", 1)[1].split()) == {f"CAP_{c}" for c in caps}
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (package systemd) is needed to check the unit"
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_reinstall_is_idempotent(installed: Path) -> None:
    before = (installed / "etc/cni/net.d/10-lumen.conflist").stat().st_mtime_ns
    res = _install(
        installed, "--pod-cidr", "10.244.7.0/24", "--pod-cidr", "fd00:10:244:7::/64", "--mtu", "1450"
    )
    assert res.returncode == 0, res.stderr
    assert "unchanged" in res.stdout
    assert (installed / "etc/cni/net.d/10-lumen.conflist").stat().st_mtime_ns == before
    assert not list((installed / "etc/cni/net.d").glob(".lumen-*")), "no temp files left"
    assert not list((installed / "opt/cni/bin").glob(".lumen*")), "no staging dirs left"


def test_install_refuses_without_pod_cidr(tmp_path: Path) -> None:
    res = _install(tmp_path)
    assert res.returncode == 2
    assert "--pod-cidr" in res.stderr
    assert not (tmp_path / "opt").exists(), "nothing installed"


def test_single_stack_without_portmap(tmp_path: Path) -> None:
    res = _install(tmp_path, "--pod-cidr", "10.9.0.0/24", "--no-portmap", "--bridge", "lmn9")
    assert res.returncode == 0, res.stderr
    conflist = json.loads((tmp_path / "etc/cni/net.d/10-lumen.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["lumen"]
    assert conflist["plugins"][0]["bridge"] == "lmn9"
    _check_with_plugin_parsers(conflist)


def test_vxlan_mode_reaches_the_conflist_mtu_and_the_agent_unit(tmp_path: Path) -> None:
    res = _install(tmp_path, "--pod-cidr", "10.9.0.0/24", "--routing-mode", "vxlan", "--no-start")
    assert res.returncode == 0, res.stderr
    conflist = json.loads((tmp_path / "etc/cni/net.d/10-lumen.conflist").read_text())
    import importlib.util

    spec = importlib.util.spec_from_file_location("cniconf", CNICONF)
    assert spec and spec.loader
    cniconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cniconf)
    assert conflist["plugins"][0]["mtu"] == cniconf.uplink_mtu() - 50
    unit = (tmp_path / "etc/systemd/system/lumen-agent.service").read_text()
    assert "--routing-mode vxlan" in unit
    bad = _install(tmp_path / "x", "--pod-cidr", "10.9.0.0/24", "--routing-mode", "bgp")
    assert bad.returncode == 2 and "direct or vxlan" in bad.stderr


# -- cniconf --from-node ------------------------------------------------------------------------


class FakeAPIServer:
    """Serves GET /api/v1/nodes/<name>; the first `empty_answers` replies have no podCIDR yet."""

    def __init__(self, node: dict[str, Any], token: str, empty_answers: int = 0) -> None:
        self.node, self.token, self.empty_answers = node, token, empty_answers
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.requests.append((self.path, self.headers.get("Authorization", "")))
                name = fake.node["metadata"]["name"]
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._reply(401, {"kind": "Status", "code": 401})
                if self.path != f"/api/v1/nodes/{name}":
                    return self._reply(404, {"kind": "Status", "code": 404})
                body = fake.node
                if fake.empty_answers > 0:
                    fake.empty_answers -= 1
                    body = {**fake.node, "spec": {}}
                self._reply(200, body)

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    node = {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": "worker-3"},
        "spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24", "fd00:10:244:3::/64"]},
    }
    fake = FakeAPIServer(node, token="s3cret", empty_answers=1)
    try:
        yield fake
    finally:
        fake.close()


def _cniconf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/usr/bin/python3", str(CNICONF), *args], capture_output=True, text=True, timeout=60
    )


def test_conflist_from_the_node_object(api: FakeAPIServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    out = tmp_path / "net.d/10-lumen.conflist"
    res = _cniconf(
        "--from-node", "worker-3", "--api-server", api.url, "--token-file", str(token), "--output", str(out)
    )
    assert res.returncode == 0, res.stderr
    # it waited for the node controller: the first answer had no podCIDR
    assert len(api.requests) == 2
    assert all(auth == "Bearer s3cret" for _, auth in api.requests)
    conflist = json.loads(out.read_text())
    ranges = conflist["plugins"][0]["ipam"]["ranges"]
    assert ranges == [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]]
    _check_with_plugin_parsers(conflist)


def test_wrong_token_fails_after_the_wait(api: FakeAPIServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("wrong")
    out = tmp_path / "10-lumen.conflist"
    res = _cniconf(
        "--from-node", "worker-3", "--api-server", api.url, "--token-file", str(token), "--wait", "0",
        "--output", str(out),
    )  # fmt: skip
    assert res.returncode == 1
    assert "401" in res.stderr
    assert not out.exists()


def test_one_cidr_per_family(tmp_path: Path) -> None:
    res = _cniconf("--pod-cidr", "10.1.0.0/24", "--pod-cidr", "10.2.0.0/24", "--output", str(tmp_path / "c"))
    assert res.returncode == 1
    assert "one CIDR per address family" in res.stderr
