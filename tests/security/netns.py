"""Network namespaces of the tests' own, and a whole `tci serve` running inside one.

The egress tests need a host whose network they may change (add addresses, routes, a
neighbour) without touching the real host's: the server runs in a namespace made here, which
is "the host" for its sandboxes and for slirp4netns. The test reaches it through a relay from
the real host's loopback to the namespace's loopback; sockets the test needs inside a
namespace are made by a thread that joined it (a socket stays in the namespace it was made
in, whoever uses it later). Nothing is sent anywhere but loopback and these namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import pytest

from tests.conftest import TCI, Server, cli, free_port
from tests.security.conftest import LIMITS, run_json

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_the_test() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Namespace:
    """A network namespace held by a sleeping process, which dies with the test run (so the
    namespace goes even if the run is killed)."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", "infinity"], preexec_fn=_die_with_the_test,
        )
        self.path = f"/proc/{self.holder.pid}/ns/net"
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 30
        while self._inode() in (own, None):
            assert time.monotonic() < deadline, "unshare --net did not make a namespace"
            time.sleep(0.01)
        self.run("ip", "link", "set", "lo", "up")

    def _inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except OSError:
            return None

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def argv(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, *argv: str) -> str:
        result = subprocess.run(self.argv(*argv), capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"
        return result.stdout

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` on a thread that joined this namespace (only that thread does)."""
        outcome: dict[str, object] = {}

        def inside() -> None:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                outcome["value"] = function()
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                os.close(fd)

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
               ) -> socket.socket:
        return self.call(lambda: socket.socket(family, kind))

    def listener(self, address: str, port: int = 0) -> socket.socket:
        sock = self.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        sock.bind((address, port))
        sock.listen(8)
        return sock

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def link(near: Namespace, far: Namespace, near_name: str, far_name: str) -> None:
    """A veth pair between two of our namespaces (made inside `near`: the host never sees it)."""
    near.run("ip", "link", "add", near_name, "type", "veth", "peer", "name", far_name,
             "netns", str(far.holder.pid))
    near.run("ip", "link", "set", near_name, "up")
    far.run("ip", "link", "set", far_name, "up")


class Relay:
    """The real host's 127.0.0.1:port relayed to 127.0.0.1:port inside a namespace."""

    def __init__(self, namespace: Namespace, port: int) -> None:
        self.namespace, self.port = namespace, port
        self.listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        upstream = self.namespace.socket()
        try:
            upstream.connect(("127.0.0.1", self.port))
        except OSError:
            conn.close()
            upstream.close()
            return
        other = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
        other.start()
        _pump(conn, upstream)
        other.join()
        conn.close()
        upstream.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


@dataclass
class NamespacedServer(Server):
    """A `tci serve` whose network namespace is one of ours, reached through a Relay."""

    namespace: Namespace | None = None
    relay: Relay | None = None

    def start(self) -> None:
        assert self.namespace is not None
        self.relay = Relay(self.namespace, self.port)
        self.log_path = self.data_dir / "server.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.namespace.argv(TCI, "serve", "--port", str(self.port)),
                env={**os.environ, "TCI_DATA_DIR": str(self.data_dir), **self.env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tci serve exited early:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"tci serve did not become healthy:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        super().stop(sig)
        if self.relay is not None:
            self.relay.close()


def start_namespaced(tmp_path_factory: pytest.TempPathFactory, namespace: Namespace,
                     **overrides: str) -> NamespacedServer:
    """A hardened egress server (the security suite's LIMITS) inside `namespace`."""
    data_dir = tmp_path_factory.mktemp("tci-netns") / f"data-{free_port()}"
    data_dir.mkdir(parents=True)
    settings = {**LIMITS, "network": "egress", "max_sessions": 200, **overrides}
    env = {f"TCI_{name.upper()}": str(value) for name, value in settings.items()}
    created = cli(data_dir, "keys", "create", "--name", "test", env=env)
    assert created.returncode == 0, created.stderr
    server = NamespacedServer(data_dir, free_port(), created.stdout.strip().splitlines()[-1],
                              env, namespace=namespace)
    server.start()
    return server


# -- a test host: listeners in a namespace, and what a sandbox sends them ------------------

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
