"""Network attacks from an `egress` sandbox. The server runs in a network namespace this test
creates (its "host"), joined by a veth pair to a second one (the test host, with private,
shared, link-local and ULA addresses, plus one documentation address the filter allows); the
server's namespace also holds an address outside every private range, and listeners on its
loopback and in its abstract UNIX socket namespace. Nothing of the real host's network is
changed, and no traffic goes anywhere but loopback and these namespaces.

For each target, the sandbox's attempt fails and the listener, asked after a sentinel
connection from the server's namespace went through, received nothing from the sandbox. A
positive control shows the same path works for an allowed destination, so the refusals are
the filter's doing."""

from __future__ import annotations

import os
import select
import socket
import uuid
from collections.abc import Iterator

import pytest

from tests.security.conftest import HostView, run_json
from tests.security.egress import (
    ListeningHost,
    assert_all_refused,
    assert_reached,
    assert_refused,
    host_listener,
)
from tests.security.netns import linked, start_namespaced

PORT = 18093
# (server side, test host side, prefix) of each subnet on the veth pair.
SUBNETS = {
    "10/8": ("10.213.97.1", "10.213.97.2", 24),
    "172.16/12": ("172.30.97.1", "172.30.97.2", 24),
    "192.168/16": ("192.168.213.1", "192.168.213.2", 24),
    "100.64/10 (shared)": ("100.100.97.1", "100.100.97.2", 24),
    "169.254/16 (link-local)": ("169.254.213.1", "169.254.213.2", 24),
    "fc00::/7 (ULA)": ("fd00:213:97::1", "fd00:213:97::2", 64),
}
# TEST-NET-3 is no site's private range, so the filter treats it as the internet: one address
# on each side, the peer's reached through a gateway. The server side is also "the host's own
# address".
ALLOWED_HOST_SIDE, ALLOWED_PEER = "203.0.113.97", "203.0.113.98"
MARKERS_TO = (ALLOWED_PEER, PORT)


@pytest.fixture(scope="module")
def test_host(server_ns) -> Iterator[ListeningHost]:
    """The test host: a namespace of our own joined to the server's by a veth pair."""
    with linked(server_ns, "tsa0", "tsb0") as neighbour:
        for host_side, peer_side, prefix in SUBNETS.values():
            extra = ["nodad"] if ":" in host_side else []
            server_ns.run("ip", "addr", "add", f"{host_side}/{prefix}", "dev", "tsa0", *extra)
            neighbour.run("ip", "addr", "add", f"{peer_side}/{prefix}", "dev", "tsb0", *extra)
        server_ns.run("ip", "addr", "add", f"{ALLOWED_HOST_SIDE}/32", "dev", "tsa0")
        neighbour.run("ip", "addr", "add", f"{ALLOWED_PEER}/32", "dev", "tsb0")
        # Through a gateway (the peer's private address): an on-link route would make the
        # peer a neighbour, which the filter refuses.
        server_ns.run("ip", "route", "add", f"{ALLOWED_PEER}/32", "via", SUBNETS["10/8"][1],
                      "src", ALLOWED_HOST_SIDE)
        neighbour.run("ip", "route", "add", f"{ALLOWED_HOST_SIDE}/32", "dev", "tsb0")
        with ListeningHost(neighbour, PORT) as host:
            yield host


@pytest.fixture(scope="module")
def hardened(tmp_path_factory, server_ns, test_host):
    """This module's server (and the canary's) runs in the server namespace."""
    instance = start_namespaced(tmp_path_factory, server_ns)
    yield instance
    instance.stop()


def test_allowed_destination_is_reachable_control(hardened, server_ns, test_host):
    """The control: the sandbox's path to the test host works for an allowed address."""
    assert_reached(hardened, server_ns, test_host, ALLOWED_PEER, MARKERS_TO,
                   peer=ALLOWED_HOST_SIDE)


@pytest.mark.parametrize("subnet", SUBNETS)
def test_private_test_host_is_unreachable(hardened, server_ns, test_host, subnet):
    assert_refused(hardened, server_ns, test_host, SUBNETS[subnet][1], MARKERS_TO)


def test_host_own_address_is_unreachable(hardened, server_ns, test_host):
    """An address of the host outside every private range (the veth's server side)."""
    with host_listener(server_ns, ALLOWED_HOST_SIDE) as port:
        assert_all_refused(hardened, [ALLOWED_HOST_SIDE], port)


def test_host_loopback_service_is_unreachable(hardened, server_ns):
    with host_listener(server_ns, "127.0.0.1") as port:
        # 127.0.0.1 and ::1 are the sandbox's own loopback; 10.0.2.2 is where slirp4netns
        # would forward to the host's loopback (disabled, and filtered).
        targets = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "10.0.2.2"]
        session_id = assert_all_refused(hardened, targets, port)
    # The session's network namespace is neither the server's nor the real host's.
    worker = HostView(session_id).worker_pid()
    assert os.stat(f"/proc/{worker}/ns/net").st_ino not in (
        server_ns.inode, os.stat("/proc/self/ns/net").st_ino)


def test_abstract_unix_socket_of_the_host_is_unreachable(hardened, server_ns):
    """Abstract UNIX socket names belong to a network namespace: the server's is "the host's"."""
    name = f"\0tci-security-{uuid.uuid4().hex}"
    with server_ns.socket(socket.AF_UNIX) as listener:
        listener.bind(name)
        listener.listen(8)
        _, result = run_json(hardened, (
            "import errno, json, socket\n"
            "try:\n"
            "    with socket.socket(socket.AF_UNIX) as sock:\n"
            f"        sock.connect({name!r})\n"
            "        sock.sendall(b'from the sandbox')\n"
            "    result = 'connected'\n"
            "except OSError as exc:\n"
            "    result = errno.errorcode[exc.errno]\n"
            "print(json.dumps(result))"
        ))
        assert result == "ECONNREFUSED"
        payload = f"sentinel-{uuid.uuid4().hex}".encode()
        with server_ns.socket(socket.AF_UNIX) as sock:
            sock.connect(name)
            sock.sendall(payload)
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                assert conn.recv(100) == payload, "the listener got the sandbox's connection"
        readable, _, _ = select.select([listener], [], [], 0)
        assert not readable
