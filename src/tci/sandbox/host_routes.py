"""What the host delivers to itself, read from its routing tables and followed as they change.

The kernel decides that a packet is for this host by route, not by address: every address
the host holds gets a `local` route (table `local`), each subnet a `broadcast` route, and an
operator can make a whole prefix local (`ip route add local 198.51.100.0/24 dev lo`) without
any address at all. So the egress filter refuses every destination these routes cover,
whatever the interfaces say, and follows the kernel's announcements (rtnetlink) so that a
route added while sessions run is refused too.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NETLINK_ROUTE = 0
_RTM_NEWROUTE, _RTM_GETROUTE = 24, 26
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RTMGRP_IPV4_ROUTE, _RTMGRP_IPV6_ROUTE = 0x40, 0x400
_RTA_DST = 1
# Route types whose packets the kernel keeps for this host instead of forwarding them:
# local, broadcast, anycast, multicast.
_DELIVERED_HERE = {2, 3, 4, 5}
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_RECEIVE_BYTES = 1 << 16
_BUFFER_BYTES = 1 << 20


class LostTrack(Exception):
    """The kernel dropped announcements (our socket's buffer overflowed): read them all again."""


def _align(length: int) -> int:
    return (length + 3) & ~3


def _routes(data: bytes) -> Iterator[tuple[int, Network | None]]:
    """(message type, destination) of each message; destination None for routes that are
    not delivered here. NLMSG_ERROR with an error raises OSError."""
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
            continue
        if kind != _RTM_NEWROUTE or len(body) < _RTMSG.size:
            yield kind, None
            continue
        family, dst_len, *_, route_type, _ = _RTMSG.unpack_from(body)
        if route_type not in _DELIVERED_HERE or family not in (socket.AF_INET, socket.AF_INET6):
            yield kind, None
            continue
        width = 4 if family == socket.AF_INET else 16
        destination = bytes(width)  # no RTA_DST: the default route, i.e. everything
        position = _RTMSG.size
        while position + _ATTR.size <= len(body):
            attr_length, attr_type = _ATTR.unpack_from(body, position)
            if attr_length < _ATTR.size:
                break
            if attr_type == _RTA_DST:
                destination = body[position + _ATTR.size: position + attr_length]
            position += _align(attr_length)
        address = ipaddress.ip_address(destination)
        yield kind, ipaddress.ip_network(f"{address}/{dst_len}", strict=False)


def dump() -> set[Network]:
    """Every destination the host delivers to itself now, in any routing table."""
    found: set[Network] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       _NETLINK_ROUTE) as sock:
        sock.settimeout(10)
        sock.bind((0, 0))
        for sequence, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            request = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            sock.send(_HEADER.pack(_HEADER.size + len(request), _RTM_GETROUTE,
                                   _NLM_F_REQUEST | _NLM_F_DUMP, sequence, 0) + request)
            done = False
            while not done:
                for kind, network in _routes(sock.recv(_RECEIVE_BYTES)):
                    done = done or kind == _NLMSG_DONE
                    if network is not None:
                        found.add(network)
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
            self.sock.bind((0, _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> set[Network]:
        """Destinations delivered here among the routes announced since the last read."""
        found: set[Network] = set()
        while True:
            try:
                data = self.sock.recv(_RECEIVE_BYTES)
            except BlockingIOError:
                return found
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise LostTrack from exc
                raise
            for _, network in _routes(data):
                if network is not None:
                    found.add(network)

    def close(self) -> None:
        self.sock.close()
