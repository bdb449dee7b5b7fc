"""What tci is judged against, measured in the same run: in-process `exec` (the floor), a raw
ipykernel driven by jupyter_client, and Jupyter Kernel Gateway over its REST and WebSocket API."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any

import httpx
from tests.process import http_ok, stop_process, wait_until_up

from .server import BenchError, free_port
from .stats import Series

_KERNEL = "python3"  # ipykernel's own spec, run by this interpreter


def exec_floor(samples: int) -> Series:
    """`exec` of the source string (compiled each time, as any server must) in this process."""
    namespace: dict[str, Any] = {"x": 0}
    code = "x += 1"
    for _ in range(1000):
        exec(code, namespace)
    series = Series("in-process exec")
    for _ in range(samples):
        start = perf_counter()
        exec(code, namespace)
        series.samples.append(perf_counter() - start)
    return series


# -- ipykernel through jupyter_client ---------------------------------------------------------


def _kernel_run(client: Any, code: str, timeout: float = 60) -> str:
    """Execute and wait for both the reply and the kernel going idle; returns stdout."""
    msg_id = client.execute(code, store_history=True)
    while True:
        reply = client.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    if reply["content"]["status"] != "ok":
        raise BenchError(f"ipykernel: {reply['content'].get('evalue')}")
    stdout = []
    while True:
        message = client.get_iopub_msg(timeout=timeout)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream" and content["name"] == "stdout":
            stdout.append(content["text"])
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(stdout)


@contextlib.contextmanager
def _ipykernel(timeout: float = 60):
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name=_KERNEL)
    manager.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=timeout)
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _round_trips(run: Callable[[str], str], series: Series, samples: int, warmup: int,
                 time_limit: float) -> Series:
    """`samples` timed calls of `x += 1` after `warmup` untimed ones, stopping early after
    `time_limit` seconds; then checks that every call ran."""
    run("x = 0")
    deadline = perf_counter() + time_limit
    calls = 0
    for index in range(warmup + samples):
        start = perf_counter()
        run("x += 1")
        calls += 1
        if index >= warmup:
            series.samples.append(perf_counter() - start)
        if start > deadline and series.samples:
            break
    if run("print(x)") != f"{calls}\n":
        raise BenchError(f"{series.name} lost an execution")
    return series


def ipykernel_round_trip(samples: int, warmup: int, time_limit: float) -> Series:
    with _ipykernel() as client:
        return _round_trips(partial(_kernel_run, client), Series("ipykernel (jupyter_client)"),
                            samples, warmup, time_limit)


def ipykernel_cold_start(samples: int) -> Series:
    """Kernel process start to the output of the first `print(1)`."""
    series = Series("ipykernel cold start, first print(1)")
    for _ in range(samples):
        start = perf_counter()
        with _ipykernel() as client:
            if _kernel_run(client, "print(1)") != "1\n":
                raise BenchError("ipykernel: unexpected output of print(1)")
            series.samples.append(perf_counter() - start)
    return series


# -- Jupyter Kernel Gateway --------------------------------------------------------------------


class KernelGateway:
    """`jupyter kernelgateway` on a free loopback port, in its own process group."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_path = log_dir / "kernel-gateway.log"
        self.process: subprocess.Popen | None = None
        self.session = uuid.uuid4().hex

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        script = Path(sys.executable).with_name("jupyter-kernelgateway")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "kernel_gateway"]
        command += ["--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={self.port}",
                    "--KernelGatewayApp.port_retries=0"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_until_up(self.process, lambda: http_ok(f"{self.url}/api"), timeout=timeout,
                      what="kernel gateway", log=lambda: f"see {self.log_path}",
                      error=BenchError)

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM, timeout=30)

    def create_kernel(self) -> str:
        response = httpx.post(f"{self.url}/api/kernels", json={"name": _KERNEL}, timeout=60)
        if response.status_code != 201:
            raise BenchError(f"kernel gateway: POST /api/kernels: HTTP {response.status_code}")
        return response.json()["id"]

    def delete_kernel(self, kernel_id: str) -> None:
        httpx.delete(f"{self.url}/api/kernels/{kernel_id}", timeout=60)

    @contextlib.contextmanager
    def kernel(self, quickack: bool = False) -> Iterator[GatewayChannels]:
        """A new kernel and its channels WebSocket; the kernel is deleted at exit."""
        from websockets.sync.client import connect

        kernel_id = self.create_kernel()
        try:
            url = f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels"
            with connect(url, max_size=None, compression=None) as websocket:
                yield GatewayChannels(websocket, self.session, quickack)
        finally:
            self.delete_kernel(kernel_id)


QUICKACK_NOTE = (
    "The gateway's WebSocket does not set TCP_NODELAY, so after the first message of a cell "
    "each small message waits for the client's ACK, which Linux delays by up to 40 ms. The "
    "row 'client with TCP_QUICKACK' makes the client acknowledge at once (TCP_QUICKACK "
    "before every send and receive): the best this peer does without changing it; its "
    "kernel starts are timed that way too."
)


class GatewayChannels:
    """Jupyter messages over the gateway's WebSocket (the JSON protocol, channel in the body);
    `quickack`: see QUICKACK_NOTE."""

    def __init__(self, websocket: Any, session: str, quickack: bool) -> None:
        self.websocket = websocket
        self.session = session
        self.socket = websocket.socket if quickack else None

    def _ack_now(self) -> None:
        if self.socket is not None:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def run(self, code: str, timeout: float = 60) -> str:
        """One execute_request; waits for the reply and for idle; returns stdout."""
        msg_id = uuid.uuid4().hex
        self._ack_now()
        self.websocket.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "bench",
                       "session": self.session, "date": datetime.now(UTC).isoformat(),
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        replied = idle = False
        stdout = []
        while not (replied and idle):
            message = json.loads(self.websocket.recv(timeout=timeout))
            self._ack_now()
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["header"]["msg_type"], message["content"]
            if kind == "execute_reply":
                if content["status"] != "ok":
                    raise BenchError(f"kernel gateway: {content.get('evalue')}")
                replied = True
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "stream" and content["name"] == "stdout":
                stdout.append(content["text"])
        return "".join(stdout)


def gateway_round_trip(gateway: KernelGateway, samples: int, warmup: int, time_limit: float,
                       quickack: bool = False) -> Series:
    name = "Kernel Gateway, TCP_QUICKACK client" if quickack else "Kernel Gateway"
    with gateway.kernel(quickack) as channels:
        return _round_trips(channels.run, Series(name), samples, warmup, time_limit)


def gateway_kernel_start(gateway: KernelGateway, samples: int) -> Series:
    """POST /api/kernels, connect its channels, to the output of the first `print(1)`."""
    series = Series("Kernel Gateway kernel start, first print(1)")
    for _ in range(samples):
        start = perf_counter()
        with gateway.kernel(quickack=True) as channels:
            if channels.run("print(1)") != "1\n":
                raise BenchError("kernel gateway: unexpected output of print(1)")
            series.samples.append(perf_counter() - start)
    return series
