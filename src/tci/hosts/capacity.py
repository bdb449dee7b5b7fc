"""How many sessions this machine can hold, and a refusal at start of settings it cannot
honour (TCI_MAX_SESSIONS against uids, loop devices, memory and the host's pids).

Disk is counted differently: each session's volume reserves its whole TCI_WORKSPACE_MAX_BYTES
on the host when it is made (volume_images.py), and a volume that does not fit is refused then.
Free space moves (other programs share the disk), so a start-up check would be a snapshot,
neither needed nor enough: an explicit TCI_MAX_SESSIONS beyond what the disk holds now is kept,
with a warning, and sessions past the disk's room are refused as they come; an unset one is
capped at what the disk holds at start.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tci.config import Settings
from tci.errors import SandboxUnavailable

MiB = 1 << 20
# The least an idle session costs, measured (docs/benchmarks.md): a fork of the template is
# ~10 MB of its own (USS), a bubblewrap start is a new interpreter with IPython, ~30 MB before
# any import. A maximum whose idle sessions alone exceed the machine's memory is refused.
IDLE_FLOOR = {"fork": 10 * MiB, "bwrap": 30 * MiB}
# The default leaves each session twice that floor, for what its code does once it runs.
DEFAULT_HEADROOM = 2
_LOOP_MINORS = 1 << 20  # loop devices made on demand (max_loop=0) are bounded by minors

log = logging.getLogger(__name__)


def memory_total(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise SandboxUnavailable("cannot read MemTotal from /proc/meminfo")


def loop_devices(cmdline: Path = Path("/proc/cmdline"),
                 parameter: Path = Path("/sys/module/loop/parameters/max_loop")) -> int:
    """Loop devices the kernel will make (each session's volume holds one). Its max_loop
    parameter caps them only when given at boot (else loop-control makes them on demand,
    and the parameter reads the default it pre-creates)."""
    try:
        if "max_loop=" not in cmdline.read_text():
            return _LOOP_MINORS
        configured = int(parameter.read_text())
    except (OSError, ValueError):
        return _LOOP_MINORS
    return configured or _LOOP_MINORS


def host_tasks(pid_max: Path = Path("/proc/sys/kernel/pid_max"),
               threads_max: Path = Path("/proc/sys/kernel/threads-max")) -> int:
    """Tasks (processes and threads) the kernel lets exist at once: each takes a pid below
    pid_max and counts against threads-max."""
    try:
        return min(int(pid_max.read_text()), int(threads_max.read_text()))
    except (OSError, ValueError) as exc:
        raise SandboxUnavailable(f"cannot read the kernel's pid_max and threads-max: {exc}") \
            from exc


def session_tasks(settings: Settings, tasks: int | None = None) -> int:
    """Tasks all sessions together may hold (the sessions' parent cgroup's pids.max): the
    kernel's bound less TCI_HOST_PIDS_RESERVE, so that the server, sshd and the database can
    still fork when every session is at its TCI_PIDS_LIMIT."""
    tasks = host_tasks() if tasks is None else tasks
    left = tasks - settings.host_pids_reserve
    if left < settings.pids_limit:
        raise SandboxUnavailable(
            f"the kernel allows {tasks} tasks (pid_max, threads-max); less TCI_HOST_PIDS_RESERVE "
            f"({settings.host_pids_reserve}) that leaves {max(left, 0)} for sessions, fewer than "
            f"one session's TCI_PIDS_LIMIT ({settings.pids_limit}). Lower either, or raise "
            "kernel.pid_max (sysctl).")
    return left


def disk_free(path: Path) -> int:
    """Free bytes of the filesystem that holds (or will hold) `path`."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def max_sessions(settings: Settings, memory: int | None = None, loops: int | None = None,
                 tasks: int | None = None, disk: int | None = None) -> int:
    """TCI_MAX_SESSIONS, or what this machine holds when it is unset; SandboxUnavailable
    when a set value cannot be honoured here. `tasks` is session_tasks(), `disk` the sandbox
    directory's free bytes (read from the host when not given)."""
    memory = memory_total() if memory is None else memory
    loops = loop_devices() if loops is None else loops
    tasks = session_tasks(settings) if tasks is None else tasks
    disk = disk_free(settings.resolved_sandbox_dir) if disk is None else disk
    floor = IDLE_FLOOR[settings.sandbox_start]
    # Warm sessions hold a uid and a volume too.
    bounds = {
        f"TCI_SANDBOX_UID_COUNT ({settings.sandbox_uid_count}) less the warm pool "
        f"({settings.pool_size}): each session runs as a uid of its own":
            settings.sandbox_uid_count - settings.pool_size,
        f"the kernel's {loops} loop devices less the warm pool: each session's disk holds one":
            loops - settings.pool_size,
        f"this machine's memory ({memory // MiB} MiB) at {floor // MiB} MiB per idle session "
        f"({settings.sandbox_start}), the least one costs": memory // floor,
        f"the {tasks} tasks sessions may hold together (the kernel's pid_max or threads-max "
        f"less TCI_HOST_PIDS_RESERVE) at TCI_PIDS_LIMIT ({settings.pids_limit}) each, less the "
        f"warm pool: raise kernel.pid_max or lower TCI_PIDS_LIMIT":
            tasks // max(1, settings.pids_limit) - settings.pool_size,
    }
    # Volumes the sandbox disk holds now, each reserving its full quota, above the reserve.
    on_disk = max(0, disk - settings.min_free_disk_bytes) // max(1, settings.workspace_max_bytes)
    wanted = settings.max_sessions
    if wanted is None:
        return max(1, min(min(bounds.values()), memory // (DEFAULT_HEADROOM * floor),
                          on_disk - settings.pool_size))
    for why, bound in bounds.items():
        if wanted > bound:
            raise SandboxUnavailable(
                f"TCI_MAX_SESSIONS={wanted} cannot be honoured here: at most {bound}, bounded "
                f"by {why}. Lower TCI_MAX_SESSIONS (or unset it for what this machine holds).")
    if wanted + settings.pool_size > on_disk:
        log.warning(
            "TCI_MAX_SESSIONS=%d: the sandbox disk now holds %d volumes of "
            "TCI_WORKSPACE_MAX_BYTES (%d MiB) above TCI_MIN_FREE_DISK_BYTES, warm pool "
            "included; sessions past that are refused (503) until others end",
            wanted, on_disk, settings.workspace_max_bytes // MiB)
    return wanted
