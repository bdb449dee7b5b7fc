"""Unauthenticated and greedy clients: what a caller without a valid key can cost, and how much
of the server one key can take.

- Bodies: a path that takes a key checks it before reading any body (/mcp included); a path
  that takes none reads at most TCI_MAX_ANONYMOUS_REQUEST_BYTES, so a declared or streamed
  large body is refused without being read (raw sockets show the answer comes before the body).
- Keys: a string not shaped like a key costs no database look-up; unknown keys are looked up at
  most TCI_AUTH_MAX_LOOKUPS at a time (503 beyond); a flood of 12,000 random keys neither
  evicts a valid key's cache entry (a revoked-but-cached key keeps working: it was never
  looked up again) nor slows the valid client.
- Quotas: TCI_MAX_SESSIONS_PER_KEY (429, also under concurrent creation); new sessions are
  refused with 503 while the sandbox disk (a small tmpfs here) has less than
  TCI_MIN_FREE_DISK_BYTES free, and running sessions go on.
- Disk I/O weight: each session's cgroup carries TCI_IO_WEIGHT where the kernel has a knob.
- /mcp checks Host and Origin against TCI_ALLOWED_HOSTS on every bind, loopback or not.
Every test runs while the canary session keeps answering (tests/security/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import secrets
import shutil
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tci.sandbox.cgroups import (
    CgroupDriver,
    CgroupLimits,
    CgroupV1Driver,
    CgroupV2Driver,
    SessionCgroupV1,
    SessionCgroupV2,
)
from tests.conftest import Server, cli, free_port, make_server
from tests.security.conftest import LIMITS, MiB, start_hardened

# Per-module settings: small caches and caps so that the tests cross them quickly; a long auth
# cache so that a revoked key still answering proves its entry was never looked up again.
CLIENT_LIMITS = {
    "auth_cache_seconds": 3600,
    "auth_cache_entries": 1000,
    "auth_max_lookups": 2,
    "max_sessions_per_key": 3,
    "io_weight": 250,
    "allowed_hosts": json.dumps(["127.0.0.1", "tci.test:8443"]),
}
ANONYMOUS_LIMIT = 4096  # the default TCI_MAX_ANONYMOUS_REQUEST_BYTES
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "test", "version": "0"}}}
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def hardened(tmp_path_factory) -> Iterator[Server]:
    instance = start_hardened(tmp_path_factory, **CLIENT_LIMITS)
    yield instance
    instance.stop()


# -- helpers -------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def errors(self) -> list[str]:
        return json.loads(self.body)["errors"]


def read_response(sock: socket.socket) -> RawResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of the answer"
        body += chunk
    return RawResponse(int(lines[0].split()[1]), headers, body[:length])


def send_head(server: Server, method: str, path: str, headers: dict[str, str],
              first_bytes: bytes = b"", timeout: float = 10.0) -> RawResponse:
    """Send a request's head (and `first_bytes` of its body) but never the rest of the body,
    then wait for the answer: it comes only if the server answers without the body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
             *(f"{name}: {value}" for name, value in headers.items()), "", ""]
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall("\r\n".join(lines).encode() + first_bytes)
        try:
            return read_response(sock)
        except TimeoutError:
            pytest.fail(f"{method} {path}: no answer within {timeout:g} s; the server is "
                        "waiting for a body it should not read")


