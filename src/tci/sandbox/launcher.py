"""Starting and tearing down one sandbox: directories, uid, pipes, the bwrap process, network.

Talking to the worker inside is the driver's job (kernel/driver.py); this module only owns
the process tree and the host resources it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.sandbox import runtime_mounts, volume
from tci.sandbox.bwrap import (
    SANDBOX_GID,
    SANDBOX_UID,
    SandboxSpec,
    build_argv,
    prlimit_options,
)
from tci.sandbox.cgroups import CgroupDriver, CgroupLimits, SessionCgroup
from tci.sandbox.counters import Counters
from tci.sandbox.egress_filter import EgressFilter
from tci.sandbox.hostdir import make_private_dir
from tci.sandbox.network import Egress, start_egress
from tci.sandbox.pidfd import ProcessHandle, children_of
from tci.sandbox.runtime_mounts import RuntimePaths
from tci.sandbox.seccomp import build_filter, open_filter_fd
from tci.sandbox.uids import UidPool, check_range
from tci.sandbox.volume_images import VolumeImages

log = logging.getLogger(__name__)

USER_SITE = ".local/lib/python3.11/site-packages"
# A sandbox's start-up report (bwrap's --info-fd; a fork's setup and init report a few JSON
# lines of ids and timings, well under 1 KiB). A fixed protocol maximum, not a setting.
MAX_INFO_BYTES = 1 << 16
_TOOLS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxProcess(Protocol):
    """What the server waits for to learn how a sandbox ended: bwrap's outer process (our
    child), or a forked sandbox's init (which reports its end on a socket)."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


class Channels(NamedTuple):
    """The worker's ends of its four pipes."""

    command: int
    event: int
    stdout: int
    stderr: int


@dataclass
class Sandbox:
    """A running sandbox and the host ends of its channels."""

    name: str
    uid: int
    root: Path
    workspace: Path
    process: SandboxProcess
    child_pid: int  # host pid of the sandbox's pid 1
    command_fd: int
    event_fd: int
    stdout_fd: int
    stderr_fd: int
    cgroup: SessionCgroup | None = None
    volume_path: Path | None = None
    egress: Egress | None = None
    closed: bool = False
    outer: ProcessHandle | None = None  # bwrap's outer process (our child); none when forked
    init: ProcessHandle | None = None  # the sandbox's pid 1 (child_pid)
    _worker_handle: ProcessHandle | None = None

    def counters(self) -> Counters:
        """The kernel's count of limit hits so far (cheap: two small cgroupfs reads)."""
        if self.cgroup is None:
            return Counters()
        try:
            return Counters(self.cgroup.oom_kills(), self.cgroup.pids_limit_hit())
        except OSError:
            return Counters()

    def volume_usage(self) -> volume.Usage | None:
        if self.volume_path is None:
            return None
        try:
            return volume.usage(self.volume_path)
        except OSError:
            return None

    def _worker(self) -> ProcessHandle | None:
        """The worker (the only child of the sandbox's pid 1), found once and held by pidfd."""
        if self._worker_handle is None and self.init is not None:
            pids = children_of(self.init.pid)
            if pids:
                self._worker_handle = ProcessHandle.open_child(self.init, pids[0])
        return self._worker_handle

    def worker_pid(self) -> int | None:
        """Host pid of the worker, while it lives."""
        worker = self._worker()
        return worker.pid if worker is not None and worker.alive() else None

    def interrupt(self) -> bool:
        worker = self._worker()
        return worker is not None and worker.signal(signal.SIGINT)

    def set_priority(self, niceness: int) -> None:
        """Renice every process of the sandbox (the root server may also lower niceness).
        Only processes whose pidfd says they still live: the number is theirs."""
        for handle in (self.outer, self.init, self._worker()):
            if handle is not None and handle.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.setpriority(os.PRIO_PROCESS, handle.pid, niceness)

    def kill(self) -> None:
        """Kill the whole tree at once: bwrap's pid 1 dies, the kernel ends its namespace.
        Through pidfds only: a reaped pid may belong to someone else by now. (destroy() then
        empties the session's cgroup too.)"""
        for handle in (self.init, self.outer):
            if handle is not None:
                handle.signal(signal.SIGKILL)

    def close_handles(self) -> None:
        for handle in (self.init, self.outer, self._worker_handle):
            if handle is not None:
                handle.close()


def _write_etc(etc_dir: Path, nameservers: list[str]) -> None:
    etc_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"user:x:{SANDBOX_UID}:{SANDBOX_GID}:user:/home/user:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nuser:x:{SANDBOX_GID}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        # TCI_EGRESS_DNS (egress_filter.py): the only resolvers the filter lets sessions ask.
        "resolv.conf": "".join(f"nameserver {server}\n" for server in nameservers)
        or "# no resolver: this server gives sessions no DNS\n",
        "hostname": "sandbox\n",
    }
    for name, text in files.items():
        path = etc_dir / name
        path.write_text(text)
        path.chmod(0o644)


