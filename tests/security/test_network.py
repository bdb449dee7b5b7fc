"""Network attacks from an `egress` sandbox, aimed only at hosts this test creates: a listener on
the host's loopback, a test host in a network namespace of our own (a veth pair with private,
shared, link-local and ULA addresses, plus one documentation address the filter allows and
one on the host side that the server finds among the host's own addresses at start), and a
listener in the host's abstract UNIX socket namespace.

For each, the sandbox's attempt fails and the listener, asked after a sentinel connection
from the host went through, received nothing from the sandbox. A positive control shows the
same path works for an allowed destination, so the refusals are the filter's doing.
No traffic goes anywhere but loopback and the namespace made here."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from tests.security.conftest import HostView, run_json, start_hardened

TAG = uuid.uuid4().hex[:6]
NETNS = f"tcisec-{TAG}"
HOST_IF, PEER_IF = f"tsa{TAG}", f"tsb{TAG}"
PORT = 18093
# (host side, test host side, prefix) of each subnet on the veth pair.
SUBNETS = {
    "10/8": ("10.213.97.1", "10.213.97.2", 24),
    "172.16/12": ("172.30.97.1", "172.30.97.2", 24),
    "192.168/16": ("192.168.213.1", "192.168.213.2", 24),
    "100.64/10 (shared)": ("100.100.97.1", "100.100.97.2", 24),
    "169.254/16 (link-local)": ("169.254.213.1", "169.254.213.2", 24),
    "fc00::/7 (ULA)": ("fd00:213:97::1", "fd00:213:97::2", 64),
}
# TEST-NET-3, which the filter deliberately allows (some mirrors live in such ranges): one
# address on each side, as /32 host routes only.
ALLOWED_HOST_SIDE, ALLOWED_PEER = "203.0.113.97", "203.0.113.98"

# Runs in the test namespace: TCP and UDP on every address, one JSON line per event.
LISTENER = r"""
import json, select, socket, sys
port = int(sys.argv[1])
sockets = []
for family, any_address in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((any_address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sockets.append(sock)
print(json.dumps({'ready': True}), flush=True)
while True:
    readable, _, _ = select.select(sockets + [sys.stdin], [], [])
    for sock in readable:
        if sock is sys.stdin:
            sys.exit(0)
        if sock.type == socket.SOCK_STREAM:
            conn, peer = sock.accept()
            conn.settimeout(2)
            try:
                data = conn.recv(100)
            except OSError:
                data = b''
            conn.close()
            event = {'proto': 'tcp', 'peer': peer[0], 'data': data.decode(errors='replace')}
        else:
            data, peer = sock.recvfrom(100)
            event = {'proto': 'udp', 'peer': peer[0], 'data': data.decode(errors='replace')}
        print(json.dumps(event), flush=True)
"""


def ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"


class NamespaceHost:
    """The listener in our namespace; events are read by a thread into a queue."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, sys.executable, "-c", LISTENER, str(PORT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.events: queue.Queue[dict] = queue.Queue()
        first = json.loads(self.process.stdout.readline() or "{}")
        assert first == {"ready": True}, first
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def drain_until(self, sentinels: list[str]) -> list[dict]:
        """Events up to and including every sentinel (each payload as many times as it is
        listed), sentinels left out. The listener reports in arrival order, socket by
        socket."""
        seen: list[dict] = []
        waiting = list(sentinels)
        while waiting:
            event = self.events.get(timeout=30)
            seen.append(event)
            if event.get("data") in waiting:
                waiting.remove(event["data"])
        return [event for event in seen if event.get("data") not in sentinels]

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


@pytest.fixture(scope="module")
def test_host() -> Iterator[NamespaceHost]:
    """A network namespace of our own joined to the host by a veth pair."""
    created = False
    try:
        ip("netns", "add", NETNS)
        created = True
        ip("link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF)
        ip("link", "set", PEER_IF, "netns", NETNS)
        for host_side, peer_side, prefix in SUBNETS.values():
            extra = ["nodad"] if ":" in host_side else []
            ip("addr", "add", f"{host_side}/{prefix}", "dev", HOST_IF, *extra)
            ip("addr", "add", f"{peer_side}/{prefix}", "dev", PEER_IF, *extra, netns=NETNS)
        ip("addr", "add", f"{ALLOWED_HOST_SIDE}/32", "dev", HOST_IF)
        ip("addr", "add", f"{ALLOWED_PEER}/32", "dev", PEER_IF, netns=NETNS)
        ip("link", "set", HOST_IF, "up")
        ip("link", "set", PEER_IF, "up", netns=NETNS)
        ip("link", "set", "lo", "up", netns=NETNS)
        ip("route", "add", f"{ALLOWED_PEER}/32", "dev", HOST_IF, "src", ALLOWED_HOST_SIDE)
        ip("route", "add", f"{ALLOWED_HOST_SIDE}/32", "dev", PEER_IF, netns=NETNS)
        host = NamespaceHost()
        try:
            yield host
        finally:
            host.close()
    finally:
        with contextlib.suppress(AssertionError):
            ip("link", "del", HOST_IF)
        if created:
            ip("netns", "del", NETNS)


@pytest.fixture(scope="module")
def hardened(tmp_path_factory, test_host):
    """Started after the veth pair exists, so its host side is among the host's addresses
    the server reads at start."""
    instance = start_hardened(tmp_path_factory, network="egress")
    yield instance
    instance.stop()


def host_sentinels(addresses: list[str]) -> list[str]:
    """From the host, one TCP connection and one UDP datagram to each address, each with a
    payload of its own; returns the payloads."""
    payloads = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        tcp = f"sentinel-tcp-{address}-{uuid.uuid4().hex[:8]}"
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect((address, PORT))
            sock.sendall(tcp.encode())
        udp = f"sentinel-udp-{address}-{uuid.uuid4().hex[:8]}"
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(udp.encode(), (address, PORT))
        payloads += [tcp, udp]
    return payloads


ATTEMPT = """
import errno, json, socket

def attempt(address, port, payload):
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect((address, port))
            sock.sendall(payload)
        tcp = 'connected'
    except OSError as exc:
        tcp = errno.errorcode.get(exc.errno, type(exc).__name__)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload, (address, port))
        udp = 'sent'
    except OSError as exc:
        udp = errno.errorcode.get(exc.errno, type(exc).__name__)
    return [tcp, udp]

results = {{address: attempt(address, {port}, {payload!r}) for address in {addresses!r}}}
if {marker!r}:
    # Last, through the same slirp4netns path: it forwards in order, so once the test host
    # has these, it has everything the sandbox sent before them.
    results['marker'] = attempt({allowed!r}, {test_port}, {marker!r})
print(json.dumps(results))
"""

REFUSED = {"EHOSTUNREACH", "ENETUNREACH", "ECONNREFUSED", "EACCES", "EPERM", "TimeoutError"}


def attempt(server, addresses: list[str], port: int = PORT, marker: bool = True):
    """The sandbox tries TCP and UDP to each address, then (marker=True) sends markers to
    the allowed test host address. Returns (session id, results, payload, the markers the
    test host must receive: one by TCP, one by UDP)."""
    nonce = uuid.uuid4().hex[:12]
    payload, markers = f"from the sandbox {nonce}", f"marker {nonce}"
    session_id, results = run_json(server, ATTEMPT.format(
        addresses=addresses, port=port, payload=payload.encode(),
        marker=markers.encode() if marker else b"", allowed=ALLOWED_PEER, test_port=PORT,
    ))
    if marker:
        assert results.pop("marker") == ["connected", "sent"], results
    return session_id, results, payload, ([markers, markers] if marker else [])


def test_allowed_destination_is_reachable_control(hardened, test_host):
    """The control: the sandbox's path to our namespace works for an allowed address."""
    _, results, payload, markers = attempt(hardened, [ALLOWED_PEER])
    assert results == {ALLOWED_PEER: ["connected", "sent"]}
    events = test_host.drain_until(markers + host_sentinels([ALLOWED_PEER]))
    assert sorted((e["proto"], e["peer"], e["data"]) for e in events) == [
        ("tcp", ALLOWED_HOST_SIDE, payload), ("udp", ALLOWED_HOST_SIDE, payload)]


@pytest.mark.parametrize("subnet", SUBNETS)
def test_private_test_host_is_unreachable(hardened, test_host, subnet):
    address = SUBNETS[subnet][1]
    _, results, _, markers = attempt(hardened, [address])
    tcp, _udp = results[address]
    assert tcp in REFUSED, results
    # The test host got nothing from the sandbox (up to its markers), although the host
    # reaches it on that very address (the sentinels).
    assert test_host.drain_until(markers + host_sentinels([address])) == []


def test_host_own_address_is_unreachable(hardened, test_host):
    """An address of the host outside every private range (the veth's host side)."""
    with socket.socket() as listener:
        listener.bind((ALLOWED_HOST_SIDE, 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        _, results, _, _ = attempt(hardened, [ALLOWED_HOST_SIDE], port, marker=False)
        assert results[ALLOWED_HOST_SIDE][0] in REFUSED, results
        assert_only_sentinel(listener, (ALLOWED_HOST_SIDE, port))


def assert_only_sentinel(listener: socket.socket, address: tuple[str, int]) -> None:
    """Connect from the host; the first connection the listener accepts must be ours."""
    payload = f"sentinel-{uuid.uuid4().hex}".encode()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(payload)
        listener.settimeout(10)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(100) == payload, "the listener got a connection from the sandbox"
    readable, _, _ = select.select([listener], [], [], 0)
    assert not readable


def test_host_loopback_service_is_unreachable(hardened):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        # 127.0.0.1 and ::1 are the sandbox's own loopback; 10.0.2.2 is where slirp4netns
        # would forward to the host's loopback (disabled, and filtered).
        targets = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "10.0.2.2"]
        session_id, results, _, _ = attempt(hardened, targets, port, marker=False)
        assert all(result[0] in REFUSED for result in results.values()), results
        assert_only_sentinel(listener, ("127.0.0.1", port))
    # The host: the session's network namespace is neither the host's nor shared.
    worker = HostView(session_id).worker_pid()
    assert os.readlink(f"/proc/{worker}/ns/net") != os.readlink("/proc/self/ns/net")


def test_abstract_unix_socket_of_the_host_is_unreachable(hardened):
    name = f"\0tci-security-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as listener:
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
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(name)
            sock.sendall(payload)
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                assert conn.recv(100) == payload, "the listener got the sandbox's connection"
        readable, _, _ = select.select([listener], [], [], 0)
        assert not readable
