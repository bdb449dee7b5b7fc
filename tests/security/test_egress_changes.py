"""Egress refusals a snapshot of the host would miss, and metadata endpoints in public ranges.

The server runs in a network namespace of the test's own (its "host"): after the server has
started, the test gives that namespace a new address and makes a whole prefix local by route,
and a session, live or new, must not reach a listener there. A second namespace, joined by a
veth pair, plays the outside world: it holds cloud metadata addresses (Azure's WireServer is
in a public range), an address the operator refuses (TCI_EGRESS_REFUSE) and an allowed one
(the control). Nothing of the real host's network is changed, and no traffic goes anywhere
but loopback and these namespaces."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.security.conftest import HostView, new_session
from tests.security.egress import (
    ListeningHost,
    assert_all_refused,
    assert_reached,
    assert_refused,
    host_listener,
)
from tests.security.netns import linked, start_namespaced

PORT = 18094
# Addresses outside every refused range (TEST-NET-2 counts as the internet), so that only
# their being local to the server's host refuses them.
ADDED_LATER = "198.51.100.77"
LOCAL_PREFIX, IN_LOCAL_PREFIX = "198.51.100.128/25", "198.51.100.200"
METADATA = {
    "Azure WireServer (public range)": "168.63.129.16",
    "Alibaba Cloud (shared range)": "100.100.100.200",
    "Oracle Cloud Classic (IETF range)": "192.0.0.192",
}
OPERATOR_REFUSED = "203.0.113.99"  # refused only because TCI_EGRESS_REFUSE lists it
ALLOWED_HOST_SIDE, ALLOWED_PEER = "203.0.113.97", "203.0.113.98"
MARKERS_TO = (ALLOWED_PEER, PORT)
GATEWAY = "10.214.98.2"
OUTSIDE = [*METADATA.values(), OPERATOR_REFUSED, ALLOWED_PEER]


@pytest.fixture(scope="module")
def outside(server_ns) -> Iterator[ListeningHost]:
    """The outside world: each of its addresses a /32 routed from the server's namespace."""
    with linked(server_ns, "tea0", "teb0") as world:
        server_ns.run("ip", "addr", "add", f"{ALLOWED_HOST_SIDE}/32", "dev", "tea0")
        world.run("ip", "route", "add", f"{ALLOWED_HOST_SIDE}/32", "dev", "teb0")
        # The world is reached through a gateway on a private link: an on-link route would
        # make each address a neighbour, which the filter refuses.
        server_ns.run("ip", "addr", "add", "10.214.98.1/30", "dev", "tea0")
        world.run("ip", "addr", "add", f"{GATEWAY}/30", "dev", "teb0")
        for address in OUTSIDE:
            world.run("ip", "addr", "add", f"{address}/32", "dev", "teb0")
            server_ns.run("ip", "route", "add", f"{address}/32", "via", GATEWAY,
                          "src", ALLOWED_HOST_SIDE)
        with ListeningHost(world, PORT) as host:
            yield host


@pytest.fixture(scope="module")
def hardened(tmp_path_factory, server_ns, outside):
    instance = start_namespaced(tmp_path_factory, server_ns,
                                egress_refuse=json.dumps([OPERATOR_REFUSED]))
    yield instance
    instance.stop()


def refused_by_filter(session_id: str, address: str) -> bool:
    """Whether the session's nftables set already refuses `address` (read from the host)."""
    worker = HostView(session_id).worker_pid()
    listing = subprocess.run(
        ["nsenter", f"--net=/proc/{worker}/ns/net", "--", "nft", "-j", "list", "table",
         "inet", "tci_egress"], capture_output=True, text=True, timeout=30)
    if listing.returncode != 0:
        return False
    target = ipaddress.ip_address(address)
    for item in json.loads(listing.stdout)["nftables"]:
        name = item.get("set", {}).get("name", "")
        if name.startswith("allowed") or not name.endswith("_v4"):
            continue
        for element in item.get("set", {}).get("elem", []):
            if isinstance(element, str):
                low = high = ipaddress.ip_address(element)
            elif "prefix" in element:
                network = ipaddress.ip_network(
                    f"{element['prefix']['addr']}/{element['prefix']['len']}")
                low, high = network[0], network[-1]
            else:
                low, high = (ipaddress.ip_address(end) for end in element["range"])
            if low <= target <= high:
                return True
    return False


def wait_until_refused(session_id: str, address: str, timeout: float = 10.0) -> None:
    """A live sandbox learns of a new host route a few milliseconds after the kernel announces
    it (see egress_filter.py). Wait for that, without asserting it: the attempt that follows
    is the test (on a server that never learns, it connects)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not refused_by_filter(session_id, address):
        time.sleep(0.05)


def test_address_added_after_start_is_refused_in_live_and_new_sessions(hardened, server_ns):
    live = new_session(hardened)
    server_ns.run("ip", "addr", "add", f"{ADDED_LATER}/32", "dev", "lo")
    with host_listener(server_ns, ADDED_LATER) as port:
        wait_until_refused(live, ADDED_LATER)
        assert_all_refused(hardened, [ADDED_LATER], port, session_id=live)
        # A session started after the change gets it in its first rules, before its network
        # exists: no wait at all.
        assert_all_refused(hardened, [ADDED_LATER], port)


def test_prefix_made_local_by_route_is_refused(hardened, server_ns):
    """No address at all: `ip route add local PREFIX dev lo` makes the host answer on every
    address of the prefix. Only a filter that follows routes sees it."""
    live = new_session(hardened)
    server_ns.run("ip", "route", "add", "local", LOCAL_PREFIX, "dev", "lo")
    with host_listener(server_ns, IN_LOCAL_PREFIX) as port:
        wait_until_refused(live, IN_LOCAL_PREFIX)
        for session_id in (live, None):
            assert_all_refused(hardened, [IN_LOCAL_PREFIX], port, session_id=session_id)


def test_outside_world_is_reachable_control(hardened, server_ns, outside):
    """The control: the sandbox reaches the outside namespace on an allowed address."""
    assert_reached(hardened, server_ns, outside, ALLOWED_PEER, MARKERS_TO)


@pytest.mark.parametrize("target", [*METADATA, "TCI_EGRESS_REFUSE"])
def test_metadata_endpoints_and_operator_refusals_are_unreachable(
        hardened, server_ns, outside, target):
    assert_refused(hardened, server_ns, outside, METADATA.get(target, OPERATOR_REFUSED),
                   MARKERS_TO)
