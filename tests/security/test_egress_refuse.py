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
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import TCI, free_port
from tests.security.conftest import LIMITS, run_json
from tests.security.netns import (
    REFUSED,
    ListeningHost,
    Namespace,
    NamespacedServer,
    _pump,
    attempt,
    link,
    sentinels,
)

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
def server_ns() -> Iterator[Namespace]:
    namespace = Namespace()
    yield namespace
    namespace.close()


@pytest.fixture(scope="module")
def lan(server_ns) -> Iterator[Namespace]:
    neighbour = Namespace()
    try:
        link(server_ns, neighbour, "tra0", "trb0")
        server_ns.run("ip", "addr", "add", f"{HOST_SIDE}/24", "dev", "tra0")
        neighbour.run("ip", "addr", "add", f"{NEIGHBOUR}/24", "dev", "trb0")
        for address in BEHIND_GATEWAY:
            neighbour.run("ip", "addr", "add", f"{address}/32", "dev", "trb0")
            # Through a gateway: a route of scope universe, not an on-link one.
            server_ns.run("ip", "route", "add", f"{address}/32", "via", NEIGHBOUR)
        yield neighbour
    finally:
        neighbour.close()


@pytest.fixture(scope="module")
def listening(lan) -> Iterator[ListeningHost]:
    host = ListeningHost(lan, PORT)
    yield host
    host.close()


class Forward:
    """A TCP listener in a namespace of ours, relayed to a port on the real host's loopback."""

    def __init__(self, namespace: Namespace, address: str, port: int, target: int) -> None:
        self.target = target
        self.listener = namespace.listener(address, port)
        threading.Thread(target=self._accept, daemon=True, name="forward").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            upstream.settimeout(None)
            threading.Thread(target=_pump, args=(upstream, conn), daemon=True).start()
            threading.Thread(target=_pump, args=(conn, upstream), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def database_url(lan, postgres) -> Iterator[str]:
    """A database whose host, for the server, is DATABASE:5432 behind the gateway."""
    forward = Forward(lan, DATABASE, 5432, postgres.port)
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


def start_namespaced(tmp_path_factory, namespace: Namespace, **overrides: str
                     ) -> NamespacedServer:
    """As netns.start_namespaced, but its key is made inside the namespace too: the database
    is reachable only from there (and nothing may be sent to its address from the real host)."""
    data_dir = tmp_path_factory.mktemp("tci-refuse") / f"data-{free_port()}"
    data_dir.mkdir(parents=True)
    settings = {**LIMITS, "network": "egress", "max_sessions": 200, **overrides}
    env = {f"TCI_{name.upper()}": str(value) for name, value in settings.items()}
    created = subprocess.run(
        namespace.argv(TCI, "keys", "create", "--name", data_dir.name), capture_output=True,
        text=True, timeout=60, env={**os.environ, "TCI_DATA_DIR": str(data_dir), **env})
    assert created.returncode == 0, created.stderr
    server = NamespacedServer(data_dir, free_port(), created.stdout.strip().splitlines()[-1],
                              env, namespace=namespace)
    server.start()
    return server


@pytest.fixture(scope="module")
def hardened(tmp_path_factory, server_ns, listening, resolver, database_url):
    instance = start_namespaced(tmp_path_factory, server_ns, database_url=database_url,
                                egress_dns=json.dumps([NEIGHBOUR]))
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def allowing(tmp_path_factory, server_ns, listening, database_url):
    instance = start_namespaced(tmp_path_factory, server_ns, database_url=database_url,
                                egress_allow=json.dumps(ALLOW))
    yield instance
    instance.stop()


def assert_refused(server, server_ns, listening, address: str) -> None:
    _, results, _, markers = attempt(server, [address], PORT, MARKERS_TO)
    assert results[address][0] in REFUSED, results
    # Nothing from the sandbox arrived (up to its markers), although the server's namespace
    # reaches the address (the sentinels).
    assert listening.drain_until(markers + sentinels(server_ns, [address], PORT)) == []


def assert_reached(server, server_ns, listening, address: str) -> None:
    _, results, payload, markers = attempt(server, [address], PORT, MARKERS_TO)
    assert results == {address: ["connected", "sent"]}
    events = listening.drain_until(markers + sentinels(server_ns, [address], PORT))
    assert sorted((e["proto"], e["data"]) for e in events) == [
        ("tcp", payload), ("udp", payload)]


def test_internet_through_the_gateway_is_reachable_control(hardened, server_ns, listening):
    assert_reached(hardened, server_ns, listening, INTERNET)


@pytest.mark.parametrize("address", [NEIGHBOUR, DATABASE, METADATA],
                         ids=["on-link neighbour", "database host", "metadata"])
def test_cluster_network_is_unreachable_by_default(hardened, server_ns, listening, address):
    assert_refused(hardened, server_ns, listening, address)


def test_database_port_is_unreachable(hardened):
    """The very port the server's store uses (the server itself is connected through it)."""
    _, results, _, _ = attempt(hardened, [DATABASE], 5432)
    assert results[DATABASE][0] in REFUSED, results


def test_allowed_on_link_neighbour_is_reachable(allowing, server_ns, listening):
    assert_reached(allowing, server_ns, listening, NEIGHBOUR)


@pytest.mark.parametrize("address", [DATABASE, METADATA], ids=["database host", "metadata"])
def test_allow_does_not_open_database_or_metadata(allowing, server_ns, listening, address):
    assert_refused(allowing, server_ns, listening, address)


def test_allow_does_not_open_the_host_itself(allowing, server_ns):
    with server_ns.listener(HOST_SIDE) as listener:
        port = listener.getsockname()[1]
        _, results, _, _ = attempt(allowing, [HOST_SIDE], port)
        assert results[HOST_SIDE][0] in REFUSED, results


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
