"""What the host delivers to itself, read from its routing tables and followed as they change.

The kernel decides that a packet is for this host by route, not by address: every address
the host holds gets a `local` route (table `local`), each subnet a `broadcast` route, and an
operator can make a whole prefix local (`ip route add local 198.51.100.0/24 dev lo`) without
any address at all. So the egress filter refuses every destination these routes cover,
whatever the interfaces say, and follows the kernel's announcements (rtnetlink) so that a
route added while sessions run is refused too.

The host's neighbours are found the same way: every prefix reached directly on an interface
(an address's subnet, a route with no gateway) is on-link, and whoever holds an address
there (another node, the database, a router's admin page) trusts the host's network, whatever
range it is in. Only the default route is left out: that is the internet.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NETLINK_ROUTE = 0
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_RTM_NEWROUTE, _RTM_GETROUTE = 24, 26
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RTMGRP_IPV4_IFADDR, _RTMGRP_IPV4_ROUTE = 0x10, 0x40
_RTMGRP_IPV6_IFADDR, _RTMGRP_IPV6_ROUTE = 0x100, 0x400
_RTA_DST, _RTA_GATEWAY, _RTA_MULTIPATH, _RTA_VIA, _RTA_NH_ID = 1, 5, 9, 18, 30
_IFA_ADDRESS = 1
_RTN_UNICAST = 1
# Route types whose packets the kernel keeps for this host instead of forwarding them:
# local, broadcast, anycast, multicast.
_DELIVERED_HERE = {2, 3, 4, 5}
# A unicast route with any of these goes through a router; without them it is on-link.
# A nexthop object (RTA_NH_ID) may or may not name a gateway: counted as on-link, so that
# an unknown case refuses rather than allows.
_ROUTED = {_RTA_GATEWAY, _RTA_MULTIPATH, _RTA_VIA}
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_RECEIVE_BYTES = 1 << 16
_BUFFER_BYTES = 1 << 20


class LostTrack(Exception):
    """The kernel dropped announcements (our socket's buffer overflowed): read them all again."""


@dataclass
class HostNetworks:
    """Destinations the host delivers to itself (`local`), and those it reaches directly on
    an interface, its neighbours (`onlink`)."""

    local: set[Network] = field(default_factory=set)
    onlink: set[Network] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.local or self.onlink)

    def update(self, other: HostNetworks) -> None:
        self.local |= other.local
        self.onlink |= other.onlink


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attributes(body: bytes, start: int) -> Iterator[tuple[int, bytes]]:
    position = start
    while position + _ATTR.size <= len(body):
        length, kind = _ATTR.unpack_from(body, position)
        if length < _ATTR.size:
            return
        yield kind, body[position + _ATTR.size: position + length]
        position += _align(length)


def _network(family: int, raw: bytes, prefix: int) -> Network:
    address = ipaddress.ip_address(raw[: 4 if family == socket.AF_INET else 16])
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


def _route(body: bytes, found: HostNetworks) -> None:
    family, dst_len, *_, route_type, _ = _RTMSG.unpack_from(body)
    attributes = dict(_attributes(body, _RTMSG.size))
    # No RTA_DST: the default route, i.e. everything.
    destination = _network(family, attributes.get(_RTA_DST, bytes(16)), dst_len)
    if route_type in _DELIVERED_HERE:
        found.local.add(destination)
    elif route_type == _RTN_UNICAST and dst_len > 0 and not _ROUTED & attributes.keys():
        found.onlink.add(destination)


def _address(body: bytes, found: HostNetworks) -> None:
    family, prefix, *_ = _IFADDRMSG.unpack_from(body)
    # IFA_ADDRESS is the address, or on a point-to-point link the peer's: its subnet either way.
    raw = dict(_attributes(body, _IFADDRMSG.size)).get(_IFA_ADDRESS)
    if raw is not None and prefix > 0:
        found.onlink.add(_network(family, raw, prefix))


def _parse(data: bytes, found: HostNetworks) -> Iterator[int]:
    """Adds what each message says to `found`; yields the message types. NLMSG_ERROR with an
    error raises OSError."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        body = data[offset + _HEADER.size: offset + length]
        offset += _align(length)
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", body)
            if code:
                raise OSError(-code, f"rtnetlink: {os.strerror(-code)}")
        elif kind == _RTM_NEWROUTE and len(body) >= _RTMSG.size and body[0] in _FAMILIES:
            _route(body, found)
        elif kind == _RTM_NEWADDR and len(body) >= _IFADDRMSG.size and body[0] in _FAMILIES:
            _address(body, found)
        yield kind


_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _requests() -> Iterable[tuple[int, bytes]]:
    for family in _FAMILIES:
        yield _RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        yield _RTM_GETADDR, _IFADDRMSG.pack(family, 0, 0, 0, 0)


def dump() -> HostNetworks:
    """Every destination the host delivers to itself now, in any routing table, and every
    prefix it reaches on-link."""
    found = HostNetworks()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       _NETLINK_ROUTE) as sock:
        sock.settimeout(10)
        sock.bind((0, 0))
        for sequence, (kind, request) in enumerate(_requests(), start=1):
            sock.send(_HEADER.pack(_HEADER.size + len(request), kind,
                                   _NLM_F_REQUEST | _NLM_F_DUMP, sequence, 0) + request)
            done = False
            while not done:
                for message in _parse(sock.recv(_RECEIVE_BYTES), found):
                    done = done or message == _NLMSG_DONE
    return found


class RouteFollower:
    """A socket on which the kernel announces new routes. Open it before `dump()`, so that a
    route added in between is announced here rather than missed."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK,
                                  socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                                  _NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER_BYTES)
            self.sock.bind((0, _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE
                            | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> HostNetworks:
        """What the routes and addresses announced since the last read add."""
        found = HostNetworks()
        while True:
            try:
                data = self.sock.recv(_RECEIVE_BYTES)
            except BlockingIOError:
                return found
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise LostTrack from exc
                raise
            for _ in _parse(data, found):
                pass

    def close(self) -> None:
        self.sock.close()