def metric(server: Server, series: str, required: bool = True) -> float:
    """The sum of a Prometheus series (every label set, unless `series` names labels)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    values = [float(line.rpartition(" ")[2]) for line in text.splitlines()
              if not line.startswith("#")
              and (line.rpartition(" ")[0] == series or line.startswith(series + "{"))]
    assert values or not required, f"/metrics has no {series}"
    return sum(values)


def random_key() -> str:
    return "tci_" + secrets.token_urlsafe(32)  # shaped exactly like a real key


def revoke(server: Server, name: str) -> None:
    result = cli(server.data_dir, "keys", "revoke", name, env=server.env)
    assert result.returncode == 0, result.stderr


def new_session(server: Server, key: str) -> httpx.Response:
    with server.client(key) as client:
        return client.post("/v1/tci/sessions")


def end_session(server: Server, key: str, session_id: str) -> None:
    with server.client(key) as client:
        assert client.delete(f"/v1/tci/sessions/{session_id}").status_code == 200


# -- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/", "/metrics", "/console/app.js", "/nothing"])
def test_anonymous_paths_read_no_body(hardened, path):
    """A body over the anonymous bound but under TCI_MAX_REQUEST_BYTES (8 MiB here): refused
    at once, on its declared length or after its first chunk, never read to the end."""
    declared = send_head(hardened, "POST", path, {"Content-Length": str(4 * MiB)})
    assert declared.status == 413, declared
    assert "TCI_MAX_ANONYMOUS_REQUEST_BYTES" in declared.errors()[0]
    assert declared.headers["connection"] == "close"
    chunk = b"a" * 65536
    chunked = send_head(hardened, "POST", path, {"Transfer-Encoding": "chunked"},
                        first_bytes=b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert chunked.status == 413, chunked
    huge = send_head(hardened, "PUT", path, {"Content-Length": str(100 * 1024 * MiB)})
    assert huge.status == 413, huge
    # A small body is read and answered as before (405 for a path that takes no POST).
    assert httpx.post(f"{hardened.url}/health", content=b"x" * 100).status_code == 405


@pytest.mark.parametrize("path", ["/mcp", "/v1/tci/execute", "/tci/sessions"])
def test_keyed_paths_check_the_key_before_the_body(hardened, path):
    for auth in ({}, {"Authorization": f"Bearer {random_key()}"},
                 {"Authorization": "Bearer not-a-key"}):
        response = send_head(hardened, "POST", path, {
            "Content-Length": str(4 * MiB), "Content-Type": "application/json",
            **MCP_ACCEPT, **auth})
        assert response.status == 401, response
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_key_allows_a_large_body(hardened):
    """With a key, bodies up to TCI_MAX_REQUEST_BYTES still pass (the execute here carries a
    1 MiB comment), on the REST API and on /mcp."""
    code = "#" + "x" * MiB + "\nprint('large body ran')"
    response = hardened.execute(code)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["outputs"][0]["data"] == "large body ran\n"
    end_session(hardened, hardened.key, response.json()["data"]["session_id"])
    padded = {**INITIALIZE, "padding": "x" * (64 * 1024)}
    answer = httpx.post(f"{hardened.url}/mcp", json=padded, timeout=30, headers={
        **MCP_ACCEPT, "Authorization": f"Bearer {hardened.key}"})
    assert answer.status_code == 200, answer.text


# -- keys ------------------------------------------------------------------------------------


def test_malformed_keys_cost_no_lookup(hardened):
    before = metric(hardened, "tci_auth_store_lookups_total")
    good = random_key()
    malformed = [good[:-1], good + "x", "tcx_" + good[4:], good[:-1] + "!", good.upper(),
                 "x" * 47, "tci_", "tci_" + "a" * 60_000, good[4:]]
    with httpx.Client(base_url=hardened.url, timeout=30) as client:
        for i in range(400):
            key = malformed[i % len(malformed)]
            path = "/mcp" if i % 2 else "/v1/tci/sessions"
            response = client.post(path, json=INITIALIZE, headers={
                **MCP_ACCEPT, "Authorization": f"Bearer {key}"}) if i % 2 else \
                client.get(path, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 401, response.text
            assert response.json()["errors"] == ["invalid or revoked API key"]
    assert metric(hardened, "tci_auth_store_lookups_total") == before


async def _simultaneous_unknown_keys(port: int, count: int) -> list[RawResponse]:
    """`count` connections, opened first, then each sends one request with its own unknown
    key, all written before any answer is read."""
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    try:
        for _, writer in connections:
            writer.write((f"GET /v1/tci/sessions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Authorization: Bearer {random_key()}\r\n\r\n").encode())
        await asyncio.gather(*(writer.drain() for _, writer in connections))
        return [await _read_async(reader) for reader, _ in connections]
    finally:
        for _, writer in connections:
            writer.close()


async def _read_async(reader: asyncio.StreamReader) -> RawResponse:
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawResponse(status, headers, body)


def test_unknown_key_lookups_are_capped(hardened):
    """64 unknown keys at once with TCI_AUTH_MAX_LOOKUPS=2: at most two are looked up at a
    time, the others are answered 503 at once (with Retry-After), never queued."""
    busy_before = metric(hardened, "tci_auth_busy_refusals_total")
    responses = asyncio.run(_simultaneous_unknown_keys(hardened.port, 64))
    statuses = Counter(r.status for r in responses)
    assert set(statuses) <= {401, 503}, statuses
    assert statuses[503] >= 1, statuses
    busy = next(r for r in responses if r.status == 503)
    assert busy.headers["retry-after"] == "1"
    assert "TCI_AUTH_MAX_LOOKUPS" in busy.errors()[0]
    refused = metric(hardened, "tci_auth_busy_refusals_total") - busy_before
    assert refused == statuses[503]
    print(f"\n64 unknown keys at once: {dict(statuses)}")


async def _flood(port: int, total: int, connections: int = 8, batch: int = 100) -> Counter:
    """`total` requests with random well-formed keys over keep-alive connections, pipelined
    `batch` at a time."""
    statuses: Counter = Counter()

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while count:
                n = min(batch, count)
                writer.write(b"".join(
                    (f"GET /v1/tci/sessions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Authorization: Bearer {random_key()}\r\n\r\n").encode()
                    for _ in range(n)))
                await writer.drain()
                for _ in range(n):
                    statuses[(await _read_async(reader)).status] += 1
                count -= n
        finally:
            writer.close()

    await asyncio.gather(*(one(total // connections) for _ in range(connections)))
    return statuses


class ValidClient(threading.Thread):
    """Lists sessions with a valid, cached key, as fast as it can, until stopped."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stopping = threading.Event()
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()

    def run(self) -> None:
        with self.server.client(timeout=30) as client:
            while not self.stopping.is_set():
                started = time.perf_counter()
                status = client.get("/v1/tci/sessions").status_code
                self.latencies.append(time.perf_counter() - started)
                self.statuses[status] += 1


