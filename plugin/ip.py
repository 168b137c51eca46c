"""IP addresses, interfaces and networks: the slice of `ipaddress` the plugin uses, on ints.

Why not `ipaddress`: it imports `functools` and with it `collections`, about 3.5 ms of CPU per cold ADD on
this machine (python3 -X importtime; CPU by wait4 over 40 runs), a fifth of the plugin's budget against
the reference bridge. Parsing goes through the C `inet_pton` of `_socket`, which the netlink client loads
anyway. Accepted forms: dotted-quad IPv4 and RFC 4291 IPv6 text (no zone index), prefixes as
`/<decimal>`; text out is what `ipaddress` prints. tests/unit/test_ip.py checks this module against
`ipaddress` with hypothesis.
"""

from __future__ import annotations

import _socket

_FAMILY = {4: _socket.AF_INET, 6: _socket.AF_INET6}
_BITS = {4: 32, 6: 128}
_DIGITS = frozenset("0123456789")


class Address:
    """One IPv4 or IPv6 address. Ordered by (version, value) so mixed lists sort."""

    __slots__ = ("version", "_value")

    def __init__(self, version: int, value: int) -> None:
        if version not in _BITS or not 0 <= value < 1 << _BITS[version]:
            raise ValueError(f"{value!r} is not an IPv{version} address")
        self.version = version
        self._value = value

    @property
    def max_prefixlen(self) -> int:
        return _BITS[self.version]

    @property
    def packed(self) -> bytes:
        return self._value.to_bytes(_BITS[self.version] // 8, "big")

    @property
    def is_link_local(self) -> bool:
        if self.version == 4:
            return self._value >> 16 == 0xA9FE  # 169.254.0.0/16
        return self._value >> 118 == 0x3FA  # fe80::/10

    def __int__(self) -> int:
        return self._value

    def __str__(self) -> str:
        if self.version == 4:
            return ".".join(str(b) for b in self.packed)
        return _v6_text(self._value)

    def __repr__(self) -> str:
        return f"Address({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Address) and (self.version, self._value) == (other.version, other._value)

    def __lt__(self, other: Address) -> bool:
        return (self.version, self._value) < (other.version, other._value)

    def __hash__(self) -> int:
        return hash((self.version, self._value))

    def __add__(self, n: int) -> Address:
        return Address(self.version, self._value + n)

    def __sub__(self, n: int) -> Address:
        return Address(self.version, self._value - n)


def _v6_text(value: int) -> str:
    """RFC 5952 text, as `ipaddress` prints it: lowercase, the longest run of two or more zero groups
    (the first of equals) as `::`. Not inet_ntop: glibc prints `::2:3` as `::0.2.0.3`, and the text names
    the IPAM store's files."""
    words = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    best_start, best_len, start = -1, 0, -1
    for i, word in enumerate([*words, 1]):
        if word == 0:
            if start < 0:
                start = i
        elif start >= 0:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = -1
    hexes = [f"{w:x}" for w in words]
    if best_len > 1:
        hexes[best_start : best_start + best_len] = [""]
        if best_start == 0:
            hexes.insert(0, "")
        if best_start + best_len == 8:
            hexes.append("")
    return ":".join(hexes)


class Network:
    """An address block: `network_address`/`prefixlen`, host bits zero."""

    __slots__ = ("network_address", "prefixlen")

    def __init__(self, address: Address, prefixlen: int, strict: bool = True) -> None:
        bits = address.max_prefixlen
        if not 0 <= prefixlen <= bits:
            raise ValueError(f"/{prefixlen} is not a valid prefix length for IPv{address.version}")
        host = (1 << (bits - prefixlen)) - 1
        if int(address) & host:
            if strict:
                raise ValueError(f"{address}/{prefixlen} has host bits set")
            address = Address(address.version, int(address) & ~host)
        self.network_address = address
        self.prefixlen = prefixlen

    @property
    def version(self) -> int:
        return self.network_address.version

    @property
    def num_addresses(self) -> int:
        return 1 << (self.network_address.max_prefixlen - self.prefixlen)

    @property
    def broadcast_address(self) -> Address:
        return self.network_address + (self.num_addresses - 1)

    def __contains__(self, other: object) -> bool:
        return (
            isinstance(other, Address)
            and other.version == self.version
            and int(self.network_address) <= int(other) <= int(self.broadcast_address)
        )

    def __str__(self) -> str:
        return f"{self.network_address}/{self.prefixlen}"

    def __repr__(self) -> str:
        return f"Network({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Network) and (self.network_address, self.prefixlen) == (
            other.network_address,
            other.prefixlen,
        )

    def __hash__(self) -> int:
        return hash((self.network_address, self.prefixlen))


class Interface:
    """An address with the prefix length of its subnet, as on a link: `10.0.0.2/24`."""

    __slots__ = ("ip", "prefixlen")

    def __init__(self, address: Address, prefixlen: int) -> None:
        if not 0 <= prefixlen <= address.max_prefixlen:
            raise ValueError(f"/{prefixlen} is not a valid prefix length for IPv{address.version}")
        self.ip = address
        self.prefixlen = prefixlen

    @property
    def version(self) -> int:
        return self.ip.version

    @property
    def network(self) -> Network:
        return Network(self.ip, self.prefixlen, strict=False)

    def __str__(self) -> str:
        return f"{self.ip}/{self.prefixlen}"

    def __repr__(self) -> str:
        return f"Interface({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interface) and (self.ip, self.prefixlen) == (other.ip, other.prefixlen)

    def __hash__(self) -> int:
        return hash((self.ip, self.prefixlen))


def ip_address(value: str | bytes | Address) -> Address:
    """From text, or from the 4 or 16 bytes the kernel uses. ValueError for anything else."""
    if isinstance(value, Address):
        return value
    if isinstance(value, bytes):
        if len(value) not in (4, 16):
            raise ValueError(f"{value!r} is neither 4 nor 16 bytes")
        return Address(4 if len(value) == 4 else 6, int.from_bytes(value, "big"))
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an IP address")
    version = 6 if ":" in value else 4
    try:
        packed = _socket.inet_pton(_FAMILY[version], value)
    except (OSError, ValueError):  # ValueError: NUL or a lone surrogate in the text
        raise ValueError(f"{value!r} does not appear to be an IPv4 or IPv6 address") from None
    return Address(version, int.from_bytes(packed, "big"))


def _split(value: str) -> tuple[Address, int | None]:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an IP address")
    text, slash, prefix = value.partition("/")
    address = ip_address(text)
    if not slash:
        return address, None
    if not prefix or len(prefix) > 3 or not _DIGITS.issuperset(prefix):
        raise ValueError(f"{value!r}: the prefix length must be a decimal number")
    return address, int(prefix)


def ip_interface(value: str | tuple[Address | bytes, int] | Interface) -> Interface:
    """`addr/prefix` (a bare address is a /32 or /128), or (address, prefixlen)."""
    if isinstance(value, Interface):
        return value
    if isinstance(value, tuple):
        return Interface(ip_address(value[0]), value[1])
    address, prefix = _split(value)
    return Interface(address, address.max_prefixlen if prefix is None else prefix)


def ip_network(value: str | tuple[Address | bytes, int] | Network, strict: bool = True) -> Network:
    """`net/prefix` (a bare address is a /32 or /128), or (address, prefixlen). With `strict`, host bits
    set are an error; without, they are cleared."""
    if isinstance(value, Network):
        return value
    if isinstance(value, tuple):
        return Network(ip_address(value[0]), value[1], strict)
    address, prefix = _split(value)
    return Network(address, address.max_prefixlen if prefix is None else prefix, strict)
