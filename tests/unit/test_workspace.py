"""File names and uploads: validation is all-or-nothing, and symlinks are never followed."""

import base64
import os

import pytest

from tci.config import Settings
from tci.errors import BadRequest, PayloadTooLarge
from tci.schemas import FileInput
from tci.workspace import decode_files, split_path, write_files


@pytest.mark.parametrize("name", ["", " ", "/etc/passwd", "../x", "a/../../x", "a\x00b",
                                  "a\\b", "dir/", ".", "x" * 256])
def test_bad_names_are_refused(name):
    with pytest.raises(BadRequest):
        split_path(name, 1024)


def test_good_names_split_into_parts():
    assert split_path("a/b/c.txt", 1024) == ("a", "b", "c.txt")
    assert split_path("./a//b", 1024) == ("a", "b")


def test_total_name_length_limit():
    with pytest.raises(BadRequest, match="TCI_MAX_FILENAME_LENGTH"):
        split_path("a/" * 20 + "b", 10)


def test_decode_checks_base64_and_sizes():
    settings = Settings(max_file_bytes=4, max_files_bytes=6)
    ok = decode_files([FileInput(name="a", encoding="base64",
                                 content=base64.b64encode(b"\x00\x01").decode())], settings)
    assert ok[0].content == b"\x00\x01"
    with pytest.raises(BadRequest, match="base64"):
        decode_files([FileInput(name="a", encoding="base64", content="@@@")], settings)
    with pytest.raises(PayloadTooLarge, match="TCI_MAX_FILE_BYTES"):
        decode_files([FileInput(name="a", content="12345")], settings)
    with pytest.raises(PayloadTooLarge, match="TCI_MAX_FILES_BYTES"):
        decode_files([FileInput(name="a", content="1234"), FileInput(name="b", content="123")],
                     settings)


def test_file_and_directory_of_the_same_name_conflict():
    with pytest.raises(BadRequest, match="both a file and a directory"):
        decode_files([FileInput(name="a", content=""), FileInput(name="a/b", content="")],
                     Settings())


def test_symlinks_are_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(outside, work / "link")
    os.symlink(outside / "target", work / "f")
    for name in ("link/x", "f"):
        files = decode_files([FileInput(name=name, content="x")], Settings())
        with pytest.raises(BadRequest, match="symlink"):
            write_files(str(work), files, os.getuid())
    assert list(outside.iterdir()) == []


def test_nothing_is_written_when_one_file_is_refused(tmp_path):
    os.symlink("/tmp", tmp_path / "link")
    files = decode_files([FileInput(name="good.txt", content="x"),
                          FileInput(name="link/bad", content="y")], Settings())
    with pytest.raises(BadRequest):
        write_files(str(tmp_path), files, os.getuid())
    assert not (tmp_path / "good.txt").exists()


def test_writes_nested_files(tmp_path):
    files = decode_files([FileInput(name="a/b/c.txt", content="héllo")], Settings())
    write_files(str(tmp_path), files, os.getuid())
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "héllo"
