"""Attacks on the kernel and on other processes: every syscall the seccomp filter denies
(parametrized over tci.sandbox.seccomp.DENIED_SYSCALLS, numbers from libseccomp), clone3,
namespace flags, TIOCSTI and personality; capabilities; setuid binaries; raw, packet and vsock
sockets; signals at host processes; oom_score_adj; and daemons meant to outlive the session.

The host side: every process of the session runs under the filter (Seccomp: 2) with no
capabilities and the session's unprivileged uid, no packet or raw socket exists in its network
namespace, the server and the other sessions live on, and nothing survives the session."""

from __future__ import annotations

import errno
import json
import os
import platform
from pathlib import Path

import pyseccomp
import pytest

from tci.sandbox.seccomp import _UNIFIED_NUMBERS, CLONE_NAMESPACE_FLAGS, DENIED_SYSCALLS
from tests.conftest import Call, stdout_of
from tests.security.conftest import (
    HostView,
    ended_message,
    new_session,
    run_json,
    status_of,
    wait_for,
)


def syscall_number(name: str) -> int | None:
    """The native number, as the filter resolves it (None: this architecture lacks it)."""
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    if number == -1:  # newer than this libseccomp: the numbers the filter itself uses
        return _UNIFIED_NUMBERS[name]
    return number if number >= 0 else None


NATIVE_DENIED = {name: syscall_number(name) for name in DENIED_SYSCALLS}
NATIVE_DENIED = {name: number for name, number in NATIVE_DENIED.items() if number is not None}
SIGCHLD = 17

# Runs in the sandbox: each probe in a child of its own (a call the filter let through might
# change the process), with an alarm so that none can hang; reports the errno of the call,
# 0 if it succeeded, or minus the signal that ended the child.
PROBE = r"""
import ctypes, json, os, signal
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results = {}
for label, number, args in PROBES:
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            signal.alarm(5)
            result = libc.syscall(ctypes.c_long(number), *(ctypes.c_ulong(a) for a in args))
            code = ctypes.get_errno() if result == -1 else 0
        finally:
            os._exit(code)
    results[label] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(results))
"""


def probe(server, probes: list[tuple[str, int, list[int]]]) -> tuple[str, dict[str, int]]:
    return run_json(server, f"PROBES = {probes!r}\n{PROBE}")


def assert_filtered_on_host(session_id: str) -> None:
    """Every process of the session, seen from the host, runs under seccomp with no
    capabilities, no_new_privs and the session's own unprivileged uid."""
    host = HostView(session_id)
    for pid in host.inner_processes():
        status = status_of(pid)
        if not status:
            continue  # ended meanwhile
        assert status["Seccomp"].strip() == "2", (pid, status["Seccomp"])
        assert status["NoNewPrivs"].strip() == "1", pid
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[cap], 16) == 0, (pid, cap, status[cap])
        assert {int(u) for u in status["Uid"].split()} == {host.uid}, (pid, status["Uid"])


@pytest.fixture(scope="module")
def denied_results(hardened):
    probes = [(name, number, [0] * 6) for name, number in NATIVE_DENIED.items()]
    return probe(hardened, probes)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="filter's arches")
@pytest.mark.parametrize("name", sorted(NATIVE_DENIED))
def test_denied_syscall_fails_with_eperm(denied_results, name):
    session_id, results = denied_results
    assert errno.errorcode.get(results[name], results[name]) == "EPERM", results[name]
    assert_filtered_on_host(session_id)


def test_clone3_is_not_implemented(hardened):
    session_id, results = probe(hardened, [("clone3", syscall_number("clone3"), [0] * 6)])
    assert results == {"clone3": errno.ENOSYS}
    assert_filtered_on_host(session_id)


@pytest.mark.parametrize("flag", sorted(CLONE_NAMESPACE_FLAGS))
def test_clone_into_a_new_namespace_is_refused(hardened, flag):
    clone = syscall_number("clone")
    flags = CLONE_NAMESPACE_FLAGS[flag] | SIGCHLD
    session_id, results = probe(hardened, [(flag, clone, [flags, 0, 0, 0, 0, 0])])
    assert results == {flag: errno.EPERM}
    # No namespace was made: the session still has the one pid namespace it started with.
    host = HostView(session_id)
    assert len(host.namespaces) == 1


