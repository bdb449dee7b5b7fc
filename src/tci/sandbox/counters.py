"""Which per-session limit a call ran into, in words that name the setting.

Read from the kernel's own records (cgroup OOM and pids counters, the volume's free space),
compared before and after a call, rather than guessed from the user's exception text.
"""

from __future__ import annotations

from dataclasses import dataclass

from tci.config import Settings
from tci.sandbox.volume import Usage


# ext4 answers ENOSPC with a little space still free (reserved for block allocation and
# metadata), so "full" is: less than 5% of the volume free, at most 8 MiB, at least 2 MiB.
def _full_threshold(volume_bytes: int) -> int:
    return max(2 << 20, min(8 << 20, volume_bytes // 20))


@dataclass(frozen=True)
class Counters:
    oom_kills: int = 0
    pids_refused: int = 0


def human_bytes(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def limits_hit(settings: Settings, before: Counters, after: Counters, usage: Usage | None,
               worker_died: bool) -> list[str]:
    messages = []
    if after.oom_kills > before.oom_kills:
        ending = ("the worker was killed and the session ended" if worker_died
                  else "the kernel killed a process of this session")
        messages.append(
            f"MemoryError: memory limit of {human_bytes(settings.memory_limit_bytes)} exceeded "
            f"(TCI_MEMORY_LIMIT_BYTES): {ending}."
        )
    if after.pids_refused > before.pids_refused:
        messages.append(
            f"ResourceLimit: process limit of {settings.pids_limit} processes and threads "
            f"reached (TCI_PIDS_LIMIT): {after.pids_refused - before.pids_refused} "
            "fork/thread creations were refused."
        )
    if usage is not None and usage.bytes_free < _full_threshold(settings.workspace_max_bytes):
        messages.append(
            f"ResourceLimit: workspace disk limit of {human_bytes(settings.workspace_max_bytes)} "
            "reached (TCI_WORKSPACE_MAX_BYTES): /workspace and /home/user are full."
        )
    if usage is not None and usage.files_free == 0:
        messages.append(
            f"ResourceLimit: workspace file limit of {settings.workspace_max_files} files "
            "reached (TCI_WORKSPACE_MAX_FILES)."
        )
    return messages
