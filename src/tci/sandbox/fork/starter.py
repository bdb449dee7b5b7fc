"""Sessions forked from a preloaded template (TCI_SANDBOX_START=fork).

Everything around the process tree is the bubblewrap launcher's: the uid, the volume, the
cgroup, the egress network, the teardown. Only the start differs: instead of bwrap starting
a new interpreter that imports the runtime (about a second of CPU), the template, which has
imported it once, forks, and the fork confines itself (worker/confine.py) into exactly the
sandbox bwrap would have made. Its mount view is the template's (made once from the same
lists as bwrap's command line), so a forked session sees the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.sandbox.bwrap import (
    DEBIAN_DIST_PACKAGES,
    ETC_RO,
    PYTHON,
    RUNTIME_BIN,
    RUNTIME_SITE,
    SYSTEM_SYMLINKS,
    WORKER_MOUNT,
    SandboxSpec,
    prlimit_options,
    sandbox_env,
)
from tci.sandbox.cgroups import SessionCgroup
from tci.sandbox.forkserver import ForkedProcess, ForkServer
from tci.sandbox.launcher import (
    Channels,
    SandboxLauncher,
    SandboxProcess,
    _read_to_eof,
)
from tci.sandbox.netns_pool import NetworkPool
from tci.sandbox.network import Egress
from tci.sandbox.pidfd import ProcessHandle
from tci.sandbox.seccomp import build_filter
from tci.worker import linux

log = logging.getLogger(__name__)

TEMPLATE_SCRIPT = "template.py"
# The worker's command and event channels have these numbers in every forked session.
COMMAND_FD, EVENT_FD = 3, 4
_RLIMITS = {"core": "RLIMIT_CORE", "rtprio": "RLIMIT_RTPRIO", "rttime": "RLIMIT_RTTIME",
            "nice": "RLIMIT_NICE", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE",
            "nofile": "RLIMIT_NOFILE"}


def rlimits_of(options: list[str]) -> dict[str, tuple[int, int]]:
    """prlimit(1) options ("--core=0:0") as resource-module limits, so that both launchers
    apply the one list in bwrap.py."""
    limits = {}
    for option in options:
        name, value = option.removeprefix("--").split("=", 1)
        soft, hard = value.split(":")
        limits[_RLIMITS[name]] = (int(soft), int(hard))
    return limits


class ForkLauncher(SandboxLauncher):
    kind = "the fork template"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.forks: ForkServer | None = None
        self.run_forks: ForkServer | None = None
        self.networks: NetworkPool | None = None
        self._cgroup_parents: list[Path] = []
        # CLOCK_MONOTONIC (shared by every process) when the last fork passed each step of its
        # set-up, for the per-step profile of a creation (bench/).
        self.last_steps: dict[str, float] = {}
        self.rlimits = rlimits_of(prlimit_options(settings.open_files_limit))

    def _release_root(self) -> None:
        for forks in (self.forks, self.run_forks):
            if forks is not None:
                forks.close_now()
        self.forks = self.run_forks = None

    def prepare(self) -> None:
        super().prepare()
        # The template opens these before its pivot and keeps them: the sessions' cgroups
        # are made in them later, and each fork joins its own through them.
        self._cgroup_parents = self.cgroups.parents if self.cgroups is not None else []
        for parent in self._cgroup_parents:
            parent.mkdir(exist_ok=True)
        runtime = self._exposed()
        settings = self.settings
        spec = {
            "root_dir": str(self.root / "template"),
            "etc_dir": str(self.root / "etc"),
            "etc_ro": list(ETC_RO),
            "symlinks": [list(pair) for pair in SYSTEM_SYMLINKS],
            "ro_binds": [[str(self.root / "empty"), DEBIAN_DIST_PACKAGES],
                         [str(runtime.site), RUNTIME_SITE], [str(runtime.bin), RUNTIME_BIN],
                         [str(runtime.worker), WORKER_MOUNT]],
            "worker_mount": WORKER_MOUNT,
            "host_worker_dir": str(runtime.worker),
            "preload": list(settings.pool_preload),
            "command_fd": COMMAND_FD,
            "event_fd": EVENT_FD,
            "cgroup_parents": [str(path) for path in self._cgroup_parents],
        }
        env = sandbox_env(SandboxSpec(
            workspace=Path(), home=Path(), etc_dir=Path(), empty_dir=Path(),
            runtime_site=Path(), runtime_bin=Path(), worker_dir=Path(),
            command_fd=COMMAND_FD, event_fd=EVENT_FD, info_fd=-1,
        ))
        env.pop("TCI_WORKER_FDS")
        self.forks = ForkServer(
            PYTHON, runtime.worker / TEMPLATE_SCRIPT, spec, env, build_filter(),
            self.root / "template.log", settings.worker_start_timeout,
        )
        # One-shot runs fork from a template of their own: no shell, a lean preload.
        self.run_forks = ForkServer(
            PYTHON, runtime.worker / TEMPLATE_SCRIPT,
            {**spec, "kind": "runs", "preload": list(settings.run_preload)}, env,
            build_filter(), self.root / "template-runs.log", settings.worker_start_timeout,
        )

    async def warm_up(self) -> None:
        """Start the templates now rather than at the first session or run, and the
        networks."""
        await asyncio.gather(self.fork_server().ensure_started(),
                             self.run_fork_server().ensure_started())
        if self.settings.network == "egress" and self.egress_filter is not None:
            self.networks = NetworkPool(self.egress_filter, self.settings.network_pool_size,
                                        self.root / "networks", self.settings.pool_retry_seconds)
            self.networks.start()

    def fork_server(self) -> ForkServer:
        if self.forks is None:
            raise SandboxUnavailable("the fork launcher was not prepared")
        return self.forks

    def run_fork_server(self) -> ForkServer:
        if self.run_forks is None:
            raise SandboxUnavailable("the fork launcher was not prepared")
        return self.run_forks

    def cgroup_indexes(self, cgroup: SessionCgroup | None) -> list[list]:
        """A cgroup as the template names it: (index of the hierarchy's parent in the
        template's list, the cgroup's name) for each hierarchy."""
        if cgroup is None:
            return []
        return [[self._cgroup_parents.index(path.parent), path.name] for path in cgroup.paths]

    async def _network_ahead(self) -> Egress | None:
        return await self.networks.take() if self.networks is not None else None

    async def close(self) -> None:
        if self.networks is not None:
            await self.networks.close()

    async def _spawn(self, name: str, uid: int, niceness: int, workspace: Path, home: Path,
                     cgroup: SessionCgroup | None, channels: Channels, network: Egress | None
                     ) -> tuple[SandboxProcess, ProcessHandle | None, ProcessHandle]:
        request = {
            "uid": uid,
            "cgroups": self.cgroup_indexes(cgroup),
            "tmp_bytes": self.settings.tmp_max_bytes,
            "niceness": niceness,
            "rlimits": self.rlimits,
            "netns": network is not None,
        }
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = (end.detach() for end in socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC))
        sent = [info_w, status_w]
        try:
            # The volume travels as detached mounts: the template never sees any volume.
            sent += [linux.open_tree_clone(str(workspace)), linux.open_tree_clone(str(home))]
            if network is not None:  # joined instead of a new, empty namespace
                sent.append(os.dup(network.namespace.fd))
            sent_at = time.monotonic()
            _, pidfd = await self.fork_server().spawn(request, [*channels, *sent])
        except BaseException:
            os.close(info_r)
            os.close(status_r)
            raise
        finally:
            for fd in sent:
                os.close(fd)
        os.close(pidfd)  # the setup process's: it exits once the init runs
        try:
            lines = (await _read_to_eof(info_r)).decode(errors="replace").splitlines()
        except SandboxUnavailable as exc:  # the init (if one came) is killed below
            lines = [json.dumps({"error": exc.message})]
        finally:
            os.close(info_r)
        init = await self._receive_init(status_r)
        facts: dict = {}
        steps: dict[str, float] = {}
        for line in lines:
            with contextlib.suppress(ValueError):
                fact = json.loads(line)
                steps.update(fact.pop("steps", {}))
                facts.update(fact)
        self.last_steps = {"sent": sent_at, **steps, "reported": time.monotonic()}
        if "error" in facts or not facts.get("confined") or init is None:
            if init is not None:
                init.signal(signal.SIGKILL)
                init.close()
            os.close(status_r)
            raise SandboxUnavailable(facts.get("error") or "the forked sandbox did not start")
        return ForkedProcess(init, status_r), None, init

    @staticmethod
    async def _receive_init(status: int) -> ProcessHandle | None:
        """The init's pid and a pidfd on it, sent by the setup process (None if it failed)."""
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        # Its value is dropped (mypy objects to it): `or` only skips a second set_result.
        loop.add_reader(status, lambda: readable.done() or readable.set_result(None))  # type: ignore[func-returns-value]
        try:
            await asyncio.wait_for(readable, timeout=10)
        except TimeoutError:
            return None
        finally:
            loop.remove_reader(status)
        with socket.socket(fileno=os.dup(status)) as channel:
            message, fds, _, _ = socket.recv_fds(channel, 1024, 1)
        if not message or not fds:
            for fd in fds:
                os.close(fd)
            return None
        return ProcessHandle(json.loads(message)["init"], fds[0])
