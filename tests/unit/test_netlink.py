"""plugin.netlink without a kernel: a dump the kernel marks interrupted is asked again."""

from __future__ import annotations

import errno
import struct

import pytest

from plugin import netlink
from plugin.netlink import NLM_F_DUMP_INTR, NLM_F_MULTI, NLMSG_DONE, Netlink, NetlinkError

HDR = struct.Struct("=IHHII")


def message(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    data = HDR.pack(HDR.size + len(payload), msg_type, flags, seq, 0) + payload
    return data + b"\0" * (-len(data) % 4)


class FakeKernel:
    """Answers each dump request with `rounds[i]`: a list of (payload, interrupted) then NLMSG_DONE."""

    def __init__(self, rounds: list[list[tuple[bytes, bool]]]) -> None:
        self.rounds = rounds
        self.requests = 0
        self.pending = b""

    def send(self, data: bytes) -> int:
        _, _, _, seq, _ = HDR.unpack_from(data)
        answer = self.rounds[min(self.requests, len(self.rounds) - 1)]
        self.requests += 1
        msgs = [
            message(netlink.RTM_NEWLINK, NLM_F_MULTI | (NLM_F_DUMP_INTR if i else 0), seq, p)
            for p, i in answer
        ]
        done_flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if any(i for _, i in answer) else 0)
        self.pending = b"".join(msgs) + message(NLMSG_DONE, done_flags, seq, struct.pack("=i", 0))
        return len(data)

    def recv(self, size: int) -> bytes:
        data, self.pending = self.pending, b""
        return data

    def close(self) -> None:
        pass


def fake_netlink(kernel: FakeKernel) -> Netlink:
    nl = Netlink.__new__(Netlink)
    nl._sock = kernel  # type: ignore[assignment]
    nl._seq = 0
    nl._interrupted = False
    return nl


def test_an_interrupted_dump_is_asked_again():
    kernel = FakeKernel([[(b"half", False), (b"changed", True)], [(b"one", False), (b"two", False)]])
    replies = fake_netlink(kernel).dump(netlink.RTM_GETLINK, b"")
    assert [p for _, p in replies] == [b"one", b"two"]
    assert kernel.requests == 2


def test_a_clean_dump_is_asked_once():
    kernel = FakeKernel([[(b"one", False)]])
    assert [p for _, p in fake_netlink(kernel).dump(netlink.RTM_GETLINK, b"")] == [b"one"]
    assert kernel.requests == 1


def test_a_dump_that_never_settles_is_an_error():
    kernel = FakeKernel([[(b"x", True)]])
    with pytest.raises(NetlinkError) as e:
        fake_netlink(kernel).dump(netlink.RTM_GETLINK, b"")
    assert e.value.errno == errno.EINTR
    assert kernel.requests == netlink.DUMP_ATTEMPTS