async def _read_to_eof(fd: int, max_bytes: int = MAX_INFO_BYTES) -> bytes:
    """A start-up info channel to its end: at most `max_bytes` (SandboxUnavailable beyond)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    said = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            chunk = os.read(fd, max_bytes + 1 - len(said))
        except BlockingIOError:
            return
        except OSError as exc:
            chunk = b""
            log.debug("info fd read failed: %s", exc)
        said.extend(chunk)
        if len(said) > max_bytes and not done.done():
            done.set_exception(SandboxUnavailable(
                f"the sandbox broke the protocol: more than {max_bytes} bytes on its info "
                "channel"))
        elif not chunk and not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return bytes(said)


def _remove_cgroup(cgroup: SessionCgroup) -> bool:
    """True once the cgroup is gone, which it can be only with no process left in it."""
    try:
        cgroup.kill_all()
        cgroup.remove()
    except (OSError, SandboxUnavailable) as exc:
        log.warning("could not remove cgroup %s: %s", cgroup.name, exc)
        return False
    return True


def _check_reachable(path: Path) -> None:
    """Sandboxes mount host paths as their own unprivileged uid, which must be able to
    reach them: every parent directory needs the "others may traverse" bit."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise SandboxUnavailable(
                f"{path} is not reachable by the unprivileged sandbox users: {parent} is not "
                "traversable by others (chmod o+x it, or choose another TCI_SANDBOX_DIR)"
            )


