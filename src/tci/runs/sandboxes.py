"""The server's side of a one-shot run (worker/oneshot.py): a uid, a cgroup, the fds, one
request to the fork template, then what the run printed and how it ended.

A run pays only for what it uses: no volume (its /workspace is a tmpfs in its own memory
limit), no session record, no shell, no worker protocol. Cgroups are kept between runs (a
run's cgroup is empty when its report arrives and its keeper has exited), so the request path
makes none and removes none.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import time
from dataclasses import dataclass

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.runs.models import RunSpec
from tci.runs.verdicts import Outcome
from tci.sandbox.cgroups import CgroupLimits, SessionCgroup
from tci.worker.oneshot import pack_payload

log = logging.getLogger(__name__)

PROGRAM_NAME = "main.py"
# Time the keeper may take beyond the run's own limit (set-up, fetching files, the report)
# before the server gives up on it: a system failure, never the program's.
_KEEPER_MARGIN_SECONDS = 30.0
_REPORT_OVERHEAD = 1 << 16


class RunSystemError(Exception):
    """The system failed to run the program (not the program's fault): retried once, then
    SANDBOX_ERROR."""


@dataclass
class RawRun:
    outcome: Outcome
    wall_s: float
    truncated: bool
    files: dict[str, bytes]
    # Seconds of the run's phases as the server saw them: start (request sent to the
    # template until the program runs confined), program, finish (its end until the report
    # is read, the keeper gone and the cgroup given back).
    phases: dict[str, float]


class _Capped:
    """Reads a pipe to its end, keeping the first `limit` bytes (the rest is drained, not
    kept, so a program printing forever neither blocks nor grows the server)."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.kept = bytearray()
        self.truncated = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            room = self.limit - len(self.kept)
            if len(chunk) > room:
                self.truncated = True
            if room > 0:
                self.kept += chunk[:room]
            return
        self.close()

    def close(self) -> None:
        if self.done.done():
            return
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)
        self.done.set_result(None)

    def text(self) -> str:
        return self.kept.decode(errors="replace")


class RunCgroups:
    """Empty cgroups for runs, reused: a run takes one, sets its memory limit, gives it back."""

    def __init__(self, settings: Settings, launcher) -> None:
        self.settings = settings
        self.launcher = launcher
        self._free: list[SessionCgroup] = []
        self._names = itertools.count(1)

    def take(self, memory_bytes: int) -> SessionCgroup | None:
        driver = self.launcher.cgroups
        if driver is None:
            return None  # only with TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS
        limits = CgroupLimits(memory_bytes=memory_bytes, pids_max=self.settings.pids_limit,
                              cpu_weight=self.settings.cpu_weight,
                              io_weight=self.settings.io_weight)
        while self._free:
            cgroup = self._free.pop()
            try:
                cgroup.set_limits(limits)
                return cgroup
            except (OSError, SandboxUnavailable):
                self._discard(cgroup)
        return driver.create(f"run-{next(self._names)}", limits)

    def give_back(self, cgroup: SessionCgroup) -> bool:
        """True if the run left nothing behind (its uid may then serve another run)."""
        if not cgroup.procs():
            self._free.append(cgroup)
            return True
        # A run cancelled or given up on: whatever is left is killed; the cgroup is not reused.
        emptied = cgroup.kill_all()
        self._discard(cgroup)
        return emptied

    @staticmethod
    def _discard(cgroup: SessionCgroup) -> None:
        with contextlib.suppress(OSError, SandboxUnavailable):
            cgroup.kill_all()
            cgroup.remove()

    def close(self) -> None:
        while self._free:
            self._discard(self._free.pop())


