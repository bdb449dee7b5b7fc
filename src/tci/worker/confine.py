"""A fork of the template becomes one session's sandbox, in a fixed order, before any user
code can run (the zygote's way: specialise, then verify, then run).

  init   the fork itself: pid 1 of a pid namespace made for it (template.py forks it there,
         as it forks a run), root and still in the host's other namespaces. It joins the
         session's cgroup, makes the other namespaces, mounts the session's view (its own
         /tmp, /dev/shm, devpts, its volume as the server cloned it), brings up lo, hands the
         server a pidfd on itself; then mounts its /proc, drops to the session's uid, enters
         a user namespace mapping it to 1000 (where no further one may be made), clears every
         capability, sets no_new_privs, ties its life to the template's (which is tied to the
         server's) by PR_SET_PDEATHSIG, loads the seccomp filter, makes itself not dumpable
         (out of reach of the session's code, which runs as its uid), verifies all of that,
         forks the worker, then reaps until the worker ends (or the server's lifeline
         closes: a second, voluntary way out);
  worker the template's preloaded worker, on the session's own channels.
Two processes per session (init and worker), as with bubblewrap's init and worker, and two
forks: the template's and the init's. Any failure before the worker runs exits the process:
nothing runs half-confined.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import linux
from .protocol import Message

if TYPE_CHECKING:
    from .__main__ import Worker

EXIT_SETUP_FAILED = 121  # a step of the setup failed (the reason is on the info channel)
EXIT_CONFINEMENT = 122  # the self-verification found the sandbox not as it must be
SANDBOX_ID = 1000
INIT_NAME = "tci-init"  # what ps shows for the sandbox's pid 1
NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "cgroup", "user")
_SESSION_NAMESPACES = (linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC
                       | linux.CLONE_NEWPID | linux.CLONE_NEWCGROUP | linux.CLONE_NEWNET)
_MOUNT_FLAGS = linux.MS_NOSUID | linux.MS_NODEV
_HIGH_FD = 100


def namespace_ids() -> dict[str, str]:
    return {name: os.readlink(f"/proc/self/ns/{name}") for name in NAMESPACES}


def exit_code(status: int) -> int:
    """A child's wait status as a shell would pass it on: the code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _report(fd: int, message: Message) -> None:
    os.write(fd, json.dumps(message).encode() + b"\n")  # one write under PIPE_BUF: atomic


def become_session(spec: Message, request: Message, fds: list[int], lifeline: int,
                   template_namespaces: dict[str, str], worker: Worker, template: int) -> None:
    """The session's init, from the template's fork on: pid 1 of its own pid namespace, root.
    `template` is a pidfd on the template (our parent). Never returns."""
    command, event, stdout, stderr, info, status, work, home, *network = fds
    steps = {"asked": request["asked"], "fork": time.monotonic()}
    try:
        join_cgroups(spec["cgroup_fds"], request["cgroups"])
        steps["cgroup"] = time.monotonic()
        enter_namespaces(network[0] if network else None, pid=False)
        steps["namespaces"] = time.monotonic()
        _mount_session(request, (work, home))
        os.chdir("/workspace")  # the volume now, not the template's directory under it
        steps["mounts"] = time.monotonic()
        linux.loopback_up()
        steps["loopback"] = time.monotonic()
        # The server holds us by pidfd from here on (we are the template's child, never the
        # server's). Our pid as the server knows it: the template's /proc is still mounted,
        # and it counts in the host's pid namespace.
        pidfd = os.pidfd_open(os.getpid())
        channel = socket.socket(fileno=status)
        try:
            socket.send_fds(channel, [json.dumps({"init": int(os.readlink("/proc/self"))})
                                      .encode()], [pidfd])
        finally:
            channel.detach()  # the fd stays ours: the worker's end is told on it
            os.close(pidfd)
    except OSError as exc:
        _report(info, {"error": f"sandbox setup failed: {exc}"})
        os._exit(EXIT_SETUP_FAILED)
    try:
        _become_init(spec, request, (command, event, stdout, stderr), info, status, lifeline,
                     template_namespaces, worker, template, steps)
    except BaseException as exc:
        import traceback

        with contextlib.suppress(OSError):
            os.write(stderr, traceback.format_exc().encode())
        with contextlib.suppress(OSError):
            _report(info, {"error": f"sandbox setup failed: {exc}"})
    os._exit(EXIT_SETUP_FAILED)


def join_cgroups(parent_fds: list[int], cgroups: list[tuple[int, str]]) -> None:
    for parent, name in cgroups:
        fd = os.open(f"{name}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC,
                     dir_fd=parent_fds[parent])
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)


