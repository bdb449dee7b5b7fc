"""The IPython shell the worker drives, with its output hooks pointed at our channel.

IPython gives users what they expect from a notebook (`!cmd`, `%magics`, the last expression
displayed, rich reprs, `display()`); we replace only where its output goes.
"""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

from IPython.core.autocall import ExitAutocall
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from traitlets import default
from traitlets.config import Config

Emit = Callable[[dict[str, Any]], None]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_SHELL = "/bin/bash"
# After Ctrl-C, a `!cmd` that has not ended within this is killed.
_BANG_INTERRUPT_SECONDS = 1.0


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def jsonable_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """Make a MIME bundle JSON-safe: binary payloads become base64 text, as Jupyter does."""
    out: dict[str, Any] = {}
    for mime, value in data.items():
        if isinstance(value, bytes | bytearray | memoryview):
            value = base64.b64encode(bytes(value)).decode("ascii")
        elif mime.startswith("image/") and mime != "image/svg+xml" and isinstance(value, str):
            value = value.replace("\n", "")
        out[mime] = value
    return out


class ChannelDisplayHook(DisplayHook):
    """Sends the value of a cell's last expression as `execute_result`."""

    emit: Emit

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict: dict[str, Any],
                          md_dict: dict[str, Any] | None = None) -> None:
        self.emit({"type": "execute_result", "data": jsonable_bundle(format_dict)})

    def finish_displayhook(self) -> None:
        pass


class ChannelDisplayPublisher(DisplayPublisher):
    """Sends `display()` calls and rich reprs as `display_data`."""

    emit: Emit

    def publish(self, data: dict[str, Any], metadata: Any = None, source: Any = None, *,
                transient: Any = None, update: bool = False, **kw: Any) -> None:
        self.emit({"type": "display_data", "data": jsonable_bundle(data)})

    def clear_output(self, wait: bool = False) -> None:
        pass


def clean_exit(error: BaseException | None) -> bool:
    """`sys.exit()`, `sys.exit(0)`, `raise SystemExit(None)`: a program that ends well, which
    a caller scoring snippets must not count as failed. Any other status is an error."""
    return isinstance(error, SystemExit) and error.code in (None, 0)


class SessionExit(ExitAutocall):
    """`exit()`/`quit()`, or either alone as a cell (IPython's autocall): as in ipykernel, asks
    to end the session once the cell has run and been answered; `exit(keep_kernel=True)`
    keeps it, as there."""

    def __repr__(self) -> str:  # a bare `exit` in a cell of several lines is only a value
        return "Use exit() or quit() to end the session"

    def __call__(self, keep_kernel: bool = False) -> None:
        if not keep_kernel and self._ip is not None:
            self._ip.ask_exit()


class WorkerShell(InteractiveShell):
    """InteractiveShell whose tracebacks and shell commands fit a headless worker."""

    displayhook_class = ChannelDisplayHook
    display_pub_class = ChannelDisplayPublisher
    emit: Emit

    @default("exiter")
    def _session_exiter(self) -> SessionExit:
        return SessionExit(self)  # type: ignore[no-untyped-call]

    def ask_exit(self) -> None:
        """What `exit()` does: only a flag (`exit_now`, IPython's own), read after the cell."""
        self.exit_now = True

    @staticmethod
    def succeeded(result: ExecutionResult) -> bool:
        """A cell ran to its end, or left by a clean `sys.exit()`."""
        return bool(result.success) or (
            result.error_before_exec is None and clean_exit(result.error_in_exec))

    def showtraceback(self, exc_tuple: Any = None, *args: Any, **kwargs: Any) -> None:
        # IPython shows "SystemExit: 0" for a clean exit too; here it is no error at all.
        if exc_tuple is None and clean_exit(sys.exc_info()[1]):
            return
        super().showtraceback(exc_tuple, *args, **kwargs)

    def _showtraceback(self, etype: type[BaseException] | None, evalue: BaseException | None,
                       stb: list[str]) -> None:
        text = strip_ansi(self.InteractiveTB.stb2text(stb)).strip("\n")
        if etype is KeyboardInterrupt and "Cell In[" not in text:
            # Stopped before the user's code began: IPython's own frames would only confuse.
            text = "KeyboardInterrupt"
        self.emit({"type": "error", "data": text, "ename": getattr(etype, "__name__", "")})

    def system(self, cmd: str) -> None:
        """Run `!cmd` with the worker's own stdout/stderr pipes, so output keeps its order."""
        command = self.var_expand(cmd, depth=1)  # type: ignore[no-untyped-call]
        sys.stdout.flush()
        sys.stderr.flush()
        process = subprocess.Popen(
            command, shell=True, executable=_SHELL, stdin=subprocess.DEVNULL
        )
        try:
            exit_code = process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=_BANG_INTERRUPT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        self.user_ns["_exit_code"] = exit_code


class _ForgetOutputs(dict[int, list[Any]]):
    """IPython's per-cell output history that stores nothing: each look-up gets a fresh
    list, which is dropped once IPython has appended to it."""

    def __missing__(self, key: int) -> list[Any]:
        return []


def make_shell(emit: Emit) -> WorkerShell:
    ChannelDisplayHook.emit = staticmethod(emit)
    ChannelDisplayPublisher.emit = staticmethod(emit)
    WorkerShell.emit = staticmethod(emit)
    # No history database: it would start a saving thread, and the worker must stay
    # single-threaded (fork-safe) and write nothing outside the user's own files.
    config = Config()
    config.HistoryManager.enabled = False
    config.HistoryManager.hist_file = ":memory:"
    shell = WorkerShell.instance(config=config, colors="nocolor")
    shell.InteractiveTB.set_mode(mode="Plain")  # a plain Python traceback, no banner
    # IPython 9 keeps a copy of every cell's printed and displayed output for `%history -o`,
    # forever: a session that prints 300 MB in total holds 300 MB and hits its memory limit.
    # The host already has the outputs; the worker keeps none.
    assert shell.history_manager is not None  # made by the shell's init, history off or on
    shell.history_manager.outputs = _ForgetOutputs()
    # Matplotlib's "cannot show: non-interactive backend" warning is noise here: every
    # open figure is returned as a PNG at the end of the cell anyway.
    warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")
    warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")
    # IPython's hint after any SystemExit ("To exit: use 'exit', 'quit', or Ctrl-D.") would be
    # stderr noise with its own file and line; the error output already says SystemExit.
    warnings.filterwarnings("ignore", message="To exit: use 'exit', 'quit', or Ctrl-D.")
    return shell
