"""No 500 and no traceback: arbitrary strings in every API query parameter and every CLI filter or agent
flag give a 2xx, or a 4xx / usage error that says why (hypothesis). And the inputs issue 11 named."""

from __future__ import annotations

import io
import json
import string
from contextlib import redirect_stderr, redirect_stdout
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import cli, filters, ui
from exporter.api import create_app
from exporter.flows import FlowStore
from tests.unit.exporter_fixtures import View, make_flow
from tests.unit.test_policy_explain import ENGINE

CRITERIA = list(filters.CRITERIA)
FLOW_PARAMS = [
    *CRITERIA,
    *(filters.DENY_PREFIX + c for c in CRITERIA),
    "since",
    "until",
    "not_since",
    "filter",
    "limit",
    "cursor",
    "last",
]
# what a person types, and what a fuzzer does: digits, signs, exponents, slashes, unicode, controls
VALUES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.digits + "+-.eE", max_size=12),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "1e308", "-1", "²", "0x10", "9" * 40, "", " ", ","]),
    st.builds(
        lambda d: json.dumps(d),
        st.recursive(
            st.text(max_size=5), lambda c: st.lists(c) | st.dictionaries(st.text(max_size=5), c), max_leaves=6
        ),
    ),  # noqa: E501
)


@pytest.fixture(scope="module")
def client() -> TestClient:
    view = View(FlowStore(100))
    for port in (80, 53, 443):
        view.store.add(make_flow(sport=port, dport=port))
    policy = SimpleNamespace(engine=ENGINE, status_dict=lambda: {})
    return TestClient(create_app(view, ui=ui.hook(), policy=lambda: policy))


def answered(resp) -> None:  # noqa: ANN001
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        detail = resp.json()["detail"]
        assert detail, "a refusal says why"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FLOW_PARAMS), value=VALUES, path=st.sampled_from(["/api/flows", "/api/map"]))
def test_any_flow_query_parameter_is_answered_or_refused_with_a_reason(client, name, value, path):
    answered(client.get(path, params={name: value}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["src", "dst", "protocol", "port"]), value=VALUES)
def test_any_policy_explain_parameter_is_answered_or_refused_with_a_reason(client, name, value):
    params = {"src": "shop/frontend", "dst": "shop/backend", "protocol": "TCP", "port": "80", name: value}
    answered(client.get("/api/policy/explain", params=params))


@pytest.mark.parametrize(
    "query",
    [
        "since=inf",
        "since=-inf",
        "since=1e400",
        "until=1e308",
        "not_since=5m",
        "since=nan",
        "limit=%C2%B2",
        "cursor=zzz",
        "since=200&until=100",
    ],  # fmt: skip
)
@pytest.mark.parametrize("path", ["/api/flows", "/api/map", "/api/flows/stream"])
def test_the_inputs_that_answered_500_are_400_with_the_reason(client, path, query):
    if path == "/api/flows/stream":
        query = query.replace("limit", "last")
    if path == "/api/map" and query.startswith(("limit", "cursor")):
        return  # the map takes every stored flow: it reads no paging parameter
    resp = client.get(f"{path}?{query}")
    assert resp.status_code == 400 and resp.json()["detail"], (path, query, resp.text)


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


OBSERVE_FLAGS = [
    *(c.replace("_", "-") for c in CRITERIA),
    *("not-" + c.replace("_", "-") for c in CRITERIA),
    "since",
    "until",
    "filter",
    "last",
    "server",
    "token",
]


@settings(max_examples=400, deadline=None)
@given(flag=st.sampled_from(OBSERVE_FLAGS), value=VALUES)
def test_any_observe_flag_is_a_request_or_a_usage_error(flag, value):
    server = "http://127.0.0.1:9"  # nothing listens: a good request ends in "cannot reach" (1)
    code, err = run_cli("observe", f"--server={server}", f"--{flag}={value}")
    assert code in (1, 2), err
    assert "Traceback" not in err and err.strip(), "every failure says why"


AGENT_FLAGS = ["port", "flow-store-size", "flow-table-size", "pod-slots", "ringbuf-pages", "report-interval",
               "idle-timeout", "node", "state-dir", "pin-dir", "host", "token-file", "vxlan-vni",
               "vxlan-port", "vxlan-device", "non-masquerade", "routing-mode", "aggregation",
               "policy-dir"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(flag=st.sampled_from(AGENT_FLAGS), value=VALUES)
def test_any_agent_flag_is_checked_before_anything_is_touched(flag, value):
    # --print-bpf stops right after the checks: nothing is locked, compiled or pinned either way
    code, err = run_cli("agent", "--print-bpf", "--pin-dir=/sys/fs/bpf/rs_never", f"--{flag}={value}")
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code:
        assert err.strip(), "a refusal says why"


@pytest.mark.parametrize("value", ["0", "3", "-4", "1048576"])
def test_ringbuf_pages_must_be_a_power_of_two(value):
    code, err = run_cli("agent", "--print-bpf", f"--ringbuf-pages={value}")
    assert code == 2 and "--ringbuf-pages" in err and "power of two" in err


@pytest.mark.parametrize("args", [["--since", "inf"], ["--until=1e308"], ["--since", "nan"], ["--port=²"]])
def test_observe_refuses_bad_times_and_values_as_usage_errors(args):
    code, err = run_cli("observe", "--server=http://127.0.0.1:9", *args)
    assert code == 2 and "lumen observe:" in err and "Traceback" not in err


MANIFEST_TEXT = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda field, value: (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\n"
            f"spec:\n  podSelector: {{}}\n  {field}: {value}\n"
        ),
        st.sampled_from(["ingress", "egress", "policyTypes", "podSelector"]),
        st.text(alphabet=string.printable, max_size=40),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=MANIFEST_TEXT)
def test_any_manifest_posted_to_whatif_is_answered_or_refused_with_a_reason(client, body):
    answered(client.post("/api/policy/whatif", content=body.encode("utf-8", "surrogatepass")))