def test_random_key_flood_keeps_valid_keys_cached(hardened):
    """12,000 random well-formed keys, more than the old cache's 10,000 entries that were then
    cleared all at once, and twelve times TCI_AUTH_CACHE_ENTRIES here. A key revoked after it
    was cached keeps answering until TCI_AUTH_CACHE_SECONDS (an hour here): if it still answers
    after the flood, its entry survived and it was not looked up again."""
    name = f"cached-{uuid.uuid4().hex[:8]}"
    cached = hardened.new_key(name)
    with hardened.client(cached) as client:
        assert client.get("/v1/tci/sessions").status_code == 200
    with hardened.client() as client:  # the valid client's key is cached too
        assert client.get("/v1/tci/sessions").status_code == 200
    revoke(hardened, name)
    # Checked after the behaviour they explain (so that on a server without them the test
    # fails on the behaviour).
    valid_before = metric(hardened, 'tci_auth_store_lookups_total{result="valid"}', False)
    invalid_before = metric(hardened, 'tci_auth_store_lookups_total{result="invalid"}', False)

    valid = ValidClient(hardened)
    valid.start()
    started = time.perf_counter()
    try:
        # As many connections as TCI_AUTH_MAX_LOOKUPS: none is refused as busy, so every
        # key is looked up and remembered as unknown (the worst case for the caches).
        flood = asyncio.run(_flood(hardened.port, 12_000, CLIENT_LIMITS["auth_max_lookups"]))
    finally:
        valid.stopping.set()
        valid.join(60)
    elapsed = time.perf_counter() - started

    assert set(flood) == {401}, flood
    with hardened.client(cached) as client:
        response = client.get("/v1/tci/sessions")
    assert response.status_code == 200, (
        f"the cached key was looked up again after the flood: {response.text}")
    assert metric(hardened, 'tci_auth_store_lookups_total{result="valid"}') == valid_before
    looked_up = metric(hardened, 'tci_auth_store_lookups_total{result="invalid"}') \
        - invalid_before
    assert looked_up == 12_000  # the unknown-key cache (1000 entries) wrapped twelve times
    assert valid.latencies and set(valid.statuses) == {200}, valid.statuses
    p50 = statistics.median(valid.latencies)
    p99 = statistics.quantiles(valid.latencies, n=100)[98] if len(valid.latencies) > 1 else p50
    print(f"\nflood: 12000 random keys in {elapsed:.1f} s ({12_000 / elapsed:.0f}/s), "
          f"{dict(flood)}, {looked_up:.0f} looked up; valid client: {len(valid.latencies)} calls, "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, no store look-up")


# -- quotas ----------------------------------------------------------------------------------


def test_sessions_per_key_quota(hardened):
    """TCI_MAX_SESSIONS_PER_KEY=3: the fourth is refused (429 naming the setting), by create
    and by execute; another key is not affected; ending one frees its place. Six creations
    at once (cold starts, nothing pooled) give exactly three sessions."""
    key, other = hardened.new_key(f"greedy-{uuid.uuid4().hex[:8]}"), \
        hardened.new_key(f"other-{uuid.uuid4().hex[:8]}")
    ids = []
    for _ in range(3):
        response = new_session(hardened, key)
        assert response.status_code == 200, response.text
        ids.append(response.json()["data"]["id"])
    for response in (new_session(hardened, key), hardened.execute("1", key=key)):
        assert response.status_code == 429, response.text
        assert "TCI_MAX_SESSIONS_PER_KEY" in response.json()["errors"][0]
        assert response.headers["retry-after"]
    assert hardened.execute("1", ids[0], key=key).status_code == 200  # its own still work
    other_session = new_session(hardened, other)
    assert other_session.status_code == 200, other_session.text
    end_session(hardened, key, ids.pop())
    again = new_session(hardened, key)
    assert again.status_code == 200, again.text
    ids.append(again.json()["data"]["id"])
    for session_id in ids:
        end_session(hardened, key, session_id)
    end_session(hardened, other, other_session.json()["data"]["id"])

    racing = hardened.new_key(f"racing-{uuid.uuid4().hex[:8]}")
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: new_session(hardened, racing), range(6)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 3, 429: 3}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 200:
            end_session(hardened, racing, response.json()["data"]["id"])


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 200 MiB tmpfs for a server's sandbox directory (under /var/tmp, which the sandbox
    uids can traverse), unmounted afterwards."""
    mount_point = Path("/var/tmp") / f"tci-small-disk-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m,mode=0711", "tmpfs",
                    str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mount_point)]).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
        with contextlib.suppress(OSError):
            mount_point.rmdir()


def test_nearly_full_disk_refuses_new_sessions(tmp_path, small_disk):
    """TCI_MIN_FREE_DISK_BYTES=40 MiB on a 200 MiB sandbox disk holding one session's 64 MiB
    volume (reserved in full): another program then fills 100 MiB of the disk. New sessions
    are refused with 503 naming the setting, the live session goes on, and once the disk is
    freed new sessions start again. (A session's own writes cannot do this: its quota is
    reserved on the disk when its volume is made.)"""
    server = make_server(tmp_path, **{**LIMITS, "sandbox_dir": str(small_disk),
                                      "min_free_disk_bytes": 40 * MiB})
    filler = small_disk / "someone-elses-file"
    try:
        session_id = server.run("x = 1")["session_id"]
        with filler.open("wb") as out:
            out.write(b"x" * (100 * MiB))
        assert shutil.disk_usage(small_disk).free < 40 * MiB + 64 * MiB
        for response in (new_session(server, server.key), server.execute("1")):
            assert response.status_code == 503, response.text
            message = response.json()["errors"][0]
            assert "TCI_MIN_FREE_DISK_BYTES" in message, message
        assert server.run("x + 1", session_id)["outputs"][0]["data"]["text/plain"] == "2"
        filler.unlink()
        assert new_session(server, server.key).status_code == 200
    finally:
        filler.unlink(missing_ok=True)
        server.stop()


# -- disk I/O weight -------------------------------------------------------------------------


def io_weight_files(session_id: str) -> list[Path]:
    patterns = [f"/sys/fs/cgroup/blkio/tci-*/{session_id}/blkio.bfq.weight",
                f"/sys/fs/cgroup/tci-*/{session_id}/io.weight",
                f"/sys/fs/cgroup/tci-*/{session_id}/io.bfq.weight"]
    return [Path(p) for pattern in patterns for p in glob.glob(pattern)]


def io_weight_takes_effect(files: list[Path]) -> bool:
    """What the kernel offers, read here independently of the server: a weight file in the
    session's cgroup and a device it acts on (bfq in use, or io.cost enabled on cgroup v2)."""
    bfq = any("[bfq]" in path.read_text().split()
              for path in Path("/sys/block").glob("*/queue/scheduler"))
    qos = Path("/sys/fs/cgroup/io.cost.qos")
    io_cost = qos.exists() and "enable=1" in qos.read_text().split()
    return bool(files) and (bfq or io_cost)


