"""A sub-kernel: a session's runtime for a language other than Python, the worker's child.

The worker stays the session's process and speaks the host protocol; for another language it
starts that language's driver (node_kernel.js, bash_kernel.sh, r_kernel.R, shipped next to
this file) on first use, inside the same sandbox (same seccomp filter, uid, namespaces,
cgroup, network, files), keeps it for the session's life and relays each call:

  worker -> kernel  a pipe: "<byte length> <language>\\n" then the code's bytes
  kernel -> worker  a pipe: JSON lines: {"type": "stream", "name", "text"} (output the driver
                    writes itself), execute_result / display_data / error (as the host's
                    events), {"type": "display_file", "path", "mime"} (a file to send as a
                    display, e.g. R's PNG), {"type": "sync"} (answered "ok\\n" once the
                    host has read fds 1 and 2: how bash keeps their order), then
                    {"type": "done", "status"?}
  (their fd numbers in TCI_KERNEL_FDS="commands,events")
  fd 1, 2           the worker's own stdout and stderr pipes, which the host reads: what
                    a program started from the code writes arrives as it would from Python.

Interrupts: the host SIGINTs the worker; the worker forwards it (`interrupt_signal` of each
kind) and keeps relaying until the kernel says done. A kernel that does not come back within
INTERRUPT_WAIT_SECONDS (under the host's default 2 s grace) is killed with its process group,
and the call's error says its state is lost; the next call starts a fresh one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ..streams import wait_drained

Emit = Callable[[dict[str, Any]], None]


class Writer(Protocol):
    """The worker's ordered stdout or stderr (streams.py)."""

    def write(self, text: str, /) -> int: ...

HERE = Path(__file__).resolve().parent
_READ_SIZE = 1 << 16
# A runtime whose pipes closed exits at once; past this it is killed with its group.
_EXIT_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class RuntimeLimits:
    """A call's bounds on its runtime, from the server's settings (the execute frame's
    "runtime"; these defaults are the settings' own, for a frame without them)."""

    # Starting a runtime is bounded: a stuck start must not hold the call forever (the host's
    # call timeout would kill the whole worker). TCI_RUNTIME_START_TIMEOUT_SECONDS.
    start_timeout: float = 60.0
    # After a forwarded SIGINT: how long the runtime may take to come back before it is killed.
    # Half the host's TCI_INTERRUPT_GRACE_SECONDS, so the worker, and with it the session's
    # Python state, outlives a runtime that ignores the interrupt.
    interrupt_wait: float = 1.0
    # A display file (an R plot) larger than this is reported, not sent: the call's output
    # could not hold it anyway. TCI_MAX_OUTPUT_BYTES.
    max_display_bytes: int = 8 << 20

    @classmethod
    def of(cls, frame: object) -> RuntimeLimits:
        """From the frame's "runtime" object; a missing or malformed field keeps its default."""
        limits = cls()
        if not isinstance(frame, dict):
            return limits
        values: dict[str, Any] = {}
        for name, kind in (("start_timeout", float), ("interrupt_wait", float),
                           ("max_display_bytes", int)):
            value = frame.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                values[name] = kind(value)
        return replace(limits, **values)


class KernelUnavailable(Exception):
    """The language's runtime is missing or did not start."""


