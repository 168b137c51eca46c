"""The plugin on real namespaces, invoked exactly as a runtime invokes it. Each test runs on the host
side of its node (the `node` fixture): `ip`, /proc/sys and netlink here read the node's namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cni_harness import Node, host_links, ipam_records, netns_add, netns_del, ns_exec, ping

pytestmark = pytest.mark.netns


def links_on(bridge: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True
    ).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]


def test_add_wires_pods_like_the_reference_bridge(node: Node):
    a = node.add_pod("a", namespace="shop")
    b = node.add_pod("b")
    res = a.result
    assert res["cniVersion"] == "1.1.0"
    names = [i["name"] for i in res["interfaces"]]
    assert names[0] == node.bridge and names[2] == "eth0" and names[1].startswith("lmn")
    assert all(len(i["mac"].split(":")) == 6 for i in res["interfaces"]), (
        "podman rejects a result without MACs"
    )
    assert res["interfaces"][2]["sandbox"] == a.netns
    assert "sandbox" not in res["interfaces"][0] and "sandbox" not in res["interfaces"][1]
    v4, v6 = res["ips"]
    assert ipaddress.ip_interface(v4["address"]) in ipaddress.ip_network(
        node.subnet4
    ) or ipaddress.ip_interface(v4["address"]).network == ipaddress.ip_network(node.subnet4)
    assert v4["gateway"] == node.gateway4 and v6["gateway"] == node.gateway6
    assert v4["interface"] == v6["interface"] == 2
    assert {"dst": "0.0.0.0/0", "gw": node.gateway4} in res["routes"]
    assert {"dst": "::/0", "gw": node.gateway6} in res["routes"]

    # The pod side: addresses, up, default routes via the gateway, DAD off.
    addrs = ns_exec(a.ns, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert v4["address"] in addrs and v6["address"] in addrs
    assert "tentative" not in addrs
    assert ns_exec(a.ns, "cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad").stdout.strip() == "0"
    assert f"default via {node.gateway4} dev eth0" in ns_exec(a.ns, "ip", "route").stdout
    assert f"default via {node.gateway6} dev eth0" in ns_exec(a.ns, "ip", "-6", "route").stdout
    # The host side: veth up on the bridge, gateway addresses on the bridge.
    host = names[1]
    assert host in links_on(node.bridge)
    assert "state UP" in subprocess.run(
        ["ip", "link", "show", host], capture_output=True, text=True
    ).stdout or (",UP" in subprocess.run(["ip", "link", "show", host], capture_output=True, text=True).stdout)
    bridge_addrs = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", node.bridge], capture_output=True, text=True
    )
    assert f"{node.gateway4}/24" in bridge_addrs.stdout
    # A bridge port carries no addresses: no IPv6 chatter from the host side into the pod network.
    assert open(f"/proc/sys/net/ipv6/conf/{host}/disable_ipv6").read().strip() == "1"
    host_addrs = subprocess.run(["ip", "-o", "addr", "show", "dev", host], capture_output=True, text=True)
    assert "inet6" not in host_addrs.stdout

    assert ping(a.ns, b.ip(4)) and ping(b.ns, a.ip(4))
    assert ping(a.ns, b.ip(6)) and ping(a.ns, node.gateway4) and ping(a.ns, node.gateway6)

    # The endpoint record the agent reads.
    record = json.loads((node.state_dir / "endpoints" / f"{a.container_id}_eth0.json").read_text())
    assert record["namespace"] == "shop" and record["pod"] == "a" and record["podUid"]
    assert record["hostVeth"] == host and record["state"] == "ready"
    assert record["ips"] == [v4["address"], v6["address"]]
    assert record["hostIfindex"] > 0 and record["mac"] == res["interfaces"][2]["mac"]
    assert record["observed"] is False  # no agent ever ran for this node


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_is_in_the_configured_version(node: Node, version: str):
    node.cni_version = version
    pod = node.add_pod("v")
    assert pod.result["cniVersion"] == version
    if version.startswith("0."):
        assert [ip["version"] for ip in pod.result["ips"]] == ["4", "6"]
    else:
        assert all("version" not in ip for ip in pod.result["ips"])
    if version != "1.1.0":
        assert all("mtu" not in i for i in pod.result["interfaces"])


def test_check_passes_then_detects_damage(node: Node):
    pod = node.add_pod("c")
    conf = dict(node.conf(), prevResult=pod.result)
    assert node.invoke("CHECK", "c", conf=conf).ok
    ns_exec(pod.ns, "ip", "addr", "del", pod.result["ips"][0]["address"], "dev", "eth0", check=True)
    res = node.invoke("CHECK", "c", conf=conf)
    assert not res.ok and "addresses" in res.out["msg"]
    # CHECK without prevResult is a config error.
    res = node.invoke("CHECK", "c")
    assert not res.ok and res.out["code"] == 7


def test_del_is_idempotent_and_tolerates_missing_pieces(node: Node):
    pod = node.add_pod("d")
    host = pod.result["interfaces"][1]["name"]
    assert node.invoke("DEL", "d").ok
    assert host not in host_links("lmn")
    assert ipam_records(node) == []
    assert not (node.state_dir / "endpoints" / f"{pod.container_id}_eth0.json").exists()
    assert node.invoke("DEL", "d").ok, "second DEL must succeed"
    assert node.invoke("DEL", "d", netns="").ok, "DEL with empty CNI_NETNS (containerd) must succeed"
    node.pods.pop("d")
    netns_del(pod.ns)
    res = node.call("DEL", node.conf(), pod.container_id, pod.netns)
    assert res.ok, "DEL with the netns gone must succeed"


def test_del_after_the_netns_vanished_releases_everything(node: Node):
    pod = node.add_pod("gone")
    node.pods.pop("gone")
    netns_del(pod.ns)  # the runtime lost the netns before calling DEL
    res = node.call("DEL", node.conf(), pod.container_id, pod.netns)
    assert res.ok
    assert ipam_records(node) == []
    assert links_on(node.bridge) == []


def test_second_add_for_same_attachment_fails_clearly(node: Node):
    pod = node.add_pod("twice")
    res = node.invoke("ADD", "twice")
    assert not res.ok
    assert res.out["code"] == 102 and "already" in res.out["msg"]
    assert len(ipam_records(node)) == 2, "the failed ADD must not allocate"
    assert ping(pod.ns, node.gateway4), "the failed ADD must not disturb the pod"


def test_requested_ip_and_mac(node: Node):
    ns = f"lt{node.tag}req"
    netns = netns_add(ns)
    try:
        want = str(ipaddress.ip_network(node.subnet4)[77])
        mac = "0a:58:0a:00:00:4d"
        cid = secrets.token_hex(32)
        res = node.call("ADD", node.conf(), cid, netns, cni_args=f"IgnoreUnknown=1;IP={want};MAC={mac}")
        assert res.ok, res.out
        assert res.out["ips"][0]["address"] == f"{want}/24"
        assert res.out["interfaces"][2]["mac"] == mac
        assert mac in ns_exec(ns, "ip", "link", "show", "eth0").stdout
        # The same IP through runtimeConfig for another pod is refused: it is taken.
        conf = dict(node.conf(), runtimeConfig={"ips": [f"{want}/24"]})
        res2 = node.call("ADD", conf, secrets.token_hex(32), netns, ifname="eth1")
        assert not res2.ok and "eth1" not in ns_exec(ns, "ip", "link").stdout
        assert node.call("DEL", node.conf(), cid, netns).ok
    finally:
        netns_del(ns)


def test_hairpin_mode_turns_the_pods_bridge_port_hairpin_on(node: Node):
    on = node.add_pod("hp", conf=node.conf(hairpinMode=True))
    off = node.add_pod("nohp")
    for pod, want in ((on, "hairpin on"), (off, "hairpin off")):
        port = pod.result["interfaces"][1]["name"]
        assert want in node.exec("bridge", "-d", "link", "show", "dev", port, check=True).stdout


FAULT_STEPS = ["after-ipam", "after-record", "after-bridge", "after-veth", "after-configure", "after-attach"]


@pytest.mark.parametrize("step", FAULT_STEPS)
def test_failure_inside_add_rolls_everything_back(node: Node, step: str):
    keep = node.add_pod("keep")
    before_links = set(host_links("lmn"))
    ns = f"lt{node.tag}f"
    netns = netns_add(ns)
    try:
        res = node.call(
            "ADD",
            node.conf(),
            secrets.token_hex(32),
            netns,
            extra_env={"LUMEN_FAULT": f"{step}:error"},
        )
        assert not res.ok and step in res.out["msg"]
        assert set(host_links("lmn")) == before_links, "veth leaked"
        assert ipam_records(node) == sorted(keep.ips), "IP leaked"
        assert len(os.listdir(node.state_dir / "endpoints")) == 1, "endpoint record leaked"
        assert "eth0" not in ns_exec(ns, "ip", "-o", "link").stdout
    finally:
        netns_del(ns)


def test_failure_from_the_kernel_rolls_back(node: Node):
    """A route the kernel refuses (gateway off-link) fails ADD after the veth exists."""
    conf = node.conf()
    conf["ipam"]["routes"] = [{"dst": "198.51.100.0/24", "gw": "203.0.113.1"}]
    ns = f"lt{node.tag}k"
    netns = netns_add(ns)
    try:
        res = node.call("ADD", conf, secrets.token_hex(32), netns)
        assert not res.ok and res.out["code"] in (5, 100)
        assert links_on(node.bridge) == [] and ipam_records(node) == []
    finally:
        netns_del(ns)


@pytest.mark.parametrize("step", ["after-record", "after-veth", "after-configure"])
def test_sigkill_mid_add_leaves_nothing_gc_cannot_reclaim(node: Node, step: str):
    keep = node.add_pod("keep")
    ns = f"lt{node.tag}s"
    netns = netns_add(ns)
    try:
        cid = secrets.token_hex(32)
        res = node.call("ADD", node.conf(), cid, netns, extra_env={"LUMEN_FAULT": f"{step}:kill"})
        assert res.rc == -9 and res.out is None
        assert len(ipam_records(node)) == 4, "the killed ADD held addresses"
        conf = dict(
            node.conf(),
            **{"cni.dev/valid-attachments": [{"containerID": keep.container_id, "ifname": "eth0"}]},
        )
        gc = node.call("GC", conf)
        assert gc.ok, gc.out
        assert ipam_records(node) == sorted(keep.ips)
        assert links_on(node.bridge) == [keep.result["interfaces"][1]["name"]]
        assert sorted(os.listdir(node.state_dir / "endpoints")) == [f"{keep.container_id}_eth0.json"]
        assert ping(keep.ns, node.gateway4)
    finally:
        netns_del(ns)


def test_add_after_a_killed_add_reclaims_the_leftovers(node: Node):
    ns = f"lt{node.tag}r"
    netns = netns_add(ns)
    try:
        cid = secrets.token_hex(32)
        res = node.call("ADD", node.conf(), cid, netns, extra_env={"LUMEN_FAULT": "after-configure:kill"})
        assert res.rc == -9
        res = node.call("ADD", node.conf(), cid, netns)
        assert res.ok, res.out
        assert len(ipam_records(node)) == 2 and len(links_on(node.bridge)) == 1
        assert node.call("DEL", node.conf(), cid, netns).ok
    finally:
        netns_del(ns)


def test_gc_releases_everything_not_valid(node: Node):
    pods = [node.add_pod(n) for n in ("g1", "g2", "g3")]
    valid = [{"containerID": pods[0].container_id, "ifname": "eth0"}]
    res = node.call("GC", dict(node.conf(), **{"cni.dev/valid-attachments": valid}))
    assert res.ok, res.out
    assert ipam_records(node) == sorted(pods[0].ips)
    assert links_on(node.bridge) == [pods[0].result["interfaces"][1]["name"]]
    assert ping(pods[0].ns, node.gateway4)
    bad = node.call("GC", dict(node.conf(), **{"cni.dev/valid-attachments": "nope"}))
    assert not bad.ok and bad.out["code"] == 7
    missing = node.call("GC", node.conf())
    assert not missing.ok and missing.out["code"] == 7, "GC without the list must not release everything"
    assert ipam_records(node) == sorted(pods[0].ips)


def test_status_reports_an_exhausted_pool(node: Node):
    conf = node.conf()
    first = str(ipaddress.ip_network(node.subnet4)[10])
    conf["ipam"]["ranges"] = [
        [{"subnet": node.subnet4, "rangeStart": first, "rangeEnd": first, "gateway": node.gateway4}]
    ]
    node.extra = {"ipam": conf["ipam"]}
    assert node.invoke("STATUS").ok
    node.add_pod("only")
    res = node.invoke("STATUS")
    assert not res.ok and res.out["code"] == 50
    ns = f"lt{node.tag}x"
    netns = netns_add(ns)
    try:
        full = node.call("ADD", node.conf(), secrets.token_hex(32), netns)
        assert not full.ok and "eth0" not in ns_exec(ns, "ip", "-o", "link").stdout
    finally:
        netns_del(ns)
    node.del_pod("only")
    assert node.invoke("STATUS").ok


def test_delegated_ipam_host_local(node: Node):
    """Any other ipam.type is exec'd from CNI_PATH, as the reference bridge does."""
    node.cni_version = "1.0.0"  # Debian's host-local speaks up to 1.0.0
    node.extra = {
        "ipam": {"type": "host-local", "ranges": [[{"subnet": node.subnet4}]], "dataDir": str(node.data_dir)}
    }
    a = node.add_pod("ha")
    b = node.add_pod("hb")
    assert a.ip(4) != b.ip(4)
    assert ping(a.ns, b.ip(4))
    assert node.del_pod("ha").ok and node.del_pod("hb").ok
    held = [p for p in (node.data_dir / f"lt-{node.tag}").iterdir() if p.name[0].isdigit()]
    assert held == [], "host-local still holds addresses after DEL"


def test_concurrent_adds_get_distinct_ips_and_all_are_freed(node: Node):
    count = 200
    node.ipv6 = False
    names = [f"lt{node.tag}c{i}" for i in range(count)]
    for ns in names:
        netns_add(ns)
    cids = [secrets.token_hex(32) for _ in names]
    try:

        def add(i: int):
            return node.call("ADD", node.conf(), cids[i], f"/run/netns/{names[i]}", timeout=120)

        with ThreadPoolExecutor(max_workers=count) as pool:
            results = list(pool.map(add, range(count)))
        failed = [r.out for r in results if not r.ok]
        assert not failed, failed[:3]
        ips = [r.out["ips"][0]["address"] for r in results]
        assert len(set(ips)) == count
        assert len(ipam_records(node)) == count
        assert len(links_on(node.bridge)) == count

        def delete(i: int):
            return node.call("DEL", node.conf(), cids[i], f"/run/netns/{names[i]}", timeout=120)

        with ThreadPoolExecutor(max_workers=count) as pool:
            assert all(r.ok for r in pool.map(delete, range(count)))
        assert ipam_records(node) == [] and links_on(node.bridge) == []
    finally:
        for ns in names:
            netns_del(ns)
