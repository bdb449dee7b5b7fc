"""The bubblewrap start path (TCI_SANDBOX_START=bwrap): each sandbox is a new bwrap process
tree that starts a fresh interpreter (worker/bwrap_init.py as its pid 1, then the worker).
Everything around it (uid, volume, cgroup, network, teardown) is the launcher's."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.sandbox import spawn
from tci.sandbox.bwrap import SandboxSpec, build_argv, prlimit_options
from tci.sandbox.launcher import Prepared, Started, StartRequest
from tci.sandbox.pidfd import ProcessHandle
from tci.sandbox.seccomp import open_filter_fd
from tci.sandbox.startup_report import read_report

_TOOLS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class BwrapStarter:
    kind = "bubblewrap"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._prepared: Prepared | None = None

    def prepare(self, prepared: Prepared) -> None:
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
        self._prepared = prepared

    def _spec(self, request: StartRequest, info_fd: int, seccomp_fd: int) -> SandboxSpec:
        if self._prepared is None:
            raise SandboxUnavailable("the bubblewrap starter was not prepared")
        root, runtime = self._prepared.root, self._prepared.runtime
        return SandboxSpec(
            workspace=request.workspace, home=request.home, etc_dir=root / "etc",
            empty_dir=root / "empty",
            runtime_site=runtime.site, runtime_bin=runtime.bin, worker_dir=runtime.worker,
            command_fd=request.channels.command, event_fd=request.channels.event,
            info_fd=info_fd, network=self.settings.network, seccomp_fd=seccomp_fd,
            tmp_size_bytes=self.settings.tmp_max_bytes,
        )

    def _argv(self, request: StartRequest, spec: SandboxSpec) -> list[str]:
        uid = request.uid
        # setpriv drops to the session's uid (uvloop has no user= for subprocesses).
        drop_privileges = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "--"]
        own_netns = ["unshare", "--net", "--"] if spec.network == "egress" else []
        nice = ["nice", "-n", str(request.niceness)] if request.niceness else []
        # Core dumps, real-time priority, locked memory... (bwrap.FIXED_RLIMITS) and files.
        rlimits = ["prlimit", *prlimit_options(self.settings.open_files_limit), "--"]
        enter_cgroup = request.cgroup.attach_argv() if request.cgroup else []
        return [*enter_cgroup, *nice, *rlimits, *own_netns, *drop_privileges,
                *build_argv(spec)]

    async def start(self, request: StartRequest) -> Started:
        channels = request.channels
        info_r, info_w = os.pipe()
        seccomp_fd = open_filter_fd()
        try:
            spec = self._spec(request, info_w, seccomp_fd)
            process = await spawn.start(
                self._argv(request, spec), stdout=channels.stdout, stderr=channels.stderr,
                # bwrap must not carry the server's environment (it runs as the session's
                # uid; the sandbox gets only what --setenv gives): a PATH to find its tools.
                env={"PATH": _TOOLS_PATH},
                pass_fds=(channels.command, channels.event, info_w, seccomp_fd),
                start_new_session=True,
            )
        except OSError as exc:
            os.close(info_r)
            raise SandboxUnavailable(f"could not start the sandbox: {exc}") from exc
        except BaseException:
            os.close(info_r)
            raise
        finally:
            os.close(info_w)
            os.close(seccomp_fd)
        try:
            info = json.loads(await read_report(info_r) or b"{}")
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
        return Started(process, init, outer)
