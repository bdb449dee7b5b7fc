"""Egress tests' common moves: a test host listening in a namespace of ours, what a sandbox
sends it, and the two verdicts (refused and nothing arrived; reached and all of it arrived).

A refusal is shown twice: the sandbox's attempt fails, and the listener, asked after sentinels
from the server's own namespace went through on the very same address, received nothing from
the sandbox. Namespaces themselves, and a server inside one, are netns.py's. Nothing is sent
anywhere but loopback and the tests' own namespaces."""

from __future__ import annotations

import contextlib
import json
import queue
import select
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

from tests.conftest import Server
from tests.security.conftest import run_json
from tests.security.netns import Namespace

# Runs in the test host's namespace: TCP and UDP on every address, one JSON line per event.
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


class ListeningHost:
    """The listener in a namespace of ours; events are read by a thread into a queue."""

    def __init__(self, namespace: Namespace, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            namespace.argv(sys.executable, "-c", LISTENER, str(port)),
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

    def __enter__(self) -> ListeningHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def sentinels(source: Namespace, addresses: list[str], port: int) -> list[str]:
    """From `source`, one TCP connection and one UDP datagram to each address, each with a
    payload of its own; returns the payloads."""
    payloads = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        tcp = f"sentinel-tcp-{address}-{uuid.uuid4().hex[:8]}"
        with source.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect((address, port))
            sock.sendall(tcp.encode())
        udp = f"sentinel-udp-{address}-{uuid.uuid4().hex[:8]}"
        with source.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(udp.encode(), (address, port))
        payloads += [tcp, udp]
    return payloads


def assert_only_sentinel(source: Namespace, listener: socket.socket) -> None:
    """Connect from `source`; the first connection the listener accepts must be ours."""
    payload = f"sentinel-{uuid.uuid4().hex}".encode()
    with source.socket(listener.family) as sock:
        sock.settimeout(10)
        sock.connect(listener.getsockname())
        sock.sendall(payload)
        listener.settimeout(10)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(100) == payload, "the listener got a connection from the sandbox"
    readable, _, _ = select.select([listener], [], [], 0)
    assert not readable, "the listener has another connection waiting: the sandbox's"


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


def attempt(server: Server, addresses: list[str], port: int,
            marker_to: tuple[str, int] | None = None, session_id: str | None = None):
    """The sandbox tries TCP and UDP to each address, then (with marker_to) sends markers to
    that allowed address. Returns (session id, results, payload, the markers the test host
    must receive: one by TCP, one by UDP)."""
    nonce = uuid.uuid4().hex[:12]
    payload, markers = f"from the sandbox {nonce}", f"marker {nonce}"
    allowed, test_port = marker_to or ("", 0)
    session_id, results = run_json(server, ATTEMPT.format(
        addresses=addresses, port=port, payload=payload.encode(),
        marker=markers.encode() if marker_to else b"", allowed=allowed, test_port=test_port,
    ), session_id)
    if marker_to:
        assert results.pop("marker") == ["connected", "sent"], results
    return session_id, results, payload, ([markers, markers] if marker_to else [])


# -- verdicts -------------------------------------------------------------------------------


def assert_refused(server: Server, server_ns: Namespace, listening: ListeningHost,
                   address: str, markers_to: tuple[str, int]) -> None:
    """The sandbox cannot reach `address` on the listening host's port, and nothing of its
    arrived there (up to its markers), although the server's namespace reaches the address
    (the sentinels)."""
    _, results, _, markers = attempt(server, [address], listening.port, markers_to)
    assert results[address][0] in REFUSED, results
    assert listening.drain_until(
        markers + sentinels(server_ns, [address], listening.port)) == []


def assert_reached(server: Server, server_ns: Namespace, listening: ListeningHost,
                   address: str, markers_to: tuple[str, int], peer: str | None = None) -> None:
    """The control: the sandbox reaches `address`, and its TCP and UDP payloads arrive (from
    `peer`, when given: the address the host's side of the link sends from)."""
    _, results, payload, markers = attempt(server, [address], listening.port, markers_to)
    assert results == {address: ["connected", "sent"]}
    events = listening.drain_until(markers + sentinels(server_ns, [address], listening.port))
    assert sorted((e["proto"], e["data"]) for e in events) == [
        ("tcp", payload), ("udp", payload)]
    if peer is not None:
        assert {e["peer"] for e in events} == {peer}, events


def assert_all_refused(server: Server, targets: list[str], port: int,
                       session_id: str | None = None) -> str:
    """The sandbox (a new session, or `session_id`'s) reaches none of `targets` on `port`;
    returns the session's id."""
    session_id, results, _, _ = attempt(server, targets, port, session_id=session_id)
    assert all(result[0] in REFUSED for result in results.values()), (session_id, results)
    return session_id


@contextlib.contextmanager
def host_listener(server_ns: Namespace, address: str) -> Iterator[int]:
    """A TCP listener on `address` in the server's namespace (the host's own services);
    yields its port. When the block ends without failing, the first connection it accepts
    must be a sentinel of ours: none from a sandbox waits before it."""
    with server_ns.listener(address) as listener:
        yield listener.getsockname()[1]
        assert_only_sentinel(server_ns, listener)