class SubKernel:
    """One language runtime of a session. Subclasses say how to start and interrupt it."""

    language = ""
    display_name = ""
    runtime = ""  # the program that must exist for this kind to run

    def __init__(self, emit: Emit, stdout: Writer, stderr: Writer) -> None:
        self.emit, self.stdout, self.stderr = emit, stdout, stderr
        self.process: subprocess.Popen[bytes] | None = None
        self.commands = -1
        self.events = -1
        self.buffer = b""
        self.restarted_note = ""
        self.limits = RuntimeLimits()

    # -- what a kind says ----------------------------------------------------------------------

    def argv(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    def interrupt(self) -> None:
        """Forward an interrupt: SIGINT to the runtime itself by default."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGINT)

    def finish(self, done: dict[str, Any]) -> bool:
        """What the kernel's done event means for the call: True when it succeeded."""
        return bool(done.get("ok", True))

    # -- life ----------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if not os.path.exists(self.runtime):
            raise KernelUnavailable(f"{self.display_name} is not installed on this server "
                                    f"({self.runtime} is missing)")
        argv = self.argv()
        command_read, command_write = os.pipe()
        event_read, event_write = os.pipe()
        os.set_inheritable(command_read, True)
        os.set_inheritable(event_write, True)
        env = {**os.environ, **self.environment()}
        env.pop("TCI_WORKER_FDS", None)
        env["TCI_KERNEL_FDS"] = f"{command_read},{event_write}"
        try:
            # Its own process group: an interrupt or kill reaches what the code started too.
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=1, stderr=2, env=env, cwd=os.getcwd(),
                start_new_session=True, close_fds=True, pass_fds=(command_read, event_write),
            )
        finally:
            os.close(command_read)
            os.close(event_write)
        self.commands, self.events = command_write, event_read
        self.buffer = b""
        deadline = time.monotonic() + self.limits.start_timeout
        while True:
            event = self._next_event(deadline)
            if event is None:
                if self.alive:  # still starting at the deadline
                    self.stop()
                    raise KernelUnavailable(
                        f"{self.display_name} did not start within "
                        f"{self.limits.start_timeout:g} s (TCI_RUNTIME_START_TIMEOUT_SECONDS)")
                note = self._reap()
                raise KernelUnavailable(f"{self.display_name} did not start ({note})")
            if event.get("type") == "ready":
                return

    def stop(self) -> str:
        """Kill the runtime and everything it started; what ended it, in words."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self._reap()

    def _reap(self) -> str:
        for fd in (self.commands, self.events):
            if fd >= 0:
                os.close(fd)
        self.commands = self.events = -1
        process, self.process = self.process, None
        if process is None:
            return "not running"
        try:
            code = process.wait(timeout=_EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    # -- one call ------------------------------------------------------------------------------

    def execute(self, code: str) -> bool:
        """Run `code`, relaying its outputs; True when it succeeded. KeyboardInterrupt (the
        host's SIGINT) is forwarded, and the relay goes on until the kernel answers."""
        if not self.alive:
            if self.process is not None:  # died between calls (exit in bash, say)
                self.restarted_note = f"{self.display_name} had ended ({self._reap()})"
            self.start()
        if self.restarted_note:
            self.stderr.write(f"[{self.restarted_note}; a new one started, earlier state is "
                              "lost]\n")
            self.restarted_note = ""
        payload = code.encode("utf-8", "replace")
        header = f"{len(payload)} {self.language}\n".encode()
        # A kernel that died on the way: the relay finds the end of its events.
        with contextlib.suppress(BrokenPipeError):
            _write_all(self.commands, header + payload)
        return self._relay()

    def _relay(self) -> bool:
        deadline: float | None = None
        while True:
            try:
                event = self._next_event(deadline)
            except KeyboardInterrupt:
                if deadline is None:
                    deadline = time.monotonic() + self.limits.interrupt_wait
                    with contextlib.suppress(ProcessLookupError):
                        self.interrupt()
                continue
            if event is None:
                return self._lost(deadline is not None)
            kind = event.get("type")
            if kind == "done":
                return self.finish(event)
            if kind == "sync":  # the kernel waits until its raw output has been read
                wait_drained(1, 2)
                with contextlib.suppress(BrokenPipeError):
                    _write_all(self.commands, b"ok\n")
                continue
            self._show(kind, event)

    def _show(self, kind: Any, event: dict[str, Any]) -> None:
        if kind == "stream":
            stream = self.stderr if event.get("name") == "stderr" else self.stdout
            stream.write(str(event.get("text", "")))
        elif kind in ("execute_result", "display_data") and isinstance(event.get("data"), dict):
            self.emit({"type": kind, "data": event["data"]})
        elif kind == "error":
            self.emit({"type": "error", "data": str(event.get("data", "")),
                       "ename": str(event.get("ename", ""))})
        elif kind == "display_file":
            self._display_file(str(event.get("path", "")), str(event.get("mime", "")))

    def _display_file(self, path: str, mime: str) -> None:
        try:
            with open(path, "rb") as handle:
                data = handle.read(self.limits.max_display_bytes + 1)
            os.unlink(path)
        except OSError as exc:
            self.emit({"type": "error", "data": f"could not read the plot {path}: {exc}"})
            return
        if len(data) > self.limits.max_display_bytes:
            self.emit({"type": "error", "data": f"the plot {path} is larger than "
                       f"{self.limits.max_display_bytes} bytes (TCI_MAX_OUTPUT_BYTES), not shown"})
            return
        self.emit({"type": "display_data",
                   "data": {mime: base64.b64encode(data).decode("ascii")}})

    def _lost(self, interrupted: bool) -> bool:
        """The kernel did not answer: it died, or ignored an interrupt. Killed either way."""
        why = self.stop()
        if interrupted:
            text = (f"KeyboardInterrupt: {self.display_name} did not stop within "
                    f"{self.limits.interrupt_wait:g} s of the interrupt, so it was restarted; its "
                    "state (variables, definitions) is lost")
        else:
            text = (f"{self.display_name} ended during the call ({why}); the next call starts "
                    "a new one, its state (variables, definitions) is lost")
        self.emit({"type": "error", "data": text,
                   "ename": "KeyboardInterrupt" if interrupted else "KernelDied"})
        return False

    def _next_event(self, deadline: float | None) -> dict[str, Any] | None:
        """The next event line; None at the kernel's end or past `deadline`."""
        while b"\n" not in self.buffer:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if timeout == 0.0:
                return None
            ready, _, _ = select.select([self.events], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self.events, _READ_SIZE)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            event = json.loads(line)
        except ValueError:
            return {"type": "stream", "name": "stderr", "text": line.decode(errors="replace")}
        return event if isinstance(event, dict) else {}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
