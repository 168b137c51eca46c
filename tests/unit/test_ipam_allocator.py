"""The built-in allocator over the fake store: ranges, dual stack, requested IPs, round robin, exhaustion."""

import pytest

from plugin import errors, ipam
from plugin import ip as ipaddress  # the plugin's own address type (plugin/ip.py)
from plugin.errors import CNIError
from plugin.ipam.fake import FakeStore

ip = ipaddress.ip_address


def conf(*sets, routes=None):
    return ipam.parse_ipam_config("net", {"type": "lumen", "ranges": list(sets), "routes": routes or []})


def alloc(c, store, cid="c1", ifname="eth0", requested=()):
    return ipam.allocate(c, cid, ifname, [ip(r) for r in requested], store=store)


def test_defaults_skip_network_gateway_and_broadcast():
    c = conf([{"subnet": "10.0.0.0/29"}])
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


def test_round_robin_moves_on_to_the_next_range_and_wraps_to_the_first():
    c = conf(
        [
            {"subnet": "10.12.0.0/24", "rangeStart": "10.12.0.10", "rangeEnd": "10.12.0.11"},
            {"subnet": "10.13.0.0/24", "rangeStart": "10.13.0.10", "rangeEnd": "10.13.0.10"},
        ]
    )
    store = FakeStore()
    got = []
    for i in range(3):
        got.append(str(alloc(c, store, cid=f"c{i}")[0].address))
        ipam.release(c, f"c{i}", "eth0", store=store)
    assert got == ["10.12.0.10/24", "10.12.0.11/24", "10.13.0.10/24"], "each range has its own prefix"
    assert str(alloc(c, store, cid="c3")[0].address) == "10.12.0.10/24"


def test_round_robin_is_per_range_set():
    c = conf([{"subnet": "10.14.0.0/24"}], [{"subnet": "fd00:14::/64"}])
    store = FakeStore()
    alloc(c, store, cid="a", requested=["fd00:14::50"])
    out = alloc(c, store, cid="b")
    assert [str(o.address.ip) for o in out] == ["10.14.0.3", "fd00:14::2"], "a static IP moves no cursor"


def test_requested_ipv6_is_honoured_in_its_set():
    c = conf([{"subnet": "10.15.0.0/24"}], [{"subnet": "fd00:15::/64"}])
    out = alloc(c, FakeStore(), requested=["fd00:15::abc", "10.15.0.9"])
    assert [str(o.address) for o in out] == ["10.15.0.9/24", "fd00:15::abc/64"]


def test_requested_ip_in_the_subnet_but_outside_the_range_is_refused():
    c = conf([{"subnet": "10.16.0.0/24", "rangeStart": "10.16.0.100"}])
    store = FakeStore()
    with pytest.raises(CNIError) as e:
        alloc(c, store, requested=["10.16.0.50"])
    assert e.value.code == errors.INVALID_CONFIG
    assert "10.16.0.50" in e.value.msg and "10.16.0.100-10.16.0.254" in e.value.details
    assert store.allocations() == [] and store.last == {}


def test_two_requested_ips_for_one_set_are_refused():
    c = conf([{"subnet": "10.17.0.0/24"}])
    store = FakeStore()
    with pytest.raises(CNIError) as e:
        alloc(c, store, requested=["10.17.0.5", "10.17.0.6"])
    assert e.value.code == errors.INVALID_CONFIG
    assert store.allocations() == []


def test_a_taken_requested_ip_names_its_owner_and_the_owner_keeps_it():
    c = conf([{"subnet": "10.18.0.0/24"}])
    store = FakeStore()
    alloc(c, store, cid="owner", requested=["10.18.0.5"])
    with pytest.raises(CNIError) as e:
        alloc(c, store, cid="thief", requested=["10.18.0.5"])
    assert e.value.code == errors.ALREADY_EXISTS and "owner/eth0" in e.value.msg
    assert store.allocations() == [(ip("10.18.0.5"), "owner", "eth0")]


def test_get_matches_by_range_when_sets_share_a_subnet():
    c = conf(
        [{"subnet": "10.19.0.0/24", "rangeStart": "10.19.0.10", "rangeEnd": "10.19.0.19"}],
        [
            {
                "subnet": "10.19.0.0/24",
                "rangeStart": "10.19.0.20",
                "rangeEnd": "10.19.0.29",
                "gateway": "10.19.0.254",
            }
        ],
    )
    store = FakeStore()
    out = alloc(c, store)
    assert [(str(o.address), str(o.gateway)) for o in out] == [
        ("10.19.0.10/24", "10.19.0.1"),
        ("10.19.0.20/24", "10.19.0.254"),
    ]
    got = ipam.get(c, "c1", "eth0", store=store)
    assert [(str(o.address), str(o.gateway)) for o in got] == [
        ("10.19.0.10/24", "10.19.0.1"),
        ("10.19.0.20/24", "10.19.0.254"),
    ]


def test_get_still_reports_an_address_the_config_no_longer_covers():
    store = FakeStore()
    alloc(conf([{"subnet": "10.20.0.0/24"}]), store)
    got = ipam.get(conf([{"subnet": "10.21.0.0/24"}]), "c1", "eth0", store=store)
    assert [(str(o.address), o.gateway) for o in got] == [("10.20.0.2/32", None)], "CHECK sees a mismatch"


def test_gc_tells_interfaces_of_one_container_apart():
    c = conf([{"subnet": "10.22.0.0/24"}])
    store = FakeStore()
    alloc(c, store, ifname="eth0")
    alloc(c, store, ifname="net1")
    assert [(cid, ifn) for _, cid, ifn in ipam.gc(c, {("c1", "eth0")}, store=store)] == [("c1", "net1")]
    assert ipam.gc(c, {("c1", "eth0")}, store=store) == []


def test_free_count_counts_requested_ips_and_skips_the_gateway():
    c = conf([{"subnet": "10.23.0.0/29", "gateway": "10.23.0.6"}])
    store = FakeStore()
    assert ipam.free_count(c, store=store) == 5
    alloc(c, store, requested=["10.23.0.3"])
    assert ipam.free_count(c, store=store) == 4
    ipam.release(c, "c1", "eth0", store=store)
    assert ipam.free_count(c, store=store) == 5


@pytest.mark.parametrize(
    "cid, ifname",
    [
        ("../x", "eth0"),
        ("a/b", "eth0"),
        ("", "eth0"),
        ("a" * 256, "eth0"),
        ("a\nb", "eth0"),
        ("c1", ""),
        ("c1", "a/b"),
        ("c1", ".."),
        ("c1", "."),
        ("c1", "x" * 16),
        ("c1", "eth 0"),
        ("c1", "eth0:1"),
        ("c1", "eth0\n"),
    ],
)
def test_owner_that_could_escape_or_corrupt_a_record_is_code_4(cid, ifname):
    c = conf([{"subnet": "10.24.0.0/24"}])
    store = FakeStore()
    with pytest.raises(CNIError) as e:
        alloc(c, store, cid=cid, ifname=ifname)
    assert e.value.code == errors.INVALID_ENV
    assert store.allocations() == []


def test_longest_valid_owner_is_accepted():
    c = conf([{"subnet": "10.25.0.0/24"}])
    assert len(alloc(c, FakeStore(), cid="a" * 255, ifname="x" * 15)) == 1