def test_terminal_injection_and_personality_are_refused(hardened):
    session_id, results = run_json(hardened, (
        "import ctypes, errno, fcntl, json, os, termios\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "master = os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY)\n"
        "results = {}\n"
        "for name, request in (('TIOCSTI', termios.TIOCSTI), ('TIOCLINUX', 0x541C)):\n"
        "    try:\n"
        "        fcntl.ioctl(master, request, b'x')\n"
        "        results[name] = 'allowed'\n"
        "    except OSError as exc:\n"
        "        results[name] = errno.errorcode[exc.errno]\n"
        "ADDR_NO_RANDOMIZE = 0x0040000\n"
        "result = libc.personality(ADDR_NO_RANDOMIZE)\n"
        "results['personality'] = errno.errorcode.get(ctypes.get_errno()) if result == -1 else 0\n"
        "print(json.dumps(results))"
    ))
    assert results == {"TIOCSTI": "EPERM", "TIOCLINUX": "EPERM", "personality": "EPERM"}
    assert_filtered_on_host(session_id)


# -- privileges ----------------------------------------------------------------------------


def test_no_capabilities_and_no_way_to_root(hardened):
    session_id, seen = run_json(hardened, (
        "import errno, json, os\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines()\n"
        "              if ':\\t' in l)\n"
        "seen = {cap: int(status[cap], 16) for cap in\n"
        "        ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')}\n"
        "seen['NoNewPrivs'] = status['NoNewPrivs'].strip()\n"
        "for name, call in (('setuid', lambda: os.setuid(0)), ('setgid', lambda: os.setgid(0)),\n"
        "                   ('setgroups', lambda: os.setgroups([0])),\n"
        "                   ('chroot', lambda: os.chroot('/tmp')),\n"
        "                   ('chown', lambda: os.chown('/workspace', 0, 0)),\n"
        "                   ('chown to nobody', lambda: os.chown('/workspace', 65534, 65534))):\n"
        "    try:\n"
        "        call()\n"
        "        seen[name] = 'allowed'\n"
        "    except OSError as exc:\n"
        "        seen[name] = errno.errorcode[exc.errno]\n"
        "seen['ids'] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid()]\n"
        "print(json.dumps(seen))"
    ))
    assert seen == {
        "CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0, "NoNewPrivs": "1",
        # uid and gid 0 do not even exist in the sandbox's user namespace (only 1000 is
        # mapped): EINVAL; where an id exists, the kernel says EPERM.
        "setuid": "EINVAL", "setgid": "EINVAL", "chown": "EINVAL", "setgroups": "EPERM",
        "chroot": "EPERM", "chown to nobody": "EINVAL", "ids": [1000, 1000, 1000, 1000],
    }
    assert_filtered_on_host(session_id)


SETUID_BINARIES = ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/newgrp", "/usr/bin/mount",
                   "/usr/bin/chsh", "/usr/bin/gpasswd")


