"""deploy/ manifests: valid against the Kubernetes schemas (offline, kubernetes-validate carries them),
consistent with each other, and holding to the privileges docs/install.md justifies.

ServiceMonitor and PrometheusRule are CRDs the schemas do not cover: they are checked for what makes them
work (selector, port, secret, the same rule groups promtool checks).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/kubernetes"
K8S_VERSION = "1.30"  # the oldest Kubernetes we claim; the manifests use nothing newer
AGENT_CAPS = {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(directory.glob("*.yaml")) for d in _docs(p)]


def _one(kind: str, directory: Path = K8S, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in _all(directory) if d["kind"] == kind and name in (None, d["metadata"].get("name"))]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


AGENT = "lumen-agent"
RELAY = "lumen-relay"


CORE = [(p, d) for p, d in _all(K8S) if d["kind"] != "Kustomization"]


@pytest.mark.parametrize("path,doc", CORE, ids=[f"{p.name}:{d['kind']}" for p, d in CORE])
def test_manifest_validates_against_kubernetes_schema(path: Path, doc: dict[str, Any]) -> None:
    # strict: unknown fields are errors too (a typo would otherwise be silently dropped by the API server)
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validator_rejects_a_broken_daemonset() -> None:
    """The check above has teeth: a misspelt field fails it."""
    ds = _one("DaemonSet")
    broken = yaml.safe_load(yaml.safe_dump(ds))
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_core_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_rbac_reads_what_the_agent_and_init_need_and_nothing_more() -> None:
    role = _one("ClusterRole", name=AGENT)
    grants = {
        (group, res): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
    }
    for need in [("", "pods"), ("", "namespaces"), ("", "nodes"), ("networking.k8s.io", "networkpolicies")]:
        assert grants.get(need) == {"get", "list", "watch"}, need
    assert all(verbs <= {"get", "list", "watch"} for verbs in grants.values()), "read-only"
    binding = _one("ClusterRoleBinding", name=AGENT)
    sa = _one("ServiceAccount", name=AGENT)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {
        "kind": "ServiceAccount",
        "name": sa["metadata"]["name"],
        "namespace": sa["metadata"]["namespace"],
    } in (binding["subjects"])


def _pod() -> dict[str, Any]:
    spec: dict[str, Any] = _one("DaemonSet")["spec"]["template"]["spec"]
    return spec


def test_daemonset_pod_shape() -> None:
    ds = _one("DaemonSet")
    pod = _pod()
    assert pod["hostNetwork"] is True
    assert pod["serviceAccountName"] == _one("ServiceAccount", name=AGENT)["metadata"]["name"]
    assert (
        ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    )
    assert {"operator": "Exists"} in pod["tolerations"], "a CNI must run on tainted and not-ready nodes"


def test_init_container_installs_plugin_and_node_conflist() -> None:
    (init,) = _pod()["initContainers"]
    script = init["command"][-1]
    assert re.search(r"install-cni\.sh /host/opt/cni/bin\b", script)
    assert "cniconf.py --from-node" in script and "/host/etc/cni/net.d/" in script
    mounts = {m["mountPath"] for m in init["volumeMounts"]}
    assert {"/host/opt/cni/bin", "/host/etc/cni/net.d"} <= mounts
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in init["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # the paths inside the image exist in the repository the Dockerfile copies
    for rel in ("scripts/install-cni.sh", "deploy/cniconf.py"):
        assert f"/opt/lumen/{rel}" in script and (REPO / rel).exists()


def test_agent_container_privileges_are_the_documented_minimum() -> None:
    (agent,) = _pod()["containers"]
    sc = agent["securityContext"]
    assert sc.get("privileged") is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == AGENT_CAPS, "SYS_ADMIN is not needed: docs/install.md"
    doc = (REPO / "docs/install.md").read_text()
    for cap in AGENT_CAPS:
        assert f"CAP_{cap}" in doc, f"CAP_{cap} is not justified in docs/install.md"
    assert agent["command"][:2] == ["lumen", "agent"]


def test_agent_mounts_bpffs_state_and_kernel_headers() -> None:
    pod = _pod()
    (agent,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    for path in ("/sys/fs/bpf", "/run/lumen", "/var/lib/lumen", "/lib/modules", "/usr/src"):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path, path
    assert mounts["/lib/modules"]["readOnly"] and mounts["/usr/src"]["readOnly"]
    args = " ".join(agent["command"])
    assert "--pin-dir=/sys/fs/bpf/lumen" in args and "--state-dir=/run/lumen" in args
    assert "--history=sqlite:///var/lib/lumen/history.sqlite" in args  # on disk, not /run's tmpfs


def test_agent_flags_exist_in_the_cli() -> None:
    from exporter.cli import build_parser

    (agent,) = _pod()["containers"]
    flags = [a.split("=", 1)[0] for a in agent["command"][2:]]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    agent_parser = sub.choices["agent"]
    known = {s for a in agent_parser._actions for s in a.option_strings}
    assert set(flags) <= known, set(flags) - known


def test_agent_conflist_paths_match_the_agent() -> None:
    """The plugin and the agent must agree on stateDir and bpfPinDir, or pods go unobserved."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cniconf", REPO / "deploy/cniconf.py")
    assert spec and spec.loader
    cniconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cniconf)
    conf = cniconf.build_conflist(["10.244.0.0/24"])["plugins"][0]
    (agent,) = _pod()["containers"]
    args = " ".join(agent["command"])
    assert f"--state-dir={conf['stateDir']}" in args
    assert f"--pin-dir={conf['bpfPinDir']}" in args