def test_sessions_io_weight(hardened):
    """TCI_IO_WEIGHT=250: where the kernel has a weight file, the session's own blkio (v1) or
    io (v2) cgroup holds its processes and carries the weight; whether the weight can act here
    (a bfq device, or io.cost) is said at start, in the log and in /health's details, and a
    host that cannot apply it still starts sessions. (Fake cgroupfs cases: the test below.)"""
    key = hardened.new_key(f"io-{uuid.uuid4().hex[:8]}")
    response = new_session(hardened, key)
    assert response.status_code == 200, response.text
    session_id = response.json()["data"]["id"]
    files = io_weight_files(session_id)
    for path in files:
        value = path.read_text().split()[-1]
        assert value == "250", f"{path}: {path.read_text()!r}"
        assert (path.parent / "cgroup.procs").read_text().split(), f"{path.parent} is empty"
    end_session(hardened, key, session_id)

    status = httpx.get(f"{hardened.url}/health", timeout=30).json()["details"]["io_weight"]
    if io_weight_takes_effect(files):
        assert status == {"setting": 250, "applied": True}
        assert "TCI_IO_WEIGHT=250 is applied by the kernel" in hardened.log()
    else:
        assert status["setting"] == 250 and status["applied"] is False, status
        assert status["reason"], status
        assert f"TCI_IO_WEIGHT=250 is not applied on this host: {status['reason']}" \
            in hardened.log()


