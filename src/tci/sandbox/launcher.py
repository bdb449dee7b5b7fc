"""The one launcher: starting and tearing down one sandbox, whichever way it starts.

The steps both start paths share live here, once: the uid, the session's directories and
volume, its cgroup, its egress network, the teardown. How the sandbox's processes begin is the
*starter's* (a `Starter`): `bwrap_starter.BwrapStarter` runs bubblewrap, `fork.starter.
ForkStarter` forks the preloaded template; factory.py picks one from TCI_SANDBOX_START.

Talking to the worker inside is the driver's job (kernel/driver.py); this module only owns
the process tree and the host resources it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.sandbox import runtime_mounts, volume
from tci.sandbox.bwrap import SANDBOX_GID, SANDBOX_UID
from tci.sandbox.cgroup_dynmods import FavorDynmods
from tci.sandbox.cgroups import CgroupDriver, CgroupLimits, SessionCgroup
from tci.sandbox.counters import Counters
from tci.sandbox.egress_filter import EgressFilter
from tci.sandbox.hostdir import make_private_dir
from tci.sandbox.kept_volumes import chown_tree
from tci.sandbox.network import Egress, start_egress
from tci.sandbox.pidfd import ProcessHandle, children_of
from tci.sandbox.runtime_mounts import RuntimePaths
from tci.sandbox.seccomp import build_filter
from tci.sandbox.uids import UidPool, check_range
from tci.sandbox.volume_images import VolumeImages

log = logging.getLogger(__name__)

USER_SITE = ".local/lib/python3.11/site-packages"
# A killed sandbox's pid 1 is gone in milliseconds; one still there after this is reported
# (its uid quarantined), not waited for.
_KILLED_EXIT_SECONDS = 10.0


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
    command_fd: int
    event_fd: int
    stdout_fd: int
    stderr_fd: int
    cgroup: SessionCgroup | None = None
    volume_path: Path | None = None
    egress: Egress | None = None
    closed: bool = False
    outer: ProcessHandle | None = None  # bwrap's outer process (our child); none when forked
    init: ProcessHandle | None = None  # the sandbox's pid 1
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


@dataclass(frozen=True)
class Prepared:
    """What the launcher made at prepare(), which a starter builds on."""

    root: Path  # TCI_SANDBOX_DIR: generated /etc, an empty dir, each sandbox's directory
    runtime: RuntimePaths  # where sandboxes bind the runtime and the worker from
    cgroups: CgroupDriver | None  # None only with TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS
    egress_filter: EgressFilter | None  # with TCI_NETWORK=egress


@dataclass(frozen=True)
class StartRequest:
    """One sandbox to start, its host resources already made by the launcher."""

    name: str
    uid: int
    niceness: int
    workspace: Path  # the volume's directories, owned by `uid`
    home: Path
    cgroup: SessionCgroup | None
    channels: Channels  # the worker's ends (the launcher closes them once start returns)


@dataclass
class Started:
    """A starter's answer: what the server waits on, and handles on the processes."""

    process: SandboxProcess
    init: ProcessHandle | None  # the sandbox's pid 1 (None: it did not come)
    outer: ProcessHandle | None = None  # bwrap's outer process, our child
    # A network the starter had made ahead and joined (else the launcher attaches one).
    egress: Egress | None = None


class Starter(Protocol):
    """How a sandbox's processes begin: what differs between the two start paths."""

    kind: str  # for messages: "bubblewrap", "the fork template"

    def prepare(self, prepared: Prepared) -> None:
        """Once, at server start, after the launcher's own preparation."""

    async def start(self, request: StartRequest) -> Started:
        """The sandbox's processes on `request.channels`; SandboxUnavailable if they fail
        (nothing of them left running)."""


