"""A small rtnetlink client on the stdlib: just the calls Lumen needs.

Why not pyroute2: importing it costs ~170 ms, more than ten reference ADDs (FACTS.md). This module costs
about 1 ms to import. It is the only place that builds netlink messages; the agent reuses it.

A `Netlink` socket is bound to the network namespace it was opened in, so a pod's namespace is reached
by opening a second socket there (`Netlink(netns=path)`), not by moving the process back and forth.
"""

from __future__ import annotations

import _socket as socket  # socket.py imports enum: ~10 ms of start-up for names we do not use
import errno
import os
import struct

from plugin.ip import Address, Interface, Network, ip_address, ip_interface, ip_network

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

# netlink(7)
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10  # the table changed during the dump: what came back may be inconsistent
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
NETLINK_EXT_ACK = 11
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270

# rtnetlink(7)
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWQDISC, RTM_DELQDISC = 36, 37
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 18, 28, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_PROTINFO = 12
IFLA_BRPORT_MODE = 4  # in IFLA_PROTINFO of an AF_BRIDGE message: hairpin
VETH_INFO_PEER = 1
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1

TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_CLASSID, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS, TCA_BPF_ID = 3, 6, 7, 8, 11
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
TC_PARENT = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
ETH_P_ALL = 0x0003
CLONE_NEWNET = 0x40000000

DUMP_ATTEMPTS = 5  # netlinksafe's count; one retry is usually enough
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_TCMSG = struct.Struct("=BxxxiIII")
_NLA = struct.Struct("=HH")

IPInterface = Interface
IPAddr = Address
IPNet = Network


class NetlinkError(OSError):
    """A negative netlink ack; `errno` is set, `str()` includes the kernel's extended message."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def nla(kind: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def nla_str(kind: int, value: str) -> bytes:
    return nla(kind, value.encode() + b"\0")


def nla_u32(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("=I", value))


def nla_nested(kind: int, *children: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, b"".join(children))


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attributes at one level; a repeated type keeps its last value."""
    attrs: dict[int, bytes] = {}
    while offset + _NLA.size <= len(data):
        length, kind = _NLA.unpack_from(data, offset)
        if length < _NLA.size:
            break
        attrs[kind & NLA_TYPE_MASK] = data[offset + _NLA.size : offset + length]
        offset += _align(length)
    return attrs


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


def _u32(raw: bytes) -> int:
    return int(struct.unpack("=I", raw[:4])[0])


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_mac(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"invalid MAC address {mac!r}")
    return bytes(int(p, 16) for p in parts)


class Link:
    """A link as the kernel reported it (plain class: dataclasses cost ~6 ms of start-up)."""

    __slots__ = ("index", "name", "mac", "mtu", "up", "master", "kind", "peer_index", "peer_netnsid")

    def __init__(
        self,
        index: int,
        name: str,
        mac: str,
        mtu: int,
        up: bool,
        master: int | None,
        kind: str | None,
        peer_index: int | None,
        peer_netnsid: int | None,
    ) -> None:
        self.index = index
        self.name = name
        self.mac = mac
        self.mtu = mtu
        self.up = up
        self.master = master
        self.kind = kind
        # veth only: the peer's ifindex and the netns id it lives in, as seen from here.
        self.peer_index = peer_index
        self.peer_netnsid = peer_netnsid

    def __repr__(self) -> str:
        return f"Link({', '.join(f'{k}={getattr(self, k)!r}' for k in self.__slots__)})"


class Route:
    __slots__ = ("dst", "gateway", "oif", "table", "proto")

    def __init__(
        self, dst: IPNet, gateway: IPAddr | None, oif: int | None, table: int, proto: int = 0
    ) -> None:
        self.dst = dst
        self.gateway = gateway
        self.oif = oif
        self.table = table
        self.proto = proto  # rtm_protocol: who added it (the agent's routes carry its own number)

    def __repr__(self) -> str:
        return (
            f"Route(dst={self.dst}, gateway={self.gateway}, oif={self.oif}, table={self.table}, "
            f"proto={self.proto})"
        )


_setns_addr: list[int] = []


def _libc_setns(fd: int) -> None:
    """setns(2) through libc. os.setns arrived in Python 3.12; Debian's interpreter is 3.11.

    The bare `_ctypes` calls cost nothing to import; the `ctypes` package costs ~4 ms per pod, so it is
    only loaded to read errno when the call fails.
    """
    import _ctypes

    if not _setns_addr:
        _setns_addr.append(_ctypes.dlsym(_ctypes.dlopen(None, 2), "setns"))  # type: ignore[arg-type]  # RTLD_NOW
    if _ctypes.call_function(_setns_addr[0], (fd, CLONE_NEWNET)) == 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _enter_netns(fd: int) -> None:
    setns = getattr(os, "setns", None)
    if setns is not None:
        setns(fd, CLONE_NEWNET)
    else:
        _libc_setns(fd)


