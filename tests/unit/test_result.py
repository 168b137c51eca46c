"""Results are emitted in the version the configuration asks for, and chaining keeps prevResult."""

import pytest

from plugin.errors import CNIError
from plugin.result import convert, merge, to_current

CURRENT = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "lumen0", "mac": "aa:aa:aa:aa:aa:01"},
        {"name": "lmn0", "mac": "aa:aa:aa:aa:aa:02"},
        {"name": "eth0", "mac": "aa:aa:aa:aa:aa:03", "sandbox": "/run/netns/p", "mtu": 1500},
    ],
    "ips": [
        {"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 2},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1", "mtu": 1400}],
    "dns": {},
}


def test_1_1_keeps_new_fields():
    out = convert(CURRENT, "1.1.0")
    assert out["interfaces"][2]["mtu"] == 1500
    assert out["routes"][0]["mtu"] == 1400


def test_1_0_drops_1_1_fields_and_has_no_ip_version():
    out = convert(CURRENT, "1.0.0")
    assert out["cniVersion"] == "1.0.0"
    assert "mtu" not in out["interfaces"][2]
    assert "mtu" not in out["routes"][0]
    assert all("version" not in ip for ip in out["ips"])


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_0_x_adds_ip_version(version):
    out = convert(CURRENT, version)
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["interfaces"][2]["sandbox"] == "/run/netns/p"


def test_convert_does_not_mutate_its_input():
    convert(CURRENT, "0.4.0")
    assert "version" not in CURRENT["ips"][0]


def test_to_current_accepts_old_results_and_rejects_0_2():
    old = convert(CURRENT, "0.4.0")
    assert to_current(old)["ips"][0] == {"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 2}
    with pytest.raises(CNIError):
        to_current({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}})


def test_merge_appends_with_shifted_interface_indexes():
    prev = {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "macvlan0", "sandbox": "/run/netns/p"}],
        "ips": [{"version": "4", "address": "192.168.9.2/24", "interface": 0}],
    }
    merged = merge(prev, convert(CURRENT, "1.1.0"))
    assert [i["name"] for i in merged["interfaces"]] == ["macvlan0", "lumen0", "lmn0", "eth0"]
    assert [ip["interface"] for ip in merged["ips"]] == [0, 3, 3]
    assert merge(None, CURRENT) is CURRENT
