"""Config and environment validation: every bad input is a CNI error with the spec's code."""

import pytest

from plugin import errors
from plugin.__main__ import run
from plugin.config import check_container_id, check_ifname, parse_cni_args, parse_env, parse_netconf
from plugin.errors import CNIError


def conf(**kw):
    base = {"cniVersion": "1.0.0", "name": "net1", "type": "lumen", "ipam": {"type": "lumen"}}
    base.update(kw)
    return base


def env(**kw):
    base = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def code_of(fn, *args):
    with pytest.raises(CNIError) as e:
        fn(*args)
    return e.value.code


def test_defaults_follow_the_reference_bridge_keys():
    c = parse_netconf(conf())
    assert (c.bridge, c.mtu, c.is_gateway, c.hairpin_mode) == ("lumen0", None, True, False)
    assert c.state_dir == "/run/lumen"
    assert c.bpf_pin_dir == "/sys/fs/bpf/lumen"


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_supported_versions_parse(version):
    assert parse_netconf(conf(cniVersion=version)).cni_version == version


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "2.0.0", "banana"])
def test_unsupported_version_is_code_1(version):
    assert code_of(parse_netconf, conf(cniVersion=version)) == errors.INCOMPATIBLE_VERSION


@pytest.mark.parametrize(
    "bad",
    [
        {"cniVersion": None},
        {"name": ""},
        {"name": "../etc"},
        {"bridge": "a-bridge-name-that-is-too-long"},
        {"bridge": "br/0"},
        {"mtu": 20},
        {"mtu": True},
        {"mtu": "1500"},
        {"isGateway": "yes"},
        {"ipam": {}},
        {"ipam": {"type": "../../bin/sh"}},
        {"stateDir": 5},
    ],
)
def test_invalid_config_is_code_7(bad):
    c = conf(**bad)
    c = {k: v for k, v in c.items() if v is not None}
    assert code_of(parse_netconf, c) == errors.INVALID_CONFIG


@pytest.mark.parametrize("cid", ["", "../../etc/passwd", "a/b", ".hidden", "x" * 256, "id with space"])
def test_container_id_cannot_escape_state_dirs(cid):
    assert code_of(check_container_id, cid) == errors.INVALID_ENV


@pytest.mark.parametrize("ifname", ["", ".", "..", "a/b", "eth:0", "x" * 16, "e th0"])
def test_bad_ifname_is_code_4(ifname):
    assert code_of(check_ifname, ifname) == errors.INVALID_ENV


def test_env_requirements_per_verb():
    assert parse_env(env()).container_id == "abc123"
    assert code_of(parse_env, env(CNI_COMMAND="BOGUS")) == errors.INVALID_ENV
    assert code_of(parse_env, env(CNI_NETNS=None)) == errors.INVALID_ENV
    assert code_of(parse_env, env(CNI_PATH=None)) == errors.INVALID_ENV
    # DEL tolerates an empty netns (containerd sends none); GC and STATUS need no container.
    assert parse_env(env(CNI_COMMAND="DEL", CNI_NETNS="")).netns == ""
    assert parse_env({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}).command == "GC"
    assert parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"


def test_cni_args():
    args = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web-0;IP=10.0.0.5;MAC=aa:bb:cc:dd:ee:ff")
    assert args["K8S_POD_NAME"] == "web-0"
    assert args["MAC"] == "aa:bb:cc:dd:ee:ff"
    assert code_of(parse_cni_args, "novalue") == errors.INVALID_ENV


def test_run_reports_decode_errors_as_code_6_json():
    code, out = run(env(), b"{not json")
    assert code == 1
    assert out["code"] == errors.DECODE_FAILURE
    assert out["msg"]
    code, out = run(env(), b"[1, 2]")
    assert (code, out["code"]) == (1, errors.DECODE_FAILURE)


def test_run_error_json_uses_the_config_version():
    code, out = run(
        env(CNI_NETNS="/nonexistent/netns"), b'{"cniVersion":"0.4.0","name":"n","ipam":{"type":"lumen"}}'
    )
    assert code == 1
    assert out["cniVersion"] == "0.4.0"
    assert out["code"] == errors.INVALID_ENV


def test_version_verb():
    code, out = run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')
    assert code == 0
    assert out == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    code, out = run({"CNI_COMMAND": "VERSION"}, b"")
    assert out["cniVersion"] == "1.1.0"
