"""A one-shot run in a language other than Python: compile (if the language compiles), then
the program as a child of the run's pid 1 (oneshot.py), which waits for it.

The server sends the commands (runs/languages.py builds them): this module only executes them,
as the run's uid, already confined. The compile gets its own time limit and an output cap; it
runs in a process group of its own so that a timeout ends the whole compiler (g++ starts
cc1plus, as and ld; a JVM, its threads). The program is forked and exec'd rather than exec'd
in place: pid 1 of a pid namespace ignores signals it has no handler for, so a program there
would survive its own abort() or `kill -TERM $$`, where as a child it dies as it would
anywhere. Pid 1 stays, reaps, reads the fetched files back and passes the program's end on.
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import signal
import time

BUILD_DIR = "/tmp/tci-build"  # what a compile writes, and where a cached build is put back
_COMPILE_OUTPUT_CAP = 1 << 20  # bytes of each of the compiler's stdout and stderr kept
_KILLED_BY_TIMEOUT = "timeout"


def compile_program(argv: list[str], env: dict[str, str], timeout: float) -> dict[str, object]:
    """Run the compiler; what it said and how it ended, as the server's info message takes it:
    {"status": "Finished"|"TimeLimitExceeded", "return_code", "stdout", "stderr",
    "execution_time"}."""
    os.makedirs(BUILD_DIR, mode=0o755, exist_ok=True)
    started = time.monotonic()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        _exec_child(argv, env, (null, out_w, err_w), own_group=True)
    for fd in (null, out_w, err_w):
        os.close(fd)
    outputs, ended = _collect(pid, {out_r: bytearray(), err_r: bytearray()},
                              started + timeout)
    status = _wait_for(pid) if ended else None
    return {"status": "Finished" if status is not None else "TimeLimitExceeded",
            "return_code": _code(status) if status is not None else None,
            "stdout": outputs[out_r].decode(errors="replace"),
            "stderr": outputs[err_r].decode(errors="replace"),
            "execution_time": round(time.monotonic() - started, 4)}


def _collect(pid: int, buffers: dict[int, bytearray], deadline: float
             ) -> tuple[dict[int, bytearray], bool]:
    """The compiler's output until both pipes close (every process of it is gone) or the
    deadline, when its whole group is killed. Whether it ended on its own."""
    open_fds = set(buffers)
    ended = True
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            if not ended:
                break  # killed, yet a pipe stays open: a process escaped the group
            _kill_group(pid)
            ended = False
            deadline = time.monotonic() + 5.0  # killed: the pipes close as the group dies
            continue
        readable, _, _ = select.select(list(open_fds), [], [], left)
        for fd in readable:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.discard(fd)
                os.close(fd)
                continue
            room = _COMPILE_OUTPUT_CAP - len(buffers[fd])
            buffers[fd] += chunk[:max(room, 0)]
    for fd in open_fds:
        os.close(fd)
    if not ended:
        _wait_for(pid)
    return buffers, ended


def _kill_group(pid: int) -> None:
    for target in (-pid, pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def _wait_for(pid: int) -> int:
    """Wait for `pid`, reaping whatever else ends meanwhile (we are pid 1: orphans come
    to us)."""
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0
        if done == pid:
            return status


def _code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def read_build(limit: int) -> dict[str, str] | None:
    """The compile's output files (relative path -> base64), for the server's compile cache;
    None if they are larger than `limit` (the run still uses them, no other run will)."""
    files: dict[str, str] = {}
    total = 0
    for directory, _, names in os.walk(BUILD_DIR):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            total += os.path.getsize(path)
            if total > limit:
                return None
            with open(path, "rb") as handle:
                files[os.path.relpath(path, BUILD_DIR)] = base64.b64encode(
                    handle.read()).decode()
    return files


def link_node_modules(directories: list[str], node_modules: str) -> None:
    """`node_modules` next to the program, as SandboxFusion's runtime has it: Node's ES
    module resolution looks there only (NODE_PATH serves `require` alone)."""
    for directory in directories:
        link = os.path.join(directory, "node_modules")
        if os.path.isdir(directory) and not os.path.lexists(link):
            os.symlink(node_modules, link)


def run_program(argv: list[str], env: dict[str, str]) -> int:
    """The program as our child on fds 0-2; its wait status once it ended.

    Started by subprocess (vfork, then exec) rather than a fork of ours: a fork of this
    interpreter copies its page tables and the child faults in the pages it touches before
    its exec, several times the cost of a small program's whole run (3 ms of CPU against
    0.6 for a C hello world). The program starts as a shell would start it: only fds 0-2
    (close_fds), every signal at its default (restore_signals: CPython ignores SIGPIPE and
    SIGXFSZ; handlers end at the exec), none blocked. (os.posix_spawn would be as cheap,
    but this glibc leaves its two internal signals ignored in the program.)"""
    # Imported here, not with this module: the native runs' template preloads it, and the
    # Python runs' template (which imports this module too) need not carry it, nor the
    # at-fork work of the threading module it brings, into every run.
    import subprocess

    try:
        child = subprocess.Popen(argv, executable=argv[0], env=env, close_fds=True,
                                 restore_signals=True)
    except OSError as exc:  # as a shell says it, with its status for a failed exec
        os.write(2, f"tci: cannot start {argv[0]}: {exc}\n".encode())
        return 127 << 8
    status = _wait_for(child.pid)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return status


def _exec_child(argv: list[str], env: dict[str, str], fds: tuple[int, int, int],
                own_group: bool) -> None:
    try:
        if own_group:
            os.setpgid(0, 0)
        for source, target in zip(fds, (0, 1, 2), strict=True):
            if source != target:
                os.dup2(source, target, inheritable=True)
            else:
                os.set_inheritable(target, True)
        os.closerange(3, 1 << 16)  # nothing of pid 1's (the info and report pipes) leaks in
        for number in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD,
                       signal.SIGHUP, signal.SIGQUIT):
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(argv[0], argv, env)
    except BaseException as exc:
        try:
            os.write(2, f"tci: cannot start {argv[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
