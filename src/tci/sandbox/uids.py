"""Host uids for sandboxes: each live session runs as its own unprivileged host uid, so
even an escaped process could not touch another session's files."""

from __future__ import annotations

from tci.errors import SandboxUnavailable


class UidPool:
    def __init__(self, base: int, count: int) -> None:
        self._free = list(range(base + count - 1, base - 1, -1))
        self._used: set[int] = set()

    def acquire(self) -> int:
        if not self._free:
            raise SandboxUnavailable("no free sandbox uid left (TCI_SANDBOX_UID_COUNT)")
        uid = self._free.pop()
        self._used.add(uid)
        return uid

    def release(self, uid: int) -> None:
        if uid in self._used:
            self._used.remove(uid)
            self._free.append(uid)
