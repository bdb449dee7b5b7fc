"""A one-shot run: a fork of the template becomes one program's sandbox, runs it, says how it
ended, and is gone (the runs' counterpart of confine.py's sessions).

  keeper  (the template's fork, root, host pid namespace) joins the run's cgroup, makes the
          namespaces, mounts the run's own /tmp, /dev/shm and /workspace (tmpfs, counted in
          the run's memory), writes the run's files there, forks the program, starts the clock
          once the program is confined, kills it at the time limit, then (as the run's uid,
          never as root) reads back the files asked for and writes one report;
  program (pid 1 of the run's pid namespace) confines itself exactly as a session's init
          does, then runs the code as `python3 main.py` would (program.py). When it ends, the
          kernel ends every process it left behind with its pid namespace.

The keeper dies with the template and the program with the keeper (PR_SET_PDEATHSIG), so
nothing of a run outlives the server. A report is one JSON object on the report pipe:
{"exit": code|null, "signal": n|null, "timed_out": bool, "wall": s, "files": {path: b64}}, or
{"error": why} when the system (never the program) failed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import struct
import time

from . import confine, linux, program

WORKSPACE = "/workspace"
_PAYLOAD_HEADER = struct.Struct("<II")  # path length, content length
_MAX_INFO = 1 << 16
_PROGRAM_OOM_SCORE = 1000


def read_payload(fd: int) -> list[tuple[str, bytes]]:
    """The run's files, as the server packed them into a memfd: (path, content) pairs."""
    with os.fdopen(fd, "rb") as payload:
        data = payload.read()
    files, offset = [], 0
    while offset < len(data):
        path_length, length = _PAYLOAD_HEADER.unpack_from(data, offset)
        offset += _PAYLOAD_HEADER.size
        path = data[offset:offset + path_length].decode()
        offset += path_length
        files.append((path, data[offset:offset + length]))
        offset += length
    return files


def pack_payload(files: list[tuple[str, bytes]]) -> bytes:
    parts = []
    for path, content in files:
        encoded = path.encode()
        parts += [_PAYLOAD_HEADER.pack(len(encoded), len(content)), encoded, content]
    return b"".join(parts)


def become_run(spec: dict, request: dict, fds: list[int], template_namespaces: dict[str, str],
               template: int) -> None:
    """The keeper; `template` is a pidfd on the template (our parent). Never returns."""
    stdin, stdout, stderr, report, payload, *network = fds
    confine.die_with(os.dup(template))  # root all along: nothing clears it after this
    steps = {"keeper": time.monotonic()}
    try:
        files = read_payload(payload)
        confine.join_cgroups(spec["cgroup_fds"], request["cgroups"])
        steps["cgroup"] = time.monotonic()
        confine.enter_namespaces(network[0] if network else None)
        steps["namespaces"] = time.monotonic()
        _mount_run(request)
        _write_files(files, request["uid"])
        os.chdir(WORKSPACE)
        linux.loopback_up()
        steps["mounts"] = time.monotonic()
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        keeper = os.pidfd_open(os.getpid())
        program = os.fork()
        if program == 0:
            _become_program(spec, request, (stdin, stdout, stderr), info_w,
                            template_namespaces, keeper)
        os.close(keeper)
        os.close(info_w)
        for fd in (stdin, stdout, stderr):
            os.close(fd)
        result = _supervise(program, info_r, float(request["timeout"]))
        if "error" not in result:
            # Read back with the run's own rights: a link it planted to something only root
            # may read gets nothing.
            confine.drop_to(request["uid"])
            result["files"] = _fetch(request["fetch"], int(request["fetch_max_bytes"]))
            result["times"].update(steps)
            result["times"]["fetched"] = time.monotonic()
    except Exception as exc:
        result = {"error": f"run setup failed: {exc} (at {_where(exc)})"}
    with contextlib.suppress(OSError):
        _write_all(report, json.dumps(result).encode())
    os._exit(0)


def _mount_run(request: dict) -> None:
    confine.mount_private_tmp(request["tmp_bytes"])
    linux.mount("tmpfs", WORKSPACE, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                f"mode=0755,size={request['work_bytes']},uid={request['uid']},"
                f"gid={request['uid']}")


