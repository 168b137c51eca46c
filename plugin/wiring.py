"""The pod's plumbing: a host bridge, a veth pair born across the namespace boundary, addresses, routes."""

from __future__ import annotations

import errno
import os

from plugin.ip import ip_network
from plugin.netlink import IPAddr, IPInterface, IPNet, Link, Netlink, NetlinkError, in_netns, write_sysctl


def ensure_bridge(nl: Netlink, name: str, mtu: int | None, gateways: list[IPInterface]) -> Link:
    """The bridge up, with the gateway addresses on it; concurrent ADDs may race to create it."""
    link = nl.link(name)
    if link is None:
        try:
            nl.bridge_add(name, mtu)
        except NetlinkError as e:
            if e.errno != errno.EEXIST:
                raise
        link = nl.link(name)
        if link is None:
            raise RuntimeError(f"bridge {name} vanished while being created")
    elif link.kind != "bridge":
        raise ValueError(f"{name} exists and is a {link.kind or 'non-bridge'} link, not a bridge")
    if not link.up:
        nl.link_set(link.index, up=True)
    have = {iface for _, iface in nl.addrs(link.index)}
    for gw in gateways:
        if gw in have:
            continue
        try:
            nl.addr_add(link.index, gw, nodad=True)
        except NetlinkError as e:
            if e.errno != errno.EEXIST:
                raise
    return link


def create_veth(
    nl: Netlink,
    pod: Netlink,
    netns: str,
    host_name: str,
    ifname: str,
    mtu: int | None,
    mac: str | None,
    bridge: Link,
    hairpin: bool,
) -> tuple[Link, Link]:
    """Create the pair with its peer inside the pod netns, enslave and raise the host side."""
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        nl.veth_add(host_name, ifname, fd, mtu=mtu or bridge.mtu or None, peer_mac=mac)
    finally:
        os.close(fd)
    host = nl.link(host_name)
    if host is None:
        raise RuntimeError(f"host veth {host_name} missing right after creation")
    # A bridge port needs no address: without IPv6 on it the host side sends no router solicitations,
    # MLD or DAD into the pod network (IPv6 frames are still bridged).
    try:
        write_sysctl(f"net/ipv6/conf/{host_name}/disable_ipv6", "1")
    except FileNotFoundError:
        pass  # IPv6 disabled on the host altogether
    nl.link_set(host.index, master=bridge.index, up=True)
    if hairpin:
        nl.bridge_port_hairpin(host.index)
    host = nl.link(index=host.index)
    pod_link = pod.link(ifname)
    if host is None or pod_link is None or not host.up:
        raise RuntimeError(f"veth {host_name}/{ifname} not up after creation")
    return host, pod_link


def configure_pod(
    pod: Netlink,
    netns: str,
    link: Link,
    addresses: list[IPInterface],
    routes: list[tuple[IPNet, IPAddr | None]],
) -> Link:
    """Addresses without DAD, link up, then routes (they need the link up)."""
    if any(a.version == 6 for a in addresses):
        with in_netns(netns):
            try:
                write_sysctl(f"net/ipv6/conf/{link.name}/accept_dad", "0")
            except FileNotFoundError:
                pass  # IPv6 disabled in the pod: the address add below will say so clearly
    for address in addresses:
        pod.addr_add(link.index, address, nodad=True)
    pod.link_set(link.index, up=True)
    lo = pod.link("lo")
    if lo is not None and not lo.up:
        pod.link_set(lo.index, up=True)
    for dst, gw in routes:
        try:
            pod.route_add(dst, gw, link.index)
        except NetlinkError as e:
            if e.errno != errno.EEXIST:
                raise
    up = pod.link(index=link.index)
    if up is None or not up.up:
        raise RuntimeError(f"pod interface {link.name} is not up")
    return up


def delete_host_veth(nl: Netlink, host_name: str) -> bool:
    """Deleting the host side takes the pod side with it; missing is fine (DEL is idempotent)."""
    return nl.link_del(name=host_name)


def default_routes(gateways: list[IPAddr]) -> list[tuple[IPNet, IPAddr | None]]:
    out: list[tuple[IPNet, IPAddr | None]] = []
    for gw in gateways:
        out.append((ip_network("0.0.0.0/0" if gw.version == 4 else "::/0"), gw))
    return out