class in_netns:  # noqa: N801 - used as `with in_netns(path):`
    """Run the body inside the network namespace at `path` (this thread only), then come back.

    A class, not @contextlib.contextmanager: contextlib imports functools and collections (~3 ms of CPU
    per cold ADD, see plugin/ip.py)."""

    __slots__ = ("path", "origin")

    def __init__(self, path: str) -> None:
        self.path = path
        self.origin = -1

    def __enter__(self) -> None:
        self.origin = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _enter_netns(target)
            finally:
                os.close(target)
        except BaseException:
            os.close(self.origin)
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            _enter_netns(self.origin)
        finally:
            os.close(self.origin)


class Netlink:
    """One NETLINK_ROUTE socket. Every call is a request answered by an ack or a dump."""

    def __init__(self, netns: str | None = None) -> None:
        if netns is None:
            self._sock = self._open()
        else:
            with in_netns(netns):
                self._sock = self._open()
        self._seq = 0
        self._interrupted = False

    @staticmethod
    def _open() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            pass
        sock.bind((0, 0))
        return sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------------

    def _send(self, msg_type: int, flags: int, body: bytes) -> int:
        self._seq += 1
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags | NLM_F_REQUEST, self._seq, 0)
        self._sock.send(header + body)
        return self._seq

    def request(self, msg_type: int, flags: int, body: bytes) -> None:
        """Send one change and wait for its ack; raise NetlinkError on a negative ack."""
        seq = self._send(msg_type, flags | NLM_F_ACK, body)
        for _ in self._replies(seq):
            pass

    def dump(self, msg_type: int, body: bytes) -> list[tuple[int, bytes]]:
        """Every object of a kind. A dump the kernel marks interrupted (NLM_F_DUMP_INTR: links, addresses
        or routes changed while it ran, as concurrent ADDs do) is asked again, as containernetworking's
        netlinksafe does; still interrupted after DUMP_ATTEMPTS, NetlinkError(EINTR)."""
        for _ in range(DUMP_ATTEMPTS):
            self._interrupted = False
            seq = self._send(msg_type, NLM_F_DUMP, body)
            replies = list(self._replies(seq))
            if not self._interrupted:
                return replies
        raise NetlinkError(errno.EINTR, f"netlink dump interrupted {DUMP_ATTEMPTS} times in a row")

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes]]:
        while True:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, msg_type, flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                payload = data[offset + _NLMSGHDR.size : offset + length]
                offset += _align(length)
                if msg_seq != seq:
                    continue
                if flags & NLM_F_DUMP_INTR:
                    self._interrupted = True
                if msg_type == NLMSG_DONE:
                    return
                if msg_type == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code == 0:
                        return
                    raise self._error(-code, payload)
                yield msg_type, payload
                if not flags & NLM_F_MULTI:
                    return

    @staticmethod
    def _error(err: int, payload: bytes) -> NetlinkError:
        text = os.strerror(err)
        # Extended ack: the echoed header (no payload echoed thanks to EXT_ACK capping) then TLVs.
        if len(payload) >= 4 + _NLMSGHDR.size:
            attrs = parse_attrs(payload, 4 + _NLMSGHDR.size)
            if NLMSGERR_ATTR_MSG in attrs:
                text = f"{text}: {_cstr(attrs[NLMSGERR_ATTR_MSG])}"
        return NetlinkError(err, text)

    # -- links -----------------------------------------------------------------------------------

    @staticmethod
    def _parse_link(payload: bytes) -> Link:
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
        attrs = parse_attrs(payload, _IFINFOMSG.size)
        kind = None
        if IFLA_LINKINFO in attrs:
            info = parse_attrs(attrs[IFLA_LINKINFO])
            if IFLA_INFO_KIND in info:
                kind = _cstr(info[IFLA_INFO_KIND])
        return Link(
            index=index,
            name=_cstr(attrs.get(IFLA_IFNAME, b"")),
            mac=format_mac(attrs.get(IFLA_ADDRESS, b"")),
            mtu=_u32(attrs[IFLA_MTU]) if IFLA_MTU in attrs else 0,
            up=bool(flags & IFF_UP),
            master=_u32(attrs[IFLA_MASTER]) if IFLA_MASTER in attrs else None,
            kind=kind,
            peer_index=_u32(attrs[IFLA_LINK]) if IFLA_LINK in attrs else None,
            peer_netnsid=struct.unpack("=i", attrs[IFLA_LINK_NETNSID][:4])[0]
            if IFLA_LINK_NETNSID in attrs
            else None,
        )

    def link(self, name: str | None = None, index: int = 0) -> Link | None:
        """The link by name or index, or None when it does not exist."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        if name is not None:
            body += nla_str(IFLA_IFNAME, name)
        seq = self._send(RTM_GETLINK, 0, body)
        try:
            for _type, payload in self._replies(seq):
                return self._parse_link(payload)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return None

    def links(self) -> list[Link]:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return [self._parse_link(p) for t, p in self.dump(RTM_GETLINK, body) if t == RTM_NEWLINK]

    def bridge_add(self, name: str, mtu: int | None = None) -> None:
        """Create a bridge; EEXIST is left to the caller (concurrent ADDs race to create it)."""
        attrs = nla_str(IFLA_IFNAME, name) + nla_nested(IFLA_LINKINFO, nla_str(IFLA_INFO_KIND, "bridge"))
        if mtu:
            attrs += nla_u32(IFLA_MTU, mtu)
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def veth_add(
        self,
        name: str,
        peer_name: str,
        peer_netns_fd: int,
        mtu: int | None = None,
        peer_mac: str | None = None,
    ) -> None:
        """Create a veth pair whose peer is born inside another namespace (no later move under rtnl)."""
        peer_attrs = nla_str(IFLA_IFNAME, peer_name) + nla_u32(IFLA_NET_NS_FD, peer_netns_fd)
        if mtu:
            peer_attrs += nla_u32(IFLA_MTU, mtu)
        if peer_mac:
            peer_attrs += nla(IFLA_ADDRESS, parse_mac(peer_mac))
        peer = nla(VETH_INFO_PEER, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + peer_attrs)
        attrs = nla_str(IFLA_IFNAME, name) + nla_nested(
            IFLA_LINKINFO, nla_str(IFLA_INFO_KIND, "veth"), nla_nested(IFLA_INFO_DATA, peer)
        )
        if mtu:
            attrs += nla_u32(IFLA_MTU, mtu)
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def link_set(
        self,
        index: int,
        up: bool | None = None,
        master: int | None = None,
        mtu: int | None = None,
        mac: str | None = None,
    ) -> None:
        flags = change = 0
        if up is not None:
            change = IFF_UP
            flags = IFF_UP if up else 0
        attrs = b""
        if master is not None:
            attrs += nla_u32(IFLA_MASTER, master)
        if mtu is not None:
            attrs += nla_u32(IFLA_MTU, mtu)
        if mac is not None:
            attrs += nla(IFLA_ADDRESS, parse_mac(mac))
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs
        self.request(RTM_NEWLINK, 0, body)

    def bridge_port_hairpin(self, index: int, on: bool = True) -> None:
        """A bridge port that sends frames back out where they came in (`bridge link set hairpin on`):
        netlink, not /sys/class/net, which shows the devices of the namespace sysfs was mounted in."""
        mode = nla(IFLA_BRPORT_MODE, struct.pack("=B", 1 if on else 0))
        body = _IFINFOMSG.pack(socket.AF_BRIDGE, 0, index, 0, 0) + nla_nested(IFLA_PROTINFO, mode)
        self.request(RTM_SETLINK, 0, body)

    def link_del(self, index: int = 0, name: str | None = None) -> bool:
        """Delete a link; False when it was already gone (DEL must be idempotent)."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        if name is not None:
            body += nla_str(IFLA_IFNAME, name)
        try:
            self.request(RTM_DELLINK, 0, body)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # -- addresses and routes --------------------------------------------------------------------

    def addr_add(self, index: int, iface: IPInterface, nodad: bool = True) -> None:
        family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        flags = IFA_F_PERMANENT | (IFA_F_NODAD if nodad and iface.version == 6 else 0)
        packed = iface.ip.packed
        attrs = nla(IFA_LOCAL, packed) + nla(IFA_ADDRESS, packed) + nla_u32(IFA_FLAGS, flags)
        body = (
            _IFADDRMSG.pack(family, iface.network.prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE, index) + attrs
        )
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def addrs(self, index: int | None = None) -> list[tuple[int, IPInterface]]:
        """(ifindex, address) pairs, optionally for one link."""
        out: list[tuple[int, IPInterface]] = []
        for t, payload in self.dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            if t != RTM_NEWADDR:
                continue
            family, prefixlen, _flags, _scope, ifindex = _IFADDRMSG.unpack_from(payload)
            if index is not None and ifindex != index:
                continue
            attrs = parse_attrs(payload, _IFADDRMSG.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is None:
                continue
            out.append((ifindex, ip_interface((raw, prefixlen))))
        return out

    def route_add(self, dst: IPNet, gateway: IPAddr | None, oif: int, metric: int | None = None) -> None:
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
        body = _RTMSG.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
        body += nla(RTA_DST, dst.network_address.packed) + nla_u32(RTA_OIF, oif)
        if gateway is not None:
            body += nla(RTA_GATEWAY, gateway.packed)
        if metric is not None:
            body += nla_u32(RTA_PRIORITY, metric)
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)

    def routes(self, version: int) -> list[Route]:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        out: list[Route] = []
        body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        for t, payload in self.dump(RTM_GETROUTE, body):
            if t != RTM_NEWROUTE:
                continue
            _fam, dst_len, _s, _tos, table, proto, _scope, _type, _flags = _RTMSG.unpack_from(payload)
            attrs = parse_attrs(payload, _RTMSG.size)
            if RTA_TABLE in attrs:
                table = _u32(attrs[RTA_TABLE])
            zero = Address(version, 0)
            addr = ip_address(attrs[RTA_DST]) if RTA_DST in attrs else zero
            out.append(
                Route(
                    dst=ip_network((addr, dst_len), strict=False),
                    gateway=ip_address(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None,
                    oif=_u32(attrs[RTA_OIF]) if RTA_OIF in attrs else None,
                    table=table,
                    proto=proto,
                )
            )
        return out

    # -- tc: clsact + direct-action bpf filters ------------------------------------------------

    def tc_clsact_add(self, index: int) -> None:
        """Add the clsact qdisc; already present is fine."""
        body = _TCMSG.pack(socket.AF_UNSPEC, index, 0xFFFF0000, TC_H_CLSACT, 0) + nla_str(TCA_KIND, "clsact")
        try:
            self.request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, body)
        except NetlinkError as e:
            if e.errno != errno.EEXIST:
                raise

    def tc_bpf_attach(
        self, index: int, direction: str, prog_fd: int, name: str, prio: int = 1, handle: int = 1
    ) -> None:
        """Attach (or atomically replace) a direct-action bpf filter at clsact ingress/egress."""
        info = (prio << 16) | socket.htons(ETH_P_ALL)
        options = nla_nested(
            TCA_OPTIONS,
            nla_u32(TCA_BPF_FD, prog_fd),
            nla_str(TCA_BPF_NAME, name),
            nla_u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT),
        )
        body = _TCMSG.pack(socket.AF_UNSPEC, index, handle, TC_PARENT[direction], info)
        body += nla_str(TCA_KIND, "bpf") + options
        self.request(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_REPLACE, body)

    def tc_bpf_list(self, index: int, direction: str) -> list[str]:
        """Names of the bpf filters at clsact ingress/egress (empty without clsact)."""
        body = _TCMSG.pack(socket.AF_UNSPEC, index, 0, TC_PARENT[direction], 0)
        try:
            replies = self.dump(RTM_GETTFILTER, body)
        except NetlinkError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
                return []
            raise
        names = []
        for _type, payload in replies:
            attrs = parse_attrs(payload, _TCMSG.size)
            if _cstr(attrs.get(TCA_KIND, b"")) != "bpf" or TCA_OPTIONS not in attrs:
                continue
            opts = parse_attrs(attrs[TCA_OPTIONS])
            if TCA_BPF_NAME in opts:
                names.append(_cstr(opts[TCA_BPF_NAME]))
        return names

    def tc_clsact_del(self, index: int) -> None:
        body = _TCMSG.pack(socket.AF_UNSPEC, index, 0xFFFF0000, TC_H_CLSACT, 0) + nla_str(TCA_KIND, "clsact")
        try:
            self.request(RTM_DELQDISC, 0, body)
        except NetlinkError as e:
            if e.errno not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise


NS_GET_NSTYPE = 0xB703  # ioctl_ns(2): _IO(0xb7, 0x3)


def is_netns(path: str) -> bool:
    """Whether `path` opens a network namespace (a runtime may hand over any file as CNI_NETNS)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def write_sysctl(path: str, value: str) -> None:
    """Write /proc/sys/<path>; callers inside `in_netns` reach that namespace's copy."""
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)