def _write_files(files: list[tuple[str, bytes]], uid: int) -> None:
    """Into the new, empty tmpfs mounts, before any of the run's code exists: no link can be
    in the way, and each path was checked by the server (absolute, under /workspace or /tmp,
    no '..')."""
    for path, content in files:
        directory = os.path.dirname(path)
        missing = []
        while not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for made in reversed(missing):
            os.mkdir(made, 0o755)
            os.chown(made, uid, uid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            _write_all(fd, content)
            os.fchown(fd, uid, uid)
        finally:
            os.close(fd)


def _become_program(spec: dict, request: dict, streams: tuple[int, int, int], info: int,
                    template_namespaces: dict[str, str], keeper: int) -> None:
    """pid 1 of the run: confined as a session's init is, tied to its keeper's life (the
    seccomp filter keeps the program from cutting that tie). Never returns."""
    try:
        linux.set_name("python3")
        # The keeper shares the run's cgroup: a program over its memory limit must be the one
        # the OOM killer picks, never the keeper that reports it (raising needs no privilege,
        # lowering it back would).
        linux.write_file("/proc/self/oom_score_adj", str(_PROGRAM_OOM_SCORE))
        os.setsid()
        steps = {"forked": time.monotonic()}
        problems = confine.confine_self(spec, request, template_namespaces,
                                        lambda: confine.die_with(keeper), steps)
        if problems:
            _write_all(info, json.dumps({"error": "sandbox confinement check failed: "
                                         + "; ".join(problems)}).encode())
            os._exit(confine.EXIT_CONFINEMENT)
        linux.prctl(linux.PR_SET_DUMPABLE, 1)  # the program's own /proc/self, as a script's
        for source, target in zip(streams, (0, 1, 2), strict=True):
            os.dup2(source, target, inheritable=True)
        _write_all(info, json.dumps({"steps": steps}).encode())
        os.close(info)  # the keeper starts the clock
        confine.close_all_but({0, 1, 2})
        confine.fresh_process_state()
        code = program.run(f"{WORKSPACE}/{request['program']}")
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _write_all(info, json.dumps(
                {"error": f"run setup failed: {exc} (at {_where(exc)})"}).encode())
        os._exit(confine.EXIT_SETUP_FAILED)
    os._exit(code)


def _supervise(program: int, info: int, timeout: float) -> dict:
    """Wait for the program: confined (info closes empty), then its end or the time limit."""
    said = b""
    while len(said) <= _MAX_INFO and (chunk := os.read(info, 4096)):
        said += chunk
    os.close(info)
    started = time.monotonic()
    try:
        told = json.loads(said)
    except ValueError:
        told = {}
    if not isinstance(told, dict) or "steps" not in told:
        with contextlib.suppress(ProcessLookupError):
            os.kill(program, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(program, 0)
        error = told.get("error") if isinstance(told, dict) else None
        return {"error": error or "the run's sandbox did not start"}
    pidfd = os.pidfd_open(program)
    timed_out = not select.select([pidfd], [], [], timeout)[0]
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    _, status = os.waitpid(program, 0)
    wall = time.monotonic() - started
    os.close(pidfd)
    # CLOCK_MONOTONIC is the server's too: it times the start and the end from these.
    times = {**told["steps"], "confined": started, "ended": started + wall}
    if os.WIFSIGNALED(status):
        return {"exit": None, "signal": os.WTERMSIG(status), "timed_out": timed_out,
                "wall": wall, "times": times}
    return {"exit": os.WEXITSTATUS(status), "signal": None, "timed_out": timed_out,
            "wall": wall, "times": times}


def _fetch(paths: list[str], budget: int) -> dict[str, str]:
    fetched = {}
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # a file the run did not make is left out
        try:
            if not _is_regular(fd):
                continue
            content = _read_up_to(fd, budget + 1)
        finally:
            os.close(fd)
        if len(content) > budget:
            continue  # past what may come back: left out, as a missing one is
        budget -= len(content)
        fetched[path] = base64.b64encode(content).decode()
    return fetched


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit and (chunk := os.read(fd, min(limit - size, 1 << 20))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _where(exc: BaseException) -> str:
    """The innermost frame of a failure: which step of the set-up it was."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)[-2:]
    return " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                      for f in reversed(frames))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
