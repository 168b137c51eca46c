"""The root-namespace guard's reading of `ip` output: what it ignores, and how it reports a change."""

from __future__ import annotations

from tests import root_state


def test_links_compare_by_name_only():
    text = (
        "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN\n"
        "7: ltb1@if6: <BROADCAST> mtu 1500 qdisc noop state DOWN\n"
    )
    assert root_state.link_names(text) == ["lo", "ltb1"]


def test_kernel_link_local_routes_and_ra_lifetimes_are_ignored():
    text = (
        "fe80::/64 dev eth0 proto kernel metric 256 pref medium\n"
        "local fe80::1 dev eth0 table local proto kernel metric 0 pref medium\n"
        "multicast ff00::/8 dev eth0 table local proto kernel metric 256 pref medium\n"
        "default via fe80::1 dev eth0 proto ra metric 1024 expires 1794sec pref medium\n"
        "fe80::/64 dev ltb1 proto static metric 1024 pref medium\n"
    )
    assert root_state.route_lines(text) == [
        "default via fe80::1 dev eth0 proto ra metric 1024 pref medium",
        "fe80::/64 dev ltb1 proto static metric 1024 pref medium",
    ]


def test_differences_name_the_part_and_the_lines():
    before = {"links": ["eth0", "lo"], "net/ipv4/ip_forward": ["0"]}
    after = {"links": ["eth0", "lo", "ltguard1"], "net/ipv4/ip_forward": ["0"]}
    assert root_state.differences(before, before) == ""
    diff = root_state.differences(before, after)
    assert diff.startswith("links:") and "+ltguard1" in diff and "ip_forward" not in diff
