"""Worker entry point: `python -m tci_worker` inside the sandbox.

Channels (numbers passed in TCI_WORKER_FDS="commands,events"):
  commands  host -> worker frames: {"op": "execute", "id", "code", "language", "runtime"}
            | {"op": "ping"}
            | {"op": "preload", "modules": [...]} | {"op": "shutdown"}
  events    worker -> host frames: {"type": "ready"} then, per request, any number of
            display_data / execute_result / error events and one {"type": "done", "ok"}
            ("exit": true once a cell called exit() or quit()).
  fd 1, 2   stdout and stderr, read by the host directly.
The worker is single-threaded and starts no event loop, so it stays fork-safe. A language
other than Python runs in a sub-kernel, the worker's child started on first use (kernels/),
within the bounds the frame's "runtime" carries from the server's settings.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import TYPE_CHECKING

from .protocol import Message, read_frame, write_event
from .streams import ordered_pair, wait_drained

if TYPE_CHECKING:
    from .kernels import Kernels


def _late_sigint(signum: int, frame: object) -> None:
    """SIGINT outside a cell: late (its cell has ended), so dropped. It must neither break
    the protocol loop nor reach the next cell. None comes early: the host signals only after
    a cell's "started" event (kernel/driver.py)."""


class Worker:
    def __init__(self, command_fd: int, event_fd: int) -> None:
        self.command_fd = command_fd
        self.event_fd = event_fd
        self.request_id: int | None = None
        self.stdout, self.stderr = ordered_pair(1, 2)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the worker

        from .figures import FigureCollector
        from .shell import make_shell
        from .viewers import install as install_viewers

        self.shell = make_shell(self.emit)
        self.kernels: Kernels | None = None  # other languages' runtimes, started on first use
        self.figures = FigureCollector(self.emit)
        self.figures.install_formatter(self.shell)
        install_viewers(self.emit)
        signal.signal(signal.SIGINT, _late_sigint)

    def emit(self, event: Message) -> None:
        event["id"] = self.request_id
        wait_drained(1, 2)  # stdout/stderr written so far reach the host first
        write_event(self.event_fd, event)

    def execute_other(self, language: str, code: str, runtime: object = None) -> None:
        """A call in another language: relayed to its sub-kernel (kernels/base.py), which
        SIGINT reaches through the relay (a KeyboardInterrupt there is forwarded)."""
        from .kernels import Kernels
        from .kernels.base import RuntimeLimits

        if self.kernels is None:
            self.kernels = Kernels(self.emit, self.stdout, self.stderr)
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.emit({"type": "started"})
            ok = self.kernels.execute(language, code, RuntimeLimits.of(runtime))
        finally:
            signal.signal(signal.SIGINT, _late_sigint)
        self.emit({"type": "done", "ok": ok})

    def execute(self, code: str, language: str = "python", runtime: object = None) -> None:
        if language not in ("python", ""):
            self.execute_other(language, code, runtime)
            return
        self.figures.before_cell()
        # While the cell runs, SIGINT is Python's own C-level handler: the KeyboardInterrupt is
        # raised in the user's frame, and no frame of this file shows in the traceback.
        # Swapped back inside the try, so one landing just around IPython's own handling of
        # the cell is caught here rather than ending the worker.
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.emit({"type": "started"})
            result = self.shell.run_cell(code, store_history=True)  # type: ignore[no-untyped-call]
            signal.signal(signal.SIGINT, _late_sigint)
            ok = self.shell.succeeded(result)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, _late_sigint)
            self.emit({"type": "error", "data": "KeyboardInterrupt", "ename": "KeyboardInterrupt"})
            ok = False
        try:
            self.figures.publish_open_figures()
        except Exception as exc:  # a broken figure must not lose the cell's result
            self.emit({"type": "error", "data": f"could not render figure: {exc!r}"})
        done: Message = {"type": "done", "ok": ok}
        if self.shell.exit_now:  # exit() or quit(): the host ends the session after answering
            self.shell.exit_now = False
            done["exit"] = True
        self.emit(done)

    def preload(self, modules: list[str]) -> None:
        failed = []
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed.append(f"{name}: {exc!r}")
        # One cell warms IPython's own machinery (compiler, display hooks, and what a
        # non-silent cell alone imports, such as the shell's logger), so the user's first
        # cell costs what every later one does: 2.2 -> 1.4 ms after a silent one. Kept out of
        # the history, so the user's first cell is still In[1].
        self.shell.run_cell("print(end='')", store_history=False)  # type: ignore[no-untyped-call]
        self.figures.before_cell()
        self.emit({"type": "done", "ok": not failed, "failed": failed})

    def state(self, op: str, path: str, max_bytes: int) -> None:
        """Save or restore the user namespace (worker/state.py); the answer is one
        application/json display_data, or an error output that says why."""
        from . import state

        try:
            answer = (state.save if op == "save_state" else state.restore)(
                self.shell, path, max_bytes)
        except Exception as exc:
            self.emit({"type": "error", "data": f"{type(exc).__name__}: {exc}",
                       "ename": type(exc).__name__})
            self.emit({"type": "done", "ok": False})
            return
        self.emit({"type": "display_data", "data": {"application/json": answer}})
        self.emit({"type": "done", "ok": True})

    def serve(self) -> None:
        self.emit({"type": "ready", "pid": os.getpid()})
        while True:
            try:
                request = read_frame(self.command_fd)
            except EOFError:
                return
            if not self.handle(request):
                return

    def handle(self, request: Message) -> bool:
        """Carry out one request; False for shutdown."""
        self.request_id = request.get("id")
        op = request.get("op")
        if op == "execute":
            self.execute(str(request.get("code", "")), str(request.get("language", "python")),
                         request.get("runtime"))
        elif op == "preload":
            self.preload(list(request.get("modules", [])))
        elif op in ("save_state", "restore_state"):  # pause, resume, snapshots: state.py
            self.state(op, str(request.get("path", "")), int(request.get("max_bytes", 0)))
        elif op == "ping":
            self.emit({"type": "done", "ok": True})
        elif op == "shutdown":
            return False
        else:
            self.emit({"type": "done", "ok": False, "failed": [f"unknown op {op!r}"]})
        return True


def main() -> None:
    command_fd, event_fd = (int(x) for x in os.environ.pop("TCI_WORKER_FDS", "3,4").split(","))
    os.set_inheritable(command_fd, False)
    os.set_inheritable(event_fd, False)
    Worker(command_fd, event_fd).serve()


if __name__ == "__main__":
    main()