def test_setuid_binaries_do_not_elevate(hardened):
    present = [path for path in SETUID_BINARIES if os.path.exists(path)]
    assert present, "no setuid binary on the host to try"
    for path in present:
        assert os.stat(path).st_mode & 0o4000 and os.stat(path).st_uid == 0, path
    session_id = new_session(hardened)
    host = HostView(session_id)
    # newgrp, setuid root, waits at its password prompt: the host looks at it meanwhile.
    call = Call(hardened, (
        "import json, os, subprocess, time\n"
        "mount = subprocess.run(['/usr/bin/mount', '-t', 'tmpfs', 'none', '/tmp'],\n"
        "                       capture_output=True, stdin=subprocess.DEVNULL).returncode\n"
        "prompt = subprocess.Popen(['/usr/bin/newgrp', 'root'], stdin=subprocess.PIPE,\n"
        "                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
        "said = b''\n"
        "while b'Password' not in said:\n"
        "    chunk = os.read(prompt.stderr.fileno(), 100)\n"
        "    assert chunk, said\n"
        "    said += chunk\n"
        "ids = [l.split()[1:] for l in open(f'/proc/{prompt.pid}/status')\n"
        "       if l.startswith(('Uid:', 'Gid:'))]\n"
        "open('prompting', 'w').close()\n"
        "while not os.path.exists('release'):\n"
        "    time.sleep(0.02)\n"
        "prompt.communicate(b'wrong\\n')\n"
        "mounts = open('/proc/self/mountinfo').read().count(' /tmp ')\n"
        "print(json.dumps({'ids': ids, 'newgrp': prompt.returncode, 'mount': mount,\n"
        "                  'mounts on /tmp': mounts}))"
    ), session_id)
    wait_for((host.workspace / "prompting").exists, "newgrp to prompt")
    # From the host, while the setuid program runs: not one process of the session is root.
    uids = {pid: status_of(pid).get("Uid", "").split() for pid in host.inner_processes()}
    (host.workspace / "release").touch()
    assert len(uids) >= 3, uids
    assert all(set(ids) <= {str(host.uid)} for ids in uids.values()), uids

    seen = json.loads(stdout_of(call.result()))
    # Real, effective, saved and fs ids all stay 1000; mount(8) fails as "must be superuser".
    assert seen == {"ids": [["1000"] * 4, ["1000"] * 4], "newgrp": 1, "mount": 32,
                    "mounts on /tmp": 1}


# -- sockets -------------------------------------------------------------------------------

SOCKETS = {
    "inet raw": (2, 3, 1, "EPERM"),
    "inet6 raw": (10, 3, 58, "EPERM"),
    "inet packet": (2, 10, 0, "EPERM"),
    "packet": (17, 3, 0, "EAFNOSUPPORT"),
    "vsock": (40, 1, 0, "EAFNOSUPPORT"),
    "alg": (38, 5, 0, "EAFNOSUPPORT"),
    "bluetooth": (31, 1, 0, "EAFNOSUPPORT"),
    "netlink sock_diag": (16, 3, 4, "EPROTONOSUPPORT"),
    "netlink netfilter": (16, 3, 12, "EPROTONOSUPPORT"),
}


def test_raw_packet_and_exotic_sockets_are_refused(hardened):
    session_id, results = run_json(hardened, (
        "import errno, json, socket\n"
        "results = {}\n"
        f"for name, (family, kind, proto, _) in {SOCKETS!r}.items():\n"
        "    try:\n"
        "        socket.socket(family, kind, proto)\n"
        "        results[name] = 'opened'\n"
        "    except OSError as exc:\n"
        "        results[name] = errno.errorcode[exc.errno]\n"
        "print(json.dumps(results))"
    ))
    assert results == {name: expected[3] for name, expected in SOCKETS.items()}
    # The host, in the session's network namespace: no raw or packet socket exists.
    worker = HostView(session_id).worker_pid()
    for table in ("raw", "raw6", "packet"):
        lines = Path(f"/proc/{worker}/net/{table}").read_text().splitlines()
        assert lines[1:] == [], (table, lines)


# -- signals and other processes -----------------------------------------------------------


def test_signals_cannot_reach_host_processes(hardened, canary_session):
    canary_worker = HostView(canary_session.session_id).worker_pid()
    server_pid = hardened.process.pid
    session_id, seen = run_json(hardened, (
        "import errno, json, os, signal, subprocess\n"
        "seen = {}\n"
        f"for name, pid in (('server', {server_pid}), ('canary', {canary_worker}),\n"
        "                  ('host init', 1 << 22)):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        seen[name] = 'sent'\n"
        "    except OSError as exc:\n"
        "        seen[name] = errno.errorcode[exc.errno]\n"
        "child = subprocess.Popen(['sleep', '1000'])\n"
        "os.kill(-1, signal.SIGKILL)  # everything this process may signal\n"
        "seen['child'] = child.wait()\n"
        "os.kill(1, signal.SIGKILL)  # the sandbox's init ignores it\n"
        "seen['alive'] = True\n"
        "print(json.dumps(seen))"
    ))
    assert seen == {"server": "ESRCH", "canary": "ESRCH", "host init": "ESRCH",
                    "child": -9, "alive": True}
    assert hardened.process.poll() is None
    assert os.path.exists(f"/proc/{canary_worker}")
    host = HostView(session_id)
    assert len(host.inner_processes()) == 2
    after = hardened.run("print('still here')", session_id)
    assert after["outputs"] == [{"type": "stdout", "data": "still here\n"}]