def test_io_weight_knobs_on_fake_cgroupfs(tmp_path):
    """Where this host cannot show it: v2 writes io.weight and io.bfq.weight (capped at bfq's
    1000), v1 without bfq's file skips the weight instead of failing, and detect() takes the
    optional controllers when the host has them."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    for name in ("memory.max", "pids.max", "cpu.weight", "io.weight", "io.bfq.weight"):
        (v2 / name).write_text("")
    SessionCgroupV2("ses", v2, ("memory", "pids", "cpu", "io")).set_limits(
        CgroupLimits(64 * MiB, 10, io_weight=5000))
    assert (v2 / "io.weight").read_text() == "5000"
    assert (v2 / "io.bfq.weight").read_text() == "1000"
    dirs = {name: tmp_path / name for name in ("memory", "pids", "cpu", "blkio")}
    for directory in dirs.values():
        directory.mkdir()
    for name in ("memory.limit_in_bytes", "memory.swappiness"):
        (dirs["memory"] / name).write_text("0")
    (dirs["pids"] / "pids.max").write_text("")
    (dirs["cpu"] / "cpu.shares").write_text("")
    SessionCgroupV1("ses", {**dirs, "cpuacct": dirs["cpu"], "freezer": dirs["cpu"]}).set_limits(
        CgroupLimits(64 * MiB, 10, io_weight=250))
    assert not (dirs["blkio"] / "blkio.bfq.weight").exists()
    with pytest.raises(ValueError, match="io_weight"):
        CgroupLimits(64 * MiB, 10, io_weight=0)

    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("cpu io memory pids\n")
    lines = [f"30 22 0:26 / {tmp_path}/unified rw - cgroup2 cgroup2 rw"]
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("\n".join(lines) + "\n")
    assert "io" in CgroupDriver.detect("tci-x", mountinfo=mountinfo).controllers
    lines = [f"{40 + i} 22 0:{40 + i} / {tmp_path}/h-{name} rw - cgroup cgroup rw,{name}"
             for i, name in enumerate(("memory", "pids", "cpu", "cpuacct", "freezer", "blkio"))]
    for name in ("memory", "pids", "cpu", "cpuacct", "freezer", "blkio"):
        (tmp_path / f"h-{name}").mkdir()
    mountinfo.write_text("\n".join(lines) + "\n")
    assert "blkio" in CgroupDriver.detect("tci-x", mountinfo=mountinfo).mounts


def fake_block_devices(root: Path, **schedulers: str) -> Path:
    for device, line in schedulers.items():
        (root / device / "queue").mkdir(parents=True)
        (root / device / "queue" / "scheduler").write_text(line + "\n")
    return root


def test_io_weight_problem_on_fake_cgroupfs(tmp_path):
    """What the start-up log and /health say about TCI_IO_WEIGHT on hosts this one is not: the
    weight acts only with a weight file and a device scheduled by bfq (or io.cost on v2)."""
    no_bfq = fake_block_devices(tmp_path / "plain", vda="[none] mq-deadline kyber")
    bfq = fake_block_devices(tmp_path / "bfq", vda="none mq-deadline [bfq]",
                             loop0="[none] bfq")
    mounts = {name: tmp_path / name for name in ("memory", "pids", "cpu", "cpuacct", "freezer")}
    without_blkio = CgroupV1Driver(mounts, "tci-x")
    assert "no writable cgroup v1 blkio" in without_blkio.io_weight_problem(bfq)

    (tmp_path / "blkio").mkdir()
    v1 = CgroupV1Driver({**mounts, "blkio": tmp_path / "blkio"}, "tci-x")
    assert "has no blkio.bfq.weight" in v1.io_weight_problem(bfq)
    (tmp_path / "blkio" / "blkio.bfq.weight").write_text("default 100\n")
    assert "uses the bfq I/O scheduler" in v1.io_weight_problem(no_bfq)
    assert v1.io_weight_problem(bfq) is None

    (tmp_path / "unified").mkdir()
    without_io = CgroupV2Driver(tmp_path / "unified", "tci-x")
    assert "offers no io controller" in without_io.io_weight_problem(bfq)
    v2 = CgroupV2Driver(tmp_path / "unified", "tci-x", ("memory", "pids", "cpu", "io"))
    assert "uses the bfq I/O scheduler" in v2.io_weight_problem(no_bfq)
    assert v2.io_weight_problem(bfq) is None
    (tmp_path / "unified" / "io.cost.qos").write_text(
        "8:0 enable=1 ctrl=auto rpct=0.00 rlat=250000 wpct=0.00 wlat=250000 min=1.00 max=1.00\n")
    assert v2.io_weight_problem(no_bfq) is None


# -- MCP: Host and Origin ----------------------------------------------------------------------


@dataclass
class BoundServer(Server):
    """A server bound to another loopback address (127.0.0.2): the MCP SDK's own Host check
    turned itself on only for 127.0.0.1, localhost and ::1."""

    host: str = "127.0.0.2"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def mcp_initialize(url: str, key: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/mcp", json=INITIALIZE, timeout=30, headers={
        **MCP_ACCEPT, "Authorization": f"Bearer {key}", **headers})


def test_mcp_host_check_on_any_bind(tmp_path):
    data_dir = tmp_path / "bound"
    data_dir.mkdir()
    env = {"TCI_HOST": "127.0.0.2", "TCI_POOL_SIZE": "0"}
    created = cli(data_dir, "keys", "create", "--name", "test", env=env)
    assert created.returncode == 0, created.stderr
    server = BoundServer(data_dir, free_port(), created.stdout.strip().splitlines()[-1], env)
    server.start()
    try:
        port, key = server.port, server.key
        foreign = mcp_initialize(server.url, key, Host=f"attacker.invalid:{port}")
        assert foreign.status_code == 421, foreign.text
        assert "TCI_ALLOWED_HOSTS" in foreign.json()["errors"][0]
        # Refused before the key is looked at.
        assert mcp_initialize(server.url, "nope", Host="attacker.invalid").status_code == 421
        origin = mcp_initialize(server.url, key, Origin=f"http://attacker.invalid:{port}")
        assert origin.status_code == 403, origin.text
        for host in (f"127.0.0.2:{port}", f"localhost:{port}", f"127.0.0.1:{port}"):
            response = mcp_initialize(server.url, key, Host=host,
                                      Origin=f"http://{host}")
            assert response.status_code == 200, (host, response.text)
        # The REST API is not concerned (a Bearer key is no ambient credential).
        with httpx.Client(base_url=server.url, headers={
                "Authorization": f"Bearer {key}", "Host": "attacker.invalid"}) as client:
            assert client.get("/v1/tci/sessions").status_code == 200
    finally:
        server.stop()


def test_mcp_allowed_hosts_setting(hardened):
    """TCI_ALLOWED_HOSTS=["127.0.0.1", "tci.test:8443"]: a name alone allows any port, a
    name with a port only that port; names not listed (localhost here) are refused."""
    url, key = hardened.url, hardened.key
    assert mcp_initialize(url, key, Host="tci.test:8443").status_code == 200
    assert mcp_initialize(url, key, Host=f"127.0.0.1:{hardened.port}").status_code == 200
    for host in ("tci.test:9999", "tci.test", f"localhost:{hardened.port}"):
        assert mcp_initialize(url, key, Host=host).status_code == 421, host
