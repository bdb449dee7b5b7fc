"""A one-shot run: one fork of the runs' template becomes the program's sandbox and then the
program itself (the runs' counterpart of confine.py's sessions).

The template forks it as pid 1 of a pid namespace of its own (template.py unshares
CLONE_NEWPID around the fork). As root, it joins the run's cgroup, makes the other namespaces,
mounts its own /tmp, /dev/shm and /workspace (tmpfs, counted in its memory), writes the run's
files; then it confines itself exactly as a session's init does (confine.confine_self), tells
the server it runs confined (the server's clock starts), and runs the code as `python3 main.py`
would (program.py). When it ends, the kernel ends every process it left behind with its pid
namespace; the template reaps it and tells the server how it ended, and the server (which
holds a pidfd on it) kills it at the time limit. The files asked back are read by the program
process itself as it ends, with the run's own rights, onto the report pipe: a run killed at a
limit brings none back.

It dies with the template (PR_SET_PDEATHSIG, set again after the uid changes and kept by the
seccomp filter), which dies with the server, so nothing of a run outlives the server.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import resource
import stat
import struct
import time

from . import confine, linux, program
from . import native as native_build
from .protocol import Message

WORKSPACE = "/workspace"
_PAYLOAD_HEADER = struct.Struct("<II")  # path length, content length
_REPORT_FD_FLOOR = 900  # the report pipe's number in the program: above what it opens
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


def become_run(spec: Message, request: Message, fds: list[int], template_namespaces: dict[str, str],
               template: int) -> None:
    """The run's only process, pid 1 of its own pid namespace; `template` is a pidfd on the
    template (our parent). Never returns."""
    stdin, stdout, stderr, info, report, payload, *network = fds
    steps = {"forked": time.monotonic()}
    try:
        confine.die_with(os.dup(template))  # set again after the uid changes (which clears it)
        files = read_payload(payload)
        # The program must be the one the OOM killer picks on this host, ahead of anything of
        # the host's (raising needs no privilege, lowering it back would).
        linux.write_file("/proc/self/oom_score_adj", str(_PROGRAM_OOM_SCORE))
        confine.join_cgroups(spec["cgroup_fds"], request["cgroups"])
        steps["cgroup"] = time.monotonic()
        confine.enter_namespaces(network[0] if network else None, pid=False)
        steps["namespaces"] = time.monotonic()
        _mount_run(request)
        _write_files(files, request["uid"])
        os.chdir(WORKSPACE)
        linux.loopback_up()
        steps["mounts"] = time.monotonic()
        linux.set_name("python3")
        os.setsid()
        problems = confine.confine_self(spec, request, template_namespaces,
                                        lambda: confine.die_with(template), steps)
        if problems:
            raise OSError("sandbox confinement check failed: " + "; ".join(problems))
        linux.prctl(linux.PR_SET_DUMPABLE, 1)  # the program's own /proc/self, as a script's
        for source, target in zip((stdin, stdout, stderr), (0, 1, 2), strict=True):
            os.dup2(source, target, inheritable=True)
        report = _keep_high(report)
        steps["confined"] = time.monotonic()
        built = _build(request.get("native"), steps)
        # The server's clock starts: the program runs next (a failed compile ends here).
        _write_all(info, json.dumps({"steps": steps, **built}).encode())
        if built.get("compile", {}).get("return_code", 0) != 0:
            os._exit(1)
        confine.close_all_but({0, 1, 2, report})
        confine.fresh_process_state(user_site=False)
        fetch, budget = list(request["fetch"]), int(request["fetch_max_bytes"])
        if request.get("native"):
            code = _run_native(request["native"], report, fetch, budget)
        else:
            code = program.run(f"{WORKSPACE}/{request['program']}",
                               lambda: _report_files(report, fetch, budget))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _write_all(info, json.dumps(
                {"error": f"run setup failed: {exc} (at {_where(exc)})"}).encode())
        os._exit(confine.EXIT_SETUP_FAILED)
    os._exit(code)


def _build(native: Message | None, steps: dict[str, float]) -> Message:
    """A compiled language's compile, unless the server sent its build (from its cache):
    what the server's info message carries besides the steps (the compile's result and, for
    the server's compile cache, its output files)."""
    if not native:
        return {}
    if native.get("node_modules"):
        native_build.link_node_modules([WORKSPACE, native_build.BUILD_DIR],
                                       native["node_modules"])
    if not native.get("compile"):
        return {}
    result = native_build.compile_program(native["compile"], native["env"],
                                          float(native["compile_timeout"]))
    steps["compiled"] = time.monotonic()
    told: Message = {"compile": result}
    if result["return_code"] == 0:
        told["build"] = native_build.read_build(int(native["build_max_bytes"]))
        if native.get("node_modules"):
            native_build.link_node_modules([native_build.BUILD_DIR], native["node_modules"])
    return told


def _run_native(native: Message, report: int, fetch: list[str], budget: int) -> int:
    """The program as our child; its end passed on (a signal's too, in the report: we
    cannot die of a signal the same way as pid 1) once the files asked back are read."""
    status = native_build.run_program(native["run"], native["env"])
    ended = time.monotonic()
    with contextlib.suppress(OSError):
        _write_all(report, json.dumps({"files": _fetch(fetch, budget), "status": status,
                                       "ended": ended}).encode())
    with contextlib.suppress(OSError):
        os.close(report)
    return confine.exit_code(status)


def _keep_high(fd: int) -> int:
    """The report pipe, out of the way of the fds a program's own files get."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, max(3, min(_REPORT_FD_FLOOR, soft - 1)))
    os.close(fd)
    return high


def _report_files(report: int, paths: list[str], budget: int) -> None:
    """As the program ends, the files asked back, read with its own rights (a link to what
    it may not read gets nothing), one JSON object onto the report pipe."""
    ended = time.monotonic()
    with contextlib.suppress(OSError):
        _write_all(report, json.dumps({"files": _fetch(paths, budget),
                                       "ended": ended}).encode())
    with contextlib.suppress(OSError):
        os.close(report)


def _mount_run(request: Message) -> None:
    confine.mount_private_tmp(request["tmp_bytes"], unmount=False)
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
        # A build the server kept (its compile cache) holds the programs to run.
        mode = 0o755 if path.startswith(native_build.BUILD_DIR + "/") else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        try:
            _write_all(fd, content)
            os.fchown(fd, uid, uid)
        finally:
            os.close(fd)


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
