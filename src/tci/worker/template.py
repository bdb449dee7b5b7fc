"""The fork template: one per server, preloaded once, forked for every new session.

Started by the server as root with a clean environment (TemplateProcess in
src/tci/sandbox/fork/template_process.py; the fork path's map is src/tci/sandbox/fork/__init__.py):
    python3.11 -S <exposed worker dir>/template.py sessions|runs
(the kind only names it for ps; the spec says the same)
with a JSON spec on fd 0 and its channels at the fds the spec names. It then

1. makes its own mount namespace and, in a tmpfs, exactly the filesystem sessions see (the
   system and the runtime read-only, generated /etc, a minimal /dev); no session volume is
   ever in it (each child attaches the clone of its own that the server sends);
2. pivots into it, so every module it imports has the paths the sandbox will have;
3. imports IPython, the worker and TCI_POOL_PRELOAD, builds the worker's shell, runs a silent
   warm-up cell, and freezes its heap (gc.freeze), so children share it page for page (a
   template of one-shot runs, kind "runs", imports only TCI_RUN_PRELOAD);
4. serves spawn requests (SpawnLoop): each is a fork (confine.py takes it from there for a
   session, oneshot.py for a one-shot run, whose pidfd goes back to the server), and reaps
   each child (telling the server how each run ended).

It dies with the server (PR_SET_PDEATHSIG), and every session's init dies with it in turn: a
template that dies takes its sessions with it (the kernel's doing, so no session's code can
stop it).

It never runs user code and holds no secret: no key, no token, no server state. It starts no
thread (threads do not survive fork), and IPython's history is off for the same reason.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

Message = dict[str, Any]  # a JSON object: the spec, a request (as protocol.Message)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if TYPE_CHECKING:  # run as a script, it imports its sibling by file name; the checker, by package
    from tci.worker import linux
    from tci.worker.__main__ import Worker
else:
    import linux

SANDBOX_ROOT_MODE = "mode=0755,size=8m"
_MAX_MESSAGE = 1 << 16


def _bind(source: str, target: str, readonly: bool = True) -> None:
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
    if readonly:
        linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY
                    | linux.MS_NOSUID | linux.MS_NODEV)


def _touch(path: str, like: str) -> None:
    if os.path.isdir(like):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()


def build_root(spec: Message) -> None:
    """Steps 1 and 2: this process ends up in the sandbox's view of the filesystem."""
    root = spec["root_dir"]
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)  # nothing leaks either way
    os.makedirs(root, mode=0o700, exist_ok=True)
    linux.mount("tmpfs", root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, SANDBOX_ROOT_MODE)
    os.chmod(root, 0o755)

    def at(path: str) -> str:
        return str(root + path)

    for directory in ("/usr", "/etc", "/proc", "/dev", "/tmp", "/workspace", "/home/user",
                      spec["worker_mount"], "/.oldroot"):
        os.makedirs(at(directory), exist_ok=True)
    _bind("/usr", at("/usr"))
    for target, link in spec["symlinks"]:
        os.symlink(target, at(link))
    for path in spec["etc_ro"]:
        if os.path.exists(path):
            _touch(at(path), path)
            _bind(path, at(path))
    for name in ("passwd", "group", "hosts", "resolv.conf", "hostname"):
        _touch(at(f"/etc/{name}"), os.path.join(spec["etc_dir"], name))
        _bind(os.path.join(spec["etc_dir"], name), at(f"/etc/{name}"))
    for source, target in spec["ro_binds"]:
        _bind(source, at(target))
    _make_dev(at("/dev"))
    os.chdir(root)
    linux.pivot_root(".", ".oldroot")
    os.chdir("/")
    linux.umount("/.oldroot", linux.MNT_DETACH)
    os.rmdir("/.oldroot")
    # /proc (the host's pids, for the imports: children replace it with their own) and a
    # scratch /tmp for caches the imports write (matplotlib's font list).
    linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    linux.mount("tmpfs", "/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777,size=64m")
    linux.mount(None, "/", None, linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID
                | linux.MS_NODEV)
    os.chdir("/workspace")


