"""Filesystem attacks: reading the host's and other sessions' secrets, writing outside the
writable places, and tricking the server (which writes uploaded files as root) with symlinks,
hardlinks, FIFOs and a symlink swapped while uploads run. Plus what a sandbox sees of /dev,
/proc and /sys, and that /tmp, /dev/shm, home and SysV IPC are private to each session.

Every case checks the host too: the host files an attack aimed at are unchanged, nothing was
written outside the session's volume, and what one session wrote is only in its own mounts
(looked at through /proc/<worker>/root from the host)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from tests.conftest import LIST_PROC, SANDBOX_PROCESSES, outputs_of, stdout_of
from tests.security.conftest import (
    SECRET,
    HostView,
    new_session,
    run_json,
    sandbox_dir,
)

WORKER_DIR = Path(__file__).resolve().parents[2] / "src" / "tci" / "worker"
RUNTIME_SITE = Path(__file__).resolve().parents[2] / ".runtime" / "site"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def upload(server, session_id: str, *names: str, content: str = "uploaded"):
    return server.execute("pass", session_id, files=[
        {"name": name, "encoding": "string", "content": content} for name in names
    ])


def refused(response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["data"] is None and len(body["errors"]) == 1, body
    return body["errors"][0]


# -- secrets of the host -------------------------------------------------------------------


def test_host_secrets_are_not_visible(hardened):
    paths = [
        hardened.data_dir, hardened.data_dir / "tci.db", hardened.log_path, Path("/root"),
        Path("/etc/shadow"), Path("/etc/gshadow"), sandbox_dir(hardened), Path("/var/tmp/tci"),
        Path(__file__).resolve(),
    ]
    for path in paths:
        assert path.exists(), path  # on the host they are there
    _, seen = run_json(hardened, (
        "import errno, json, os\n"
        f"paths = {[str(p) for p in paths]!r}\n"
        "seen = {}\n"
        "for path in paths:\n"
        "    try:\n"
        "        with open(path, 'rb') as handle:\n"
        "            handle.read(1)\n"
        "        seen[path] = 'read'\n"
        "    except OSError as exc:\n"
        "        seen[path] = errno.errorcode[exc.errno]\n"
        "print(json.dumps(seen))"
    ))
    assert seen == {str(path): "ENOENT" for path in paths}


def test_server_process_is_not_visible(hardened):
    server_pid = hardened.process.pid
    assert f"TCI_TEST_MARKER={SECRET}".encode() in Path(f"/proc/{server_pid}/environ").read_bytes()
    session_id, seen = run_json(hardened, (
        "import errno, json, os\n"
        "try:\n"
        f"    open('/proc/{server_pid}/environ', 'rb').read()\n"
        "    server = 'read'\n"
        "except OSError as exc:\n"
        "    server = errno.errorcode[exc.errno]\n"
        "print(json.dumps([server, sorted(int(p) for p in os.listdir('/proc') if p.isdigit())]))"
    ))
    # The pid namespace hides it: that pid does not exist in the sandbox.
    assert seen == ["ENOENT", [1, 2]]
    # The host agrees: the sandbox's two processes are bubblewrap and the worker.
    host = HostView(session_id)
    assert server_pid not in host.inner_processes()
    assert len(host.inner_processes()) == 2


def test_server_environment_and_key_are_nowhere_in_reach(hardened):
    server_pid = hardened.process.pid
    environ = Path(f"/proc/{server_pid}/environ").read_bytes()
    assert f"TCI_TEST_MARKER={SECRET}".encode() in environ  # else the test proves nothing
    # Everything the sandbox can read that could hold them: every process's environment and
    # command line, and every file under the places it can see (not the system's /usr).
    session_id, found = run_json(hardened, (
        "import json, os\n"
        f"needles = [{SECRET!r}.encode(), {hardened.key!r}.encode()]\n"
        "found = []\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            data = open(f'/proc/{pid}/{name}', 'rb').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        found += [f'/proc/{pid}/{name}' for n in needles if n in data]\n"
        "for top in ('/etc', '/opt', '/home', '/workspace', '/tmp', '/dev/shm'):\n"
        "    for root, dirs, files in os.walk(top):\n"
        "        for name in files:\n"
        "            try:\n"
        "                data = open(os.path.join(root, name), 'rb').read()\n"
        "            except OSError:\n"
        "                continue\n"
        "            found += [os.path.join(root, name) for n in needles if n in data]\n"
        "print(json.dumps(found))"
    ))
    assert found == []
    # The host: no process of the session carries the server's environment.
    for pid in HostView(session_id).inner_processes():
        assert SECRET.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), (
            pid, cmdline_of(pid))


def cmdline_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text(errors="replace").replace("\0", " ")[:200]


def test_other_sessions_files_are_not_reachable(hardened):
    secret = f"other-{SECRET}"
    writer = hardened.run(
        "import os\n"
        "for path in ('/workspace/a.txt', '/tmp/a.txt', '/dev/shm/a.txt', '/home/user/a.txt'):\n"
        f"    open(path, 'w').write({secret!r})\n"
        "print('written')"
    )
    assert stdout_of(writer) == "written\n"
    writer_host = HostView(writer["session_id"])
    writer_root = f"/proc/{writer_host.worker_pid()}/root"
    for path in ("/workspace/a.txt", "/tmp/a.txt", "/dev/shm/a.txt", "/home/user/a.txt"):
        assert Path(writer_root + path).read_text() == secret  # the host sees them there

    session_id, seen = run_json(hardened, (
        "import json, os\n"
        "found = []\n"
        "for top in ('/workspace', '/tmp', '/dev/shm', '/home', '/etc', '/opt'):\n"
        "    for root, dirs, files in os.walk(top):\n"
        "        for name in files:\n"
        "            try:\n"
        "                data = open(os.path.join(root, name), 'rb').read()\n"
        "            except OSError:\n"
        "                continue\n"
        f"            if {secret!r}.encode() in data:\n"
        "                found.append(os.path.join(root, name))\n"
        f"print(json.dumps([found, os.path.exists({str(writer_host.workspace)!r}),\n"
        f"                  os.path.exists({str(writer_host.directory)!r})]))"
    ))
    assert seen == [[], False, False]
    reader_root = f"/proc/{HostView(session_id).worker_pid()}/root"
    for path in ("/workspace/a.txt", "/tmp/a.txt", "/dev/shm/a.txt", "/home/user/a.txt"):
        assert not Path(reader_root + path).exists()


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm", "/home/user", "/workspace"])
def test_writable_places_are_per_session(hardened, directory):
    name = f"mine-{os.urandom(4).hex()}"
    first = new_session(hardened, f"open('{directory}/{name}', 'w').write('first')")
    second, seen = run_json(
        hardened, f"import json, os\nprint(json.dumps(os.listdir('{directory}')))")
    assert name not in seen
    first_root = Path(f"/proc/{HostView(first).worker_pid()}/root")
    second_root = Path(f"/proc/{HostView(second).worker_pid()}/root")
    assert (first_root / directory.lstrip("/") / name).read_text() == "first"
    assert not (second_root / directory.lstrip("/") / name).exists()
    assert not Path(directory, name).exists()  # nor the host's own directory of that name


def test_sysv_ipc_is_per_session(hardened):
    create = (
        "import ctypes, json\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "segment = libc.shmget(0x7C15EC, 4096, {flags})\n"
        "print(json.dumps([segment >= 0, ctypes.get_errno()]))"
    )
    first, made = run_json(hardened, create.format(flags="0o1000 | 0o600"))  # IPC_CREAT
    assert made == [True, 0]
    second, found = run_json(hardened, create.format(flags="0"))
    assert found == [False, 2]  # ENOENT: another session's segment does not exist here
    # The host: each session has an IPC namespace of its own, neither the host's.
    namespaces = {os.readlink(f"/proc/{HostView(s).worker_pid()}/ns/ipc") for s in (first, second)}
    assert len(namespaces) == 2
    assert os.readlink("/proc/self/ns/ipc") not in namespaces
    host_keys = [line.split()[0] for line in Path("/proc/sysvipc/shm").read_text().splitlines()]
    assert str(0x7C15EC) not in host_keys[1:]  # nor the host's


# -- writing outside the workspace ---------------------------------------------------------


# Inside path -> the host path it would reach if the mount were writable.
READ_ONLY_TARGETS = {
    "/usr/tci-probe": Path("/usr/tci-probe"),
    "/bin/tci-probe": Path("/usr/bin/tci-probe"),
    "/usr/local/bin/tci-probe": RUNTIME_SITE / "bin" / "tci-probe",
    "/usr/local/lib/python3.11/dist-packages/tci-probe": RUNTIME_SITE / "tci-probe",
    "/opt/tci/tci_worker/tci-probe": WORKER_DIR / "tci-probe",
    "/etc/passwd": None,
}
# Places that belong to no host path: the sandbox's own root. Writing there must fail too:
# the session may write /workspace, /home/user, /tmp and /dev/shm, each with its limit.
ROOT_TARGETS = ("/tci-probe", "/etc/tci-probe", "/opt/tci-probe", "/home/tci-probe",
                "/dev/tci-probe")


def attempt_writes(server, targets: list[str]) -> tuple[str, dict[str, str]]:
    return run_json(server, (
        "import errno, json\n"
        "results = {}\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        open(path, 'a').close()\n"
        "        results[path] = 'written'\n"
        "    except OSError as exc:\n"
        "        results[path] = errno.errorcode[exc.errno]\n"
        "print(json.dumps(results))"
    ))


def test_system_mounts_refuse_writes(hardened):
    worker_main = WORKER_DIR / "__main__.py"
    before = digest(worker_main)
    targets = [*READ_ONLY_TARGETS, "/opt/tci/tci_worker/__main__.py"]
    _, results = attempt_writes(hardened, targets)
    # A new name on a read-only mount: EROFS; an existing file not the session's: EACCES first.
    existing = {"/etc/passwd", "/opt/tci/tci_worker/__main__.py"}
    assert results == {path: "EACCES" if path in existing else "EROFS" for path in targets}
    # The host: no file appeared in the host directories behind those mounts.
    for host_path in READ_ONLY_TARGETS.values():
        assert host_path is None or not host_path.exists(), host_path
    assert digest(worker_main) == before


def test_sandbox_root_refuses_writes(hardened):
    session_id, results = attempt_writes(hardened, list(ROOT_TARGETS))
    written = sorted(path for path, result in results.items() if result == "written")
    assert written == [], f"written outside the writable places: {written}"
    assert set(results.values()) <= {"EROFS", "EACCES", "EPERM"}, results
    # The host, through the worker's root: no such file in the sandbox's own root either.
    root = Path(f"/proc/{HostView(session_id).worker_pid()}/root")
    for path in ROOT_TARGETS:
        assert not (root / path.lstrip("/")).exists(), path
        assert not Path(path).exists(), path


def test_proc_sys_and_sys_are_not_writable(hardened):
    hostname = Path("/proc/sys/kernel/hostname").read_text()
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    _, results = run_json(hardened, (
        "import errno, json, os\n"
        "results = {}\n"
        "for path in ('/proc/sys/kernel/hostname', '/proc/sys/kernel/core_pattern',\n"
        "             '/proc/sys/vm/drop_caches', '/proc/sys/net/ipv4/ip_forward',\n"
        "             '/proc/sysrq-trigger', '/sys/kernel/uevent_helper'):\n"
        "    try:\n"
        "        with open(path, 'w') as handle:\n"
        "            handle.write('|/workspace/pwn\\n')\n"
        "        results[path] = 'written'\n"
        "    except OSError as exc:\n"
        "        results[path] = errno.errorcode[exc.errno]\n"
        "results['/sys listed'] = os.path.isdir('/sys') and bool(os.listdir('/sys'))\n"
        "print(json.dumps(results))"
    ))
    assert results.pop("/sys listed") is False
    assert "written" not in results.values(), results
    assert Path("/proc/sys/kernel/hostname").read_text() == hostname
    assert Path("/proc/sys/kernel/core_pattern").read_text() == core_pattern


# -- what the sandbox sees of /dev and /proc ------------------------------------------------

DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
           "urandom": (1, 9), "tty": (5, 0), "pts/ptmx": (5, 2)}
LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
         "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}


def test_dev_holds_only_harmless_devices(hardened):
    session_id, seen = run_json(hardened, (
        "import json, os, stat\n"
        "entries = {}\n"
        "for root, dirs, files in os.walk('/dev'):\n"
        "    for name in dirs + files:\n"
        "        path = os.path.join(root, name)\n"
        "        info = os.lstat(path)\n"
        "        if stat.S_ISLNK(info.st_mode):\n"
        "            entries[path[5:]] = ['link', os.readlink(path)]\n"
        "        elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):\n"
        "            kind = 'char' if stat.S_ISCHR(info.st_mode) else 'block'\n"
        "            entries[path[5:]] = [kind, os.major(info.st_rdev), os.minor(info.st_rdev)]\n"
        "        else:\n"
        "            entries[path[5:]] = ['dir' if stat.S_ISDIR(info.st_mode) else 'file']\n"
        "print(json.dumps(entries))"
    ))
    devices = {name: tuple(v[1:]) for name, v in seen.items() if v[0] in ("char", "block")}
    assert devices == DEVICES
    assert all(seen[name][0] == "char" for name in DEVICES)
    links = {name: v[1] for name, v in seen.items() if v[0] == "link"}
    # bubblewrap also adds /dev/core -> /proc/kcore, which the sandbox cannot open (below).
    assert links == {**LINKS, "core": "/proc/kcore"} or links == LINKS, links
    others = {name: v[0] for name, v in seen.items() if v[0] not in ("char", "block", "link")}
    assert others == {"pts": "dir", "shm": "dir"}, others

    data = hardened.run("open('/dev/core', 'rb').read(1)", session_id)
    errors = outputs_of(data, "error")
    assert len(errors) == 1 and ("FileNotFoundError" in errors[0]
                                 or "PermissionError" in errors[0]), errors
    # The host sees the same /dev through the worker's root, and it is not the host's.
    dev = Path(f"/proc/{HostView(session_id).worker_pid()}/root/dev")
    assert sorted(os.listdir(dev)) == sorted(name for name in seen if "/" not in name)
    assert os.stat(dev).st_dev != os.stat("/dev").st_dev


def test_proc_shows_only_the_sandbox(hardened):
    session_id, seen = run_json(hardened, LIST_PROC)
    assert seen in SANDBOX_PROCESSES
    # The host sees exactly those two in the sandbox's pid namespace, with their inner pids.
    host = HostView(session_id)
    inner = sorted(int(status_of_nspid(pid)) for pid in host.inner_processes())
    assert inner == [1, 2]


def status_of_nspid(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(line for line in status if line.startswith("NSpid:")).split()[-1]


# -- upload tricks: the server writes as root ----------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """A host directory and file the server (root) could write, if it followed a link."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "target.txt").write_text("original")
    return directory


