"""The host around the sandboxes: a sandbox directory another local user could pre-create or
redirect, a uid range the host already gives out, uids reused after a failed cleanup, and
symlinks a session plants in its volume, which no host process may follow."""

from __future__ import annotations

import errno
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TCI, free_port, wait_for
from tests.security.conftest import run_json, session_root, workspace_of

NOBODY = pwd.getpwnam("nobody").pw_uid


def refused_start(tmp_path: Path, **settings: str) -> str:
    """Run `tci serve` with these settings; it must refuse to start. Returns its message."""
    data_dir = tmp_path / "data"
    env = {**os.environ, "TCI_DATA_DIR": str(data_dir), "TCI_POOL_SIZE": "0",
           **{f"TCI_{name.upper()}": value for name, value in settings.items()}}
    process = subprocess.Popen([TCI, "serve", "--port", str(free_port())], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("tci serve started instead of refusing to")
    assert process.returncode == 1, (out, err)
    return err


def snapshot(directory: Path) -> list[tuple[str, int, int]]:
    return sorted((str(path.relative_to(directory)), path.lstat().st_mode, path.lstat().st_uid)
                  for path in directory.rglob("*"))


# -- the sandbox directory -----------------------------------------------------------------


@pytest.mark.parametrize("attack", ["symlink", "owned by nobody", "group writable"])
def test_sandbox_dir_another_user_controls_is_refused(tmp_path, attack):
    """Under a sticky world-writable directory like /var/tmp, a local user could have made
    the sandbox directory (or a parent) first; the server must not use it, nor touch where
    it leads."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "ses_precious").mkdir(parents=True)
    (elsewhere / "ses_precious" / "data").write_text("keep me")
    sandbox_dir = shared / "tci" / "box"
    if attack == "symlink":
        (shared / "tci").symlink_to(elsewhere)
        culprit, problem = shared / "tci", f"is a symlink (to {elsewhere})"
    elif attack == "owned by nobody":
        (shared / "tci").mkdir()
        os.chown(shared / "tci", NOBODY, NOBODY)
        culprit, problem = shared / "tci", f"is owned by uid {NOBODY}, not by root"
    else:
        sandbox_dir.mkdir(parents=True)
        sandbox_dir.chmod(0o777)
        (sandbox_dir / "ses_precious").mkdir()
        elsewhere = sandbox_dir
        culprit, problem = sandbox_dir, "is writable by group or others (mode 777)"
    before = snapshot(elsewhere)
    message = refused_start(tmp_path, sandbox_dir=str(sandbox_dir))
    assert f"refusing to use the sandbox directory: {culprit} {problem}" in message
    assert snapshot(elsewhere) == before  # nothing made, chmodded or deleted there


# -- uids ----------------------------------------------------------------------------------


def test_uid_range_over_an_existing_account_is_refused(tmp_path):
    message = refused_start(tmp_path, sandbox_uid_base=str(NOBODY - 10),
                            sandbox_uid_count="100")
    assert f"user 'nobody' has id {NOBODY}" in message
    assert "TCI_SANDBOX_UID_BASE" in message


def host_uid(server, session_id: str) -> int:
    return workspace_of(session_id).stat().st_uid


def new_session_id(server) -> str:
    with server.client() as client:
        response = client.post("/v1/tci/sessions")
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


def end(server, session_id: str) -> None:
    with server.client() as client:
        assert client.delete(f"/v1/tci/sessions/{session_id}").status_code == 200


def test_uids_are_reused_oldest_first(server_factory):
    server = server_factory(sandbox_uid_count="3")
    uids = []
    for _ in range(4):
        session = new_session_id(server)
        uids.append(host_uid(server, session))
        end(server, session)
    assert len(set(uids[:3])) == 3 and uids[3] == uids[0], uids


def test_uid_whose_cleanup_failed_is_never_reused(server_factory, tmp_path):
    """A mount the server did not make inside a session's directory: the directory cannot be
    removed when the session ends, so its uid might still own something there."""
    server = server_factory(sandbox_uid_count="2")
    session = new_session_id(server)
    stuck_uid = host_uid(server, session)
    pin = session_root(session) / "pin"
    pin.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tci-test-pin", str(pin)],
                   check=True)
    try:
        end(server, session)
        wait_for(lambda: "quarantined" in server.log(), "the quarantine to be logged")
        assert f"sandbox uid {stuck_uid} quarantined" in server.log()
        uids = []
        for _ in range(3):
            other = new_session_id(server)
            uids.append(host_uid(server, other))
            end(server, other)
        assert stuck_uid not in uids, uids
    finally:
        subprocess.run(["umount", str(pin)], check=True)
        pin.rmdir()
        pin.parent.rmdir()


# -- symlinks in session volumes -----------------------------------------------------------


def test_host_does_not_follow_symlinks_in_session_volumes(hardened):
    """The session follows its own symlinks; through the host's mount of the volume, no
    process (the server, a backup, an administrator's `cat`) follows them anywhere."""
    session, inside = run_json(hardened, (
        "import json, os\n"
        "open('real.txt', 'w').write('mine')\n"
        "os.symlink('/etc/hostname', 'host-file')\n"
        "os.symlink('real.txt', 'relative')\n"
        "print(json.dumps(open('relative').read()))\n"
    ))
    assert inside == "mine"
    workspace = workspace_of(session)
    for name in ("host-file", "relative"):
        with pytest.raises(OSError) as refused:
            (workspace / name).read_text()
        assert refused.value.errno == errno.ELOOP
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    options = [line.split()[3] for line in mounts if line.split()[1] == str(workspace.parent)]
    assert len(options) == 1 and "nosymfollow" in options[0].split(","), options
