"""`lumen observe`'s flags, with hubble observe's habits: `--not` negates the filter flag after it, Hubble's
flag spellings, the selection flags Hubble refuses to combine, and `--server host:port`. Property-based:
any mix of filter flags, negated or not, in any order, turns into exactly the allow and deny criteria it
spells."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import observe_args

CRITERIA = [
    ("pod", "pod"),
    ("from_pod", "source pod"),
    ("to_pod", "destination pod"),
    ("namespace", "namespace"),
    ("to_namespace", "destination namespace"),
    ("from_label", "source label"),
    ("to_label", "destination label"),
    ("label", "label"),
    ("node", "node"),
    ("direction", "direction"),
    ("tcp_flags", "tcp flags"),
    ("ip_version", "ip version"),
    ("verdict", "verdict"),
    ("protocol", "protocol"),
    ("type", "type"),
    ("port", "port"),
]

#: criterion -> every flag spelling that means it
SPELLINGS = {
    name: [observe_args._flag(name), *observe_args.HUBBLE_FLAGS.get(name, ())] for name, _ in CRITERIA
}
VALUES = {
    "pod": ["shop/", "shop/web", "web-"],
    "from_pod": ["ops/monitor"],
    "to_pod": ["shop/front"],
    "namespace": ["shop", "kube-system"],
    "from_label": ["app=web", "tier"],
    "to_label": ["app=db"],
    "label": ["app"],
    "node": ["n1", "kind-worker"],
    "direction": ["egress", "ingress"],
    "tcp_flags": ["SYN", "ack"],
    "ip_version": ["4", "v6"],
    "verdict": ["dropped", "FORWARDED"],
    "protocol": ["tcp", "icmpv6"],
    "type": ["new", "END"],
    "port": ["80", "5353"],
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lumen observe")
    observe_args.add_arguments(p, CRITERIA)
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, observe_args.Selection]:
    p = parser()
    args = p.parse_args(argv)
    return args, observe_args.check(p, args)


entry = st.tuples(
    st.booleans(),  # negated
    st.sampled_from(["--not", "--not-"]),  # how: `--not --flag v` or `--not-flag v`
    st.sampled_from(sorted(VALUES)),
    st.integers(0, 10),  # picks the spelling and the value
)


@settings(deadline=None)  # a shared, loaded machine: time is no property here
@given(st.lists(entry, max_size=12))
def test_any_mix_of_filter_flags_spells_exactly_its_allow_and_deny_criteria(picks) -> None:
    argv: list[str] = []
    expected = []
    for negated, how, name, n in picks:
        value = VALUES[name][n % len(VALUES[name])]
        if negated and how == "--not-":
            argv += [f"--not-{observe_args._flag(name)[2:]}", value]
        else:
            spelling = SPELLINGS[name][n % len(SPELLINGS[name])]
            argv += (["--not"] if negated else []) + [spelling, value]
        expected.append((negated, name, value))
    args, _ = parse(argv)
    assert observe_args.entries(args) == expected
    params = observe_args.filter_params(expected)
    for negated, name, value in expected:
        assert value in params[("not_" if negated else "") + name]
    assert sum(map(len, params.values())) == len(expected)


@settings(deadline=None)  # a shared, loaded machine: time is no property here
@given(st.lists(entry, max_size=6))
def test_a_trailing_not_is_a_usage_error(picks) -> None:
    argv = [arg for _, _, name, _ in picks for arg in (observe_args._flag(name), VALUES[name][0])]
    with pytest.raises(SystemExit) as exc:
        parse([*argv, "--not"])
    assert exc.value.code == 2


def test_not_negates_only_the_next_flag(capsys) -> None:
    args, _ = parse(
        ["--from-pod", "shop/web", "--not", "--to-namespace", "kube-system", "--verdict", "dropped"]
    )
    assert observe_args.filter_params(observe_args.entries(args)) == {
        "from_pod": ["shop/web"],
        "not_to_namespace": ["kube-system"],
        "verdict": ["dropped"],
    }
    with pytest.raises(SystemExit):
        parse(["--not", "--not", "--pod", "a"])
    assert "--not --not" in capsys.readouterr().err


def test_hubble_spellings() -> None:
    argv = [
        "-n",
        "shop",
        "-l",
        "app=web",
        "-t",
        "drop",
        "--node-name",
        "n2",
        "--traffic-direction",
        "ingress",
        "-4",
        "--not",
        "-6",
        "--tcp-flags",
        "SYN",
    ]
    args, _ = parse(argv)
    assert observe_args.filter_params(observe_args.entries(args)) == {
        "namespace": ["shop"],
        "label": ["app=web"],
        "type": ["drop"],
        "node": ["n2"],
        "direction": ["ingress"],
        "ip_version": ["4"],
        "not_ip_version": ["6"],
        "tcp_flags": ["SYN"],
    }
    args, _ = parse(["--protocol", "ICMPv4"])  # Hubble's name of ICMP
    assert observe_args.filter_params(observe_args.entries(args)) == {"protocol": ["ICMP"]}


@pytest.mark.parametrize(
    ("argv", "limit", "first", "follow"),
    [
        ([], 20, None, False),
        (["--last", "5"], 5, None, False),
        (["--all"], 0, None, False),
        (["--first", "3"], 0, 3, False),
        (["-f"], 0, None, True),
        (["-f", "--last", "10"], 10, None, True),
    ],
)
def test_selection(argv: list[str], limit: int, first: int | None, follow: bool) -> None:
    _, sel = parse(argv)
    assert (sel.limit, sel.first, sel.follow) == (limit, first, follow)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--first", "1", "--last", "1"], "--first or --last"),
        (["--first", "1", "--all"], "--first or --all"),
        (["--first", "1", "-f"], "--follow"),
        (["--last", "1", "--all"], "--last or --all"),
        (["--last", "many"], "expected a number"),
        (["--last=-1"], "expected a number"),
        (["--time-format", "iso"], "expected one of StampMilli"),
        (["-o", "yaml"], "invalid choice"),
    ],
)
def test_refused_combinations_are_usage_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_output_flags() -> None:
    args, _ = parse(["-o", "jsonpb", "--time-format", "rfc3339", "--print-node-name"])
    assert (args.output, args.time_format, args.print_node_name) == ("jsonpb", "RFC3339", True)
    args, _ = parse([])
    assert (args.output, args.time_format, args.print_node_name) == ("compact", "StampMilli", False)


@pytest.mark.parametrize(
    ("given_", "url"),
    [
        ("127.0.0.1:9465", "http://127.0.0.1:9465"),
        ("localhost:4245", "http://localhost:4245"),
        ("relay.example", "http://relay.example:9465"),
        ("[::1]:9465", "http://[::1]:9465"),
        ("http://10.0.0.1:80/", "http://10.0.0.1:80"),
        ("https://lumen.example", "https://lumen.example"),
    ],
)
def test_server_without_a_scheme(given_: str, url: str) -> None:
    assert observe_args.server_url(given_) == url


@pytest.mark.parametrize(
    ("given_", "message"),
    [("ftp://x:21", "expected host:port"), ("host:http", "port is not a number"), (":9465", "no host")],
)
def test_bad_servers_say_why(given_: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        observe_args.server_url(given_)


@settings(deadline=None)  # a shared, loaded machine: time is no property here
@given(st.text(max_size=40))
def test_any_server_text_is_a_url_or_a_value_error(text: str) -> None:
    try:
        url = observe_args.server_url(text)
    except ValueError:
        return
    assert url.startswith(("http://", "https://"))


@settings(deadline=None)
@given(st.lists(entry, max_size=10))
def test_the_flags_become_one_allow_group_and_one_deny_group_the_api_accepts(picks) -> None:
    """Hubble's semantics on the wire: plain flags form the allow group, negated ones the deny group (a
    flow is left out when it matches every negated criterion), checked by the API's own parser."""
    from exporter import filters

    p = argparse.ArgumentParser(prog="lumen observe")
    observe_args.add_arguments(p, [(n, c.help) for n, c in filters.CRITERIA.items()])
    argv = []
    for negated, _, name, n in picks:
        argv += (["--not"] if negated else []) + [
            observe_args._flag(name),
            VALUES[name][n % len(VALUES[name])],
        ]
    args = p.parse_args(argv)
    observe_args.check(p, args)
    query = filters.parse(observe_args.filter_params(observe_args.entries(args)))
    allowed = {name for negated, _, name, _ in picks if not negated}
    denied = {name for negated, _, name, _ in picks if negated}
    assert [set(g.criteria) for g in query.allow] == ([allowed] if allowed else [])
    assert [set(g.criteria) for g in query.deny] == ([denied] if denied else [])
    # and the query survives the trip to a relay
    assert filters.FlowQuery.from_json(query.to_json()) == query
