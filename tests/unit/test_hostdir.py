"""The sandbox directory is made, or accepted, only where no other user controls the path."""

import os
import stat

import pytest

from tci.errors import SandboxUnavailable
from tci.sandbox.hostdir import make_private_dir


def mode(path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_missing_parents_are_made_private_under_a_sticky_shared_dir(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    old_umask = os.umask(0o000)  # the modes must not depend on the server's umask
    try:
        make_private_dir(shared / "tci" / "box")
    finally:
        os.umask(old_umask)
    assert mode(shared / "tci") == mode(shared / "tci" / "box") == 0o711
    make_private_dir(shared / "tci" / "box")  # an existing one of ours is fine


@pytest.mark.parametrize(("prepare", "problem"), [
    (lambda shared: (shared / "tci").write_text("x"), "tci is not a directory"),
    (lambda shared: (shared / "tci").symlink_to("/tmp"), "tci is a symlink (to /tmp)"),
    (lambda shared: (shared / "tci").mkdir(mode=0o777) or (shared / "tci").chmod(0o777),
     "tci is writable by group or others without the sticky bit (mode 777)"),
])
def test_paths_others_control_are_refused(tmp_path, prepare, problem):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    prepare(shared)
    with pytest.raises(SandboxUnavailable, match="refusing to use the sandbox directory") as exc:
        make_private_dir(shared / "tci" / "box")
    assert problem in exc.value.message
    assert not os.path.lexists("/tmp/box")


def test_a_world_writable_parent_without_sticky_bit_is_refused(tmp_path):
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(SandboxUnavailable, match="without the sticky bit"):
        make_private_dir(tmp_path / "open" / "box")
    assert not (tmp_path / "open" / "box").exists()
