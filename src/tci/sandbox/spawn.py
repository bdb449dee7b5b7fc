"""Programs the server starts per sandbox (slirp4netns, nsenter + nft, bwrap), started with
vfork instead of a fork of the whole server.

The server's event loop is uvloop, whose subprocess support (libuv's uv_spawn) fork()s: every
slirp4netns and nft of an egress session copied the page tables of the ~150 MB server, took
copy-on-write faults until the exec, then tore the copy down: about 40% of the server's CPU
per egress session (perf: copy_page_range, exit_mmap under execve). CPython's subprocess uses
vfork when it can (no preexec_fn, no uid/gid change), so the child shares our memory until
its exec and nothing is copied. Popen runs in a worker thread: vfork suspends the calling
thread until the child has exec'd, and that thread must not be the event loop's.

The process is waited for through a pidfd on the loop and reaped by its own pid (never by
waitpid(-1)), so it cannot clash with the loop's own child watcher.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Sequence

DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE


class Child:
    """A started program: the subset of asyncio.subprocess.Process the sandbox code uses."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._exited: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        if self._popen.returncode is None:
            self._popen.poll()  # reaps it (by its pid) if it has ended
        return self._popen.returncode

    def send_signal(self, signum: int) -> None:
        """ProcessLookupError once it has been reaped, as asyncio's Process."""
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        self._popen.send_signal(signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        if self.returncode is not None:
            return self.returncode
        if self._exited is None:
            self._exited = asyncio.get_running_loop().create_future()
            self._watch(self._exited)
        await asyncio.shield(self._exited)
        code = self.returncode
        assert code is not None
        return code

    def _watch(self, exited: asyncio.Future[int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:  # already reaped
            exited.set_result(self.returncode or 0)
            return

        def readable() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            code = self._popen.wait()  # it has exited: this reaps without blocking
            if not exited.done():
                exited.set_result(code)

        loop.add_reader(pidfd, readable)

    async def communicate(self, data: bytes | None = None) -> tuple[bytes, bytes]:
        """Feed stdin, read stdout and stderr to their ends, wait: in a thread (the pipes
        are Popen's blocking ones), as asyncio's communicate does on the loop."""
        out, err = await asyncio.to_thread(self._popen.communicate, data)
        return out or b"", err or b""


async def start(argv: Sequence[str], *, stdin: int | None = DEVNULL,
                stdout: int | None = DEVNULL, stderr: int | None = None,
                pass_fds: Sequence[int] = (), env: dict[str, str] | None = None,
                start_new_session: bool = False) -> Child:
    """Start `argv` (its first item a path or a name on PATH); OSError if it cannot be."""
    popen = await asyncio.to_thread(
        subprocess.Popen, list(argv), stdin=stdin, stdout=stdout, stderr=stderr,
        pass_fds=tuple(pass_fds), env=env, start_new_session=start_new_session)
    return Child(popen)
