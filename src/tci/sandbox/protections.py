"""The protections every sandbox must have, checked at start-up (the pure part): the probe a
sandbox runs, the verdict on its facts and on the host's view of it, and the refusal. The server
refuses untrusted code when a protection is missing, unless the operator set
TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS (named for the danger). Starting the probe is the session
host's job (hosts/selfcheck.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tci.errors import SandboxUnavailable
from tci.worker.confine import INIT_NAME

if TYPE_CHECKING:
    from tci.sandbox.launcher import Sandbox

log = logging.getLogger(__name__)
# What opening /proc/1/mem from the sandbox may answer (the ptrace access check refuses it).
INIT_MEMORY_DENIED = ("EACCES", "EPERM")

# Runs inside the probe sandbox; prints one JSON line of facts.
PROBE = r"""
import errno, json, os
status = dict(line.split(':', 1) for line in open('/proc/self/status') if ':' in line)
def open_init_memory():
    try:
        os.close(os.open('/proc/1/mem', os.O_RDONLY))
        return 'opened'
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
facts = {
    'uid': os.getuid(),
    'cap_eff': status['CapEff'].strip(), 'cap_bnd': status['CapBnd'].strip(),
    'no_new_privs': status.get('NoNewPrivs', '0').strip(),
    'seccomp': status.get('Seccomp', '0').strip(),
    'pid': os.getpid(),
    'interfaces': sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]),
    'usr_writable': os.access('/usr', os.W_OK),
    'init_name': open('/proc/1/comm').read().strip(),
    'init_memory': open_init_memory(),
}
print(json.dumps(facts))
"""


def problems_in(facts: dict[str, Any], sandbox: Sandbox, network: str) -> list[str]:
    problems = []
    if facts.get("uid") == 0:
        problems.append("the sandbox runs as uid 0")
    if facts.get("cap_eff") != "0000000000000000" or facts.get("cap_bnd") != "0000000000000000":
        problems.append("the sandbox has capabilities")
    if facts.get("no_new_privs") != "1":
        problems.append("no_new_privs is not set")
    if facts.get("seccomp") != "2":
        problems.append("no seccomp filter is applied")
    if not isinstance(facts.get("pid"), int) or facts["pid"] > 10:
        problems.append("the sandbox has no pid namespace of its own")
    allowed = {"lo"} if network == "none" else {"lo", "tap0"}
    if not set(facts.get("interfaces", [])) <= allowed:
        problems.append(f"the sandbox sees host network interfaces {facts.get('interfaces')}")
    if facts.get("usr_writable"):
        problems.append("/usr is writable in the sandbox")
    # pid 1 must be our init (either path's), which refuses to start the worker unless it is
    # not dumpable and dies with its parent (SIGKILL by PR_SET_PDEATHSIG); its memory is
    # then out of the session's reach, and the probe makes sure of that.
    if facts.get("init_name") != INIT_NAME:
        problems.append(f"the sandbox's pid 1 is {facts.get('init_name')!r}, not tci's init")
    if facts.get("init_memory") not in INIT_MEMORY_DENIED:
        problems.append("the sandbox's pid 1 is dumpable: the session's code can open its "
                        f"memory ({facts.get('init_memory')})")
    worker = sandbox.worker_pid()
    if sandbox.cgroup is None:
        problems.append("no cgroup limits (memory, pids, cpu) are applied")
    elif worker is None or worker not in sandbox.cgroup.procs():
        problems.append("the worker is not inside its session cgroup")
    return problems


def enforce(problems: list[str], allow_missing: bool) -> None:
    if not problems:
        log.info("sandbox self-check passed: every protection is in force")
        return
    summary = "; ".join(problems)
    if allow_missing:
        log.warning("UNSAFE: serving with missing sandbox protections: %s", summary)
        return
    raise SandboxUnavailable(
        f"sandbox self-check failed: {summary}. Refusing to run untrusted code. Fix the host, "
        "or set TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS=true to serve anyway."
    )
