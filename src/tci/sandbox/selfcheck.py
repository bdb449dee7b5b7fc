"""Start-up self-check: run one real sandbox and verify, from inside and from the host, that
every protection is in force. The server refuses untrusted code when one is missing, unless
the operator set TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS (named for the danger)."""

from __future__ import annotations

import json
import logging

from tci.config import Settings
from tci.errors import SandboxUnavailable
from tci.kernel.driver import WorkerConnection
from tci.sandbox.launcher import Sandbox, SandboxLauncher

log = logging.getLogger(__name__)

# Runs inside the probe sandbox; prints one JSON line of facts.
PROBE = r"""
import json, os
status = dict(line.split(':', 1) for line in open('/proc/self/status') if ':' in line)
facts = {
    'uid': os.getuid(),
    'cap_eff': status['CapEff'].strip(), 'cap_bnd': status['CapBnd'].strip(),
    'no_new_privs': status.get('NoNewPrivs', '0').strip(),
    'seccomp': status.get('Seccomp', '0').strip(),
    'pid': os.getpid(),
    'interfaces': sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]),
    'usr_writable': os.access('/usr', os.W_OK),
}
print(json.dumps(facts))
"""


def problems_in(facts: dict, sandbox: Sandbox, network: str) -> list[str]:
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
    worker = sandbox.worker_pid()
    if sandbox.cgroup is None:
        problems.append("no cgroup limits (memory, pids, cpu) are applied")
    elif worker is None or worker not in sandbox.cgroup.procs():
        problems.append("the worker is not inside its session cgroup")
    return problems


async def verify(sandbox: Sandbox, worker: WorkerConnection, network: str) -> list[str]:
    result = await worker.request({"op": "execute", "code": PROBE}, timeout=60, grace=1)
    text = "".join(o["data"] for o in result.outputs if o["type"] == "stdout")
    try:
        facts = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [f"the probe sandbox did not report its facts: {result.outputs}"]
    return problems_in(facts, sandbox, network)


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


async def run(settings: Settings) -> None:
    """Start a probe sandbox the way sessions start, check it, tear everything down."""
    from tci.sessions.pool import start_worker  # sessions builds on sandbox, not the reverse

    launcher = SandboxLauncher(settings)
    launcher.prepare()
    try:
        probe = await start_worker(launcher, settings.output_limits(),
                                   settings.worker_start_timeout)
        try:
            problems = await verify(probe.sandbox, probe.worker, settings.network)
        finally:
            probe.worker.close()
            await launcher.destroy(probe.sandbox)
    finally:
        launcher.cleanup()
    enforce(problems, settings.unsafe_allow_missing_protections)
