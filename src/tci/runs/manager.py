"""Runs as the routes see them: checked requests in, results out, a bounded queue between.

At most TCI_RUN_CONCURRENCY runs execute at once; up to TCI_RUN_QUEUE_SIZE more wait their
turn in arrival order; beyond that a request is refused at once (RunQueueFull: 429 on the
batch endpoint, 504 on SandboxFusion's, the one status its clients retry). A run that fails
for the system's reasons (never the program's) is tried once more before it is reported as
SANDBOX_ERROR, so a sandbox failure is never scored as a wrong answer.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from collections.abc import AsyncIterator, Sequence

from tci.config import Settings
from tci.errors import BadRequest, TooManySessions, Unprocessable
from tci.request_files import decode_files
from tci.runs import languages
from tci.runs.compiles import Build, CompileCache, build_key
from tci.runs.models import RunFile, RunRequest, RunResult, RunSpec
from tci.runs.sandboxes import RunSandboxes, RunSystemError
from tci.runs.verdicts import Verdict, judge

log = logging.getLogger(__name__)

WORKSPACE = "/workspace"
_WRITABLE_ROOTS = (WORKSPACE, "/tmp")


class RunQueueFull(TooManySessions):
    """More runs are waiting than TCI_RUN_QUEUE_SIZE allows."""


def sandbox_path(name: str) -> str:
    """A file name of a run as the absolute path it gets: relative names are in the working
    directory; absolute ones must be under /workspace or /tmp."""
    if not name or "\x00" in name:
        raise BadRequest(f"file name {name!r} is empty or contains a NUL byte")
    path = posixpath.normpath(name if name.startswith("/") else f"{WORKSPACE}/{name}")
    if not any(path.startswith(root + "/") for root in _WRITABLE_ROOTS):
        raise BadRequest(f"file {name!r} must be relative, or under /workspace or /tmp")
    return path


class _Place:
    """A run's place in the queue, given back once: when it gets a slot or when it ends."""

    def __init__(self, manager: RunManager) -> None:
        self.manager: RunManager | None = manager

    def give_back(self) -> None:
        if self.manager is not None:
            self.manager.waiting -= 1
            self.manager = None


