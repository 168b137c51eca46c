"""Every input reaches the runtime as the spec's error JSON with the right code, never code 100 or a
traceback: stdin, CNI_* variables, CNI_ARGS, prevResult, runtimeConfig, huge and deep documents."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin import errors
from plugin.__main__ import run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INPUT_CODES = {
    errors.INCOMPATIBLE_VERSION,
    errors.UNKNOWN_CONTAINER,  # CHECK of an attachment that was never made
    errors.INVALID_ENV,
    errors.DECODE_FAILURE,
    errors.INVALID_CONFIG,
}


@pytest.fixture
def base(tmp_path):
    """A valid config whose files all live under tmp_path, and an env whose netns does not exist:
    whatever gets past validation stops at the netns check, before anything is created."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "pl-net",
        "type": "lumen",
        "bridge": "plbr0",
        "ipam": {
            "type": "lumen",
            "ranges": [[{"subnet": "10.99.0.0/24"}]],
            "dataDir": str(tmp_path / "ipam"),
        },
        "stateDir": str(tmp_path / "state"),
        "logFile": str(tmp_path / "cni.log"),
        "bpfPinDir": str(tmp_path / "nobpf"),
    }
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": str(tmp_path / "no-such-netns"),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    return conf, env


def code(environ: dict[str, str], stdin: bytes) -> int:
    rc, out = run(environ, stdin)
    assert rc == 1 and out is not None and out["msg"], out
    return int(out["code"])


def test_the_base_case_stops_at_the_missing_netns(base):
    conf, env = base
    assert code(env, json.dumps(conf).encode()) == errors.INVALID_ENV


# -- stdin -------------------------------------------------------------------------------------------

COLD = "import sys; sys.path.insert(0, sys.argv[1]); from plugin.__main__ import main; sys.exit(main())"


@pytest.mark.parametrize(
    "stdin",
    [
        b"{not json",
        b'{"a": 1',
        b'"\\uzzzz"',
        b"\xff\xfe{}",
        b"[" * 100_000,
        b"NaN",
        b'{"mtu": 1e400}',
        b"1" * 5000,
    ],
)
def test_the_cold_interpreter_reports_undecodable_stdin_as_code_6(stdin, base):
    """As the installed plugin runs: system python, -I -S, json never imported."""
    _, env = base
    proc = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", COLD, REPO],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=60,
    )
    out = json.loads(proc.stdout)
    assert (proc.returncode, out["code"]) == (1, errors.DECODE_FAILURE), (out, proc.stderr)
    assert b"Traceback" not in proc.stderr


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_arbitrary_stdin_is_an_input_error(base, stdin):
    _, env = base
    assert code(env, stdin) in INPUT_CODES


def json_values(max_leaves: int = 8):
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=max_leaves,
    )


FIELDS = [
    "cniVersion", "name", "type", "bridge", "mtu", "isGateway", "hairpinMode", "ipam", "dns", "stateDir",
    "logFile", "bpfPinDir", "prevResult", "runtimeConfig", "args",
]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(FIELDS), json_values(), st.sampled_from(["ADD", "CHECK"]))
def test_any_value_of_any_field_is_an_input_error(base, field, value, command):
    conf, env = base
    conf = dict(conf, **{field: value})
    if field in ("stateDir", "logFile", "bpfPinDir") and isinstance(value, str):
        return  # a valid path elsewhere: not this test's business (it would be written to)
    stdin = json.dumps(conf).encode()
    assert code(dict(env, CNI_COMMAND=command), stdin) in INPUT_CODES


RESULT_SHAPES = st.fixed_dictionaries(
    {"cniVersion": st.sampled_from(["1.0.0", "0.4.0"])},
    optional={
        "interfaces": json_values() | st.lists(st.fixed_dictionaries({"name": st.text(max_size=5)})),
        "ips": json_values()
        | st.lists(
            st.fixed_dictionaries(
                {"address": st.sampled_from(["10.0.0.2/24", "10.0.0.2", "x", "fd00::1/64"])},
                optional={"interface": json_values(1), "gateway": json_values(1)},
            )
        ),
        "routes": json_values()
        | st.lists(st.fixed_dictionaries({"dst": json_values(1)}, optional={"gw": json_values(1)})),
        "dns": json_values(),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(RESULT_SHAPES, st.sampled_from(["ADD", "CHECK"]))
def test_any_prev_result_is_accepted_or_an_input_error(base, prev, command):
    conf, env = base
    stdin = json.dumps(dict(conf, prevResult=prev)).encode()
    assert code(dict(env, CNI_COMMAND=command), stdin) in INPUT_CODES


@pytest.mark.parametrize(
    "prev",
    [
        {"cniVersion": "1.0.0", "ips": "10.0.0.2/24"},
        {"cniVersion": "1.0.0", "ips": [{"address": 5}]},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": 3}]},
        {"cniVersion": "1.0.0", "routes": [{"dst": "nowhere"}]},
        {"cniVersion": "1.0.0", "dns": []},
    ],
)
def test_a_prev_result_the_plugin_cannot_read_is_code_6(base, prev):
    conf, env = base
    assert code(env, json.dumps(dict(conf, prevResult=prev)).encode()) == errors.DECODE_FAILURE


# -- environment and CNI_ARGS ------------------------------------------------------------------------

ENV_KEYS = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"]
# What os.environ holds for bytes that are not UTF-8: surrogate escapes.
ENV_TEXT = st.text(max_size=40) | st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(ENV_KEYS), ENV_TEXT, st.sampled_from(["ADD", "CHECK"]))
def test_any_environment_value_is_an_input_error(base, key, value, command):
    conf, env = base
    env = dict(env, CNI_COMMAND=command)
    env[key] = value.replace("\0", "")  # an environment cannot hold NUL
    if key == "CNI_NETNS" and os.path.exists(env[key]):
        return  # a real path: ADD would go on to wire it
    assert code(env, json.dumps(conf).encode()) in INPUT_CODES


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("CNI_IFNAME", "ééééééééé"),  # 9 characters, 18 bytes: longer than IFNAMSIZ
        ("CNI_IFNAME", "eth\udcff"),  # not UTF-8: netlink cannot carry it
        ("CNI_ARGS", "MAC=zz:zz:zz:zz:zz:zz"),
        ("CNI_ARGS", "MAC=01:00:5e:00:00:01"),  # multicast: the kernel refuses it on a veth
        ("CNI_ARGS", "MAC=00:00:00:00:00:00"),
        ("CNI_ARGS", "IP=10.0.0.300"),
        ("CNI_ARGS", "IP=10.0.0.5,bogus"),
        ("CNI_ARGS", "K8S_POD_NAME"),
    ],
)
def test_bad_environment_is_code_4(base, key, value):
    conf, env = base
    assert code(dict(env, **{key: value}), json.dumps(conf).encode()) == errors.INVALID_ENV


