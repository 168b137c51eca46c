"""The cluster network without a kernel: Node parsing (manifests and API objects), the routing plan of
both modes, the masquerade ruleset, the reconciler's when-to-act, and remote pods named in flows."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.decode import Decoder
from exporter.enforcer import Enforcer
from exporter.enrich import EndpointDirectory, Enricher
from exporter.masquerade import ruleset
from exporter.network import NodeNetwork
from exporter.nodes import KubeNodes, NodeInfo, RemotePod, parse_node
from exporter.policy.errors import PolicyError
from exporter.policy.manifests import Manifests, load_text
from exporter.routing import Plan, Route, RoutingConfig, plan, pod_mtu, vtep_mac
from tests.unit.test_enforcer import FakeDatapath
from tests.unit.test_exporter_events import golden


def node_doc(name: str, cidrs: list[str], addresses: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDRs": cidrs},
        "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]},
    }


N1 = NodeInfo("n1", ("192.168.1.1", "fd01::1"), ("10.1.1.0/24", "fd00:1:1::/64"))
N2 = NodeInfo("n2", ("192.168.1.2", "fd01::2"), ("10.1.2.0/24", "fd00:1:2::/64"))
N3 = NodeInfo("n3", ("192.168.1.3",), ("10.1.3.0/24", "fd00:1:3::/64"))
NODES = {n.name: n for n in (N1, N2, N3)}


# -- parsing -----------------------------------------------------------------------------------------


def test_parse_node_reads_internal_ips_and_pod_cidrs() -> None:
    doc = node_doc("n1", ["10.1.1.0/24", "fd00:1:1:0::/64"], ["192.168.1.1", "fd01:0::1"])
    doc["status"]["addresses"].append({"type": "Hostname", "address": "n1"})
    assert parse_node(doc) == N1
    legacy = {"metadata": {"name": "old"}, "spec": {"podCIDR": "10.9.0.0/16"}}
    assert parse_node(legacy) == NodeInfo("old", (), ("10.9.0.0/16",))


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"metadata": {}}, "metadata.name"),
        ({"metadata": {"name": "x"}, "spec": {"podCIDRs": ["10.1.1.1/24"]}}, "spec.podCIDRs[0]"),
        ({"metadata": {"name": "x"}, "spec": {"podCIDRs": "10.0.0.0/8"}}, "spec.podCIDRs"),
        (
            {"metadata": {"name": "x"}, "status": {"addresses": [{"type": "InternalIP", "address": "n"}]}},
            "status.addresses[0].address",
        ),
    ],
)
def test_parse_node_names_the_bad_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_node(doc)
    assert field in str(e.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@given(
    st.fixed_dictionaries(
        {"metadata": json_values, "spec": json_values, "status": json_values},
    )
    | st.dictionaries(st.sampled_from(["metadata", "spec", "status"]), json_values)
)
def test_parse_node_takes_anything_and_answers_a_node_or_a_policy_error(doc: dict[str, Any]) -> None:
    try:
        node = parse_node(doc)
    except PolicyError:
        return
    for c in node.pod_cidrs:
        ipaddress.ip_network(c)
    for a in node.addresses:
        ipaddress.ip_address(a)


def test_manifests_hold_nodes_and_pods_on_other_nodes() -> None:
    text = """
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: [10.1.2.0/24]}
status: {addresses: [{type: InternalIP, address: 192.168.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {nodeName: n2, containers: [{name: main}]}
status: {podIPs: [{ip: 10.1.2.7}, {ip: "fd00:1:2:0::7"}]}
"""
    m = Manifests()
    load_text(text, "cluster.yaml", m)
    assert m.nodes == {"n2": NodeInfo("n2", ("192.168.1.2",), ("10.1.2.0/24",))}
    assert (m.pods["shop/db"].node, m.pods["shop/db"].ips) == ("n2", ("10.1.2.7", "fd00:1:2::7"))
    bad = text.replace("10.1.2.7", "ten")
    with pytest.raises(PolicyError) as e:
        load_text(bad, "cluster.yaml", Manifests())
    assert "status.podIPs[0].ip" in str(e.value) and "cluster.yaml" in str(e.value)


def test_kube_nodes_follow_add_change_delete() -> None:
    woken = []
    kube = KubeNodes(on_change=lambda: woken.append(1))
    kube.on_event("ADDED", node_doc("n2", ["10.1.2.0/24"], ["192.168.1.2"]))
    kube.on_event("MODIFIED", node_doc("n2", ["10.1.2.0/24", "fd00:1:2::/64"], ["192.168.1.2"]))
    assert kube.nodes()["n2"].pod_cidrs == ("10.1.2.0/24", "fd00:1:2::/64")
    kube.on_event("ADDED", node_doc("bad", ["nope"], []))
    assert "bad" not in kube.nodes()
    kube.on_event("DELETED", {"metadata": {"name": "n2"}})
    assert kube.nodes() == {} and len(woken) == 4


# -- the routing plan --------------------------------------------------------------------------------


def test_direct_plan_routes_each_remote_cidr_via_the_nodes_address_of_its_family() -> None:
    p = plan(RoutingConfig("n1", "direct"), NODES)
    assert p.routes == {
        Route("10.1.2.0/24", "192.168.1.2"),
        Route("fd00:1:2::/64", "fd01::2"),
        Route("10.1.3.0/24", "192.168.1.3"),
    }
    assert p.problems == ("node n3: no IPv6 InternalIP to route fd00:1:3::/64 via",)
    assert not p.neighbours and not p.fdb


def test_vxlan_plan_gives_routes_neighbours_and_fdb_over_the_local_family() -> None:
    p = plan(RoutingConfig("n1", "vxlan"), NODES)
    assert p.local == "192.168.1.1"
    assert p.routes == {
        Route(c, str(ipaddress.ip_network(c).network_address), onlink=True)
        for n in (N2, N3)
        for c in n.pod_cidrs
    }
    assert p.neighbours == {
        "10.1.2.0": vtep_mac("n2"),
        "fd00:1:2::": vtep_mac("n2"),
        "10.1.3.0": vtep_mac("n3"),
        "fd00:1:3::": vtep_mac("n3"),
    }
    assert p.fdb == {(vtep_mac("n2"), "192.168.1.2"), (vtep_mac("n3"), "192.168.1.3")}
    assert p.problems == ()


def test_plans_skip_overlaps_and_say_what_they_cannot_route() -> None:
    overlap = NodeInfo("n4", ("192.168.1.4",), ("10.1.1.128/25",))
    p = plan(RoutingConfig("n1", "direct"), {**NODES, "n4": overlap})
    assert all(r.dst != "10.1.1.128/25" for r in p.routes)
    assert any("overlaps" in problem for problem in p.problems)
    lonely = plan(RoutingConfig("n9", "vxlan"), NODES)  # this node is not (yet) in the list
    assert lonely == Plan(problems=("node n9 has no InternalIP: no VXLAN device, no routes",))
    assert plan(RoutingConfig("n1", "direct"), {}) == Plan()


@given(st.text(min_size=1, max_size=64))
def test_vtep_mac_is_a_stable_locally_administered_unicast_address(name: str) -> None:
    mac = vtep_mac(name)
    first = int(mac.split(":")[0], 16)
    assert len(mac.split(":")) == 6 and first & 0x02 and not first & 0x01
    assert vtep_mac(name) == mac


def test_routing_config_refuses_bad_values() -> None:
    for kw in ({"mode": "bgp"}, {"vxlan_vni": 0}, {"vxlan_port": 70000}, {"vxlan_device": "x" * 16}):
        with pytest.raises(ValueError):
            RoutingConfig("n1", **kw)  # type: ignore[arg-type]
    assert pod_mtu("vxlan") == 1450 and pod_mtu("direct") == 1500 and pod_mtu("vxlan", 9000, True) == 8930


# -- masquerade ----------------------------------------------------------------------------------------


def test_ruleset_masquerades_local_pods_to_outside_the_cluster_only() -> None:
    text = ruleset(["10.1.1.0/24", "fd00:1:1::/64"], ["10.1.2.0/24", "fd00:1:2::/64"], ["172.16.0.0/12"])
    assert text.startswith("table inet lumen {}\ndelete table inet lumen\ntable inet lumen {\n")
    assert "set pods4 { type ipv4_addr; flags interval; auto-merge; elements = { 10.1.1.0/24 }; }" in text
    assert "elements = { 10.1.1.0/24, 10.1.2.0/24 }" in text  # the cluster includes this node
    assert "set keep4 { type ipv4_addr; flags interval; auto-merge; elements = { 172.16.0.0/12 }; }" in text
    assert "ip saddr @pods4 ip daddr != @cluster4 ip daddr != @keep4 masquerade" in text
    assert "ip6 saddr @pods6 ip6 daddr != @cluster6 ip6 daddr != @keep6 masquerade" in text
    only4 = ruleset(["10.1.1.0/24"], ["10.1.2.0/24"], table="t")
    assert "ip6" not in only4 and "table inet t {" in only4


# -- the reconciler ----------------------------------------------------------------------------------


class FakeRouter:
    def __init__(self) -> None:
        self.plans: list[Plan] = []
        self.fail = False

    def apply(self, p: Plan) -> None:
        if self.fail:
            raise OSError("netlink refused")
        self.plans.append(p)


class FakeMasquerade:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def apply(self, local: list[str], cluster: list[str]) -> None:
        self.calls.append((local, sorted(cluster)))


def test_node_network_acts_on_changes_and_retries_after_a_failure() -> None:
    nodes: dict[str, NodeInfo] = {"n1": N1, "n2": N2}
    router, masq, forwarded = FakeRouter(), FakeMasquerade(), []
    net = NodeNetwork(
        RoutingConfig("n1", "direct"),
        lambda: nodes,
        masq,  # type: ignore[arg-type]
        router,  # type: ignore[arg-type]
        lambda v: forwarded.append(v) or True,
    )
    assert net.sync() and not net.sync()  # unchanged: nothing done
    assert len(router.plans) == 1 and forwarded == [4, 6]
    assert masq.calls == [(list(N1.pod_cidrs), sorted(N1.pod_cidrs + N2.pod_cidrs))]
    nodes["n3"] = N3
    assert net.sync() and len(router.plans[-1].routes) == 3  # n3 has no IPv6 address
    router.fail = True
    nodes.pop("n3")
    assert net.sync() and net.status.error == "netlink refused"
    router.fail = False
    assert not net.sync()  # a failure is retried after RETRY_S, not every housekeeping round
    assert net.sync(force=True) and net.status.error == "" and len(router.plans[-1].routes) == 2
    assert net.status.nodes == ["n1", "n2"]


# -- remote pods: identities and names ---------------------------------------------------------------

REMOTE = """
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: db}}
spec: {nodeName: n2}
status: {podIPs: [{ip: 10.22.0.6}]}
"""


def test_manifest_pods_on_other_nodes_get_identities_and_names(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pods.yaml").write_text(REMOTE)
    directory = EndpointDirectory(str(tmp_path / "state"))
    dp = FakeDatapath()
    enforcer = Enforcer(str(tmp_path / "state"), [str(policies)], dp, directory, host_addresses=lambda: [])
    enforcer.sync()
    assert enforcer.remote_pods == {"10.22.0.6": RemotePod("shop", "server", "n2", {"app": "db"})}
    assert dp.ipcache["10.22.0.6"] == enforcer.pod_identities["shop/server"]

    directory.set_remote(enforcer.remote_pods)
    decoder = Decoder(Enricher(directory, node="n1"))
    flow = decoder.flow(golden("flow_event_tcp4_end.hex"))  # 10.22.0.5 -> 10.22.0.6
    d = flow.to_dict()["destination"]
    assert (d["namespace"], d["pod"], d["node"], d["labels"]) == ("shop", "server", "n2", {"app": "db"})
    assert flow.to_dict()["source"]["node"] == ""  # not a pod this node or the manifests know


# -- deploy: the mode reaches the agent and the conflist --------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def _cniconf() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cniconf", REPO / "deploy/cniconf.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_conflist_mtu_follows_the_routing_mode(tmp_path: Path) -> None:
    cniconf = _cniconf()
    assert cniconf.pod_mtu("vxlan", None, 1500) == 1450 and cniconf.pod_mtu("vxlan", 9000, 1500) == 9000
    assert cniconf.pod_mtu("direct", None, 1500) is None
    with pytest.raises(ValueError):
        cniconf.pod_mtu("bgp", None, 1500)
    (tmp_path / "route").write_text(
        "Iface\tDestination\tGateway\neth9\t0000A8C0\t00000000\neth0\t00000000\t0101A8C0\n"
    )
    (tmp_path / "net" / "eth0").mkdir(parents=True)
    (tmp_path / "net" / "eth0" / "mtu").write_text("9001\n")
    assert cniconf.uplink_mtu(str(tmp_path / "route"), str(tmp_path / "net")) == 9001
    assert cniconf.uplink_mtu(str(tmp_path / "none"), str(tmp_path / "net")) == 1500


def test_daemonset_takes_the_network_keys_from_the_config_map() -> None:
    import yaml

    config = yaml.safe_load((REPO / "deploy/kubernetes/config.yaml").read_text())
    ds = yaml.safe_load((REPO / "deploy/kubernetes/daemonset.yaml").read_text())
    pod = ds["spec"]["template"]["spec"]
    wanted = {"LUMEN_ROUTING_MODE", "LUMEN_MASQUERADE", "LUMEN_NON_MASQUERADE"}
    for container, names in (
        (pod["initContainers"][0], {"LUMEN_ROUTING_MODE"}),
        (pod["containers"][0], wanted),
    ):
        refs = {
            e["name"]: e["valueFrom"]["configMapKeyRef"]
            for e in container["env"]
            if "configMapKeyRef" in e.get("valueFrom", {})
        }
        assert set(refs) == names
        for ref in refs.values():
            assert ref["name"] == config["metadata"]["name"] and ref["key"] in config["data"]
    assert config["data"]["routing-mode"] in ("direct", "vxlan")
    assert "config.yaml" in (REPO / "deploy/kubernetes/kustomization.yaml").read_text()


def test_agent_reads_the_network_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.cli import build_parser

    monkeypatch.setenv("LUMEN_ROUTING_MODE", "vxlan")
    monkeypatch.setenv("LUMEN_MASQUERADE", "false")
    args = build_parser().parse_args(["agent"])
    assert args.routing_mode == "vxlan" and args.no_masquerade is True


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["--non-masquerade", "10.0.0.0/33"], {}, "10.0.0.0/33"),
        ([], {"LUMEN_ROUTING_MODE": "bgp"}, "routing mode"),
        (["--routing-mode", "vxlan", "--vxlan-vni", "0"], {}, "VXLAN id"),
    ],
)
def test_agent_refuses_bad_network_settings_before_loading_anything(
    argv: list[str], env: dict[str, str], said: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from exporter import cli

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli.main(["agent", "--pin-dir", "/nonexistent/never-made", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lumen agent: ") and said in err and "Traceback" not in err


# -- the netlink wrapper's retry -----------------------------------------------------------------------


def test_interrupted_dumps_are_retried_and_refusals_carry_the_errno() -> None:
    import errno

    from pyroute2.netlink.exceptions import (  # noqa: TID251 - what the wrapper gets from pyroute2
        NetlinkDumpInterrupted,
        NetlinkError,
    )

    from exporter import netlink

    calls = []

    def flaky() -> list[str]:
        calls.append(1)
        if len(calls) < 3:
            raise NetlinkDumpInterrupted()
        return ["whole table"]

    assert netlink._retry("dump", flaky) == ["whole table"] and len(calls) == 3

    def always() -> None:
        raise NetlinkDumpInterrupted()

    with pytest.raises(netlink.NetlinkFailure) as e:
        netlink._retry("dump routes", always)
    assert e.value.errno == errno.EINTR and "dump routes" in str(e.value)

    def refused() -> None:
        raise NetlinkError(errno.ENETUNREACH, "Network unreachable")

    with pytest.raises(netlink.NetlinkFailure) as e:
        netlink._retry("replace route 10.1.2.0/24", refused)
    assert e.value.errno == errno.ENETUNREACH and "10.1.2.0/24" in str(e.value)


# -- the router against a fake kernel ------------------------------------------------------------------


class FakeKernel:
    """The parts of exporter.netlink.Netlink the router uses, over dicts; counts every change."""

    def __init__(self) -> None:
        self.links: dict[int, dict[str, Any]] = {2: {"name": "eth0", "mtu": 9000, "kind": "veth", "up": True}}
        self.addrs = [(2, "192.168.1.1")]
        self.route_table: dict[str, Route] = {"0.0.0.0/0": Route("0.0.0.0/0", "192.168.1.254", 2)}
        self.protos: dict[str, int] = {"0.0.0.0/0": 4}
        self.neigh: dict[int, dict[str, str]] = {}
        self.fdb_entries: dict[int, set[tuple[str, str]]] = {}
        self.changes: list[str] = []

    def __enter__(self) -> FakeKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def link_index(self, name: str) -> int | None:
        return next((i for i, link in self.links.items() if link["name"] == name), None)

    def link_info(self, index: int) -> dict[str, Any]:
        return dict(self.links[index])

    def add_vxlan(self, name: str, vni: int, port: int, local: str, mac: str, mtu: int) -> int:
        index = max(self.links) + 1
        self.links[index] = {"name": name, "mtu": mtu, "kind": "vxlan", "up": True}
        self.links[index].update(vni=vni, port=port, local=local, mac=mac)
        self.changes.append(f"add vxlan {name} mtu {mtu}")
        return index

    def delete_link(self, index: int) -> None:
        self.changes.append(f"delete link {self.links.pop(index)['name']}")

    def set_mtu(self, index: int, mtu: int) -> None:
        self.links[index]["mtu"] = mtu

    def set_up(self, index: int) -> None:
        self.links[index]["up"] = True

    def addresses(self) -> list[tuple[int, str]]:
        return list(self.addrs)

    def routes(self, proto: int) -> list[Route]:
        return [r for dst, r in self.route_table.items() if self.protos[dst] == proto]

    def replace_route(self, route: Route, proto: int) -> None:
        oif = route.oif or 2  # the kernel fills in the device
        self.route_table[route.dst] = Route(route.dst, route.gateway, oif, route.onlink)
        self.protos[route.dst] = proto
        self.changes.append(f"route {route.dst}")

    def delete_route(self, route: Route, proto: int) -> None:
        assert self.protos[route.dst] == proto, "deleted a route Lumen did not add"
        del self.route_table[route.dst], self.protos[route.dst]
        self.changes.append(f"delete route {route.dst}")

    def neighbours(self, index: int) -> dict[str, str]:
        return dict(self.neigh.get(index, {}))

    def replace_neighbour(self, index: int, address: str, mac: str) -> None:
        self.neigh.setdefault(index, {})[address] = mac

    def delete_neighbour(self, index: int, address: str) -> None:
        del self.neigh[index][address]

    def fdb(self, index: int) -> set[tuple[str, str]]:
        return set(self.fdb_entries.get(index, set()))

    def append_fdb(self, index: int, mac: str, dst: str) -> None:
        self.fdb_entries.setdefault(index, set()).add((mac, dst))

    def delete_fdb(self, index: int, mac: str, dst: str) -> None:
        self.fdb_entries[index].discard((mac, dst))


def test_router_changes_only_what_differs_and_removes_only_its_own() -> None:
    from exporter.routing import ROUTE_PROTO, Router

    kernel = FakeKernel()
    cfg = RoutingConfig("n1", "direct")
    router = Router(cfg, lambda: kernel)  # type: ignore[arg-type,return-value]
    router.apply(plan(cfg, NODES))
    assert sorted(kernel.changes) == ["route 10.1.2.0/24", "route 10.1.3.0/24", "route fd00:1:2::/64"]
    kernel.changes.clear()
    router.apply(plan(cfg, NODES))
    assert kernel.changes == []  # the kernel's filled-in device is no difference
    router.apply(plan(cfg, {"n1": N1, "n2": N2}))
    assert kernel.changes == ["delete route 10.1.3.0/24"]
    assert kernel.route_table["0.0.0.0/0"].gateway == "192.168.1.254"  # not Lumen's: untouched
    kernel.changes.clear()

    vx = RoutingConfig("n1", "vxlan", vxlan_device="lumen-vxlan")
    router = Router(vx, lambda: kernel)  # type: ignore[arg-type,return-value]
    router.apply(plan(vx, NODES))
    index = kernel.link_index("lumen-vxlan")
    assert index is not None and "add vxlan lumen-vxlan mtu 8950" in kernel.changes  # eth0's 9000 - 50
    assert kernel.links[index]["mac"] == vtep_mac("n1") and kernel.links[index]["local"] == "192.168.1.1"
    assert {r.dst: (r.gateway, r.oif, r.onlink) for r in kernel.routes(ROUTE_PROTO)} == {
        "10.1.2.0/24": ("10.1.2.0", index, True),
        "fd00:1:2::/64": ("fd00:1:2::", index, True),
        "10.1.3.0/24": ("10.1.3.0", index, True),
        "fd00:1:3::/64": ("fd00:1:3::", index, True),
    }
    assert kernel.neigh[index]["10.1.3.0"] == vtep_mac("n3")
    assert kernel.fdb_entries[index] == {(vtep_mac("n2"), "192.168.1.2"), (vtep_mac("n3"), "192.168.1.3")}
    router.apply(plan(vx, {"n1": N1, "n2": N2}))
    assert "10.1.3.0" not in kernel.neigh[index] and kernel.fdb_entries[index] == {
        (vtep_mac("n2"), "192.168.1.2")
    }

    kernel.changes.clear()
    Router(cfg, lambda: kernel).apply(plan(cfg, NODES))  # type: ignore[arg-type,return-value]
    assert "delete link lumen-vxlan" in kernel.changes and kernel.link_index("lumen-vxlan") is None
    assert {r.gateway for r in kernel.routes(ROUTE_PROTO)} == {"192.168.1.2", "192.168.1.3", "fd01::2"}


def test_a_lone_node_opens_netlink_only_to_remove_what_lumen_left() -> None:
    from exporter.routing import ROUTE_PROTO, Router

    kernel, opened, asked = FakeKernel(), [], []

    def open_kernel() -> FakeKernel:
        opened.append(1)
        return kernel

    def owns(proto: int, device: str | None) -> bool:
        asked.append((proto, device))
        return bool(kernel.routes(proto)) or (device is not None and kernel.link_index(device) is not None)

    alone = {"n1": N1}
    direct = RoutingConfig("n1", "direct")
    router = Router(direct, open_kernel, owns)  # type: ignore[arg-type]
    router.apply(plan(direct, alone))
    assert opened == [] and asked == [(ROUTE_PROTO, "lumen-vxlan")] and kernel.changes == []
    router.apply(plan(direct, NODES))  # remote nodes: the full reconcile, no question asked
    assert opened == [1] and len(asked) == 1 and len(kernel.routes(ROUTE_PROTO)) == 3
    router.apply(plan(direct, alone))  # the last remote node went: its routes go with it
    assert opened == [1, 1] and kernel.routes(ROUTE_PROTO) == []
    kernel.links[9] = {"name": "lumen-vxlan", "kind": "vxlan", "mtu": 1450, "up": True}
    router.apply(plan(direct, alone))  # a device left from vxlan mode goes too
    assert opened == [1, 1, 1] and kernel.link_index("lumen-vxlan") is None

    vx = RoutingConfig("n1", "vxlan")
    Router(vx, open_kernel, owns).apply(plan(vx, alone))  # vxlan mode keeps its device up even alone
    assert len(opened) == 4 and kernel.link_index("lumen-vxlan") is not None
    lost = NodeInfo("n1", (), N1.pod_cidrs)  # no underlay: the device stays, only routes would go
    Router(vx, open_kernel, owns).apply(plan(vx, {"n1": lost}))
    assert len(opened) == 4 and asked[-1] == (ROUTE_PROTO, None)


AGENT_ALONE = """
import sys, types
from exporter.agent import Agent
from exporter.config import AgentConfig
from exporter.nodes import NodeInfo
from exporter.netlink import owns_anything
from exporter.routing import ROUTE_PROTO

n1 = NodeInfo("n1", ("192.168.1.1",), ("10.1.1.0/24",))
n2 = NodeInfo("n2", ("192.168.1.2",), ("10.1.2.0/24",))
nodes = {"n1": n1}
agent = Agent(AgentConfig(node="n1", state_dir=sys.argv[1], masquerade=False))
agent.enforcer = types.SimpleNamespace(manifests=types.SimpleNamespace(nodes=nodes))  # the manifests' Nodes
network = agent._node_network()
network.sync(force=True)
print("leftovers", owns_anything(ROUTE_PROTO, "lumen-vxlan"), "error", repr(network.status.error))
print("alone", "pyroute2" in sys.modules)
nodes["n2"] = n2
network.sync(force=True)
print("two nodes", "pyroute2" in sys.modules)
"""


def test_a_single_node_agent_never_imports_pyroute2(tmp_path: Path) -> None:
    """pyroute2 costs the agent ~10 MB resident: a node with nothing to route must not load it. In a
    fresh network namespace (nothing of Lumen's in it) where user namespaces allow, else in this one."""
    import os
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", AGENT_ALONE, str(tmp_path)]
    isolated = subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    out = subprocess.run(
        (["unshare", "-rn"] if isolated else []) + cmd, env=env, capture_output=True, text=True, cwd=repo
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "leftovers False error ''", out.stdout  # the premise: nothing to remove, no failure
    assert lines[1] == "alone False", out.stderr
    assert lines[2] == "two nodes True"  # the probe sees pyroute2 when there is routing work


def test_lumen_status_says_the_network_in_one_line() -> None:
    from exporter.cli import format_status

    st = {
        "ready": True, "reason": "ok", "node": "n1", "version": "0.1.0", "uptime_s": 3,
        "flow_table": {"entries": 1, "capacity": 10, "fill_ratio": 0.1},
        "flow_store": {"flows": 1, "capacity": 10, "evicted": 0},
        "events": {"consumed": 1, "emitted": 1, "lost": 0, "decode_errors": 0, "poll_lag_s": 0.0},
        "otel": False, "endpoints": [],
        "network": {
            "mode": "vxlan", "masquerade": True, "nodes": ["n1", "n2", "n3"], "routes": 3,
            "problems": ["node n3: no IPv6 InternalIP to route fd00:1:3::/64 via"], "error": "",
        },
    }  # fmt: skip
    line = next(x for x in format_status(st).splitlines() if x.startswith("Network:"))
    assert "vxlan routing, 3 routes to 2 other nodes, masquerade on; not routed: node n3" in line
    st["network"] = {**st["network"], "error": "nft not found", "problems": []}
    assert "FAILED: nft not found" in format_status(st)