def enter_namespaces(network: int | None, pid: bool = True) -> None:
    """Every namespace of a sandbox but the user namespace (made after the uid changes); the
    pid namespace (`pid`) is the next fork's, unless the caller already is pid 1 of its own.
    `network`: a namespace made ahead by the server (its egress filter and slirp4netns
    running) to join; None, a new empty one."""
    flags = _SESSION_NAMESPACES if pid else _SESSION_NAMESPACES & ~linux.CLONE_NEWPID
    if network is not None:
        linux.setns(network, linux.CLONE_NEWNET)
        os.close(network)
        linux.unshare(flags & ~linux.CLONE_NEWNET)
    else:
        linux.unshare(flags)
    linux.sethostname("sandbox")
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)


def die_with(parent: int) -> None:
    """SIGKILL from the kernel when our parent dies; `parent` is a pidfd on it (inside a new
    pid namespace getppid() says 0), closed here. Checked after it is set: a parent already
    gone would never send it."""
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    gone, _, _ = select.select([parent], [], [], 0)
    if gone:
        os._exit(128 + signal.SIGKILL)  # as if the signal had come: the server is going
    os.close(parent)


def drop_to(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to another uid: the kernel clears the capabilities


def _become_init(spec: Message, request: Message, channels: tuple[int, int, int, int],
                 info: int, status: int, lifeline: int, template_namespaces: dict[str, str],
                 worker: Worker, template: int, steps: dict[str, float]) -> None:
    linux.set_name(INIT_NAME)
    os.setsid()  # no controlling terminal of the server's to reach (bwrap's --new-session)
    steps["init"] = time.monotonic()
    problems = confine_self(spec, request, template_namespaces,
                            lambda: die_with(template), steps)
    if problems:
        _report(info, {"error": "sandbox confinement check failed: " + "; ".join(problems)})
        os._exit(EXIT_CONFINEMENT)
    _report(info, {"confined": True, "steps": steps})
    os.close(info)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    child = os.fork()
    if child == 0:
        try:
            linux.prctl(linux.PR_SET_DUMPABLE, 1)  # the user's /proc/self, debuggers, ...
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            linux.set_name(os.path.basename(sys.executable))  # python3.11, as bwrap's worker
            _run_worker(spec, channels, worker)
        except BaseException:
            import traceback

            text = traceback.format_exc().encode()
            for fd in (2, channels[3]):  # the session's stderr pipe, wherever it is by now
                with contextlib.suppress(OSError):
                    os.write(fd, text)
            os._exit(EXIT_SETUP_FAILED)
        os._exit(0)
    close_all_but({lifeline, status, wake_r, wake_w})
    _serve_as_init(child, lifeline, status, wake_r)


def confine_self(spec: Message, request: Message, template_namespaces: dict[str, str],
                 tie_to_parent: Callable[[], None], steps: dict[str, float] | None = None
                 ) -> list[str]:
    """pid 1 of a new sandbox (a session's init, a run's program) confines itself: its
    /proc, limits, the session's uid in a user namespace of its own, no capabilities,
    no_new_privs, death with its parent (`tie_to_parent`, after the last change of
    credentials, which would clear it), seccomp, not dumpable; then reads all of it back.
    What is not as it must be (empty: all is in force)."""
    steps = steps if steps is not None else {}
    if request.get("unmount", True):  # the template's, of the host's pid namespace
        linux.umount("/proc", linux.MNT_DETACH)
    linux.mount("proc", "/proc", "proc", _MOUNT_FLAGS | linux.MS_NOEXEC)
    steps["proc"] = time.monotonic()
    _set_limits(request)
    uid = request["uid"]
    drop_to(uid)
    # As after an exec: /proc/self belongs to the user again (a change of uid made it
    # root's), so the maps below can be written and the user's tools can read it.
    linux.prctl(linux.PR_SET_DUMPABLE, 1)
    linux.unshare(linux.CLONE_NEWUSER)
    linux.write_file("/proc/self/uid_map", f"{SANDBOX_ID} {uid} 1")
    linux.write_file("/proc/self/setgroups", "deny")
    linux.write_file("/proc/self/gid_map", f"{SANDBOX_ID} {uid} 1")
    # No user namespace may be made inside this one, even past the seccomp filter.
    linux.write_file("/proc/sys/user/max_user_namespaces", "0")
    linux.clear_capabilities()
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    steps["identity"] = time.monotonic()
    tie_to_parent()
    steps["tied"] = time.monotonic()
    # The filter also refuses PR_SET_PDEATHSIG from here on: the tie cannot be cut.
    linux.load_seccomp(spec["seccomp"])
    steps["seccomp"] = time.monotonic()
    # Out of the session's reach from here on: its code runs as our uid, but our memory was
    # made in the host's user namespace, where it has no CAP_SYS_PTRACE, so no ptrace, no
    # /proc/1/mem, environ or fds. (The worker makes itself dumpable again, for its own use.)
    linux.prctl(linux.PR_SET_DUMPABLE, 0)
    problems = confinement_problems(template_namespaces)
    steps["verified"] = time.monotonic()
    return problems


def _serve_as_init(worker: int, lifeline: int, status: int, wake: int) -> None:
    """pid 1: reap every orphan of the sandbox; when the worker ends, say how on the status
    socket (the server is not our parent) and end the same way, taking the namespace with
    us. If the server's lifeline closes, the session ends at once."""
    while True:
        readable, _, _ = select.select([lifeline, wake], [], [])
        if lifeline in readable:
            os._exit(128 + signal.SIGKILL)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake, 512):
                pass
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == worker:
                code = exit_code(wait_status)
                with contextlib.suppress(OSError):
                    os.write(status, json.dumps({"exit": code}).encode())
                os._exit(code)


