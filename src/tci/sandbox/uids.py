"""Host uids for sandboxes: each live session runs as its own unprivileged host uid, so
even an escaped process could not touch another session's files.

A uid is as good as the cleanup of the session that last held it: one whose processes could
not be killed, or whose cgroup or directory could not be removed, is never handed out again
(quarantined until the server restarts); free uids are reused oldest first, so that whatever
a session left behind unseen meets a new session as late as possible.
"""

from __future__ import annotations

import grp
import logging
import pwd
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from tci.errors import SandboxUnavailable

log = logging.getLogger(__name__)

# Where the host delegates uid/gid ranges to users (for rootless containers, newuidmap...):
# a process of such a user may map one of those ids, so a sandbox must never use them.
SUBUID_FILE = Path("/etc/subuid")
SUBGID_FILE = Path("/etc/subgid")
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel


def parse_subids(text: str) -> list[tuple[str, int, int]]:
    """(owner, first id, count) of each `owner:first:count` line of /etc/subuid or subgid."""
    ranges = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or line.lstrip().startswith("#"):
            continue
        try:
            ranges.append((fields[0], int(fields[1]), int(fields[2])))
        except ValueError:
            continue
    return ranges


def range_conflicts(
    base: int, count: int, subuids: Iterable[tuple[str, int, int]],
    subgids: Iterable[tuple[str, int, int]], users: Iterable[tuple[str, int]],
    groups: Iterable[tuple[str, int]],
) -> list[str]:
    """Why [base, base + count) cannot be the sandboxes' ids (a sandbox's gid is its uid)."""
    last = base + count - 1
    if count < 1 or base < 1 or last > _MAX_ID:
        return [f"{base}..{last} is not a range of unprivileged ids (1..{_MAX_ID})"]
    problems = []
    for kind, ranges in (("/etc/subuid", subuids), ("/etc/subgid", subgids)):
        for owner, first, size in ranges:
            if first <= last and base <= first + size - 1:
                problems.append(f"{kind} gives {first}..{first + size - 1} to {owner!r}")
    for kind, ids in (("user", users), ("group", groups)):
        for name, number in ids:
            if base <= number <= last:
                problems.append(f"{kind} {name!r} has id {number}")
    return problems


def check_range(base: int, count: int) -> None:
    """Refuse, at start, a sandbox uid range that the host already gives to someone."""
    subids = []
    for path in (SUBUID_FILE, SUBGID_FILE):
        try:
            subids.append(parse_subids(path.read_text()))
        except FileNotFoundError:
            subids.append([])
    problems = range_conflicts(
        base, count, subids[0], subids[1],
        [(user.pw_name, user.pw_uid) for user in pwd.getpwall()],
        [(group.gr_name, group.gr_gid) for group in grp.getgrall()],
    )
    if problems:
        shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        raise SandboxUnavailable(
            f"the sandbox uid range {base}..{base + count - 1} (TCI_SANDBOX_UID_BASE, "
            f"TCI_SANDBOX_UID_COUNT) overlaps ids the host already uses: {shown}. Choose a "
            "range no account, group, /etc/subuid or /etc/subgid entry uses"
        )


class UidPool:
    def __init__(self, base: int, count: int) -> None:
        self._free = deque(range(base, base + count))
        self._used: set[int] = set()
        self.quarantined: dict[int, str] = {}  # uid -> why it is never handed out again

    def available(self) -> int:
        return len(self._free)

    def acquire(self) -> int:
        if not self._free:
            raise SandboxUnavailable(
                "no free sandbox uid left (TCI_SANDBOX_UID_COUNT"
                + (f"; {len(self.quarantined)} quarantined after a failed cleanup, see the log)"
                   if self.quarantined else ")")
            )
        uid = self._free.popleft()
        self._used.add(uid)
        return uid

    def release(self, uid: int) -> None:
        """The session's cleanup succeeded: the uid goes to the back of the queue."""
        if uid in self._used:
            self._used.remove(uid)
            self._free.append(uid)

    def quarantine(self, uid: int, reason: str) -> None:
        """The session's cleanup failed: the uid may still own something; never reuse it."""
        if uid in self._used:
            self._used.remove(uid)
            self.quarantined[uid] = reason
            log.error("sandbox uid %d quarantined, never reused until restart: %s", uid, reason)