def _make_dev(dev: str) -> None:
    """A minimal /dev, as bubblewrap's --dev makes it: a few device nodes bound from the
    host, links into /proc, and mount points for a private devpts and /dev/shm."""
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755,size=64k")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        open(f"{dev}/{name}", "a").close()
        linux.mount(f"/dev/{name}", f"{dev}/{name}", None, linux.MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("core", "/proc/kcore"), ("ptmx", "pts/ptmx")):
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/pts")
    os.mkdir(f"{dev}/shm")
    linux.mount(None, dev, None, linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID
                | linux.MS_NOEXEC)


def load_runtime(spec: Message) -> Worker | None:
    """Step 3: the worker, IPython and the preloaded modules, imported from sandbox paths."""
    for name in [m for m in sys.modules if m == "linux" or m.startswith("tci_worker")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if not p.startswith(spec["host_worker_dir"])]
    if os.path.dirname(spec["worker_mount"]) not in sys.path:
        sys.path.insert(0, os.path.dirname(spec["worker_mount"]))
    import importlib
    import site

    # Looked up before the pivot, every path on sys.path was another directory (or none).
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()

    site.main()  # the runtime's dist-packages, as a normal start would add them
    sys.dont_write_bytecode = True
    spec["log_fd"] = _out_of_the_way(os.dup(2))
    if spec.get("kind") == "runs":
        _load_for_runs(spec)
        return None
    from tci_worker.__main__ import Worker as SandboxWorker  # the copy sandboxes see

    # The worker's channels get fixed numbers; until a child takes them they are /dev/null.
    for fd in (1, 2, spec["command_fd"], spec["event_fd"]):
        null = os.open("/dev/null", os.O_RDWR)
        if null != fd:
            os.dup2(null, fd, inheritable=False)
            os.close(null)
    worker: Worker = SandboxWorker(spec["command_fd"], spec["event_fd"])
    # dill too: a pause, a snapshot and a resume of a namespace with functions use it (state.py)
    worker.preload([*spec["preload"], "dill"])
    gc.collect()
    gc.freeze()  # what is here now is never touched by the collector in the children
    return worker


def _load_for_runs(spec: Message) -> None:
    """A template of one-shot runs holds no shell: only what a script's own imports want
    at once (TCI_RUN_PRELOAD), so that each fork, and each exit, copies and drops little."""
    import importlib

    from tci_worker import oneshot  # noqa: F401 - imported once here, not in every run

    for name in spec["preload"]:
        try:
            importlib.import_module(name)
        except Exception as exc:
            print(f"run template: preload of {name} failed: {exc!r}", file=sys.stderr)
    for fd in (1, 2):
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, fd, inheritable=False)
        os.close(null)
    gc.collect()
    gc.freeze()