def mount_private_tmp(tmp_bytes: int, unmount: bool = True) -> None:
    """The sandbox's own /tmp and /dev/shm (capped tmpfs, counted in its memory) and ptys."""
    tmpfs = f"mode=1777,size={tmp_bytes}"
    if unmount:
        linux.umount("/tmp", linux.MNT_DETACH)
    linux.mount("tmpfs", "/tmp", "tmpfs", _MOUNT_FLAGS, tmpfs)
    linux.mount("tmpfs", "/dev/shm", "tmpfs", _MOUNT_FLAGS, tmpfs)
    linux.mount("devpts", "/dev/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=620")


def _mount_session(request: Message, volume: tuple[int, int]) -> None:
    mount_private_tmp(request["tmp_bytes"])
    # The server's detached copies of this session's volume (nosuid, nodev as the original).
    for tree, target in zip(volume, ("/workspace", "/home/user"), strict=True):
        linux.attach_tree(tree, target)
        os.close(tree)


def _set_limits(request: Message) -> None:
    for number, soft, hard in request["rlimits"]:  # resource.RLIMIT_* numbers
        resource.setrlimit(number, (soft, hard))
    if request["niceness"]:
        os.setpriority(os.PRIO_PROCESS, 0, request["niceness"])


def confinement_problems(template_namespaces: dict[str, str]) -> list[str]:
    """What is not as it must be, read back from the kernel (empty: all is in force)."""
    with open("/proc/self/status") as lines:
        status = dict(line.split(":", 1) for line in lines if ":" in line)
    problems = []
    expected = [str(SANDBOX_ID)] * 4
    if status["Uid"].split() != expected or status["Gid"].split() != expected:
        problems.append(f"ids are uid {status['Uid'].split()} gid {status['Gid'].split()}")
    if status["Groups"].split():
        problems.append(f"supplementary groups {status['Groups'].split()}")
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if int(status[cap], 16):
            problems.append(f"{cap} is {status[cap].strip()}")
    if status.get("NoNewPrivs", "").strip() != "1":
        problems.append("no_new_privs is not set")
    if status.get("Seccomp", "").strip() != "2":
        problems.append("no seccomp filter")
    if os.getpid() != 1:
        problems.append(f"not pid 1 of its own pid namespace (pid {os.getpid()})")
    if linux.prctl(linux.PR_GET_DUMPABLE) != 0:
        problems.append("dumpable (its memory is open to processes of its uid)")
    if linux.parent_death_signal() != signal.SIGKILL:
        problems.append("no SIGKILL on the template's death (PR_SET_PDEATHSIG)")
    for name, value in namespace_ids().items():
        if value == template_namespaces[name]:
            problems.append(f"shares the template's {name} namespace")
    return problems


def close_all_but(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:  # closerange(n, n) is not empty: it becomes close_range(n, UINT_MAX)
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _run_worker(spec: Message, channels: tuple[int, int, int, int], worker: Worker) -> None:
    # Out of the way first: a received fd may hold a number another one is moved to.
    command, event, stdout, stderr = (_dup_high(fd) for fd in channels)
    for source, target in ((stdout, 1), (stderr, 2), (command, spec["command_fd"]),
                           (event, spec["event_fd"])):
        os.dup2(source, target, inheritable=target in (1, 2))
    stdin = sys.stdin.fileno() if sys.stdin is not None else 0
    close_all_but({0, 1, 2, spec["command_fd"], spec["event_fd"], stdin})
    fresh_process_state()
    worker.serve()


def _dup_high(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)


def fresh_process_state(user_site: bool = True) -> None:
    """What must differ between sessions forked from one template. `random` reseeds itself
    at fork (os.register_at_fork); numpy's legacy global generator does not. `user_site`: a
    session's home may hold packages it installed (a one-shot run's has none)."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
    # multiprocessing's authentication key is drawn once, when it is first imported.
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        process.current_process().authkey = os.urandom(32)
    if user_site:
        _put_user_site_on_path()


def _put_user_site_on_path() -> None:
    # The user site (pip install --user) exists only in the session's home: put it where a
    # normal start would have, ahead of the runtime, with no stale "absent" cache entry.
    import importlib
    import site

    user_site = site.getusersitepackages()
    if os.path.isdir(user_site) and user_site not in sys.path:
        runtime = [i for i, p in enumerate(sys.path) if p.endswith("dist-packages")]
        sys.path.insert(runtime[0] if runtime else len(sys.path), user_site)
    sys.path_importer_cache.pop(user_site, None)
    importlib.invalidate_caches()
