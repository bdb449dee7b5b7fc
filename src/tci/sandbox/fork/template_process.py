"""The server's side of one fork template (worker/template.py, whose loop is `SpawnLoop`):
`TemplateProcess` starts it, asks it for forks, restarts it when it dies; `ForkedInit` is a
forked session's pid 1 as the server waits on it.

The template is one root process per server, in its own mount namespace, that has imported
the runtime once. Requests and answers are datagrams on a SOCK_SEQPACKET socket pair, the
child's channel fds travelling with the request (SCM_RIGHTS); a one-shot run's pidfd comes
back with the answer (a session's init sends a pidfd on itself, on the session's own status
socket, so its answer carries none). The template dies with the server by the kernel's
hand (PR_SET_PDEATHSIG), and every sandbox's init with the template, taking its pid namespace
along: whatever killed the server, and whatever a session's code does, no session outlives
it. (A "lifeline" pipe whose write end only the server holds also tells them, by end-of-file:
the polite way, not the one relied on.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tci.errors import SandboxUnavailable
from tci.sandbox.pidfd import ProcessHandle

log = logging.getLogger(__name__)

_MAX_MESSAGE = 1 << 16
# What an init may say on its status socket: one {"exit": <code>} (a dozen bytes). A fixed
# protocol maximum, not a setting: no session's output goes this way.
MAX_STATUS_BYTES = 256
_KILLED = 128 + signal.SIGKILL  # an outer process that ended without saying how


class ForkedInit:
    """A forked session's init (its pid 1), the template's child, never the server's.
    It sends its worker's exit code on a status socket as it ends; silence then end-of-file
    means it was killed (by us, the OOM killer, or the template's death).

    The socket is read as hostile input (the init runs as the session's uid): at most
    MAX_STATUS_BYTES in all, whatever the datagrams' sizes. More is a broken protocol: the
    init is killed, the session ends, and `problem` says why."""

    def __init__(self, init: ProcessHandle, status_fd: int) -> None:
        self.pid = init.pid
        self.problem: str | None = None
        self._init = init
        self._status_fd = status_fd
        self._said = bytearray()
        self._ended: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        os.set_blocking(status_fd, False)
        asyncio.get_running_loop().add_reader(status_fd, self._on_status)

    def _on_status(self) -> None:
        try:
            # One byte over the maximum: a datagram that long is too long, whole or cut.
            chunk = os.read(self._status_fd, MAX_STATUS_BYTES + 1 - len(self._said))
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._said += chunk
            if len(self._said) > MAX_STATUS_BYTES:
                self.problem = (f"its init broke the protocol: more than {MAX_STATUS_BYTES} "
                                "bytes on the status channel")
                log.warning("sandbox pid %d: %s; killed", self.pid, self.problem)
                self._init.signal(signal.SIGKILL)  # pid 1: the kernel ends the namespace
                self._finish(_KILLED)
            return
        self._finish(self._exit_code())

    def _exit_code(self) -> int:
        try:
            return int(json.loads(self._said)["exit"]) if self._said else _KILLED
        except (ValueError, KeyError, TypeError):
            return _KILLED

    def _finish(self, code: int) -> None:
        asyncio.get_running_loop().remove_reader(self._status_fd)
        os.close(self._status_fd)
        if not self._ended.done():
            self._ended.set_result(code)

    @property
    def returncode(self) -> int | None:
        return self._ended.result() if self._ended.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._ended)


@dataclass
class _Running:
    process: asyncio.subprocess.Process
    control: socket.socket
    # Answers to come, by request id: a run's pidfd, or None for a session.
    pending: dict[int, asyncio.Future[int | None]] = field(default_factory=dict)
    # One-shot runs, the template's own children: their wait status as the template reaped
    # them, and when (CLOCK_MONOTONIC).
    exits: dict[int, asyncio.Future[tuple[int, float]]] = field(default_factory=dict)
    dead: bool = False


class TemplateProcess:
    """One template (sessions' or runs'): spawns sandboxes by asking it to fork; (re)starts it
    on demand."""

    def __init__(self, python: str, script: Path, spec: dict[str, Any], env: dict[str, str],
                 seccomp_program: bytes, log_path: Path, start_timeout: float) -> None:
        self.python = python
        self.script = script
        self.spec = spec
        self.env = env
        self.seccomp_program = seccomp_program
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.lifeline_r, self.lifeline_w = os.pipe2(os.O_CLOEXEC)
        self._template: _Running | None = None
        self._starting: asyncio.Lock | None = None
        self._ids = itertools.count(1)

    async def ensure_started(self) -> None:
        if self._template is not None and not self._template.dead:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._template is not None and not self._template.dead:
                return
            if self._template is not None:
                log.warning("the fork template died (its sessions ended with it); "
                            "starting a new one")
            self._template = await self._launch()

    async def _launch(self) -> _Running:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        program = os.memfd_create("tci-seccomp", os.MFD_CLOEXEC)
        os.write(program, self.seccomp_program)
        os.lseek(program, 0, os.SEEK_SET)
        spec = {**self.spec, "control_fd": theirs.fileno(), "lifeline_fd": self.lifeline_r,
                "seccomp_fd": program, "server_pid": os.getpid()}
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                         0o600)
        try:
            process = await asyncio.create_subprocess_exec(
                self.python, "-S", str(self.script), self.spec.get("kind", "sessions"),
                stdin=asyncio.subprocess.PIPE, stdout=log_fd, stderr=log_fd, env=self.env,
                pass_fds=(theirs.fileno(), self.lifeline_r, program), start_new_session=True,
            )
        finally:
            theirs.close()
            os.close(program)
            os.close(log_fd)
        assert process.stdin is not None
        process.stdin.write(json.dumps(spec).encode())
        process.stdin.close()
        ours.setblocking(False)
        template = _Running(process, ours)
        try:
            ready = await asyncio.wait_for(self._receive(template), self.start_timeout)
        except (TimeoutError, OSError, ValueError) as exc:
            self._bury(template)
            raise SandboxUnavailable(
                f"the fork template did not start ({exc!r}); see {self.log_path}") from exc
        if ready is None or ready[0].get("type") != "ready":
            self._bury(template)
            detail = self.log_path.read_text(errors="replace")[-2000:].strip()
            raise SandboxUnavailable(f"the fork template did not start: {detail}")
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_message, template)
        log.info("fork template ready (pid %d)", process.pid)
        return template

    @staticmethod
    async def _receive(template: _Running) -> tuple[dict[str, Any], list[int]] | None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(template.control, _MAX_MESSAGE, 4)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(template.control.fileno(), ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_reader(template.control.fileno())
                continue
            return (json.loads(message), fds) if message else None

    def _on_message(self, template: _Running) -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(template.control, _MAX_MESSAGE, 4)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message:
                if not template.dead:
                    log.warning("the fork template (pid %d) died; the sessions forked from it "
                                "end with it", template.process.pid)
                self._bury(template)
                return
            answer = json.loads(message)
            if answer.get("type") == "exited":
                ended = template.exits.pop(answer.get("id", -1), None)
                if ended is not None and not ended.done():
                    ended.set_result((int(answer["status"]), float(answer["at"])))
                continue
            future = template.pending.pop(answer.get("id", -1), None)
            if future is None or future.done():
                for fd in fds:
                    os.close(fd)
            elif "error" in answer:
                future.set_exception(SandboxUnavailable(
                    f"the fork template could not fork: {answer['error']}"))
            else:
                future.set_result(fds[0] if fds else None)

    def _bury(self, template: _Running) -> None:
        """The template is gone (or never came up): no new fork from it. The sandboxes it
        made end with it (each init's parent-death signal): their sessions see their worker
        killed. The next start launches a new template."""
        if template.dead:
            return
        template.dead = True
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(template.control.fileno())
        template.control.close()
        with contextlib.suppress(ProcessLookupError):
            template.process.kill()
        for future in template.pending.values():
            if not future.done():
                future.set_exception(SandboxUnavailable("the fork template died"))
        template.pending.clear()
        for ended in template.exits.values():
            if not ended.done():
                ended.set_exception(SandboxUnavailable("the fork template died"))
        template.exits.clear()

    async def spawn_session(self, request: dict[str, Any], fds: list[int]) -> None:
        """Ask for one session's sandbox; its init comes on the status socket in `fds`."""
        await self._spawn(request, fds, with_exit=False)

    async def spawn_run(self, request: dict[str, Any], fds: list[int]
                        ) -> tuple[int, asyncio.Future[tuple[int, float]]]:
        """A one-shot run: a pidfd on it, and its (wait status, end time) to come."""
        pidfd, ended = await self._spawn(request, fds, with_exit=True)
        if pidfd is None or ended is None:
            raise SandboxUnavailable("the fork template sent no pidfd for a run")
        return pidfd, ended

    async def _spawn(self, request: dict[str, Any], fds: list[int], with_exit: bool
                     ) -> tuple[int | None, asyncio.Future[tuple[int, float]] | None]:
        await self.ensure_started()
        template = self._template
        assert template is not None
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int | None] = loop.create_future()
        template.pending[request_id] = future
        ended: asyncio.Future[tuple[int, float]] | None = None
        if with_exit:
            ended = template.exits[request_id] = loop.create_future()
        try:
            socket.send_fds(template.control, [json.dumps({**request, "id": request_id})
                                               .encode()], fds)
        except OSError as exc:
            template.pending.pop(request_id, None)
            template.exits.pop(request_id, None)
            self._bury(template)
            raise SandboxUnavailable(f"the fork template is gone: {exc}") from exc
        try:
            pidfd = await future
        except BaseException:
            template.exits.pop(request_id, None)
            raise
        return pidfd, ended

    def close_now(self) -> None:
        """Stop the template; closing the lifeline also ends any sandbox still running."""
        if self._template is not None:
            self._bury(self._template)
        for fd in (self.lifeline_r, self.lifeline_w):
            with contextlib.suppress(OSError):
                os.close(fd)
