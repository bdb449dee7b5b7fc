"""Network namespaces of the tests' own, and a whole `tci serve` running inside one.

The egress tests need a host whose network they may change (add addresses, routes, a
neighbour) without touching the real host's: the server runs in a namespace made here, which
is "the host" for its sandboxes and for slirp4netns. The test reaches it through a relay from
the real host's loopback to the namespace's loopback; sockets the test needs inside a
namespace are made by a thread that joined it (a socket stays in the namespace it was made
in, whoever uses it later). Nothing is sent anywhere but loopback and these namespaces.
What a sandbox sends into such a network, and what arrives, is egress.py's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from tests.conftest import TCI, Server, free_port
from tests.security.conftest import LIMITS

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


@contextlib.contextmanager
def linked(near: Namespace, near_name: str, far_name: str) -> Iterator[Namespace]:
    """A new namespace joined to `near` by a veth pair (`near_name` on near's side), closed
    when the block ends."""
    far = Namespace()
    try:
        link(near, far, near_name, far_name)
        yield far
    finally:
        far.close()


class Relay:
    """Each connection `listener` accepts is spliced to one `connect()` opens, on threads of
    its own, until closed. Where each end lives is the caller's: see `into` and `out_of`."""

    def __init__(self, listener: socket.socket, connect: Callable[[], socket.socket]) -> None:
        self.listener, self.connect = listener, connect
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    @classmethod
    def into(cls, namespace: Namespace, port: int) -> Relay:
        """The real host's 127.0.0.1:port relayed to 127.0.0.1:port inside `namespace`."""
        def connect() -> socket.socket:
            upstream = namespace.socket()
            try:
                upstream.connect(("127.0.0.1", port))
            except OSError:
                upstream.close()
                raise
            return upstream
        return cls(socket.create_server(("127.0.0.1", port)), connect)

    @classmethod
    def out_of(cls, namespace: Namespace, address: str, port: int, target: int) -> Relay:
        """`address`:`port` inside `namespace` relayed to 127.0.0.1:`target` on the real host."""
        def connect() -> socket.socket:
            upstream = socket.create_connection(("127.0.0.1", target), timeout=10)
            upstream.settimeout(None)
            return upstream
        return cls(namespace.listener(address, port), connect)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            upstream = self.connect()
        except OSError:
            conn.close()
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

    def argv(self) -> list[str]:
        assert self.namespace is not None
        return self.namespace.argv(*super().argv())

    def start(self) -> None:
        assert self.namespace is not None
        self.relay = Relay.into(self.namespace, self.port)
        super().start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        super().stop(sig)
        if self.relay is not None:
            self.relay.close()


def start_namespaced(tmp_path_factory: pytest.TempPathFactory, namespace: Namespace, *,
                     key_inside: bool = False, **overrides: str) -> NamespacedServer:
    """A hardened egress server (the security suite's LIMITS) inside `namespace`. With
    `key_inside`, its API key is made inside the namespace too: for a database reachable only
    from there (nothing may be sent to its address from the real host)."""
    data_dir = tmp_path_factory.mktemp("tci-netns") / f"data-{free_port()}"
    data_dir.mkdir(parents=True)
    settings = {**LIMITS, "network": "egress", "max_sessions": 200, **overrides}
    env = {f"TCI_{name.upper()}": str(value) for name, value in settings.items()}
    # Named by the data dir: two servers may share one database.
    argv = [TCI, "keys", "create", "--name", data_dir.name]
    created = subprocess.run(namespace.argv(*argv) if key_inside else argv,
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "TCI_DATA_DIR": str(data_dir), **env})
    assert created.returncode == 0, created.stderr
    server = NamespacedServer(data_dir, free_port(), created.stdout.strip().splitlines()[-1],
                              env, namespace=namespace)
    server.start()
    return server