@pytest.mark.parametrize(
    "change",
    [
        {"runtimeConfig": {"mac": "01:02:03:04:05:06"}},
        {"runtimeConfig": {"mac": 7}},
        {"runtimeConfig": {"ips": "10.0.0.5"}},
        {"runtimeConfig": {"ips": [5]}},
        {"args": {"cni": {"ips": ["x"]}}},
        {"args": {"cni": {"ips": 3}}},
        {"bridge": "br\udcff"},
        {"bridge": "ééééééééé"},
        {"stateDir": "/tmp/a\0b"},
        {"logFile": "/tmp/\ud800"},
        {"name": "n" * 256},
        {"ipam": {"type": "lumen", "dns": "8.8.8.8"}},
        {"ipam": {"type": "lumen", "ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": "/tmp/a\0"}},
    ],
)
def test_bad_config_is_code_7(base, change):
    conf, env = base
    stdin = json.dumps(dict(conf, **change)).encode()
    got = code(env, stdin)
    if "ipam" in change and "dataDir" in change["ipam"]:
        # the ipam section is parsed by ADD after the netns check; CHECK-free path: call it directly
        from plugin.config import parse_netconf
        from plugin.ipam import parse_ipam_config

        c = parse_netconf(json.loads(stdin))
        with pytest.raises(errors.CNIError) as e:
            parse_ipam_config(c.name, c.ipam)
        assert e.value.code == errors.INVALID_CONFIG
        return
    assert got == errors.INVALID_CONFIG


def test_a_pod_name_that_is_not_utf8_is_logged_not_fatal(base, tmp_path):
    from plugin import log

    log.configure(str(tmp_path / "x.log"), "ADD", "abc")
    log.info("pod=\udcff")
    assert (tmp_path / "x.log").read_bytes().endswith(b"pod=\\udcff\n")


def test_huge_config_is_handled(base):
    conf, env = base
    conf = dict(conf, padding="x" * 20_000_000, many=[{"a": [1, 2, 3]}] * 100_000)
    assert code(env, json.dumps(conf).encode()) == errors.INVALID_ENV


@pytest.mark.parametrize("netns", ["/etc/hostname", "/", "/proc/self/ns/uts"])
def test_a_netns_path_that_is_not_a_network_namespace_is_code_4(base, netns):
    """Before, ADD went on to allocate and build, then failed in setns(2) with code 5."""
    conf, env = base
    assert code(dict(env, CNI_NETNS=netns), json.dumps(conf).encode()) == errors.INVALID_ENV


def test_is_netns_knows_a_network_namespace():
    from plugin.netlink import is_netns

    assert is_netns("/proc/self/ns/net")
    assert not is_netns("/proc/self/ns/uts") and not is_netns("/nonexistent") and not is_netns("/")


def test_the_longest_container_id_gets_an_endpoint_record(tmp_path):
    """A 255-character container ID (valid) made the record's file name too long: ADD failed with 5."""
    from plugin import endpoint

    cid = "a" * 255
    endpoint.write(
        str(tmp_path), {"containerId": cid, "ifname": "x" * 15, "hostVeth": "lmnx", "state": "creating"}
    )
    assert endpoint.read(str(tmp_path), cid, "x" * 15)["containerId"] == cid
    assert [r["containerId"] for r in endpoint.all_records(str(tmp_path))] == [cid]
    endpoint.remove(str(tmp_path), cid, "x" * 15)
    assert endpoint.all_records(str(tmp_path)) == []


@pytest.mark.parametrize(
    "text",
    [
        b"[]",
        b'{"containerId": "abc123", "ifname": "eth0"}',
        b'{"containerId": "abc123", "ifname": "eth0", "hostVeth": "lmnx", "ips": "10.0.0.2"}',
        b'{"containerId": "abc123", "ifname": "eth0", "hostVeth": "lmnx", "pid": "12"}',
        b"{torn",
    ],
)
def test_a_hand_edited_endpoint_record_is_unknown_not_a_traceback(base, tmp_path, text):
    """DEL and GC read the records: one of the wrong shape is skipped like a missing one."""
    from plugin import endpoint

    conf, env = base
    path = endpoint.record_path(conf["stateDir"], "abc123", "eth0")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(text)
    assert endpoint.read(conf["stateDir"], "abc123", "eth0") is None
    assert endpoint.all_records(conf["stateDir"]) == []
    # DEL of that attachment: nothing of it exists (no host veth by that name, no IPAM record).
    rc, out = run(dict(env, CNI_COMMAND="DEL"), json.dumps(conf).encode())
    assert (rc, out) == (0, None)