def assert_untouched(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["target.txt"]
    assert (outside / "target.txt").read_text() == "original"


def ext4_magic(image) -> bytes:
    """The superblock's magic number (0xEF53, little-endian, at byte 1080)."""
    with open(image, "rb") as handle:
        handle.seek(1080)
        return handle.read(2)


@pytest.mark.parametrize("link, upload_name", [
    ("{outside}/target.txt", "link"),
    ("{outside}", "link/target.txt"),
    ("{outside}", "link/new.txt"),
    ("../..", "link/volume.img"),
    ("{other_workspace}", "link/planted.txt"),
], ids=["to-host-file", "to-host-dir-existing", "to-host-dir-new", "to-session-root",
        "to-other-session"])
def test_upload_through_symlink_is_refused(hardened, outside, link, upload_name):
    other = HostView(new_session(hardened))
    session_id = new_session(hardened)
    host = HostView(session_id)
    target = link.format(outside=outside, other_workspace=other.workspace)
    image = host.directory / "volume.img"
    # The session's own writes reach the image through the loop device whenever the kernel
    # flushes them, so its mtime proves nothing; its size and ext4 superblock do.
    image_before = (image.stat().st_size, ext4_magic(image))
    made = hardened.run(f"import os\nos.symlink({target!r}, 'link')\nprint('linked')", session_id)
    assert stdout_of(made) == "linked\n"

    message = refused(upload(hardened, session_id, upload_name))
    assert "symlink" in message, message
    assert_untouched(outside)
    assert os.listdir(other.workspace) == []
    assert image_before[1] == b"\x53\xef"
    assert (image.stat().st_size, ext4_magic(image)) == image_before
    assert os.readlink(host.workspace / "link") == target  # left as the session made it


def test_hardlinks_cannot_reach_host_files(hardened):
    session_id = new_session(hardened)
    host = HostView(session_id)
    _, results = run_json(hardened, (
        "import errno, json, os\n"
        "results = {}\n"
        "for source in ('/etc/passwd', '/usr/bin/python3.11', '/opt/tci/tci_worker/__main__.py',\n"
        "               '/tmp'):\n"
        "    try:\n"
        "        os.link(source, os.path.basename(source) + '.link')\n"
        "        results[source] = 'linked'\n"
        "    except OSError as exc:\n"
        "        results[source] = errno.errorcode[exc.errno]\n"
        "open('mine.txt', 'w').write('mine')\n"
        "os.link('mine.txt', 'alias.txt')\n"
        "print(json.dumps(results))"
    ), session_id)
    assert results == {"/etc/passwd": "EXDEV", "/usr/bin/python3.11": "EXDEV",
                       "/opt/tci/tci_worker/__main__.py": "EXDEV", "/tmp": "EXDEV"}

    # Uploading onto a hardlink writes the one inode both names share, on the session's
    # own volume, owned by the session's uid; nothing of the host's gets its owner changed.
    passwd = os.stat("/etc/passwd")
    response = upload(hardened, session_id, "alias.txt", content="replaced")
    assert response.status_code == 200, response.text
    alias, mine = os.stat(host.workspace / "alias.txt"), os.stat(host.workspace / "mine.txt")
    assert alias.st_ino == mine.st_ino and alias.st_dev == os.stat(host.workspace).st_dev
    assert (alias.st_uid, alias.st_nlink) == (host.uid, 2)
    assert (host.workspace / "mine.txt").read_text() == "replaced"
    assert (os.stat("/etc/passwd").st_uid, os.stat("/etc/passwd").st_mode) == (
        passwd.st_uid, passwd.st_mode)


SPECIAL_FILES = {
    "fifo": "os.mkfifo('special')",
    "socket": "import socket\nsocket.socket(socket.AF_UNIX).bind('special')",
    "directory": "os.mkdir('special')",
}


@pytest.mark.parametrize("make", SPECIAL_FILES.values(), ids=SPECIAL_FILES.keys())
def test_upload_onto_special_file_is_refused(hardened, make):
    session_id = new_session(hardened)
    host = HostView(session_id)
    made = hardened.run(f"import os\n{make}\nprint('made')", session_id)
    assert stdout_of(made) == "made\n"
    kind = stat.S_IFMT(os.lstat(host.workspace / "special").st_mode)

    # The server neither blocks opening a FIFO nor writes into any of them.
    assert "not a regular file" in refused(upload(hardened, session_id, "special"))
    if kind != stat.S_IFDIR:
        assert "special" in refused(upload(hardened, session_id, "special/inside.txt"))
    assert stat.S_IFMT(os.lstat(host.workspace / "special").st_mode) == kind
    if kind == stat.S_IFDIR:
        assert os.listdir(host.workspace / "special") == []


def test_device_nodes_cannot_be_made(hardened):
    session_id = new_session(hardened)
    host = HostView(session_id)
    data = hardened.run(
        "import errno, os, stat\n"
        "try:\n"
        "    os.mknod('disk', stat.S_IFBLK | 0o666, os.makedev(254, 0))\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno])",
        session_id,
    )
    assert stdout_of(data) == "EPERM\n"
    assert not (host.workspace / "disk").exists()


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/escape.txt", "a/../../escape.txt",
                                  "./../escape.txt", "a/b/../../../escape.txt"])