class SandboxLauncher:
    """Creates sandboxes for sessions and frees everything they used."""

    kind = "bubblewrap"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.resolved_sandbox_dir
        self.uids = UidPool(settings.sandbox_uid_base, settings.sandbox_uid_count)
        self.runtime_site = settings.runtime_dir / "site"
        self.runtime_bin = settings.runtime_dir / "site" / "bin"
        self.exposed: RuntimePaths | None = None  # where sandboxes bind them from (prepare)
        self.volumes = VolumeImages(self.root, settings.workspace_max_bytes,
                                    settings.workspace_max_files)
        self.egress_filter = (
            EgressFilter(settings.egress_refuse, allowed=settings.egress_allow,
                         dns=settings.egress_dns, database_url=settings.database_url)
            if settings.network == "egress" else None)
        self.cgroups: CgroupDriver | None = None
        self.limits = CgroupLimits(
            memory_bytes=settings.memory_limit_bytes, pids_max=settings.pids_limit,
            cpu_weight=settings.cpu_weight, io_weight=settings.io_weight,
        )

    def prepare(self) -> None:
        """Called once at server start: directories, generated /etc, stale leftovers."""
        check_range(self.settings.sandbox_uid_base, self.settings.sandbox_uid_count)
        make_private_dir(self.root)  # refuses a path another local user could redirect
        for stale in self.root.glob("ses_*"):
            VolumeImages.destroy(stale)
            shutil.rmtree(stale, ignore_errors=True)
        self._prepare_root()
        self.volumes.prepare()
        _write_etc(self.root / "etc", self.egress_filter.dns if self.egress_filter else [])
        (self.root / "empty").mkdir(mode=0o555, exist_ok=True)
        if not (self.runtime_site / "IPython").is_dir():
            raise SandboxUnavailable(
                f"the sandbox runtime is missing at {self.settings.runtime_dir}: run `make runtime`"
            )
        _check_reachable(self.root)
        # The runtime and the worker may sit in a private home (a clone in /root): bound
        # read-only under the reachable root instead of asking users to open their home.
        self.exposed = runtime_mounts.expose(
            self.root, self.runtime_site, self.settings.worker_package_dir
        )
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
        build_filter()  # fails now, clearly, if libseccomp is missing
        # One cgroup parent per server (named like its sandbox dir), cleaned of leftovers.
        try:
            self.cgroups = CgroupDriver.detect(f"tci-{self.root.name}")
        except SandboxUnavailable as exc:
            if not self.settings.unsafe_allow_missing_protections:
                raise
            log.warning("UNSAFE: sessions run without cgroup limits: %s", exc.message)
            return
        self.cgroups.cleanup_stale()
        if self.egress_filter is not None:
            self.egress_filter.check()

    def cleanup(self) -> None:
        """Called at server stop, after every session ended: remove what prepare() made."""
        if self.cgroups is not None:
            self.cgroups.remove_parent()
        try:
            runtime_mounts.withdraw(self.root)  # first: nothing is deleted through a mount
        except SandboxUnavailable as exc:
            log.warning("%s; %s is left in place", exc.message, self.root)
            return
        self.exposed = None
        self.volumes.close()
        self._release_root()
        shutil.rmtree(self.root, ignore_errors=True)

    async def warm_up(self) -> None:
        """Hook: start, ahead of the first session, whatever sessions start from."""

    async def close(self) -> None:
        """Hook: stop what warm_up started (before cleanup, after every session ended)."""

    def _prepare_root(self) -> None:
        """Hook: what a launcher needs of the sandbox directory before anything is in it."""

    def _release_root(self) -> None:
        """Hook: undo _prepare_root, after every session ended."""

    def _exposed(self) -> RuntimePaths:
        if self.exposed is None:
            raise SandboxUnavailable("the sandbox launcher was not prepared (no runtime mounts)")
        return self.exposed

    def _make_cgroup(self, name: str) -> SessionCgroup | None:
        if self.cgroups is None:
            return None  # only with TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS (see prepare)
        return self.cgroups.create(name, self.limits)

    def _make_dirs(self, name: str, uid: int) -> tuple[Path, Path, Path]:
        root = self.root / name
        root.mkdir(mode=0o711)
        mounted = self.volumes.create(
            root, self.settings.workspace_max_bytes, self.settings.workspace_max_files
        )
        workspace, home = mounted / "work", mounted / "home"
        for directory in (workspace, home):
            directory.mkdir(mode=0o700)
        # Pre-create the user site so Python puts it on sys.path at start: `!pip install x`
        # followed by `import x` in the same cell then works.
        (home / USER_SITE).mkdir(parents=True)
        for path in [workspace, home, *home.rglob("*")]:
            os.chown(path, uid, uid)
        return root, workspace, home

    async def start(self, name: str, niceness: int = 0) -> Sandbox:
        uid = self.uids.acquire()
        try:
            return await self._start(name, uid, niceness)
        except BaseException:
            removed = await asyncio.to_thread(self._remove_dirs, self.root / name)
            self._free_uid(uid, [] if removed else [f"{self.root / name} is still there"])
            raise

    async def _start(self, name: str, uid: int, niceness: int) -> Sandbox:
        root, workspace, home = await asyncio.to_thread(self._make_dirs, name, uid)
        cgroup = await asyncio.to_thread(self._make_cgroup, name)
        command_r, command_w = os.pipe()
        event_r, event_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        child_ends = Channels(command_r, event_w, stdout_w, stderr_w)
        network: Egress | None = None
        try:
            network = await self._network_ahead()
            process, outer, init = await self._spawn(name, uid, niceness, workspace, home,
                                                     cgroup, child_ends, network)
        except BaseException:
            for fd in (command_w, event_r, stdout_r, stderr_r):
                os.close(fd)
            if network is not None:
                await network.stop()
            if cgroup is not None:
                await asyncio.to_thread(_remove_cgroup, cgroup)
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        sandbox = Sandbox(
            name=name, uid=uid, root=root, workspace=workspace, process=process,
            child_pid=init.pid if init is not None else 0, command_fd=command_w, event_fd=event_r,
            stdout_fd=stdout_r, stderr_fd=stderr_r, cgroup=cgroup, volume_path=workspace.parent,
            outer=outer, init=init, egress=network,
        )
        if init is None:
            await self.destroy(sandbox)
            raise SandboxUnavailable(f"{self.kind} did not start the sandbox (no init process)")
        # The sandbox cloned its mount namespace before it reported its init: from now on the
        # host's view of the volume follows no symlink, the sandbox's own copy still does.
        await asyncio.to_thread(volume.forbid_symlinks, workspace.parent)
        if (self.settings.network == "egress" and self.egress_filter is not None
                and sandbox.egress is None):
            # The sandbox is in its new namespace by now (it reported its init after
            # making it), so neither the filter nor slirp4netns can touch the host's.
            try:
                namespace = await self.egress_filter.attach(process.pid)
                sandbox.egress = await start_egress(namespace, root / "network.log")
            except SandboxUnavailable:
                await self.destroy(sandbox)
                raise
        return sandbox

    async def _network_ahead(self) -> Egress | None:
        """Hook: an egress network made before the sandbox, for it to join (None: the
        sandbox makes its own namespace and the network is attached to it afterwards)."""
        return None

    async def _spawn(self, name: str, uid: int, niceness: int, workspace: Path, home: Path,
                     cgroup: SessionCgroup | None, channels: Channels, network: Egress | None
                     ) -> tuple[SandboxProcess, ProcessHandle | None, ProcessHandle | None]:
        """Start the sandbox's processes on `channels` (the worker's ends, closed by the
        caller afterwards); returns what the server waits for, a handle on the outer process
        if there is one, and a handle on the sandbox's init (its pid 1; None if none came)."""
        info_r, info_w = os.pipe()
        seccomp_fd = open_filter_fd()
        runtime = self._exposed()
        spec = SandboxSpec(
            workspace=workspace, home=home, etc_dir=self.root / "etc",
            empty_dir=self.root / "empty",
            runtime_site=runtime.site, runtime_bin=runtime.bin, worker_dir=runtime.worker,
            command_fd=channels.command, event_fd=channels.event, info_fd=info_w,
            network=self.settings.network, seccomp_fd=seccomp_fd,
            tmp_size_bytes=self.settings.tmp_max_bytes,
        )
        try:
            # setpriv drops to the session's uid (uvloop has no user= for subprocesses).
            drop_privileges = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                               "--"]
            own_netns = ["unshare", "--net", "--"] if spec.network == "egress" else []
            nice = ["nice", "-n", str(niceness)] if niceness else []
            # Core dumps, real-time priority, locked memory... (bwrap.FIXED_RLIMITS) and files.
            rlimits = ["prlimit", *prlimit_options(self.settings.open_files_limit), "--"]
            enter_cgroup = cgroup.attach_argv() if cgroup else []
            process = await asyncio.create_subprocess_exec(
                *enter_cgroup, *nice, *rlimits, *own_netns, *drop_privileges, *build_argv(spec),
                stdin=asyncio.subprocess.DEVNULL, stdout=channels.stdout,
                stderr=channels.stderr,
                # bwrap must not carry the server's environment (it runs as the session's
                # uid; the sandbox gets only what --setenv gives): a PATH to find its tools.
                env={"PATH": _TOOLS_PATH},
                pass_fds=(channels.command, channels.event, info_w, seccomp_fd),
                start_new_session=True,
            )
        except OSError as exc:
            os.close(info_r)
            raise SandboxUnavailable(f"could not start the sandbox: {exc}") from exc
        finally:
            os.close(info_w)
            os.close(seccomp_fd)
        try:
            info = json.loads(await _read_to_eof(info_r) or b"{}")
        except SandboxUnavailable:
            # bwrap's outer process is our child; its sandbox dies with it (--die-with-parent).
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        finally:
            os.close(info_r)
        # Our own child: its number cannot be reused before we reap it.
        outer = ProcessHandle.open(process.pid)
        # With --as-pid-1 the child bwrap reports is our init (worker/bwrap_init.py), whose
        # only child is the worker; it exits as the worker did, and bwrap with it.
        init_pid = int(info.get("child-pid", 0))
        init = ProcessHandle.open_child(outer, init_pid) if outer is not None else None
        return process, outer, init

    async def destroy(self, sandbox: Sandbox) -> None:
        """Kill every process of the sandbox and free its uid, pipes and directory. The uid
        is reused only if all of this worked (see uids.py)."""
        if sandbox.closed:
            return
        sandbox.closed = True
        problems: list[str] = []
        sandbox.kill()
        with contextlib.suppress(ProcessLookupError, ChildProcessError, TimeoutError):
            await asyncio.wait_for(sandbox.process.wait(), timeout=10)
        if sandbox.process.returncode is None:
            problems.append(f"{self.kind} (pid {sandbox.process.pid}) did not exit when killed")
        if sandbox.cgroup is not None:
            # Anything that slipped out of the pid namespace's teardown dies here too.
            cgroup_removed = await asyncio.to_thread(_remove_cgroup, sandbox.cgroup)
            if not cgroup_removed:
                problems.append(f"its cgroup {sandbox.cgroup.name} could not be removed")
        sandbox.close_handles()
        if sandbox.egress is not None:
            await sandbox.egress.stop()
        for fd in (sandbox.command_fd, sandbox.event_fd, sandbox.stdout_fd, sandbox.stderr_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if not await asyncio.to_thread(self._remove_dirs, sandbox.root):
            problems.append(f"{sandbox.root} could not be removed")
        self._free_uid(sandbox.uid, problems)

    def _free_uid(self, uid: int, problems: list[str]) -> None:
        """Back to the pool only if nothing of the session is left; else quarantined. (A
        uid freed already, by destroy() within a failed start, stays as it is.)"""
        if problems:
            self.uids.quarantine(uid, "; ".join(problems))
        else:
            self.uids.release(uid)

    @staticmethod
    def _remove_dirs(root: Path) -> bool:
        """True once the session's directory is gone (a volume that cannot be unmounted,
        even lazily, keeps it)."""
        VolumeImages.destroy(root)
        shutil.rmtree(root, ignore_errors=True)
        return not os.path.lexists(root)
