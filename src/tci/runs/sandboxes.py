"""The server's side of a one-shot run (worker/oneshot.py): a uid, a cgroup, the fds, one
request to the fork template, then what the run printed and how it ended.

A run pays only for what it uses: one process (forked from a lean template, pid 1 of its own
namespace), no volume (its /workspace is a tmpfs in its own memory limit), no session record,
no shell, no worker protocol. The server holds a pidfd on it and kills it at its time limit;
the template, its parent, says how it ended. Cgroups and empty network namespaces are kept
between runs (sandbox/fork/pools.py), so the request path makes none and removes none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.runs.compiles import Build
from tci.runs.languages import BUILD_DIR
from tci.runs.models import RunFile, RunSpec
from tci.runs.verdicts import Outcome
from tci.sandbox.cgroups import SessionCgroup
from tci.sandbox.fork.pools import EmptyNetwork, EmptyNetworks, RunCgroups, close_network
from tci.sandbox.fork.starter import ForkStarter
from tci.sandbox.fork.template_process import TemplateProcess
from tci.sandbox.launcher import SandboxLauncher
from tci.sandbox.network import Egress
from tci.worker.oneshot import pack_payload

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRAM_NAME = "main.py"
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
    # template until the program runs confined) and its steps, program, finish (its end
    # until its output is read).
    phases: dict[str, float]
    # The compile this run made (None: Python, an interpreted language, a kept build).
    build: Build | None = None


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


class RunSandboxes:
    """Starts runs as forks of the runs' template (the fork starter's); uids and cgroups come
    from the sessions' launcher, egress networks from the starter's pool."""

    def __init__(self, settings: Settings, launcher: SandboxLauncher,
                 starter: ForkStarter) -> None:
        self.settings = settings
        self.launcher = launcher
        self.starter = starter
        self.cgroups = RunCgroups(settings, lambda: launcher.cgroups)
        self.networks = EmptyNetworks()
        self._indexes: dict[str, list[list[Any]]] = {}  # cgroup name -> the template's names
        self._native_template: TemplateProcess | None = None

    def template_for(self, native: bool) -> TemplateProcess:
        """The runs' template for Python; for other languages a lean copy of it that
        preloads only what starts the program (subprocess: their pid 1 only confines itself
        and starts it), so each fork copies half the page tables and each exit unmaps half
        the memory. Started at the first such run, by the same code and spec as the runs'
        template."""
        runs = self.starter.runs_template()
        if not native:
            return runs
        if self._native_template is None:
            self._native_template = TemplateProcess(
                runs.python, runs.script, {**runs.spec, "preload": _NATIVE_PRELOAD}, runs.env,
                runs.seccomp_program, runs.log_path.with_name("template-native-runs.log"),
                runs.start_timeout)
        return self._native_template

    def close(self) -> None:
        self.cgroups.close()
        self.networks.close()
        if self._native_template is not None:
            self._native_template.close_now()
            self._native_template = None

    async def run(self, spec: RunSpec, build: Build | None = None,
                  compiled: Callable[[Build], None] = lambda _: None) -> RawRun:
        """One run; `build`: its program compiled already (the compile cache's), else it
        compiles in its sandbox and `compiled` hears of it as soon as it is done."""
        uid = self.launcher.uids.acquire()
        cgroup = None
        try:
            # A kept cgroup with these limits, on the loop (the usual case), else a thread's
            # file work: a thread hop costs more than the run's own cgroup reads.
            cgroup = (self.cgroups.take_kept(spec.memory_bytes)
                      or await asyncio.to_thread(self.cgroups.take, spec.memory_bytes))
            return await self._run(spec, uid, cgroup, build, compiled)
        finally:
            clean = True
            if cgroup is not None and not self.cgroups.give_back_if_empty(cgroup):
                clean = await asyncio.shield(asyncio.to_thread(self.cgroups.give_back, cgroup))
            if clean:
                self.launcher.uids.release(uid)
            else:  # a process of it may still be there: the uid serves nobody else
                self.launcher.uids.quarantine(uid, "a run's processes outlived it")

    def _cgroup_indexes(self, cgroup: SessionCgroup | None) -> list[list[Any]]:
        """The template's names of a kept cgroup, worked out once per cgroup."""
        if cgroup is None:
            return []
        indexes = self._indexes.get(cgroup.name)
        if indexes is None:
            if len(self._indexes) >= _MAX_KNOWN_CGROUPS:  # discarded ones' names pile up
                self._indexes.clear()
            indexes = self._indexes[cgroup.name] = self.starter.cgroup_indexes(cgroup)
        return indexes

    def _native(self, spec: RunSpec, build: Build | None) -> dict[str, object] | None:
        """What the sandbox compiles and runs, for a language other than Python."""
        commands = spec.commands
        if commands is None:
            return None
        return {"compile": commands.compile if build is None else None, "run": commands.run,
                "env": commands.env, "node_modules": commands.node_modules,
                "compile_timeout": spec.compile_timeout,
                "build_max_bytes": min(self.settings.run_compile_cache_bytes,
                                       _MAX_BUILD_BYTES)}

    async def _run(self, spec: RunSpec, uid: int, cgroup: SessionCgroup | None,
                   build: Build | None, compiled: Callable[[Build], None]) -> RawRun:
        ooms_before = cgroup.oom_kills() if cgroup is not None else 0
        stdin = _memfd("tci-stdin", spec.stdin)
        files = list(spec.files)
        if build is not None and build.files is not None:
            files += [RunFile(f"{BUILD_DIR}/{name}", content)
                      for name, content in build.files.items()]
        payload = _memfd("tci-files", pack_payload([(f.path, f.content) for f in files]))
        native = self._native(spec, build)
        compiles = native is not None and native["compile"] is not None
        (stdout_r, stdout_w), (stderr_r, stderr_w), (info_r, info_w), (report_r, report_w) = (
            os.pipe2(os.O_CLOEXEC) for _ in range(4))
        network: Egress | None = None
        empty: EmptyNetwork | None = None
        if self.settings.run_network == "egress":
            pool = self.starter.networks
            network = await pool.take() if pool is not None else None
        else:
            empty = await self.networks.take()
        sent = [stdin, stdout_w, stderr_w, info_w, report_w, payload]
        if network is not None:
            sent.append(os.dup(network.namespace.fd))
        elif empty is not None:
            sent.append(os.dup(empty.namespace))
        request = {
            "type": "run", "uid": uid,
            "cgroups": self._cgroup_indexes(cgroup),
            "tmp_bytes": self.settings.tmp_max_bytes,
            "work_bytes": self.settings.run_workspace_max_bytes,
            "niceness": 0, "rlimits": self.starter.rlimits, "program": PROGRAM_NAME,
            "native": native,
            "unmount": False,
            "fetch": [path for _, path in spec.fetch],
            "fetch_max_bytes": self.settings.run_fetch_max_bytes,
        }
        limit = self.settings.run_max_output_bytes
        stdout, stderr = _Capped(stdout_r, limit), _Capped(stderr_r, limit)
        # A compile's build comes back on it (base64), for the compile cache.
        info = _Capped(info_r, _MAX_INFO + (_MAX_BUILD_BYTES * 4 // 3 + 2 * _COMPILE_OUTPUT
                                             if compiles else 0))
        report = _Capped(report_r, self.settings.run_fetch_max_bytes * 2 + _REPORT_OVERHEAD)
        pidfd = -1
        ended: asyncio.Future[tuple[int, float]] | None = None
        timed_out = False
        try:
            sent_at = time.monotonic()
            try:
                pidfd, ended = await self.template_for(native is not None).spawn_run(
                    request, sent)
            finally:
                for fd in sent:
                    os.close(fd)
            told = await self._confined(
                info, pidfd, ended, spec.compile_timeout + _KILL_MARGIN_SECONDS
                if compiles else 0.0)
            steps = {str(name): float(at) for name, at in told["steps"].items()}
            made = _build(told) if compiles else None
            if made is not None:
                compiled(made)
            # The time limit counts from the moment the program runs confined (and compiled).
            ready = steps.get("compiled", steps["confined"])
            left = spec.timeout - (time.monotonic() - ready)
            try:
                status, ended_at = await asyncio.wait_for(asyncio.shield(ended), max(left, 0))
            except TimeoutError:
                timed_out = True
                _kill(pidfd)  # pid 1: the kernel ends its whole namespace with it
                status, ended_at = await _within(ended, _KILL_MARGIN_SECONDS, "die when killed")
            # Every writer is gone with the namespace: the pipes are at their end.
            await _within(asyncio.gather(stdout.done, stderr.done, report.done),
                          _KILL_MARGIN_SECONDS, "close its output")
        finally:
            for reader in (stdout, stderr, info, report):
                reader.close()
            if pidfd >= 0:
                if ended is None or not ended.done():
                    _kill(pidfd)
                os.close(pidfd)
            if ended is not None and ended.done() and not ended.cancelled():
                ended.exception()  # retrieved: a dead template is reported as a system error
            if network is not None:
                await network.stop()
            if empty is not None:
                if (ended is not None and ended.done() and not ended.cancelled()
                        and ended.exception() is None):
                    self.networks.give_back(empty)  # the run has ended: no process is in it
                else:
                    close_network(empty)
        said = _report(report)
        if isinstance(said.get("status"), int) and not timed_out:
            status = said["status"]  # a program under pid 1: its own end (a signal's too)
        code = os.waitstatus_to_exitcode(status)
        wall = max(ended_at - ready, 0.0) if made is None or made.ok else 0.0
        outcome = Outcome(exit_code=code if code >= 0 else None, timed_out=timed_out,
                          out_of_memory=cgroup is not None and cgroup.oom_kills() > ooms_before,
                          stdout=stdout.text(), stderr=stderr.text())
        phases = _phases(sent_at, steps, ended_at, wall)
        if isinstance(said.get("ended"), float) and ready <= said["ended"] <= ended_at:
            # The program's own end as its pid 1 saw it: the rest is the sandbox's exit.
            phases["program:ran"] = said["ended"] - ready
            phases["program:exit"] = ended_at - said["ended"]
        return RawRun(outcome, wall, stdout.truncated or stderr.truncated,
                      _fetched(said), phases, build=made)

    @staticmethod
    async def _confined(info: _Capped, pidfd: int, ended: asyncio.Future[tuple[int, float]],
                        compile_seconds: float) -> dict[str, Any]:
        """What the run said once it runs confined (and compiled): the steps of its start,
        its compile's result; RunSystemError if it cannot (its own report says why, or it
        died or hung before saying anything)."""
        try:
            await _within(info.done, _START_SECONDS + compile_seconds, "start")
        except RunSystemError:
            _kill(pidfd)
            raise
        try:
            told = json.loads(bytes(info.kept)) if not info.truncated else {}
        except ValueError:
            told = {}
        if not isinstance(told, dict) or not isinstance(told.get("steps"), dict):
            _kill(pidfd)
            with contextlib.suppress(RunSystemError, SandboxUnavailable):
                await _within(ended, _KILL_MARGIN_SECONDS, "die when killed")
            error = told.get("error") if isinstance(told, dict) else None
            raise RunSystemError(error or "the run's sandbox ended before it started")
        return told


# How long a run may take to start (fork, namespaces, mounts, confinement), and to be gone
# once killed, before the server gives up on it: a system failure, never the program's.
_START_SECONDS = 30.0
_KILL_MARGIN_SECONDS = 30.0
_MAX_INFO = 1 << 16
_MAX_KNOWN_CGROUPS = 1024
# What the native runs' template imports: worker/native.py starts each program with it.
_NATIVE_PRELOAD = ["subprocess"]
_MAX_BUILD_BYTES = 64 << 20  # a build larger than this is not kept (nor sent back)
_COMPILE_OUTPUT = 1 << 20  # worker/native.py's cap on each of the compiler's outputs
# The steps of a run's start as the run times them (CLOCK_MONOTONIC, the server's clock too):
# each phase runs from the previous step to its own.
_START_STEPS = ("forked", "cgroup", "namespaces", "mounts", "proc", "identity", "tied",
                "seccomp", "verified", "confined", "compiled")


def _phases(sent_at: float, steps: dict[str, float], ended_at: float,
            wall: float) -> dict[str, float]:
    """Seconds of each phase: start (to the program running confined) and its steps, the
    program, finish (its end to its output read)."""
    phases = {"start": steps.get("confined", sent_at) - sent_at, "program": wall,
              "finish": time.monotonic() - ended_at}
    previous = sent_at
    for step in _START_STEPS:
        if step in steps:
            phases[f"start:{step}"] = steps[step] - previous
            previous = steps[step]
    return phases


def _report(report: _Capped) -> dict[str, Any]:
    """What the run's pid 1 said as it ended (its own data: junk gives nothing)."""
    try:
        said = json.loads(bytes(report.kept)) if not report.truncated else {}
    except ValueError:
        return {}
    return said if isinstance(said, dict) else {}


def _fetched(said: dict[str, Any]) -> dict[str, bytes]:
    """The files the run's program read back as it ended (its own data: junk gives none)."""
    try:
        files = said.get("files", {})
        return {str(path): _b64decode(content) for path, content in files.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def _build(told: dict[str, Any]) -> Build | None:
    """The compile the run made, as its info message says (its own data, checked)."""
    result = told.get("compile")
    if not isinstance(result, dict):
        return None
    kept = {name: result.get(name) for name in
            ("status", "return_code", "stdout", "stderr", "execution_time")}
    if kept["status"] not in ("Finished", "TimeLimitExceeded"):
        raise RunSystemError("the run's compile report is malformed")
    files: dict[str, bytes] | None = None
    if kept["return_code"] == 0:
        try:
            sent = told.get("build")
            files = ({str(name): _b64decode(str(content)) for name, content in sent.items()}
                     if isinstance(sent, dict) else None)
        except ValueError:
            files = None
        if files is None:  # compiled, but too large to keep: this run alone uses it
            return _Unkept(kept, {})
    return Build(kept, files)


class _Unkept(Build):
    """A build too large for the cache (never kept: keepable() is false)."""

    def keepable(self) -> bool:
        return False


def _kill(pidfd: int) -> None:
    with contextlib.suppress(ProcessLookupError, OSError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


async def _within(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise RunSystemError(f"the run did not {what} within {seconds:g} s") from None


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