def test_upload_names_cannot_leave_the_workspace(hardened, name):
    session_id = new_session(hardened)
    host = HostView(session_id)
    before = {path: sorted(os.listdir(path)) for path in
              (host.workspace, host.workspace.parent, host.directory)}
    refused(upload(hardened, session_id, name))
    after = {path: sorted(os.listdir(path)) for path in before}
    assert after == before
    assert not Path("/tmp/escape.txt").exists()


SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
outside = sys.argv[1]
os.mkdir('d')
os.symlink(outside, 'dlink')
open('f', 'w').close()
os.symlink(outside + '/target.txt', 'flink')
open('swapping', 'w').close()
while True:
    # Atomically exchange a directory with a symlink to the host, and a file with a
    # symlink to a host file: at any instant each name is one or the other.
    libc.renameat2(AT_FDCWD, b'd', AT_FDCWD, b'dlink', RENAME_EXCHANGE)
    libc.renameat2(AT_FDCWD, b'f', AT_FDCWD, b'flink', RENAME_EXCHANGE)
"""


def test_upload_racing_a_symlink_swap_never_leaves_the_workspace(hardened, outside):
    session_id = new_session(hardened)
    host = HostView(session_id)
    started = hardened.run(
        "import os, subprocess, sys, time\n"
        f"swapper = subprocess.Popen([sys.executable, '-c', {SWAPPER!r}, {str(outside)!r}])\n"
        "while not os.path.exists('swapping'):\n"
        "    time.sleep(0.01)\n"
        "print('swapping')",
        session_id,
    )
    assert stdout_of(started) == "swapping\n"
    statuses: dict[str, list[int | str]] = {"d/inside.txt": [], "f": [], "dlink/inside.txt": []}
    for attempt in range(300):
        name = list(statuses)[attempt % len(statuses)]
        try:
            response = upload(hardened, session_id, name, content=f"upload {attempt}")
            statuses[name].append(response.status_code)
        except httpx.HTTPError as exc:  # the server dropped the request
            statuses[name].append(repr(exc))
        assert_untouched(outside)
    stopped = hardened.run("swapper.kill()\nprint(swapper.wait())", session_id)
    assert stdout_of(stopped) == "-9\n"

    assert_untouched(outside)
    seen = {name: {str(code): codes.count(code) for code in set(codes)}
            for name, codes in statuses.items()}
    codes = {code for codes in statuses.values() for code in codes}
    # Every upload answered 200 (written inside) or 400 (refused); and both happened: the race
    # was real, and the writes that won it stayed inside.
    assert codes == {200, 400}, json.dumps(seen)
    written = [path for path in host.workspace.rglob("*")
               if path.is_file() and not path.is_symlink()
               and path.read_text().startswith("upload ")]
    assert written, "no upload landed in the workspace"
    for path in written:
        assert path.stat().st_dev == os.stat(host.workspace).st_dev
        assert path.stat().st_uid == host.uid
