"""host_routes reads, from rtnetlink, what the host delivers to itself and which prefixes it
reaches on-link (its neighbours), in a network namespace of the test's own: a veth pair (both
ends inside it) with addresses and routes, nothing sent anywhere."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

import pytest

from tci.sandbox import host_routes
from tci.sandbox.host_routes import HostNetworks, RouteFollower
from tests.security.netns import Namespace


def nets(*entries: str) -> set:
    return {ipaddress.ip_network(entry) for entry in entries}


@pytest.fixture
def host() -> Iterator[Namespace]:
    namespace = Namespace()
    namespace.run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    namespace.run("ip", "link", "set", "d0", "up")
    namespace.run("ip", "link", "set", "d1", "up")
    yield namespace
    namespace.close()


def test_dump_finds_on_link_prefixes_not_routed_ones(host):
    host.run("ip", "addr", "add", "203.0.113.1/24", "dev", "d0")
    host.run("ip", "addr", "add", "198.51.100.1/24", "dev", "d0", "noprefixroute")
    host.run("ip", "route", "add", "192.0.2.0/24", "dev", "d0")  # on-link, no address
    host.run("ip", "route", "add", "100.64.7.0/24", "via", "203.0.113.254")
    host.run("ip", "route", "add", "default", "via", "203.0.113.254")
    host.run("ip", "addr", "add", "2001:db8:1::1/64", "dev", "d0", "nodad")
    host.run("ip", "route", "add", "2001:db8:2::/64", "via", "2001:db8:1::fe")
    found = host.call(host_routes.dump)
    assert nets("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24",
                "2001:db8:1::/64") <= found.onlink
    # Through a gateway, and the default route: the internet, not neighbours.
    assert not nets("100.64.7.0/24", "2001:db8:2::/64", "0.0.0.0/0", "::/0") & found.onlink
    assert nets("203.0.113.1/32", "198.51.100.1/32", "2001:db8:1::1/128") <= found.local


def test_follower_announces_a_prefix_that_appears(host):
    follower = host.call(RouteFollower)
    try:
        host.run("ip", "addr", "add", "203.0.113.1/24", "dev", "d0")
        host.run("ip", "route", "add", "192.0.2.128/25", "dev", "d0")
        seen = HostNetworks()
        deadline = time.monotonic() + 10
        while not nets("203.0.113.0/24", "192.0.2.128/25") <= seen.onlink:
            assert time.monotonic() < deadline, seen
            seen.update(follower.read())
            time.sleep(0.01)
        assert ipaddress.ip_network("203.0.113.1/32") in seen.local
    finally:
        follower.close()