class Service(Protocol):
    """Something a starter keeps running beside the server (the fork path's templates and
    the networks it makes ahead), started before the first sandbox."""

    async def warm_up(self) -> None: ...

    async def close(self) -> None:
        """After every sandbox ended."""

    def stop(self) -> None:
        """At cleanup, the last step before the sandbox directory goes."""


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
    """Creates sandboxes for sessions and frees everything they used; `starter` starts
    their processes, `services` are what it keeps running (started at warm_up)."""

    def __init__(self, settings: Settings, starter: Starter,
                 services: Sequence[Service] = ()) -> None:
        self.settings = settings
        self.starter = starter
        self.services = tuple(services)
        self.root = settings.resolved_sandbox_dir
        self.uids = UidPool(settings.sandbox_uid_base, settings.sandbox_uid_count)
        self.runtime_site = settings.runtime_dir / "site"
        self.exposed: RuntimePaths | None = None  # where sandboxes bind them from (prepare)
        self.volumes = VolumeImages(self.root, settings.workspace_max_bytes,
                                    settings.workspace_max_files)
        self.egress_filter = (
            EgressFilter(settings.egress_refuse, allowed=settings.egress_allow,
                         dns=settings.egress_dns, database_url=settings.database_url)
            if settings.network == "egress" else None)
        self.cgroups: CgroupDriver | None = None
        self.dynmods = FavorDynmods(self.root / "cgroup-dynmods")
        self.limits = CgroupLimits(
            memory_bytes=settings.memory_limit_bytes, pids_max=settings.pids_limit,
            cpu_weight=settings.cpu_weight, io_weight=settings.io_weight,
        )

    @property
    def kind(self) -> str:
        return self.starter.kind

    def prepare(self) -> None:
        """Called once at server start: directories, generated /etc, stale leftovers, then
        the starter's own preparation."""
        check_range(self.settings.sandbox_uid_base, self.settings.sandbox_uid_count)
        make_private_dir(self.root)  # refuses a path another local user could redirect
        for stale in self.root.glob("ses_*"):
            VolumeImages.destroy(stale)
            shutil.rmtree(stale, ignore_errors=True)
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
        build_filter()  # fails now, clearly, if libseccomp is missing
        self.cgroups = self._detect_cgroups()
        if self.cgroups is not None:
            if self.settings.cgroup_favordynmods:
                self.dynmods.mount()
            self.cgroups.cleanup_stale()
            if self.egress_filter is not None:
                self.egress_filter.check()
        self.starter.prepare(Prepared(self.root, self.exposed, self.cgroups,
                                      self.egress_filter))

    def _detect_cgroups(self) -> CgroupDriver | None:
        """One cgroup parent per server (named like its sandbox dir)."""
        try:
            return CgroupDriver.detect(f"tci-{self.root.name}")
        except SandboxUnavailable as exc:
            if not self.settings.unsafe_allow_missing_protections:
                raise
            log.warning("UNSAFE: sessions run without cgroup limits: %s", exc.message)
            return None

    async def warm_up(self) -> None:
        """Start, ahead of the first session, whatever the starter keeps running."""
        for service in self.services:
            await service.warm_up()

    async def close(self) -> None:
        """Stop what warm_up started (before cleanup, after every session ended)."""
        for service in self.services:
            await service.close()

    def cleanup(self) -> None:
        """Called at server stop, after every session ended: remove what prepare() made."""
        if self.cgroups is not None:
            self.cgroups.remove_parent()
        self.dynmods.unmount()
        try:
            runtime_mounts.withdraw(self.root)  # first: nothing is deleted through a mount
        except SandboxUnavailable as exc:
            log.warning("%s; %s is left in place", exc.message, self.root)
            return
        self.exposed = None
        self.volumes.close()
        for service in self.services:
            service.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _make_cgroup(self, name: str) -> SessionCgroup | None:
        if self.cgroups is None:
            return None  # only with TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS (see prepare)
        return self.cgroups.create(name, self.limits)

    def _make_dirs(self, name: str, uid: int,
                   place: Callable[[Path], None] | None = None) -> tuple[Path, Path, Path]:
        root = self.root / name
        root.mkdir(mode=0o711)
        mounted = self.volumes.create(
            root, self.settings.workspace_max_bytes, self.settings.workspace_max_files, place
        )
        workspace, home = mounted / "work", mounted / "home"
        if place is not None:  # a kept volume (sandbox/kept_volumes.py): now this uid's
            chown_tree(mounted, uid)
            return root, workspace, home
        for directory in (workspace, home):
            directory.mkdir(mode=0o700)
        # Pre-create the user site so Python puts it on sys.path at start: `!pip install x`
        # followed by `import x` in the same cell then works.
        (home / USER_SITE).mkdir(parents=True)
        for path in [workspace, home, *home.rglob("*")]:
            os.chown(path, uid, uid)
        return root, workspace, home

    async def start(self, name: str, niceness: int = 0,
                    place: Callable[[Path], None] | None = None) -> Sandbox:
        """With `place`, the sandbox's volume is a kept one that `place` puts in its place
        (a paused session or a snapshot, resumed), instead of a new empty one."""
        uid = self.uids.acquire()
        try:
            return await self._start(name, uid, niceness, place)
        except BaseException:
            removed = await asyncio.to_thread(self._remove_dirs, self.root / name)
            self._free_uid(uid, [] if removed else [f"{self.root / name} is still there"])
            raise

    async def _start(self, name: str, uid: int, niceness: int,
                     place: Callable[[Path], None] | None = None) -> Sandbox:
        root, workspace, home = await asyncio.to_thread(self._make_dirs, name, uid, place)
        cgroup = await asyncio.to_thread(self._make_cgroup, name)
        command_r, command_w = os.pipe()
        event_r, event_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        child_ends = Channels(command_r, event_w, stdout_w, stderr_w)
        try:
            started = await self.starter.start(
                StartRequest(name, uid, niceness, workspace, home, cgroup, child_ends))
        except BaseException:
            for fd in (command_w, event_r, stdout_r, stderr_r):
                os.close(fd)
            if cgroup is not None:
                await asyncio.to_thread(_remove_cgroup, cgroup)
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        sandbox = Sandbox(
            name=name, uid=uid, root=root, workspace=workspace, process=started.process,
            command_fd=command_w, event_fd=event_r, stdout_fd=stdout_r, stderr_fd=stderr_r,
            cgroup=cgroup, volume_path=workspace.parent, outer=started.outer,
            init=started.init, egress=started.egress,
        )
        if started.init is None:
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
                namespace = await self.egress_filter.attach(started.process.pid)
                sandbox.egress = await start_egress(namespace, root / "network.log")
            except SandboxUnavailable:
                await self.destroy(sandbox)
                raise
        return sandbox

    async def destroy(self, sandbox: Sandbox) -> None:
        """Kill every process of the sandbox and free its uid, pipes and directory. The uid
        is reused only if all of this worked (see uids.py)."""
        if sandbox.closed:
            return
        sandbox.closed = True
        problems: list[str] = []
        sandbox.kill()
        with contextlib.suppress(ProcessLookupError, ChildProcessError, TimeoutError):
            await asyncio.wait_for(sandbox.process.wait(), timeout=_KILLED_EXIT_SECONDS)
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
