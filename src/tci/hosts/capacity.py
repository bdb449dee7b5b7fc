"""How many sessions this machine can hold, and a refusal at start of settings it cannot
honour (TCI_MAX_SESSIONS against uids, loop devices and memory)."""

from __future__ import annotations

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


def max_sessions(settings: Settings, memory: int | None = None,
                 loops: int | None = None) -> int:
    """TCI_MAX_SESSIONS, or what this machine holds when it is unset; SandboxUnavailable
    when a set value cannot be honoured here."""
    memory = memory_total() if memory is None else memory
    loops = loop_devices() if loops is None else loops
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
    }
    wanted = settings.max_sessions
    if wanted is None:
        return max(1, min(min(bounds.values()), memory // (DEFAULT_HEADROOM * floor)))
    for why, bound in bounds.items():
        if wanted > bound:
            raise SandboxUnavailable(
                f"TCI_MAX_SESSIONS={wanted} cannot be honoured here: at most {bound}, bounded "
                f"by {why}. Lower TCI_MAX_SESSIONS (or unset it for what this machine holds).")
    return wanted
