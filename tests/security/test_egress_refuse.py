"""Egress refuses the cluster's own network, whatever addresses it uses (issue 17).

The server runs in a network namespace of the test's own (its "host"), joined by a veth pair
to a second one (the LAN). The LAN's subnet is on-link for the host and public-looking
(TEST-NET-3, which no built-in range refuses); behind the neighbour, through it as a gateway,
lie "the internet" (TEST-NET-2), the database (a relay in the LAN namespace to a PostgreSQL on
the real host's loopback) and a cloud metadata address. The neighbour also answers DNS.

One server refuses by default: the on-link neighbour, the database's host and metadata are
unreachable, the internet is not, and DNS goes to the resolver TCI_EGRESS_DNS names, although
it is on the refused LAN. A second server's TCI_EGRESS_ALLOW names the LAN, the metadata range
and the database's range: the neighbour becomes reachable, the host's own address, metadata
and the database stay refused. Nothing is sent anywhere but loopback and these namespaces."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from tests.security.conftest import run_json
from tests.security.egress import (
    ListeningHost,
    assert_all_refused,
    assert_reached,
    assert_refused,
    host_listener,
)
from tests.security.netns import Namespace, Relay, linked, start_namespaced

pytest_plugins = ("tests.pg",)

PORT = 18095
HOST_SIDE, NEIGHBOUR, ONLINK = "203.0.113.1", "203.0.113.2", "203.0.113.0/24"
INTERNET = "198.51.100.98"  # behind the neighbour, which is the host's gateway to it
DATABASE = "198.51.100.50"  # likewise: refused only because the server's database is there
METADATA = "169.254.169.254"
BEHIND_GATEWAY = [INTERNET, DATABASE, METADATA]
MARKERS_TO = (INTERNET, PORT)
RESOLVED = "198.51.100.123"  # what the test's resolver answers for every name
ALLOW = [ONLINK, "169.254.0.0/16", "198.51.100.0/24"]


@pytest.fixture(scope="module")
def lan(server_ns) -> Iterator[Namespace]:
    with linked(server_ns, "tra0", "trb0") as neighbour:
        server_ns.run("ip", "addr", "add", f"{HOST_SIDE}/24", "dev", "tra0")
        neighbour.run("ip", "addr", "add", f"{NEIGHBOUR}/24", "dev", "trb0")
        for address in BEHIND_GATEWAY:
            neighbour.run("ip", "addr", "add", f"{address}/32", "dev", "trb0")
            # Through a gateway: a route of scope universe, not an on-link one.
            server_ns.run("ip", "route", "add", f"{address}/32", "via", NEIGHBOUR)
        yield neighbour


@pytest.fixture(scope="module")
def listening(lan) -> Iterator[ListeningHost]:
    with ListeningHost(lan, PORT) as host:
        yield host


@pytest.fixture(scope="module")
def database_url(lan, postgres) -> Iterator[str]:
    """A database whose host, for the server, is DATABASE:5432 behind the gateway."""
    forward = Relay.out_of(lan, DATABASE, 5432, postgres.port)
    url = postgres.create_database()
    yield url.replace(f"127.0.0.1:{postgres.port}", f"{DATABASE}:5432")
    forward.close()


def _answer(query: bytes) -> bytes:
    """A DNS answer to `query`: RESOLVED for an A question, no records for any other."""
    (qtype,) = struct.unpack_from("!H", query, len(query) - 4)
    header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, int(qtype == 1), 0, 0)
    answer = (struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(RESOLVED)
              if qtype == 1 else b"")
    return header + query[12:] + answer


@pytest.fixture(scope="module")
def resolver(lan) -> Iterator[list[bytes]]:
    """A DNS server on the neighbour (in the refused LAN); the queries it got."""
    sock = lan.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((NEIGHBOUR, 53))
    queries: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                query, peer = sock.recvfrom(512)
            except OSError:
                return
            queries.append(query)
            sock.sendto(_answer(query), peer)

    threading.Thread(target=serve, daemon=True, name="resolver").start()
    yield queries
    sock.close()


@pytest.fixture(scope="module")
def hardened(tmp_path_factory, server_ns, listening, resolver, database_url):
    instance = start_namespaced(tmp_path_factory, server_ns, key_inside=True,
                                database_url=database_url, egress_dns=json.dumps([NEIGHBOUR]))
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def allowing(tmp_path_factory, server_ns, listening, database_url):
    instance = start_namespaced(tmp_path_factory, server_ns, key_inside=True,
                                database_url=database_url, egress_allow=json.dumps(ALLOW))
    yield instance
    instance.stop()


def test_internet_through_the_gateway_is_reachable_control(hardened, server_ns, listening):
    assert_reached(hardened, server_ns, listening, INTERNET, MARKERS_TO)


@pytest.mark.parametrize("address", [NEIGHBOUR, DATABASE, METADATA],
                         ids=["on-link neighbour", "database host", "metadata"])
def test_cluster_network_is_unreachable_by_default(hardened, server_ns, listening, address):
    assert_refused(hardened, server_ns, listening, address, MARKERS_TO)


def test_database_port_is_unreachable(hardened):
    """The very port the server's store uses (the server itself is connected through it)."""
    assert_all_refused(hardened, [DATABASE], 5432)


def test_allowed_on_link_neighbour_is_reachable(allowing, server_ns, listening):
    assert_reached(allowing, server_ns, listening, NEIGHBOUR, MARKERS_TO)


@pytest.mark.parametrize("address", [DATABASE, METADATA], ids=["database host", "metadata"])
def test_allow_does_not_open_database_or_metadata(allowing, server_ns, listening, address):
    assert_refused(allowing, server_ns, listening, address, MARKERS_TO)


def test_allow_does_not_open_the_host_itself(allowing, server_ns):
    with host_listener(server_ns, HOST_SIDE) as port:
        assert_all_refused(allowing, [HOST_SIDE], port)


def test_dns_goes_to_the_named_resolver_only(hardened, resolver):
    """The session's resolv.conf names TCI_EGRESS_DNS, and a lookup is answered there,
    through the filter, although the resolver sits in the refused on-link subnet."""
    before = len(resolver)
    _, result = run_json(hardened, (
        "import json, socket\n"
        "conf = open('/etc/resolv.conf').read()\n"
        "print(json.dumps([conf, socket.gethostbyname('pypi.example.com')]))"
    ))
    conf, address = result
    assert [line for line in conf.splitlines() if line.startswith("nameserver")] == [
        f"nameserver {NEIGHBOUR}"]
    assert address == RESOLVED
    assert any(b"pypi" in query for query in resolver[before:])