def test_service_and_servicemonitor_reach_the_agent() -> None:
    svc = _one("Service", name=AGENT)
    pod_labels = _one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (agent,) = _pod()["containers"]
    port_names = {p["name"]: p["containerPort"] for p in agent["ports"]}
    (svc_port,) = svc["spec"]["ports"]
    assert port_names[svc_port["targetPort"]] == svc_port["port"]

    sm = _one("ServiceMonitor", K8S / "monitoring", name=AGENT)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == svc_port["name"] and endpoint["path"] == "/metrics"
    # the rules and dashboards select job="lumen-agent": the job label is the Service's name
    assert svc["metadata"]["name"] == "lumen-agent"
    # the agent binds the node IP, so it demands the token the ServiceMonitor must send
    secret = endpoint["authorization"]["credentials"]["name"]
    token_volume = next(v for v in _pod()["volumes"] if "secret" in v)
    assert token_volume["secret"]["secretName"] == secret
    assert any(a.startswith("--token-file=") for a in agent["command"])


def test_prometheusrule_wraps_exactly_the_checked_rules() -> None:
    pr = _one("PrometheusRule", K8S / "monitoring")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yaml").read_text())
    assert pr["spec"]["groups"] == rules["groups"]


def test_everything_lives_in_one_namespace() -> None:
    ns = _one("Namespace")["metadata"]["name"]
    for path, doc in _all(K8S) + _all(K8S / "monitoring"):
        if doc["kind"] in {"Namespace", "ClusterRole", "ClusterRoleBinding", "Kustomization"}:
            continue
        assert doc["metadata"]["namespace"] == ns, f"{path.name}: {doc['kind']}"


def test_kind_config_disables_the_default_cni_and_mounts_headers() -> None:
    cfg = yaml.safe_load((REPO / "deploy/kind/kind-config.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert cfg["networking"]["disableDefaultCNI"] is True
    assert len(cfg["nodes"]) == 3, "a cluster: pods cross nodes (docs/install.md)"
    for node in cfg["nodes"]:
        mounts = {m["containerPath"] for m in node["extraMounts"]}
        assert {"/lib/modules", "/usr/src"} <= mounts


def test_dockerfile_builds_from_bookworm_with_bcc_and_copies_what_exists() -> None:
    text = (REPO / "deploy/Dockerfile").read_text()
    assert re.search(r"^FROM debian:bookworm", text, re.M)
    assert "python3-bpfcc" in text
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"


# -- the relay (deploy/kubernetes/relay.yaml) ------------------------------------------------------------


def _relay_container() -> dict[str, Any]:
    (relay,) = _one("Deployment", name=RELAY)["spec"]["template"]["spec"]["containers"]
    return relay


def test_relay_reads_only_nodes_with_its_own_account() -> None:
    role = _one("ClusterRole", name=RELAY)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    binding = _one("ClusterRoleBinding", name=RELAY)
    sa = _one("ServiceAccount", name=RELAY)
    assert binding["roleRef"]["name"] == RELAY
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RELAY, "namespace": sa["metadata"]["namespace"]}
    ]
    pod = _one("Deployment", name=RELAY)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == RELAY and not pod.get("hostNetwork")


def test_relay_flags_exist_and_tokens_come_from_secrets() -> None:
    from exporter.cli import build_parser

    relay = _relay_container()
    assert relay["command"][:2] == ["lumen", "relay"]
    args = dict(a.split("=", 1) for a in relay["command"][2:])
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    known = {s for a in sub.choices["relay"]._actions for s in a.option_strings}
    assert set(args) <= known, set(args) - known
    # it binds every address, so it must demand a token from clients; and it is the agents' client
    mounts = {m["mountPath"]: m["name"] for m in relay["volumeMounts"]}
    volumes = _one("Deployment", name=RELAY)["spec"]["template"]["spec"]["volumes"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in volumes if "secret" in v}
    for flag, secret in (("--token-file", "lumen-relay-token"), ("--agent-token-file", "lumen-agent-token")):
        directory = args[flag].rsplit("/", 1)[0]
        assert secrets[mounts[directory]] == secret, flag
    ds_volumes = _pod()["volumes"]
    assert any(v.get("secret", {}).get("secretName") == "lumen-agent-token" for v in ds_volumes)
    # the agents' port is the one the DaemonSet serves
    (agent,) = _pod()["containers"]
    assert int(args["--agent-port"]) == next(
        p["containerPort"] for p in agent["ports"] if p["name"] == "metrics"
    )
    assert args["--discover"] == "nodes"


def test_relay_runs_unprivileged_and_its_service_reaches_it() -> None:
    relay = _relay_container()
    sc = relay["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    svc = _one("Service", name=RELAY)
    labels = _one("Deployment", name=RELAY)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (port,) = svc["spec"]["ports"]
    ports = {p["name"]: p["containerPort"] for p in relay["ports"]}
    assert ports[port["targetPort"]] == port["port"]
    assert f"--port={port['port']}" in relay["command"]
    probes = {relay["readinessProbe"]["httpGet"]["path"], relay["livenessProbe"]["httpGet"]["path"]}
    assert probes == {"/readyz", "/healthz"}


def test_relay_servicemonitor_scrapes_the_relay_with_its_token() -> None:
    sm = _one("ServiceMonitor", K8S / "monitoring", name=RELAY)
    svc = _one("Service", name=RELAY)
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    (port,) = svc["spec"]["ports"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"]["name"] == "lumen-relay-token"
    # the alert on unreachable agents selects the job the Service's name becomes
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yaml").read_text())
    exprs = [
        r["expr"]
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("alert") == "LumenRelayAgentUnreachable"
    ]
    assert exprs == [f'lumen_relay_agent_up{{job="{svc["metadata"]["name"]}"}} == 0']
