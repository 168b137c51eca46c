"""The built-in allocator over the fake store: ranges, dual stack, requested IPs, round robin, exhaustion."""

import ipaddress

import pytest

from plugin import errors, ipam
from plugin.errors import CNIError
from plugin.ipam.fake import FakeStore

ip = ipaddress.ip_address


def conf(*sets, routes=None):
    return ipam.parse_ipam_config("net", {"type": "lumen", "ranges": list(sets), "routes": routes or []})


def alloc(c, store, cid="c1", ifname="eth0", requested=()):
    return ipam.allocate(c, cid, ifname, [ip(r) for r in requested], store=store)


def test_defaults_skip_network_gateway_and_broadcast():
    c = conf([{"subnet": "10.0.0.0/29"}])
    r = c.ranges[0][0]
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.0.0.1", "10.0.0.6", "10.0.0.1")
    store = FakeStore()
    got = [str(alloc(c, store, cid=f"c{i}")[0].address) for i in range(5)]
    assert got == ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"]
    with pytest.raises(CNIError) as e:
        alloc(c, store, cid="c9")
    assert e.value.code == errors.IPAM_EXHAUSTED
    assert ipam.free_count(c, store=store) == 0


def test_dual_stack_gives_one_address_per_set_with_gateways():
    c = conf([{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64", "gateway": "fd00:1::1"}])
    out = alloc(c, FakeStore())
    assert [str(o.address) for o in out] == ["10.1.0.2/24", "fd00:1::2/64"]
    assert [str(o.gateway) for o in out] == ["10.1.0.1", "fd00:1::1"]


def test_several_ranges_in_a_set_are_used_in_turn():
    c = conf([{"subnet": "10.2.0.0/30"}, {"subnet": "10.3.0.0/30"}])
    store = FakeStore()
    got = [str(alloc(c, store, cid=f"c{i}")[0].address.ip) for i in range(2)]
    assert got == ["10.2.0.2", "10.3.0.2"]


def test_round_robin_continues_after_the_last_reserved_and_wraps():
    c = conf([{"subnet": "10.4.0.0/24", "rangeStart": "10.4.0.10", "rangeEnd": "10.4.0.12"}])
    store = FakeStore()
    a = alloc(c, store, cid="a")[0].address.ip
    ipam.release(c, "a", "eth0", store=store)
    b = alloc(c, store, cid="b")[0].address.ip
    assert (str(a), str(b)) == ("10.4.0.10", "10.4.0.11"), "a released IP is not reused at once"
    alloc(c, store, cid="c")
    d = alloc(c, store, cid="d")[0].address.ip
    assert str(d) == "10.4.0.10", "wraps around to the start"


def test_requested_ip_is_honoured_and_checked():
    c = conf([{"subnet": "10.5.0.0/24"}], [{"subnet": "fd00:5::/64"}])
    store = FakeStore()
    out = alloc(c, store, cid="a", requested=["10.5.0.77"])
    assert str(out[0].address) == "10.5.0.77/24" and out[1].address.version == 6
    for bad, code in (
        ("10.5.0.77", errors.ALREADY_EXISTS),
        ("10.9.9.9", errors.INVALID_CONFIG),
        ("10.5.0.1", errors.INVALID_CONFIG),
    ):
        with pytest.raises(CNIError) as e:
            alloc(c, store, cid="b", requested=[bad])
        assert e.value.code == code, bad
    assert {cid for _, cid, _ in store.allocations()} == {"a"}, "failed requests keep nothing"


def test_all_or_nothing_across_sets():
    c = conf(
        [{"subnet": "10.6.0.0/24"}], [{"subnet": "fd00:6::/126"}]
    )  # v6 set holds 2 (gateway ::1 excluded)
    store = FakeStore()
    alloc(c, store, cid="a")
    alloc(c, store, cid="b")
    with pytest.raises(CNIError) as e:
        alloc(c, store, cid="c")
    assert e.value.code == errors.IPAM_EXHAUSTED
    assert len(store.allocations()) == 4, "the IPv4 address of the failed ADD is released"


def test_second_allocation_for_same_attachment_is_refused():
    c = conf([{"subnet": "10.7.0.0/24"}])
    store = FakeStore()
    alloc(c, store)
    with pytest.raises(CNIError) as e:
        alloc(c, store)
    assert e.value.code == errors.ALREADY_EXISTS
    assert len(alloc(c, store, ifname="eth1")) == 1, "another interface of the same container is fine"


def test_release_is_idempotent_and_get_reports_holdings():
    c = conf([{"subnet": "10.8.0.0/24"}])
    store = FakeStore()
    alloc(c, store)
    assert [str(x.address) for x in ipam.get(c, "c1", "eth0", store=store)] == ["10.8.0.2/24"]
    assert ipam.release(c, "c1", "eth0", store=store) == [ip("10.8.0.2")]
    assert ipam.release(c, "c1", "eth0", store=store) == []
    assert ipam.get(c, "c1", "eth0", store=store) == []


def test_gc_releases_every_allocation_not_valid():
    c = conf([{"subnet": "10.9.0.0/24"}])
    store = FakeStore()
    for cid in ("a", "b", "c"):
        alloc(c, store, cid=cid)
    stale = ipam.gc(c, {("b", "eth0")}, store=store)
    assert sorted(cid for _, cid, _ in stale) == ["a", "c"]
    assert [cid for _, cid, _ in store.allocations()] == ["b"]


def test_free_count_is_the_fullest_set():
    c = conf([{"subnet": "10.10.0.0/28"}], [{"subnet": "fd00:10::/125"}])
    store = FakeStore()
    assert ipam.free_count(c, store=store) == 6  # v6: 8 - network - gateway
    alloc(c, store)
    assert ipam.free_count(c, store=store) == 5


def test_legacy_single_range_form_and_routes():
    c = ipam.parse_ipam_config(
        "n", {"subnet": "10.11.0.0/24", "rangeStart": "10.11.0.100", "routes": [{"dst": "0.0.0.0/0"}]}
    )
    assert str(c.ranges[0][0].start) == "10.11.0.100"
    assert str(c.routes[0].dst) == "0.0.0.0/0" and c.routes[0].gw is None


@pytest.mark.parametrize(
    "ipam_conf, field",
    [
        ({}, "ranges"),
        ({"ranges": []}, "ranges"),
        ({"ranges": [[]]}, "ranges[0]"),
        ({"ranges": [[{"subnet": "nope"}]]}, "subnet"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}, "rangeStart"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]}, "gateway"),
        (
            {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}]]},
            "ranges[0][0]",
        ),
        ({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixes"),
        ({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}, "overlaps"),
        ({"ranges": [[{"subnet": "10.0.0.0/31"}]]}, "too small"),
        ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"gw": "10.0.0.1"}]}, "routes[0]"),
        ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": "relative/dir"}, "dataDir"),
    ],
)
def test_invalid_ipam_config_is_code_7_naming_the_field(ipam_conf, field):
    with pytest.raises(CNIError) as e:
        ipam.parse_ipam_config("n", dict(ipam_conf, type="lumen"))
    assert e.value.code == errors.INVALID_CONFIG
    assert field in f"{e.value.msg} {e.value.details}"