def test_oom_score_adj_cannot_be_lowered(hardened):
    session_id = new_session(hardened)
    worker = HostView(session_id).worker_pid()
    adjust = Path(f"/proc/{worker}/oom_score_adj")
    before = adjust.read_text()
    data = hardened.run(
        "import errno\n"
        "try:\n"
        "    with open('/proc/self/oom_score_adj', 'w') as handle:\n"
        "        handle.write('-1000')\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno])",
        session_id,
    )
    # -1000 would exempt the worker from the OOM killer, and so from the memory limit.
    assert stdout_of(data) == "EACCES\n"
    assert adjust.read_text() == before


# -- processes that try to outlive the session ---------------------------------------------

DAEMONS = """
import os, subprocess, time
# A double-forked setsid daemon, and a detached child ignoring SIGHUP and SIGTERM.
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open('daemon.pid', 'w').write(str(os.getpid()))
        while True:
            time.sleep(1)
    os._exit(0)
os.wait()
subprocess.Popen(['sh', '-c', 'trap "" HUP TERM; while :; do sleep 1; done'],
                 start_new_session=True)
while not os.path.exists('daemon.pid'):
    time.sleep(0.01)
print('daemons started')
"""


@pytest.mark.parametrize("ending", ["os._exit", "SIGSEGV"])
def test_daemons_end_with_the_session(hardened, ending):
    session_id = new_session(hardened)
    host = HostView(session_id)
    started = hardened.run(DAEMONS, session_id)
    assert stdout_of(started) == "daemons started\n"
    # They outlive the call that started them (the session lives on)...
    survived = hardened.run("import os\nos.kill(int(open('daemon.pid').read()), 0)\n"
                            "print('running')", session_id)
    assert stdout_of(survived) == "running\n"
    daemons = [pid for pid in host.inner_processes() if pid != host.worker_pid()]
    assert len(daemons) >= 4, daemons  # bwrap's pid 1, the daemon, sh and its sleep

    # ...but not the session.
    code = "import os\nos._exit(0)" if ending == "os._exit" else (
        "import ctypes\nctypes.string_at(0)")
    hardened.run(code, session_id)
    assert ended_message(hardened, session_id)
    host.assert_gone()
    assert not any(os.path.exists(f"/proc/{pid}") and os.stat(f"/proc/{pid}").st_uid == host.uid
                   for pid in daemons)


def test_kill_all_then_self_ends_only_this_session(hardened):
    """A session that kills every process it can (kill -1, then itself) ends only itself."""
    other = new_session(hardened)
    other_worker = HostView(other).worker_pid()
    session_id = new_session(hardened)
    host = HostView(session_id)
    data = hardened.run(
        "import os, signal, subprocess\n"
        "subprocess.Popen(['sleep', '1000'])\n"
        "os.kill(-1, signal.SIGKILL)\n"
        "os.kill(os.getpid(), signal.SIGKILL)",
        session_id,
    )
    assert [o["type"] for o in data["outputs"]] == ["error"], data
    assert data["outputs"][0]["data"].startswith("WorkerDied: "), data
    assert "SIGKILL" in data["outputs"][0]["data"], data
    assert "SIGKILL" in ended_message(hardened, session_id)
    host.assert_gone()
    # kill -1 reached nothing outside the session: the other session and the server live.
    assert os.path.exists(f"/proc/{other_worker}")
    assert hardened.process.poll() is None
    after = hardened.run("print(x)", other)
    assert after["outputs"] == [{"type": "stdout", "data": "1\n"}]