class SpawnLoop:
    """Step 4. Requests arrive on a SOCK_SEQPACKET socket with the child's channel fds."""

    def __init__(self, spec: Message, control: socket.socket, lifeline: int,
                 worker: Worker | None) -> None:
        from tci_worker import confine, oneshot

        self.oneshot = oneshot
        self.spec = spec
        self.control = control
        self.lifeline = lifeline
        self.worker = worker
        self.confine = confine
        self.log = os.fdopen(spec["log_fd"], "w", buffering=1)  # the template's stderr
        self.own_namespaces = confine.namespace_ids()
        # Every child holds this: its parent-death signal is checked against it (die_with).
        self.own_pidfd = os.pidfd_open(os.getpid())
        self.own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.runs: dict[int, int] = {}  # pid of a live run -> the id of its request
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def serve(self) -> None:
        self._send({"type": "ready", "pid": os.getpid()})
        watched: list[socket.socket | int] = [self.control, self.wake_r, self.lifeline]
        while True:
            readable, _, _ = select.select(watched, [], [])
            if self.lifeline in readable or (self.control in readable and not self._request()):
                return  # the server is gone: children notice on their own lifeline
            if self.wake_r in readable:
                while True:
                    try:
                        if not os.read(self.wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                self._reap()

    def _request(self) -> bool:
        message, fds, _, _ = socket.recv_fds(self.control, _MAX_MESSAGE, 16)
        if not message:
            return False
        request = json.loads(message)
        try:
            pid = self._spawn(request, fds)
        except OSError as exc:
            self._send({"type": "spawn", "id": request["id"], "error": str(exc)})
            return True
        finally:
            for fd in fds:
                os.close(fd)
        if request.get("type") != "run":
            # A session's init sends the server a pidfd on itself, on its own socket.
            self._send({"type": "spawn", "id": request["id"]})
            return True
        pidfd = os.pidfd_open(pid)  # the server kills a run at its time limit through it
        try:
            self._send({"type": "spawn", "id": request["id"]}, [pidfd])
        finally:
            os.close(pidfd)
        return True

    def _spawn(self, request: Message, fds: list[int]) -> int:
        request["asked"] = time.monotonic()
        run = request.get("type") == "run"
        pid = self._fork_in_own_pid_namespace()
        if run and pid:
            self.runs[pid] = request["id"]
        if pid == 0:
            try:
                self.control.close()
                os.close(self.wake_r)
                os.close(self.wake_w)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(self.own_pid_namespace)
                if run:  # a one-shot run (oneshot.py)
                    os.close(self.lifeline)  # a run dies with the template, by the kernel
                    self.oneshot.become_run(self.spec, request, fds, self.own_namespaces,
                                            self.own_pidfd)
                self.confine.become_session(self.spec, request, fds, self.lifeline,
                                            self.own_namespaces, self.worker, self.own_pidfd)
            except BaseException:
                import traceback

                traceback.print_exc(file=self.log)
            finally:
                os._exit(self.confine.EXIT_SETUP_FAILED)
        return pid

    def _fork_in_own_pid_namespace(self) -> int:
        """A run's one process, a session's init, is pid 1 of a pid namespace of its own,
        made for this fork alone: unshare(CLONE_NEWPID) puts only our next child there, and
        setns back to our own pid namespace lets the next fork have a new one."""
        linux.unshare(linux.CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            linux.setns(self.own_pid_namespace, linux.CLONE_NEWPID)
            raise
        if pid:
            linux.setns(self.own_pid_namespace, linux.CLONE_NEWPID)
        return pid

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # A run tells the server how it ended from here; a session's init (our child as
            # well) tells it on its own status socket.
            request = self.runs.pop(pid, None)
            if request is not None:
                self._send({"type": "exited", "id": request, "at": time.monotonic(),
                            "status": status})

    def _send(self, message: Message, fds: list[int] | None = None) -> None:
        socket.send_fds(self.control, [json.dumps(message).encode()], fds or [])


def _out_of_the_way(fd: int) -> int:
    """Move an fd above the numbers the worker's channels take (0-4) in every child."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
    os.close(fd)
    return high


def die_with_server(server_pid: int) -> None:
    """The kernel kills this process when the server dies (SIGKILL, which nothing can catch),
    and with it, in turn, every session's init (confine.py ties each to this process). Checked
    after setting it: a server already gone would never send it."""
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:
        os._exit(1)


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    # Root all along, it never changes credentials or runs a set-uid program: nothing clears
    # the parent-death signal after this.
    die_with_server(spec["server_pid"])
    # Every session and run forks from here: none inherits a signal ignored by whatever
    # started the server (CPython's own SIGPIPE and SIGXFSZ are set back for programs).
    linux.stop_ignoring_signals(keep=frozenset({signal.SIGPIPE, signal.SIGXFSZ}))
    os.close(0)
    os.open("/dev/null", os.O_RDONLY)  # fd 0 again, so no later open lands on it
    control = socket.socket(fileno=_out_of_the_way(spec["control_fd"]))
    lifeline = _out_of_the_way(spec["lifeline_fd"])
    with os.fdopen(spec["seccomp_fd"], "rb") as program:
        spec["seccomp"] = program.read()  # loaded by every child as it confines itself
    # The cgroup parents stay reachable through these fds after the pivot hides /sys.
    spec["cgroup_fds"] = [
        _out_of_the_way(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for path in spec["cgroup_parents"]]
    build_root(spec)
    worker = load_runtime(spec)
    SpawnLoop(spec, control, lifeline, worker).serve()


if __name__ == "__main__":
    main()
