"""Filters as data: each criterion, allow and deny groups, JSON form, errors, time ranges, and CLI flags ==
query params == JSON."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import cli, filters
from tests.unit.exporter_fixtures import NOW_NS, make_flow

WEB = make_flow(src_pod=("shop", "web"), dst_pod=("shop", "db"), dport=5432, labels={"app": "shop"})
DNS = make_flow(
    src="10.22.0.7",
    dst="10.96.0.10",
    sport=5353,
    dport=53,
    proto="UDP",
    src_pod=("kube-system", "coredns"),
    dst_pod=None,
)
DROP = make_flow(
    src="192.168.1.9", dst="10.22.0.5", src_pod=None, verdict="DROPPED", direction="ingress", type="DROP"
)
V6 = make_flow(src="fd00:22::5", dst="fd00:22::6", dport=8080)
ALL = [WEB, DNS, DROP, V6]


def kept(**params: list[str]) -> list:
    q = filters.parse(params)
    return [f for f in ALL if q(f)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ALL),
        ({"pod": ["shop/db"]}, [WEB]),
        ({"pod": ["coredns"]}, [DNS]),
        ({"from_pod": ["shop/db"]}, []),
        ({"to_pod": ["shop/db"]}, [WEB]),
        ({"namespace": ["kube-system", "shop"]}, [WEB, DNS]),
        ({"from_namespace": ["default"]}, [V6]),
        ({"ip": ["10.96.0.0/12"]}, [DNS]),
        ({"from_ip": ["192.168.1.9"]}, [DROP]),
        ({"ip": ["fd00:22::/64"]}, [V6]),
        ({"port": ["53,5432"]}, [WEB, DNS]),
        ({"to_port": ["8080"]}, [V6]),
        ({"protocol": ["udp"]}, [DNS]),
        ({"protocol": ["TCP"], "verdict": ["dropped"]}, [DROP]),
        ({"direction": ["ingress"]}, [DROP]),
        ({"type": ["drop"]}, [DROP]),
        ({"label": ["app=shop"]}, [WEB]),
        ({"from_label": ["app"]}, [WEB]),
        ({"label": ["app=other"]}, []),
    ],
)
def test_allow_list(params, expected):
    assert kept(**params) == expected


def test_deny_list_uses_the_same_criteria():
    assert kept(not_namespace=["kube-system"]) == [WEB, DROP, V6]
    assert kept(protocol=["tcp"], not_verdict=["dropped"]) == [WEB, V6]
    # inside the deny filter criteria are ANDed, like the allow filter
    assert kept(not_protocol=["tcp"], not_verdict=["dropped"]) == [WEB, DNS, V6]


def test_since_and_until_are_a_time_range_not_a_criterion():
    since, until = filters.parse_range({"since": [str(NOW_NS / 1e9 - 60)]})
    assert (since, until) == (NOW_NS - 60 * 10**9, None)
    assert filters.parse_range({"until": ["2027-01-15T07:30:00Z"]}) == (None, NOW_NS - 1800 * 10**9)
    assert filters.parse_time("5m", now=1000.0) == 700 * 10**9
    assert filters.parse_time("2027-01-15T09:00:00+01:00") == NOW_NS
    # ignored by the filter parser when the caller takes them, refused as a criterion otherwise
    assert not filters.parse({"since": ["5m"]}, ignore=filters.TIME_PARAMS)
    with pytest.raises(filters.FilterError, match="not_since: since and until are a time range"):
        filters.parse({"not_since": ["5m"]})


@pytest.mark.parametrize(
    "value", ["inf", "-inf", "nan", "1e400", "1e308", "-1", "99999999999999h", "10000-01-01T00:00:00Z"]
)
def test_times_that_are_no_point_in_time_are_refused(value):
    with pytest.raises(filters.FilterError, match="time"):
        filters.parse_time(value)


def test_since_after_until_is_refused():
    with pytest.raises(filters.FilterError, match="since is after until"):
        filters.parse_range({"since": ["200"], "until": ["100"]})


def test_pods_match_by_prefix_as_hubble_does():
    q = filters.parse({"pod": ["shop/"]})  # every pod of the namespace
    assert [f for f in ALL if q(f)] == [WEB]
    q = filters.parse({"from_pod": ["core"]})
    assert [f for f in ALL if q(f)] == [DNS]


def test_new_criteria():
    reply = make_flow(src_pod=("shop", "db"), dst_pod=("shop", "web"))
    reply.is_reply = True
    flows = [*ALL, reply]
    assert [f for f in flows if filters.parse({"is_reply": ["true"]})(f)] == [reply]
    assert [f for f in flows if filters.parse({"ip_version": ["ipv6"]})(f)] == [V6]
    assert [f for f in flows if filters.parse({"tcp_flags": ["syn"]})(f)] == flows  # make_flow: SYN ACK
    assert not [f for f in flows if filters.parse({"tcp_flags": ["FIN"]})(f)]
    assert [f for f in flows if filters.parse({"node": ["node-x"]})(f)] == []
    assert filters.parse({"protocol": ["6"]}) == filters.parse({"protocol": ["tcp"]})


def test_groups_are_data_with_a_json_form():
    q = filters.FlowQuery.from_json(
        '{"allow": [{"from_pod": ["shop/web"]}, {"protocol": ["udp"]}], "deny": [{"verdict": ["dropped"]}]}'
    )
    assert [f for f in ALL if q(f)] == [WEB, DNS]  # the two allow groups are ORed
    assert q.allow[1].criteria == {"protocol": ("UDP",)}  # normalised
    assert filters.FlowQuery.from_json(q.to_json()) == q
    assert filters.parse(dict((k, [v]) for k, v in q.to_params())) == q  # several groups: filter=<json>
    one = filters.parse({"from_pod": ["shop/web"], "not_verdict": ["dropped"]})
    assert one.to_params() == [("from_pod", "shop/web"), ("not_verdict", "DROPPED")]
    assert filters.parse({k: [v] for k, v in one.to_params()}) == one
    assert hash(one) == hash(filters.parse({"from_pod": ["shop/web"], "not_verdict": ["DROPPED"]}))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected"),
        ('{"allow": {}}', "allow: expected a list"),
        ('{"allow": [{"pod": "a"}]}', "pod: expected a list of strings"),
        ('{"allow": [{"pod": [1]}]}', "pod: expected a list of strings"),
        ('{"deny": [{"bogus": ["x"]}]}', "unknown filter 'bogus'"),
        ('{"allow": [], "other": []}', "expected"),
    ],
)
def test_bad_json_filters_name_the_problem(doc, message):
    with pytest.raises(filters.FilterError, match=message):
        filters.parse({"filter": [doc]})


def test_json_and_plain_criteria_do_not_mix():
    with pytest.raises(filters.FilterError, match="not both"):
        filters.parse({"filter": ['{"allow": []}'], "pod": ["a"]})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"port": ["http"]}, "port 'http'"),
        ({"port": ["70000"]}, "port '70000'"),
        ({"ip": ["10.0.0.300"]}, "ip '10.0.0.300'"),
        ({"verdict": ["maybe"]}, "verdict 'maybe': expected one of AUDIT, DROPPED, FORWARDED"),
        ({"protocol": ["quic"]}, "protocol 'quic'"),
        ({"pod": ["/web"]}, "pod '/web'"),
        ({"pod": ["a/b/c"]}, "pod 'a/b/c'"),
        ({"port": ["²"]}, "port '²'"),
        ({"podd": ["x"]}, "unknown filter 'podd'"),
        ({"not_bogus": ["x"]}, "unknown filter 'bogus'"),
        ({"pod": [""]}, "pod: empty value"),
    ],
)
def test_bad_values_name_the_criterion(params, message):
    with pytest.raises(filters.FilterError, match=message.replace("(", r"\(")):
        filters.parse(params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": ["yesterday"]}, "time 'yesterday'"),
        ({"since": ["2027-01-01T00:00:00"]}, "give a timezone"),
        ({"until": ["1", "2"]}, "until: give one time"),
    ],
)
def test_bad_times_name_the_problem(params, message):
    with pytest.raises(filters.FilterError, match=message):
        filters.parse_range(params)


def test_cli_flags_and_query_params_build_the_same_query():
    args = cli.build_parser().parse_args(
        ["observe", "--from-pod", "shop/web", "--port", "53", "--port", "5432", "--not-verdict", "dropped"]
    )
    params = cli.filter_params(args)
    assert params == {"from_pod": ["shop/web"], "port": ["53", "5432"], "not_verdict": ["dropped"]}
    from_cli = filters.parse(params)
    from_api = filters.parse({"from_pod": ["shop/web"], "port": ["53,5432"], "not_verdict": ["dropped"]})
    assert [from_cli(f) for f in ALL] == [from_api(f) for f in ALL] == [True, False, False, False]


UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from(sorted(UNIT_S))), min_size=1, max_size=4))
def test_a_duration_is_its_parts_added_as_hubble_writes_them(parts):
    text = "".join(f"{n}{unit}" for n, unit in parts)  # 1h30m, 2m7s, 1d12h, 250ms
    assert filters.parse_duration(text) == pytest.approx(sum(n * UNIT_S[unit] for n, unit in parts))
    assert filters.parse_time(text, now=10**9) == pytest.approx(
        (10**9 - sum(n * UNIT_S[unit] for n, unit in parts)) * 1e9, abs=1e3
    )


@pytest.mark.parametrize("value", ["1h30", "h", "5 m", "5x", "1h-30m", "m5", "1.h", ""])
def test_what_is_no_duration_is_not_one(value):
    assert filters.parse_duration(value) is None


def test_retention_takes_the_same_durations():
    from exporter.history import parse_duration

    assert parse_duration("1d12h") == 36 * 3600
    with pytest.raises(ValueError, match="1d12h"):
        parse_duration("0s")
