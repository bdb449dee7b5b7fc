"""LocalHost: sessions in sandboxes on this machine.

Owns everything the manager must not know: the launcher (handed its starter, fork from a
template or bubblewrap, by tci.sandbox.factory from TCI_SANDBOX_START), the warm pool,
each session's WorkerConnection and sandbox (fds, uid, cgroup, volume, workspace path),
and the kernel's limit counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
from collections.abc import Callable, Coroutine
from typing import Any

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.hosts import capacity, selfcheck
from tci.hosts.base import (
    CallResult,
    Cell,
    EndListener,
    HostedSession,
    HostStats,
    OutputListener,
    SavedState,
    SessionGone,
    SessionHost,
    StateNotRestored,
    StateNotSaved,
)
from tci.hosts.pool import WarmPool
from tci.hosts.snapshot_copies import SnapshotCopies
from tci.hosts.worker_start import ReadyWorker, start_worker
from tci.kernel.ends import EndKind, EndReason, death_notice
from tci.kernel.output_limits import OutputLimits
from tci.sandbox.cgroups import CPU_WEIGHT_DEFAULT
from tci.sandbox.counters import Counters, limits_hit
from tci.sandbox.factory import make_launcher
from tci.sandbox.kept_volumes import STATE_FILE_IN_SANDBOX, StateStore, TreeTooLarge
from tci.sandbox.launcher import Sandbox
from tci.sandbox.protections import enforce
from tci.sandbox.volume import IMAGE_NAME
from tci.worker import kernels
from tci.workspace import DecodedFile, FileListing, list_files, read_file, write_files

log = logging.getLogger(__name__)


def sandbox_cpu_seconds(sandbox: Sandbox) -> float | None:
    """CPU seconds the sandbox's processes used so far; None without cgroups (or if the
    cgroup is already gone)."""
    if sandbox.cgroup is None:
        return None
    try:
        return sandbox.cgroup.cpu_seconds()
    except (OSError, ValueError) as exc:
        log.debug("could not read cpu seconds of %s: %s", sandbox.cgroup.name, exc)
        return None


def told_death(death: EndReason, memory_error: str | None) -> tuple[EndReason, list[str]]:
    """A call's death as the caller is told it, and its notice. With `memory_error` (the
    kernel killed a process at the memory limit: limits_hit's MemoryError message), that is
    the reason, not "killed by SIGKILL", and says it all; but a timeout's kill is ours and
    keeps its own notice as well."""
    if memory_error is None:
        return death, [death_notice(death)]
    notice = [death_notice(death)] if death.kind is EndKind.TIMEOUT else []
    return EndReason(EndKind.OUT_OF_MEMORY, memory_error), notice


class LocalSession(HostedSession):
    def __init__(self, host: LocalHost, ready: ReadyWorker) -> None:
        self.id = ready.name
        self._host = host
        self._settings = host.settings
        self._sandbox = ready.sandbox
        self._worker = ready.worker
        self._counters = Counters()  # the kernel's limit-hit counts, as read after each call
        # CPU is billed from the hand-out: the pool's preloading is not the client's.
        self._cpu_baseline = sandbox_cpu_seconds(ready.sandbox)
        self._ended: EndReason | None = None
        self._gone: EndReason | None = None  # how it died on its own, once known
        self._listener: EndListener | None = None
        self._worker.on_death = self._died_between_calls
        if self._worker.death is not None:  # died between the pool's check and now
            self._died_between_calls()

    # -- death -------------------------------------------------------------------------------

    def _died_between_calls(self) -> None:
        async def report() -> None:
            self._gone = await self._worker.death_reason()
            self._tell_listener()

        self._host.spawn(report(), f"tci-death-{self.id}")

    def _tell_listener(self) -> None:
        if self._gone is not None and self._ended is None and self._listener is not None:
            listener, self._listener = self._listener, None
            listener(self._gone)

    def usable(self) -> bool:
        """Not ended, its worker alive: may still be handed out (a snapshot's warm copy)."""
        return self._ended is None and self._worker.death is None

    def hand_out(self) -> None:
        """A warm copy becomes a client's session: full priority, CPU billed from now."""
        self._sandbox.set_priority(0)
        self._cpu_baseline = sandbox_cpu_seconds(self._sandbox)

    def on_end(self, listener: EndListener) -> None:
        self._listener = listener
        if self._gone is not None:
            asyncio.get_running_loop().call_soon(self._tell_listener)

    # -- calls -------------------------------------------------------------------------------

    async def execute(self, cell: Cell, files: list[DecodedFile], timeout: float, grace: float,
                      listener: OutputListener | None = None,
                      on_start: Callable[[], None] | None = None) -> CallResult:
        if self._ended is not None:
            raise SessionGone(self._ended)
        if self._worker.death is not None:
            raise SessionGone(await self._worker.death_reason())
        if files:
            await self.write_files(files)
        if on_start is not None:
            on_start()
        before = self._counters  # as read after the previous call: one read per call
        frame: dict[str, Any] = {"op": "execute", "code": cell.code, "language": cell.language}
        if cell.language != "python":  # a runtime of its own, bounded by these
            frame["runtime"] = {
                "start_timeout": self._settings.runtime_start_timeout_seconds,
                "interrupt_wait": grace / 2,  # back within the grace, or restarted
                "max_display_bytes": self._settings.max_output_bytes}
        result = await self._worker.request(frame, timeout=timeout, grace=grace,
                                            listener=listener)
        # The kernel's record of limits hit during the call, each named by its setting.
        self._counters = self._sandbox.counters()
        hit = limits_hit(self._settings, before, self._counters, self._sandbox.volume_usage(),
                         result.outcome == "died")
        ended, end, notices = result.ended, result.end, hit
        if ended is not None and result.outcome == "died":
            oom = self._counters.oom_kills > before.oom_kills
            ended, last_words = told_death(ended, hit[0] if oom else None)
            end, notices = ended.kind, [*last_words, *hit]
        for message in notices:  # the server's last words, streamed like the code's own
            output = {"type": "error", "data": message}
            result.outputs.append(output)
            if listener is not None:
                listener(dict(output))
        return CallResult(result.outputs, end, ended)

    async def interrupt(self) -> bool:
        return self._worker.interrupt()

    # -- files -------------------------------------------------------------------------------

    async def list_files(self) -> FileListing:
        limits = self._settings
        return await asyncio.to_thread(
            list_files, str(self._sandbox.workspace), limits.max_files_listed,
            limits.max_files_scanned, limits.max_filename_length,
        )

    async def read_file(self, path: str) -> bytes:
        return await asyncio.to_thread(
            read_file, str(self._sandbox.workspace), path,
            self._settings.max_filename_length, self._settings.max_file_bytes,
        )

    async def write_files(self, files: list[DecodedFile]) -> None:
        await asyncio.to_thread(
            write_files, str(self._sandbox.workspace), files, self._sandbox.uid
        )

    # -- usage and end -----------------------------------------------------------------------

    async def cpu_seconds(self) -> float | None:
        now = sandbox_cpu_seconds(self._sandbox)
        return None if now is None else max(0.0, now - (self._cpu_baseline or 0.0))

    async def end(self, reason: EndReason) -> float | None:
        if self._ended is not None:
            return None
        self._ended = reason
        self._listener = None
        used = await self.cpu_seconds()  # before the sandbox (and its cgroup) is destroyed
        self._worker.on_death = None
        self._worker.close()
        # Killed now: nothing of the session runs once the caller hears it ended. Its
        # teardown (cgroup, network, volume, uid) follows in the background, off the
        # client's DELETE and the next creation's path; the host waits for it at stop.
        self._sandbox.kill()
        self._host.tear_down(self._sandbox)
        return used

    # -- state (pause, snapshots: sessions/pause.py) -----------------------------------------

    async def save_state(self, name: str, pause: bool, max_bytes: int) -> SavedState:
        if self._ended is not None:
            raise SessionGone(self._ended)
        result = await self._worker.request(
            {"op": "save_state", "path": STATE_FILE_IN_SANDBOX, "max_bytes": max_bytes},
            timeout=self._settings.execute_timeout, grace=self._settings.interrupt_grace_seconds)
        if result.ended is not None:
            raise SessionGone(result.ended)
        answer = _json_answer(result)
        if answer is None:
            raise StateNotSaved(_error_text(result, "the session's state could not be saved"))
        store, image = self._host.states, self._sandbox.root / IMAGE_NAME
        mount = self._sandbox.workspace.parent
        if pause:  # nothing of it runs on: its processes end before the image is kept
            self._ended = EndReason(EndKind.CLIENT, "paused")
            self._listener = None
            self._worker.on_death = None
            self._worker.close()
            self._sandbox.kill()
            await asyncio.to_thread(store.keep, name, image, mount, False)
            await self._host.launcher.destroy(self._sandbox)  # unmounted, uid free, cgroup gone
        else:
            await asyncio.to_thread(store.keep, name, image, mount, True)
        size = await asyncio.to_thread(store.trim, name)
        self._host.spawn(asyncio.to_thread(store.flush, name), f"tci-flush-{name}")
        skipped = [item for item in answer.get("skipped", []) if isinstance(item, dict)]
        return SavedState([{"name": str(item.get("name")), "reason": str(item.get("reason"))}
                           for item in skipped], size)

    async def restore_state(self, max_bytes: int) -> None:
        """Load the namespace the kept volume holds; StateNotRestored if it cannot be."""
        result = await self._worker.request(
            {"op": "restore_state", "path": STATE_FILE_IN_SANDBOX, "max_bytes": max_bytes},
            timeout=self._settings.execute_timeout, grace=self._settings.interrupt_grace_seconds)
        if result.ended is not None:
            raise StateNotRestored(f"the worker ended while restoring it: {result.ended}")
        if _json_answer(result) is None:
            raise StateNotRestored(_error_text(result, "it could not be loaded"))


def _json_answer(result: CallResult) -> dict[str, Any] | None:
    """The worker's answer to a state op (worker/state.py), None if it failed."""
    if result.end is not EndKind.OK:
        return None
    for output in result.outputs:
        data = output.get("data")
        if output.get("type") == "display_data" and isinstance(data, dict):
            answer = data.get("application/json")
            if isinstance(answer, dict):
                return answer
    return None


def _error_text(result: CallResult, default: str) -> str:
    errors = [str(o["data"]) for o in result.outputs if o.get("type") == "error"]
    return errors[-1].strip().splitlines()[-1] if errors else default


class LocalHost(SessionHost):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.launcher = make_launcher(settings)
        # Volumes reserve their quotas on the disk, leaving it this much free (volume_images).
        self.launcher.volumes.reserve_bytes = settings.min_free_disk_bytes
        self.capacity = settings.max_sessions or 0  # resolved at start
        self.pool = WarmPool(self.launcher, settings)
        self.states = StateStore(settings.resolved_state_dir)  # paused sessions, snapshots
        self.snapshot_copies: SnapshotCopies[LocalSession] = SnapshotCopies(
            self._open_copy, settings.snapshot_pool_size, settings.snapshot_pool_snapshots,
            settings.pool_refill_delay_seconds, settings.pool_refill_niceness)
        self._tasks: set[asyncio.Task[None]] = set()
        self._teardowns: set[asyncio.Task[None]] = set()
        self.details: dict[str, Any] = {}  # HostStats.details, filled at start
        self.languages: dict[str, bool] = {}  # HostStats.languages, likewise

    def spawn(self, work: Coroutine[None, None, None], name: str) -> None:
        """Run `work` in the background, held until done (the loop keeps weak references)."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Ready to serve, or SandboxUnavailable: the self-check's probe session starts the
        way sessions will (bubblewrap or fork), before any is handed out."""
        tasks = capacity.session_tasks(self.settings)
        self.capacity = capacity.max_sessions(self.settings, tasks=tasks)
        self.launcher.prepare()
        self.states.prepare()
        if self.launcher.cgroups is not None:  # the host's pids reserve, kept by the kernel
            self.launcher.cgroups.limit_tasks(tasks)
        await self.launcher.warm_up()
        enforce(await self.self_check(), self.settings.unsafe_allow_missing_protections)
        self.details["io_weight"] = self._io_weight_status()
        self.languages = kernels.installed()
        missing = [name for name, ok in self.languages.items() if not ok]
        if missing:
            log.warning("sessions cannot run %s: runtime not installed (run `make toolchains`)",
                        ", ".join(missing))
        if self.launcher.cgroups is not None:
            self.details["cgroup_favordynmods"] = (
                self.launcher.dynmods.status() if self.settings.cgroup_favordynmods
                else {"applied": False, "reason": "TCI_CGROUP_FAVORDYNMODS is off"})
        self.pool.start()

    def _io_weight_status(self) -> dict[str, Any]:
        """Whether TCI_IO_WEIGHT acts here (after the self-check's cgroup set the parent up),
        said once in the log and kept for /health: elsewhere it is written and ignored."""
        weight, cgroups = self.settings.io_weight, self.launcher.cgroups
        problem = ("sessions run without cgroups" if cgroups is None
                   else cgroups.io_weight_problem())
        if problem is None:
            log.info("TCI_IO_WEIGHT=%d is applied by the kernel", weight)
            return {"setting": weight, "applied": True}
        # Only worth a warning when someone chose a weight; the default asks for no change.
        level = logging.INFO if weight == CPU_WEIGHT_DEFAULT else logging.WARNING
        log.log(level, "TCI_IO_WEIGHT=%d is not applied on this host: %s", weight, problem)
        return {"setting": weight, "applied": False, "reason": problem}

    def tear_down(self, sandbox: Sandbox) -> None:
        task = asyncio.create_task(self.launcher.destroy(sandbox),
                                   name=f"tci-destroy-{sandbox.name}")
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    async def stop(self) -> None:
        await self.pool.close()
        await self.snapshot_copies.close()
        await asyncio.gather(*self._teardowns, return_exceptions=True)
        await self.launcher.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.launcher.cleanup()

    def _check_disk(self) -> None:
        # A nearly full disk: refuse new sessions rather than let them, the running ones and
        # the store fail on ENOSPC. statvfs of a local directory takes microseconds.
        free = shutil.disk_usage(self.settings.resolved_sandbox_dir).free
        if free < self.settings.min_free_disk_bytes:
            raise SandboxUnavailable(
                f"new sessions are refused while the sandbox disk is nearly full: "
                f"{free / 2**20:.1f} MiB free, less than TCI_MIN_FREE_DISK_BYTES "
                f"({self.settings.min_free_disk_bytes / 2**20:.1f} MiB); running sessions go on",
                public=True,
            )

    async def open_session(self) -> LocalSession:
        self._check_disk()
        ready = self.pool.take()
        if ready is None:  # pool empty or disabled: a cold start, without preloading
            if not self.launcher.uids.available() and self._teardowns:
                # Every uid is held, some by sessions still being torn down: they free
                # theirs in milliseconds, so wait for those rather than refuse.
                await asyncio.wait(set(self._teardowns), return_when=asyncio.FIRST_COMPLETED)
            ready = await start_worker(
                self.launcher, OutputLimits.of(self.settings), self.settings.worker_start_timeout,
            )
        return LocalSession(self, ready)

    async def open_saved(self, name: str, session_id: str | None,
                         max_bytes: int) -> LocalSession:
        self._check_disk()
        if session_id is not None:  # a paused session's own state, taken
            return await self._restore(name, session_id, max_bytes)
        session = self.snapshot_copies.take(name)
        if session is None:
            session = await self._restore(name, None, max_bytes)
        self.snapshot_copies.started(name, max_bytes)  # the next starts from it are warm
        return session

    async def _open_copy(self, name: str, max_bytes: int, niceness: int) -> LocalSession:
        return await self._restore(name, None, max_bytes, niceness)

    async def _restore(self, name: str, session_id: str | None, max_bytes: int,
                       niceness: int = 0) -> LocalSession:
        """A sandbox holding the kept volume `name`'s files and the namespace loaded in it:
        a warm one they are copied into, or a new one started on the kept image (a copy of
        it for a snapshot, which stays for other sessions; a paused session's own).
        Background starts (niced: a snapshot's copies) leave the warm pool to clients."""
        ready = await self._warm_with(name, session_id) if niceness == 0 else None
        if ready is None:
            place = functools.partial(self.states.place, name, copy=session_id is None)
            ready = await start_worker(
                self.launcher, OutputLimits.of(self.settings),
                self.settings.worker_start_timeout, niceness=niceness, name=session_id,
                place=place)
        session = LocalSession(self, ready)
        try:
            await session.restore_state(max_bytes)
        except BaseException:
            await session.end(EndReason(EndKind.SHUTDOWN, "its state could not be restored"))
            raise
        return session

    async def _warm_with(self, name: str, session_id: str | None) -> ReadyWorker | None:
        """A warm pool sandbox with the kept volume's files copied into its new volume (its
        worker fresh, never used), or None: no warm one, or the kept volume is larger than
        TCI_RESUME_COPY_MAX_BYTES, where a cold start on the kept image costs less."""
        limit = self.settings.resume_copy_max_bytes
        if limit <= 0 or self.states.allocated(name) > limit:  # before a warm one is taken
            return None
        ready = self.pool.take()
        if ready is None:
            return None
        sandbox = ready.sandbox
        try:
            await asyncio.to_thread(self.states.copy_into, name, sandbox.workspace.parent,
                                    sandbox.uid, self.launcher.volumes, self.launcher.root,
                                    limit)
        except (TreeTooLarge, OSError, SandboxUnavailable) as exc:
            if not isinstance(exc, TreeTooLarge):
                log.warning("could not copy kept state %s into a warm sandbox: %s", name, exc)
            ready.worker.close()
            self.tear_down(sandbox)  # half filled: never handed out
            return None
        return ReadyWorker(session_id or ready.name, sandbox, ready.worker)

    async def delete_saved(self, name: str) -> None:
        self.snapshot_copies.forget(name)  # a deleted snapshot's warm copies end with it
        await asyncio.to_thread(self.states.delete, name)

    def stats(self) -> HostStats:
        copies = self.snapshot_copies
        self.details["snapshot_pool"] = {  # TCI_SNAPSHOT_POOL_SIZE, _SNAPSHOTS
            "ready": copies.count(), "snapshots_warm": len(copies.ready),
            "size": copies.per_snapshot, "snapshots": copies.snapshots}
        return HostStats(len(self.pool.ready), self.pool.size, self.pool.starts_failed,
                         self.capacity, self.details, self.languages)

    async def self_check(self) -> list[str]:
        return await selfcheck.probe(self.launcher, self.settings)
