"""The `ipam` section of `"type": "lumen"`: host-local's defaults, legacy form, and a code-7 error naming
the field for every mistake."""

import pytest

from plugin import errors, ipam
from plugin import ip as ipaddress  # the plugin's own address type (plugin/ip.py)
from plugin.errors import CNIError
from plugin.ipam.config import DEFAULT_DATA_DIR


def parse(raw, network="net"):
    return ipam.parse_ipam_config(network, dict(raw, type="lumen"))


def bounds(r):
    return str(r.start), str(r.end), str(r.gateway)


def test_v4_defaults_skip_network_and_broadcast_gateway_is_first_host():
    c = parse({"ranges": [[{"subnet": "10.0.0.0/29"}]]})
    assert bounds(c.ranges[0][0]) == ("10.0.0.1", "10.0.0.6", "10.0.0.1")
    assert c.ranges[0][0].size() == 5, "the gateway is never handed out"
    assert c.data_dir == DEFAULT_DATA_DIR == "/var/lib/cni/lumen"
    assert c.network == "net"


def test_v6_defaults_run_to_the_last_address():
    c = parse({"ranges": [[{"subnet": "fd00:22::/64"}]]})
    assert bounds(c.ranges[0][0]) == ("fd00:22::1", "fd00:22::ffff:ffff:ffff:ffff", "fd00:22::1")


def test_explicit_bounds_and_a_subnet_with_host_bits_are_kept():
    c = parse(
        {
            "ranges": [
                [{"subnet": "10.22.0.7/24", "rangeStart": "10.22.0.10", "rangeEnd": "10.22.0.250"}],
                [{"subnet": "fd00:22::/64", "gateway": "fd00:22::fe"}],
            ],
            "dataDir": "/tmp/ipam",
        }
    )
    assert str(c.ranges[0][0].subnet) == "10.22.0.0/24"
    assert bounds(c.ranges[0][0]) == ("10.22.0.10", "10.22.0.250", "10.22.0.1")
    assert str(c.ranges[1][0].gateway) == "fd00:22::fe"
    assert c.data_dir == "/tmp/ipam"


def test_legacy_single_range_form_and_routes():
    c = parse({"subnet": "10.11.0.0/24", "rangeStart": "10.11.0.100", "routes": [{"dst": "0.0.0.0/0"}]})
    assert len(c.ranges) == 1
    assert str(c.ranges[0][0].start) == "10.11.0.100"
    assert str(c.routes[0].dst) == "0.0.0.0/0" and c.routes[0].gw is None


def test_legacy_range_goes_before_ranges_like_host_local():
    c = parse({"subnet": "10.11.0.0/24", "ranges": [[{"subnet": "fd00:11::/64"}]]})
    assert [str(rset[0].subnet) for rset in c.ranges] == ["10.11.0.0/24", "fd00:11::/64"]


def test_routes_keep_their_gateway():
    c = parse(
        {
            "ranges": [[{"subnet": "10.0.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.0.0.254"}, {"dst": "::/0"}],
        }
    )
    assert [(str(r.dst), r.gw) for r in c.routes] == [
        ("0.0.0.0/0", None),
        ("192.168.0.0/16", ipaddress.ip_address("10.0.0.254")),
        ("::/0", None),
    ]


def test_two_sets_of_one_family_are_allowed_if_disjoint():
    c = parse(
        {
            "ranges": [
                [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.99"}],
                [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100", "rangeEnd": "10.0.0.199"}],
            ]
        }
    )
    assert len(c.ranges) == 2


V4 = {"subnet": "10.0.0.0/24"}


@pytest.mark.parametrize(
    "raw, field",
    [
        ({}, "ranges"),
        ({"ranges": []}, "ranges"),
        ({"ranges": {"subnet": "10.0.0.0/24"}}, "ranges"),
        ({"ranges": [[]]}, "ranges[0]"),
        ({"ranges": [V4, V4]}, "ranges[0]"),
        ({"ranges": [[{"rangeStart": "10.0.0.1"}]]}, "ranges[0][0].subnet"),
        ({"ranges": [[{"subnet": "nope"}]]}, "ranges[0][0].subnet"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}, "ranges[0][0].rangeStart"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "banana"}]]}, "ranges[0][0].rangeStart"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.0"}]]}, "ranges[0][0].rangeStart"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.255"}]]}, "ranges[0][0].rangeEnd"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "fd00::9"}]]}, "ranges[0][0].rangeEnd"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]}, "ranges[0][0].gateway"),
        (
            {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}]]},
            "ranges[0][0].rangeStart",
        ),
        ({"ranges": [[{"subnet": "10.0.0.0/31"}]]}, "too small"),
        ({"ranges": [[{"subnet": "fd00::/127"}]]}, "too small"),
        ({"ranges": [[V4, {"subnet": "fd00::/64"}]]}, "mixes"),
        ({"ranges": [[V4, {"subnet": "10.0.0.128/25"}]]}, "overlaps"),
        ({"ranges": [[V4], [{"subnet": "10.0.0.0/25"}]]}, "overlaps"),
        ({"subnet": "10.0.0.0/24", "ranges": [[{"subnet": "10.0.0.0/16"}]]}, "overlaps"),
        ({"ranges": [[V4]], "routes": {"dst": "0.0.0.0/0"}}, "routes"),
        ({"ranges": [[V4]], "routes": [{"gw": "10.0.0.1"}]}, "routes[0]"),
        ({"ranges": [[V4]], "routes": [{"dst": "0.0.0.0/99"}]}, "routes[0].dst"),
        ({"ranges": [[V4]], "routes": [{"dst": "::/0", "gw": "10.0.0.1"}]}, "routes[0].gw"),
        ({"ranges": [[V4]], "dataDir": "relative/dir"}, "dataDir"),
        ({"ranges": [[V4]], "dataDir": 5}, "dataDir"),
    ],
)
def test_invalid_ipam_config_is_code_7_naming_the_field(raw, field):
    with pytest.raises(CNIError) as e:
        parse(raw)
    assert e.value.code == errors.INVALID_CONFIG
    assert field in f"{e.value.msg} {e.value.details}"


@pytest.mark.parametrize("network", ["", ".", "..", "a/b", "../etc"])
def test_a_network_name_that_would_leave_data_dir_is_refused(network):
    with pytest.raises(CNIError) as e:
        parse({"ranges": [[V4]]}, network=network)
    assert e.value.code == errors.INVALID_CONFIG
    assert "name" in e.value.msg


def test_an_ipam_section_that_is_not_an_object_is_refused():
    with pytest.raises(CNIError) as e:
        ipam.parse_ipam_config("net", ["ranges"])  # type: ignore[arg-type]
    assert e.value.code == errors.INVALID_CONFIG
