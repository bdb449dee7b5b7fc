"""The fork start path (TCI_SANDBOX_START=fork): sessions forked from a preloaded template.

Everything around the process tree is the launcher's (sandbox/launcher.py): the uid, the
volume, the cgroup, the teardown. Only the start differs: instead of bwrap starting a new
interpreter that imports the runtime (about a second of CPU), the template, which has imported
it once, forks, and the fork confines itself (worker/confine.py) into exactly the sandbox bwrap
would have made. Its mount view is the template's (made once from the same lists as bwrap's
command line), so a forked session sees the same files.

`ForkStarter` is both the launcher's starter and a service it keeps running: two templates
(one for sessions, a lean one for one-shot runs, runs/sandboxes.py), and the egress networks
made ahead (pools.py).
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
from typing import Any

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
    sandbox_env,
    sandbox_rlimits,
)
from tci.sandbox.cgroups import SessionCgroup
from tci.sandbox.fork.pools import NetworkPool
from tci.sandbox.fork.template_process import ForkedInit, TemplateProcess
from tci.sandbox.launcher import Prepared, Started, StartRequest
from tci.sandbox.network import Egress
from tci.sandbox.pidfd import ProcessHandle
from tci.sandbox.seccomp import build_filter
from tci.sandbox.startup_report import read_report
from tci.worker import linux

log = logging.getLogger(__name__)

TEMPLATE_SCRIPT = "template.py"
# The worker's command and event channels have these numbers in every forked session.
COMMAND_FD, EVENT_FD = 3, 4
# How long a session's init may take to send its pidfd once the template forked it.
_INIT_SECONDS = 10


class ForkStarter:
    kind = "the fork template"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sessions: TemplateProcess | None = None
        self._runs: TemplateProcess | None = None
        self.networks: NetworkPool | None = None
        self._prepared: Prepared | None = None
        # CLOCK_MONOTONIC (shared by every process) when the last fork passed each step of its
        # set-up, for the per-step profile of a creation (bench/steps.py).
        self.last_steps: dict[str, float] = {}
        # (resource.RLIMIT_*, soft, hard) for each limit, as setrlimit takes them.
        self.rlimits = [[limit.resource, limit.value, limit.value]
                        for limit in sandbox_rlimits(settings.open_files_limit)]

    def prepare(self, prepared: Prepared) -> None:
        self._prepared = prepared
        # The template opens these before its pivot and keeps them: the sessions' cgroups
        # are made in them later, and each fork joins its own through them.
        for parent in self._cgroup_parents():
            parent.mkdir(exist_ok=True)
        root, runtime, settings = prepared.root, prepared.runtime, self.settings
        spec: dict[str, Any] = {
            "root_dir": str(root / "template"),
            "etc_dir": str(root / "etc"),
            "etc_ro": list(ETC_RO),
            "symlinks": [list(pair) for pair in SYSTEM_SYMLINKS],
            "ro_binds": [[str(root / "empty"), DEBIAN_DIST_PACKAGES],
                         [str(runtime.site), RUNTIME_SITE], [str(runtime.bin), RUNTIME_BIN],
                         [str(runtime.worker), WORKER_MOUNT]],
            "worker_mount": WORKER_MOUNT,
            "host_worker_dir": str(runtime.worker),
            "preload": list(settings.pool_preload),
            "command_fd": COMMAND_FD,
            "event_fd": EVENT_FD,
            "cgroup_parents": [str(path) for path in self._cgroup_parents()],
        }
        seccomp = build_filter()
        self._sessions = TemplateProcess(
            PYTHON, runtime.worker / TEMPLATE_SCRIPT, spec, sandbox_env(), seccomp,
            root / "template.log", settings.worker_start_timeout,
        )
        # One-shot runs fork from a template of their own: no shell, a lean preload.
        self._runs = TemplateProcess(
            PYTHON, runtime.worker / TEMPLATE_SCRIPT,
            {**spec, "kind": "runs", "preload": list(settings.run_preload)}, sandbox_env(),
            seccomp, root / "template-runs.log", settings.worker_start_timeout,
        )

    def _cgroup_parents(self) -> list[Path]:
        cgroups = self._prepared.cgroups if self._prepared is not None else None
        return list(cgroups.parents) if cgroups is not None else []

    async def warm_up(self) -> None:
        """Start the templates now rather than at the first session or run, and the
        networks."""
        await asyncio.gather(self.sessions_template().ensure_started(),
                             self.runs_template().ensure_started())
        if self._prepared is None:
            raise SandboxUnavailable("the fork starter was not prepared")
        egress_filter = self._prepared.egress_filter
        if self.settings.network == "egress" and egress_filter is not None:
            self.networks = NetworkPool(egress_filter, self.settings.network_pool_size,
                                        self._prepared.root / "networks",
                                        self.settings.pool_retry_seconds)
            self.networks.start()

    async def close(self) -> None:
        if self.networks is not None:
            await self.networks.close()

    def stop(self) -> None:
        for template in (self._sessions, self._runs):
            if template is not None:
                template.close_now()
        self._sessions = self._runs = None

    def sessions_template(self) -> TemplateProcess:
        if self._sessions is None:
            raise SandboxUnavailable("the fork starter was not prepared")
        return self._sessions

    def runs_template(self) -> TemplateProcess:
        if self._runs is None:
            raise SandboxUnavailable("the fork starter was not prepared")
        return self._runs

    def cgroup_indexes(self, cgroup: SessionCgroup | None) -> list[list[Any]]:
        """A cgroup as the template names it: (index of the hierarchy's parent in the
        template's list, the cgroup's name) for each hierarchy."""
        if cgroup is None:
            return []
        parents = self._cgroup_parents()
        return [[parents.index(path.parent), path.name] for path in cgroup.paths]

    async def start(self, request: StartRequest) -> Started:
        network = await self.networks.take() if self.networks is not None else None
        try:
            process, init = await self._spawn(request, network)
        except BaseException:
            if network is not None:
                await network.stop()
            raise
        return Started(process, init, egress=network)

    async def _spawn(self, request: StartRequest, network: Egress | None
                     ) -> tuple[ForkedInit, ProcessHandle]:
        asked = {
            "uid": request.uid,
            "cgroups": self.cgroup_indexes(request.cgroup),
            "tmp_bytes": self.settings.tmp_max_bytes,
            "niceness": request.niceness,
            "rlimits": self.rlimits,
            "netns": network is not None,
        }
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = (end.detach() for end in socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC))
        sent = [info_w, status_w]
        try:
            # The volume travels as detached mounts: the template never sees any volume.
            sent += [linux.open_tree_clone(str(request.workspace)),
                     linux.open_tree_clone(str(request.home))]
            if network is not None:  # joined instead of a new, empty namespace
                sent.append(os.dup(network.namespace.fd))
            sent_at = time.monotonic()
            await self.sessions_template().spawn_session(asked, [*request.channels, *sent])
        except BaseException:
            os.close(info_r)
            os.close(status_r)
            raise
        finally:
            for fd in sent:
                os.close(fd)
        try:
            lines = (await read_report(info_r)).decode(errors="replace").splitlines()
        except SandboxUnavailable as exc:  # the init (if one came) is killed below
            lines = [json.dumps({"error": exc.message})]
        finally:
            os.close(info_r)
        init = await _receive_init(status_r)
        facts: dict[str, Any] = {}
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
        return ForkedInit(init, status_r), init


async def _receive_init(status: int) -> ProcessHandle | None:
    """The init's pid and a pidfd on it, sent by the init itself (None if it failed)."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(status, on_readable)
    try:
        await asyncio.wait_for(readable, timeout=_INIT_SECONDS)
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