class RunSandboxes:
    """Starts runs as forks of the fork launcher's template."""

    def __init__(self, settings: Settings, launcher) -> None:
        self.settings = settings
        self.launcher = launcher
        self.cgroups = RunCgroups(settings, launcher)

    async def run(self, spec: RunSpec) -> RawRun:
        uid = self.launcher.uids.acquire()
        cgroup = None
        try:
            cgroup = await asyncio.to_thread(self.cgroups.take, spec.memory_bytes)
            return await self._run(spec, uid, cgroup)
        finally:
            clean = (await asyncio.shield(asyncio.to_thread(self.cgroups.give_back, cgroup))
                     if cgroup is not None else True)
            if clean:
                self.launcher.uids.release(uid)
            else:  # a process of it may still be there: the uid serves nobody else
                self.launcher.uids.quarantine(uid, "a run's processes outlived it")

    async def _run(self, spec: RunSpec, uid: int, cgroup: SessionCgroup | None) -> RawRun:
        ooms_before = cgroup.oom_kills() if cgroup is not None else 0
        stdin = _memfd("tci-stdin", spec.stdin)
        payload = _memfd("tci-files", pack_payload(
            [(f.path, f.content) for f in spec.files]))
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        network = (await self.launcher._network_ahead()
                   if self.settings.run_network == "egress" else None)
        sent = [stdin, stdout_w, stderr_w, report_w, payload]
        if network is not None:
            sent.append(os.dup(network.namespace.fd))
        request = {
            "type": "run", "uid": uid,
            "cgroups": self.launcher.cgroup_indexes(cgroup),
            "tmp_bytes": self.settings.tmp_max_bytes,
            "work_bytes": self.settings.run_workspace_max_bytes,
            "niceness": 0, "rlimits": self.launcher.rlimits,
            "timeout": spec.timeout, "program": PROGRAM_NAME,
            "fetch": [path for _, path in spec.fetch],
            "fetch_max_bytes": self.settings.run_fetch_max_bytes,
        }
        limit = self.settings.run_max_output_bytes
        stdout, stderr = _Capped(stdout_r, limit), _Capped(stderr_r, limit)
        report = _Capped(report_r, self.settings.run_fetch_max_bytes * 2 + _REPORT_OVERHEAD)
        keeper = -1
        try:
            sent_at = time.monotonic()
            try:
                _, keeper = await self.launcher.run_fork_server().spawn(request, sent)
            finally:
                for fd in sent:
                    os.close(fd)
            deadline = spec.timeout + _KEEPER_MARGIN_SECONDS
            try:
                await asyncio.wait_for(asyncio.gather(report.done, stdout.done, stderr.done),
                                       deadline)
            except TimeoutError:
                raise RunSystemError(f"the run's keeper did not report in {deadline:g} s"
                                     ) from None
            await _exited(keeper, _KEEPER_MARGIN_SECONDS)
        finally:
            for reader in (stdout, stderr, report):
                reader.close()
            if keeper >= 0:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(keeper, signal.SIGKILL)
                os.close(keeper)
            if network is not None:
                await network.stop()
        try:
            said = json.loads(bytes(report.kept)) if not report.truncated else {}
        except ValueError:
            said = {}
        if "error" in said or "wall" not in said:
            raise RunSystemError(said.get("error") or "the run's keeper ended without a report")
        out_of_memory = cgroup is not None and cgroup.oom_kills() > ooms_before
        outcome = Outcome(exit_code=said["exit"], timed_out=bool(said["timed_out"]),
                          out_of_memory=out_of_memory, stdout=stdout.text(),
                          stderr=stderr.text())
        files = {path: _b64decode(content) for path, content in said.get("files", {}).items()}
        phases = _phases(sent_at, said.get("times", {}), float(said["wall"]))
        return RawRun(outcome, float(said["wall"]), stdout.truncated or stderr.truncated, files,
                      phases)


# The steps of a run's start as the keeper and the program time them (CLOCK_MONOTONIC, the
# server's clock too): each phase runs from the previous step to its own.
_START_STEPS = ("keeper", "cgroup", "namespaces", "mounts", "forked", "proc", "identity",
                "adopted", "seccomp", "verified", "confined")


def _phases(sent_at: float, times: dict[str, float], wall: float) -> dict[str, float]:
    """Seconds of each phase: start (to the program running confined) and its steps, the
    program, finish (its end to the report read, the keeper gone)."""
    phases = {"start": times.get("confined", sent_at) - sent_at, "program": wall,
              "finish": time.monotonic() - times.get("ended", sent_at)}
    previous = sent_at
    for step in _START_STEPS:
        if step in times:
            phases[f"start:{step}"] = times[step] - previous
            previous = times[step]
    return phases


def _memfd(name: str, content: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _b64decode(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


async def _exited(pidfd: int, timeout: float) -> None:
    """Until the process behind `pidfd` has exited (its cgroup is then free of it)."""
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    def on_exit() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await asyncio.wait_for(gone, timeout)
    except TimeoutError:
        raise RunSystemError(f"the run's keeper did not exit in {timeout:g} s") from None
    finally:
        loop.remove_reader(pidfd)
