"""Hubble-like filters: each criterion, allow-list and deny-list, errors, and CLI flags == query params."""

from __future__ import annotations

import pytest

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


def test_since_and_until():
    old = make_flow(time_ns=NOW_NS - 3600 * 10**9)
    q = filters.parse({"since": [str(NOW_NS / 1e9 - 60)]})
    assert q(make_flow()) and not q(old)
    q = filters.parse({"until": ["2027-01-15T07:30:00Z"]})
    assert q(old) and not q(make_flow())  # NOW_NS is 2027-01-15T08:00:00Z
    assert filters.parse_time("5m", now=1000.0) == 700 * 10**9
    assert filters.parse_time("2027-01-15T09:00:00+01:00") == NOW_NS


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"port": ["http"]}, "port 'http'"),
        ({"port": ["70000"]}, "port '70000'"),
        ({"ip": ["10.0.0.300"]}, "ip '10.0.0.300'"),
        ({"verdict": ["maybe"]}, "verdict 'maybe': expected one of AUDIT, DROPPED, FORWARDED"),
        ({"protocol": ["quic"]}, "protocol 'quic'"),
        ({"since": ["yesterday"]}, "time 'yesterday'"),
        ({"since": ["2027-01-01T00:00:00"]}, "give a timezone"),
        ({"pod": ["shop/"]}, "pod 'shop/'"),
        ({"podd": ["x"]}, "unknown filter 'podd'"),
        ({"not_bogus": ["x"]}, "unknown filter 'bogus'"),
        ({"pod": [""]}, "pod: empty value"),
    ],
)
def test_bad_values_name_the_criterion(params, message):
    with pytest.raises(filters.FilterError, match=message.replace("(", r"\(")):
        filters.parse(params)


def test_cli_flags_and_query_params_build_the_same_query():
    args = cli.build_parser().parse_args(
        ["observe", "--from-pod", "shop/web", "--port", "53", "--port", "5432", "--not-verdict", "dropped"]
    )
    params = cli.filter_params(args)
    assert params == {"from_pod": ["shop/web"], "port": ["53", "5432"], "not_verdict": ["dropped"]}
    from_cli = filters.parse(params)
    from_api = filters.parse({"from_pod": ["shop/web"], "port": ["53,5432"], "not_verdict": ["dropped"]})
    assert [from_cli(f) for f in ALL] == [from_api(f) for f in ALL] == [True, False, False, False]
