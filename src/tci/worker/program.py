"""A one-shot run's program, run in this (forked, confined) process as `python3 main.py` would.

The template has imported the runtime, so the program's imports of preinstalled packages cost
nothing; but everything a fresh interpreter would give a script is put back first: a new
`__main__` module with `__file__`, `sys.argv`, standard streams on fds 0-2 (stdout buffered
as on a pipe), the default hooks, signal handlers and warning filters, no exit handlers of the
template's. Then the code runs, and the interpreter's own end follows it: SystemExit gives its
code (a non-integer is printed to stderr and gives 1), an uncaught exception prints its
traceback and gives 1, non-daemon threads are joined, exit handlers run, the streams flush.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import signal
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any, Literal

# An unflushable stdout at exit (a closed pipe...) gives this code, as CPython's does.
EXIT_FLUSH_FAILED = 120
# What a fresh interpreter's warning filters are (python3.11 -W default aside).
_DEFAULT_FILTERS: tuple[tuple[Literal["default", "ignore"], type[Warning], str | None], ...] = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, None),
    ("ignore", PendingDeprecationWarning, None),
    ("ignore", ImportWarning, None),
    ("ignore", ResourceWarning, None),
)


def _fresh_streams() -> None:
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                 encoding="utf-8", errors="strict")
    # On a pipe, a script's stdout is block-buffered and its stderr line-buffered.
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  encoding="utf-8", errors="strict")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                  encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    # A fresh interpreter's originals are these very streams (code may restore them).
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = (  # type: ignore[misc]
        sys.stdin, sys.stdout, sys.stderr)


def _fresh_interpreter_state(path: str) -> dict[str, Any]:
    atexit._clear()
    sys.excepthook = sys.__excepthook__
    sys.displayhook = sys.__displayhook__
    sys.argv = [os.path.basename(path)]
    sys.path[0:0] = [os.path.dirname(path)]
    sys.path_importer_cache.pop(os.path.dirname(path), None)  # the template's, of another dir
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as CPython sets it at start
    warnings.resetwarnings()
    for action, category, module in reversed(_DEFAULT_FILTERS):
        warnings.filterwarnings(action, category=category, module=module or "")
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = __builtins__  # type: ignore[attr-defined]
    main.__cached__ = None  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    return main.__dict__


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def _finish(code: int, at_end: Callable[[], None]) -> int:
    """The interpreter's shutdown, as far as a script can see it; then `at_end`."""
    # As CPython's own finalization: a program that never imported threading started no
    # thread to wait for (and importing it here would cost every such run an import).
    threading = sys.modules.get("threading")
    if threading is not None:
        with contextlib.suppress(BaseException):
            threading._shutdown()  # joins non-daemon threads
    try:
        atexit._run_exitfuncs()
    except SystemExit as exc:
        code = _exit_code(exc)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            code = EXIT_FLUSH_FAILED
    with contextlib.suppress(BaseException):
        at_end()
    return code


def run(path: str, at_end: Callable[[], None] = lambda: None) -> int:
    """Run the program in `path` as __main__; its exit code (never raises). `at_end` runs
    once the program and its exit handlers are done and its streams flushed."""
    _fresh_streams()
    namespace = _fresh_interpreter_state(path)
    try:
        with open(path, "rb") as source:
            code = compile(source.read(), path, "exec", dont_inherit=True)
        exec(code, namespace)
        status = 0
    except SystemExit as exc:
        status = _exit_code(exc)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            # From the program's own frames, as CPython prints it: not this runner's.
            trace = exc.__traceback__
            if trace is not None and trace.tb_frame.f_code is run.__code__:
                trace = trace.tb_next
            sys.excepthook(type(exc), exc.with_traceback(trace), trace)
        status = 1
    return _finish(status, at_end)