class RunManager:
    def __init__(self, settings: Settings, sandboxes: RunSandboxes | None) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        self.concurrency = settings.resolved_run_concurrency
        self._slots = asyncio.Semaphore(self.concurrency)
        self.waiting = 0
        self.running = 0
        # Which languages' toolchains the sandboxes see (make toolchains installs them).
        self.available = languages.availability(settings.runtime_dir / "site")
        missing = [name for name, ok in self.available.items() if not ok]
        if missing:
            log.warning("runs cannot be in %s: toolchain missing (run `make toolchains`)",
                        ", ".join(missing))
        self.compiles = CompileCache(settings.run_compile_cache_bytes)

    def offered(self) -> list[str]:
        return [name for name, ok in self.available.items() if ok]

    # -- requests to specs ----------------------------------------------------------------

    def spec(self, request: RunRequest) -> RunSpec:
        """Check one run and resolve its limits (errors name the problem and the setting)."""
        settings = self.settings
        language = self.language(request.language)
        if len(request.code.encode()) > settings.max_code_bytes:
            raise BadRequest(f"code is longer than {settings.max_code_bytes} bytes "
                             "(TCI_MAX_CODE_BYTES)")
        timeout = request.timeout or settings.run_default_timeout
        if timeout > settings.run_max_timeout:
            raise Unprocessable(f"timeout {timeout:g} s is above the maximum of "
                                f"{settings.run_max_timeout:g} s (TCI_RUN_MAX_TIMEOUT)")
        memory = (request.memory_mb * (1 << 20) if request.memory_mb
                  else settings.run_default_memory_bytes)
        if memory > settings.memory_limit_bytes:
            raise Unprocessable(f"memory_mb {memory >> 20} is above the maximum of "
                                f"{settings.memory_limit_bytes >> 20} (TCI_MEMORY_LIMIT_BYTES)")
        compile_timeout = request.compile_timeout or settings.run_compile_timeout
        if compile_timeout > settings.run_max_timeout:
            raise Unprocessable(f"compile_timeout {compile_timeout:g} s is above the maximum "
                                f"of {settings.run_max_timeout:g} s (TCI_RUN_MAX_TIMEOUT)")
        files = self._files(request, language)
        fetch = tuple((name, sandbox_path(name)) for name in request.fetch_files)
        memory = max(memory, 16 << 20)
        commands = (None if language is languages.PYTHON
                    else language.commands(request.code, memory))
        return RunSpec(code=request.code, language=language.name,
                       stdin=(request.stdin or "").encode(), files=files, timeout=timeout,
                       memory_bytes=memory, fetch=fetch,
                       expected_stdout=request.expected_stdout, commands=commands,
                       compile_timeout=compile_timeout, unavailable=self._unavailable(language))

    def language(self, name: str) -> languages.Language:
        """The language a run names (tci's name or an alias); unknown is a 400 naming the
        ones offered. One whose toolchain this host lacks is returned: its run's line says
        so (RunSpec.unavailable), the batch's other runs go on."""
        language = languages.NAMES.get(name)
        if language is None:
            raise BadRequest(f"language {name!r} is not offered for runs; supported: "
                             f"{', '.join(self.offered())}")
        return language

    def _unavailable(self, language: languages.Language) -> str:
        if self.available.get(language.name):
            return ""
        return (f"language {language.name!r} is not available on this server: its toolchain "
                f"is missing (make toolchains); offered: {', '.join(self.offered())}")

    def _files(self, request: RunRequest, language: languages.Language
               ) -> tuple[RunFile, ...]:
        relative = [f for f in request.files if not f.name.startswith("/")]
        decoded = {f"{WORKSPACE}/{d.name}": d.content
                   for d in decode_files(relative, self.settings)}
        for item in request.files:
            if item.name.startswith("/"):
                absolute = item.model_copy(update={"name": sandbox_path(item.name)
                                                   .lstrip("/")})
                (only,) = decode_files([absolute], self.settings)
                decoded["/" + only.name] = only.content
        program = f"{WORKSPACE}/{language.source}"
        if program in decoded:
            raise BadRequest(f"file {language.source!r} is the run's program; name yours "
                             "otherwise")
        if any(path.startswith(languages.BUILD_DIR + "/") for path in decoded):
            raise BadRequest(f"{languages.BUILD_DIR} is where runs are compiled; put files "
                             "elsewhere")
        files = [RunFile(program, languages.source_text(language, request.code).encode())]
        files += [RunFile(path, content) for path, content in decoded.items()]
        return tuple(files)

    # -- running ------------------------------------------------------------------------

    def admit(self, count: int) -> None:
        """Take `count` places in the queue, or refuse at once (nothing is half-admitted).
        Taken in the same step as the check, so requests arriving together cannot all pass
        it; each place is given back as its run gets a slot (or is cancelled)."""
        room = self.settings.run_queue_size - self.waiting
        free = self.concurrency - self.running
        if count > room + max(free, 0):
            raise RunQueueFull(
                f"{self.waiting} runs are waiting already; the queue holds "
                f"{self.settings.run_queue_size} (TCI_RUN_QUEUE_SIZE): retry shortly",
                retry_after=1)
        self.waiting += count

    def launch(self, spec: RunSpec) -> asyncio.Future[RunResult]:
        """One admitted run, as a task: it waits for a slot (cancelled meanwhile, it never
        starts) and gives its place in the queue back however it ends, started or not."""
        place = _Place(self)
        task = asyncio.ensure_future(self._run(spec, place))
        task.add_done_callback(lambda _: place.give_back())
        return task

    async def _run(self, spec: RunSpec, place: _Place) -> RunResult:
        queued = time.monotonic()
        if spec.unavailable:  # the server's lack, never the program's: not a wrong answer
            return RunResult(Verdict.SANDBOX_ERROR, None, "", spec.unavailable, 0.0,
                             message=spec.unavailable, language=spec.language)
        key = build_key(spec) if self._cached(spec) else None
        try:
            # Before a slot: a run whose program another is compiling waits without one.
            build = await self.compiles.claim(key) if key is not None else None
            if build is not None and not build.ok:  # the same code failed to compile before
                return self._not_compiled(spec, build, compiled=False)
            await self._slots.acquire()
            place.give_back()
            waited = time.monotonic() - queued
            self.running += 1
            try:
                result = await self._run_with_retry(spec, build, key)
            finally:
                self.running -= 1
                self._slots.release()
        finally:
            if key is not None:
                self.compiles.done(key)
        result.phases["queue"] = waited
        return result

    def _cached(self, spec: RunSpec) -> bool:
        return (self.compiles.enabled and spec.commands is not None
                and spec.commands.compile is not None)

    @staticmethod
    def _not_compiled(spec: RunSpec, build: Build, compiled: bool) -> RunResult:
        said = build.result
        if said.get("status") == "TimeLimitExceeded":
            stderr = f"compile timed out after {spec.compile_timeout:g} s (compile_timeout)"
        else:
            stderr = str(said.get("stderr", ""))
        return RunResult(Verdict.COMPILE_ERROR, None, str(said.get("stdout", "")), stderr,
                         0.0, compile=dict(said), compiled=compiled, language=spec.language)

    async def _run_with_retry(self, spec: RunSpec, build: Build | None,
                              key: str | None) -> RunResult:
        started = time.monotonic()
        if self.sandboxes is None:
            return RunResult(Verdict.SANDBOX_ERROR, None, "", "", 0.0,
                             message="runs need TCI_SANDBOX_START=fork on this host")
        failure = ""

        def compiled(result: Build) -> None:
            if key is not None:
                self.compiles.keep(key, result)

        for attempt in (1, 2):
            try:
                raw = await self.sandboxes.run(spec, build, compiled)
            except (RunSystemError, OSError, TooManySessions) as exc:
                failure = str(exc)
                log.warning("run failed for a system reason (attempt %d): %s", attempt, failure)
                continue
            except Exception as exc:
                failure = getattr(exc, "message", str(exc))
                log.warning("run failed for a system reason (attempt %d): %s", attempt, failure)
                continue
            if raw.build is not None and not raw.build.ok:
                return self._not_compiled(spec, raw.build, compiled=True)
            verdict = judge(raw.outcome, spec.expected_stdout)
            files = {name: raw.files[path] for name, path in spec.fetch if path in raw.files}
            shown = raw.build or build
            return RunResult(verdict, raw.outcome.exit_code, raw.outcome.stdout,
                             raw.outcome.stderr, raw.wall_s, truncated=raw.truncated,
                             timed_out=raw.outcome.timed_out, files=files,
                             phases=dict(raw.phases),
                             compile=dict(shown.result) if shown is not None else None,
                             compiled=raw.build is not None, language=spec.language)
        return RunResult(Verdict.SANDBOX_ERROR, None, "", "", time.monotonic() - started,
                         message=failure or "the sandbox failed")

    def start_all(self, specs: Sequence[RunSpec]) -> dict[asyncio.Future[RunResult], int]:
        """Every run of an admitted batch started now (each holds its place in the queue
        until it gets a slot), as task -> index."""
        return {self.launch(spec): index for index, spec in enumerate(specs)}

    @staticmethod
    async def as_finished(tasks: dict[asyncio.Future[RunResult], int]
                          ) -> AsyncIterator[tuple[int, RunResult]]:
        """(index, result) of each run as it ends, in parallel up to the slots. Leaving the
        iteration early cancels the runs that have not ended."""
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield tasks[task], task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        if self.sandboxes is not None:
            self.sandboxes.close()


