"""Compile once: runs of the same program (a batch's test cases of one sample) share one
compile.

Why a cache in the server's memory, filled from the first run's sandbox, rather than a
directory the sandboxes share: a run's build comes back to the server on its info pipe as
soon as the compile ends (before the program runs), and a later run of the same program gets
it in its own files payload, written into its own /tmp before it is confined. No sandbox ever
sees another's files or a shared writable place, and nothing is left on disk.

The key covers everything a compile reads that a request chooses: the language, the compile
command (flags included), the code and every file the run brings (a program may #include
one). A hit is therefore exactly what the run's own compile would have produced, and its
compile result (warnings, errors) is the same too. Compiles that failed are kept (the same
code fails the same way); one that ran out of time or was killed (memory) is not, as load may
have caused it. While one run compiles, the others of the same key wait for it before they
take a slot; if it gives nothing, the next of them compiles.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tci.runs.models import RunSpec


@dataclass(frozen=True)
class Build:
    """One compile's result: SandboxFusion's CommandRunResult fields, and the files it wrote
    (relative to the build directory; None when it failed)."""

    result: dict[str, Any]
    files: dict[str, bytes] | None

    @property
    def ok(self) -> bool:
        return self.result.get("return_code") == 0 and self.files is not None

    @property
    def size(self) -> int:
        return sum(len(content) for content in (self.files or {}).values()) + len(
            str(self.result.get("stdout", ""))) + len(str(self.result.get("stderr", "")))

    def keepable(self) -> bool:
        code = self.result.get("return_code")
        return self.result.get("status") == "Finished" and code is not None and code < 128


def build_key(spec: RunSpec) -> str:
    digest = hashlib.sha256()
    commands = spec.commands
    digest.update(json.dumps([spec.language, commands.compile if commands else None]).encode())
    for item in sorted(spec.files, key=lambda f: f.path):
        digest.update(json.dumps([item.path, len(item.content)]).encode())
        digest.update(item.content)
    return digest.hexdigest()


class CompileCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._builds: OrderedDict[str, Build] = OrderedDict()
        self._size = 0
        self._compiling: dict[str, asyncio.Future[None]] = {}

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    async def claim(self, key: str) -> Build | None:
        """The kept build of `key`; or None, and the caller compiles it (others of the same
        key wait until it calls `done`)."""
        while True:
            build = self._builds.get(key)
            if build is not None:
                self._builds.move_to_end(key)
                return build
            compiling = self._compiling.get(key)
            if compiling is None:
                self._compiling[key] = asyncio.get_running_loop().create_future()
                return None
            await asyncio.shield(compiling)

    def keep(self, key: str, build: Build) -> None:
        """A compile ended: kept if it may be (and fits), and whoever waits goes on."""
        if build.keepable() and build.size <= self.capacity and key not in self._builds:
            self._builds[key] = build
            self._size += build.size
            while self._size > self.capacity:
                _, dropped = self._builds.popitem(last=False)
                self._size -= dropped.size
        self.done(key)

    def done(self, key: str) -> None:
        """The claimer is done with `key`, with or without a build (idempotent)."""
        compiling = self._compiling.pop(key, None)
        if compiling is not None and not compiling.done():
            compiling.set_result(None)
