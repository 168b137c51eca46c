"""No drift between C and Python (like Cilium's alignchecker): every mirrored struct, enum value, map
name and pin name is compared with what bcc compiled from bpf/."""

from __future__ import annotations

import ctypes as ct
import secrets
from collections.abc import Iterator

import pytest

from bpf import abi
from plugin import pinned, slots

pytestmark = pytest.mark.bpf

bcc = pytest.importorskip("bcc", reason="bcc comes from Debian's python3-bpfcc (make setup)")


def layout(cls: type[ct.Structure]) -> list[tuple[str, int, int]]:
    return [(name, getattr(cls, name).offset, getattr(cls, name).size) for name, *_ in cls._fields_] + [
        ("<sizeof>", 0, ct.sizeof(cls))
    ]


@pytest.fixture(scope="module")
def probe() -> Iterator[bcc.BPF]:
    """A program that puts every shared struct in a map and every enum value in a map's size."""
    lines = ['#include "types.h"']
    for c_name in abi.MIRRORS:
        lines.append(f"BPF_ARRAY(probe_{c_name}, struct {c_name}, 1);")
    for enum_name in abi.C_ENUMS:  # 16 bits per map size keeps every map small
        lines.append(f"BPF_ARRAY(lo_{enum_name}, u8, (({enum_name}) & 0xffff) + 1);")
        lines.append(f"BPF_ARRAY(hi_{enum_name}, u8, ((unsigned)({enum_name}) >> 16) + 1);")
    b = bcc.BPF(text="\n".join(lines), cflags=[f"-I{abi.INCLUDE_DIR}"])
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture(scope="module")
def compiled() -> Iterator[bcc.BPF]:
    pin = f"/sys/fs/bpf/lt_abi_{secrets.token_hex(3)}"
    from bpf.loader import DatapathConfig, unpin_all

    b = bcc.BPF(src_file=str(abi.SOURCE).encode(), cflags=DatapathConfig(pin_dir=pin).cflags())
    try:
        yield b
    finally:
        b.cleanup()
        unpin_all(pin)


@pytest.mark.parametrize("c_name", list(abi.MIRRORS))
def test_struct_layout_matches_the_compiled_c(probe, c_name):
    compiled = probe[f"probe_{c_name}".encode()].Leaf
    assert layout(abi.MIRRORS[c_name]) == layout(compiled)


def test_enum_values_match_the_compiled_c(probe):
    for enum_name, value in abi.C_ENUMS.items():
        lo = probe[f"lo_{enum_name}".encode()].max_entries - 1
        hi = probe[f"hi_{enum_name}".encode()].max_entries - 1
        assert hi << 16 | lo == value, enum_name


def test_map_names_and_types_match(compiled):
    bcc.lib.bpf_table_name.restype = ct.c_char_p
    bcc.lib.bpf_table_name.argtypes = [ct.c_void_p, ct.c_ulonglong]
    bcc.lib.bpf_num_tables.argtypes = [ct.c_void_p]
    names = {
        bcc.lib.bpf_table_name(compiled.module, i).decode()
        for i in range(bcc.lib.bpf_num_tables(compiled.module))
    }
    assert names == set(abi.ALL_MAPS)
    assert set(abi.PINNED_LAYOUTS) == set(abi.PINNED_MAPS)
    for name, (key, leaf, _) in abi.PINNED_LAYOUTS.items():
        table = compiled[name.encode()]
        per_value = getattr(table, "sLeaf", table.Leaf)  # per-CPU maps: Leaf is an array of sLeaf
        if issubclass(key, ct.Structure):
            assert layout(key) == layout(table.Key), name
        else:
            assert ct.sizeof(key) == ct.sizeof(table.Key), name
        if issubclass(leaf, ct.Structure):
            assert layout(leaf) == layout(per_value), name
        else:
            assert ct.sizeof(leaf) == ct.sizeof(per_value), name
        assert (getattr(table, "sLeaf", None) is not None) == abi.PINNED_LAYOUTS[name][2], name
    assert layout(abi.Config) == layout(compiled[abi.MAP_CONFIG.encode()].Leaf)


def test_pinned_map_layouts_match_what_the_compile_step_expects():
    """bpf/compile.py recreates a pin whose sizes differ from these; they must be what bcc creates."""
    from bpf.compile import expected_layouts
    from bpf.loader import DatapathConfig, unpin_all

    cfg = DatapathConfig(pin_dir=f"/sys/fs/bpf/lt_abi_{secrets.token_hex(3)}", flow_table_size=1024)
    b = bcc.BPF(src_file=str(abi.SOURCE).encode(), cflags=cfg.cflags())
    try:
        want = expected_layouts(cfg.cflags())
        assert set(want) == set(abi.PINNED_MAPS)
        for name, (key_size, value_size, entries) in want.items():
            table = b[name.encode()]
            per_value = getattr(table, "sLeaf", table.Leaf)
            assert (ct.sizeof(table.Key), ct.sizeof(per_value), table.max_entries) == (
                key_size,
                value_size,
                entries,
            ), name
    finally:
        b.cleanup()
        unpin_all(cfg.pin_dir)


def test_plugin_packs_endpoint_entries_like_the_c(probe):
    """plugin/pinned.py (stdlib only) is the one packer of endpoint map entries, for the plugin and the
    agent; its bytes must be the C layout."""
    assert pinned.ENDPOINT_KEY.size == ct.sizeof(probe[b"probe_endpoint_key"].Leaf)
    assert pinned.ENDPOINT_INFO.size == ct.sizeof(probe[b"probe_endpoint_info"].Leaf)
    for ip in ("10.1.2.3", "fd00::7"):
        key = abi.EndpointKey.from_buffer_copy(pinned.endpoint_key(ip))
        assert abi.addr_str(key.addr, key.family) == ip
    info = abi.EndpointInfo(ifindex=7, endpoint_id=9, identity=300, slot=12)
    ct.memmove(info.mac, bytes([0x0A, 0x58, 1, 2, 3, 4]), 6)
    assert pinned.endpoint_info(7, 9, "0a:58:01:02:03:04", 300, 12) == bytes(info)
    assert pinned.with_identity(bytes(info), 301) == pinned.endpoint_info(7, 9, "0a:58:01:02:03:04", 301, 12)
    key = abi.EndpointKey.from_buffer_copy(pinned.endpoint_key_ifindex(1234))
    assert (key.family, bytes(key.addr)[:4]) == (abi.EP_BY_IFINDEX, (1234).to_bytes(4, "little"))
    assert pinned.IDENTITY_UNMANAGED == abi.Identity.UNMANAGED


def test_plugin_packs_counter_slots_like_the_c(probe):
    assert slots.POD_COUNTERS.size == ct.sizeof(probe[b"probe_pod_counters"].Leaf)
    assert slots.PAIR_COUNTERS_SIZE == ct.sizeof(probe[b"probe_pair_counters"].Leaf)
    pc = abi.PodCounters(endpoint_id=9, tx_packets=1, tx_bytes=2, rx_packets=3, rx_bytes=4)
    assert slots.POD_COUNTERS.pack(9, 1, 2, 3, 4) == bytes(pc)
