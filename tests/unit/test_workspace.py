"""File names and uploads: validation is all-or-nothing, and symlinks are never followed."""

import base64
import os
import resource

import pytest

from tci.config import Settings
from tci.errors import BadRequest, PayloadTooLarge
from tci.request_files import check_file, decode_files
from tci.schemas import FileInput
from tci.workspace import list_files, split_path, write_files


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


def test_a_raw_upload_keeps_its_bytes_and_meets_a_requests_limits():
    """PUT .../files/<name> sends bytes as they are: not text, not base64, checked alike."""
    raw = b"\xff\xfe\x00not utf-8"
    checked = check_file("dir/blob.bin", raw, Settings())
    assert (checked.parts, checked.content) == (("dir", "blob.bin"), raw)
    with pytest.raises(BadRequest, match=r"contains '\.\.'"):
        check_file("../escape", b"x", Settings())
    with pytest.raises(PayloadTooLarge, match="TCI_MAX_FILE_BYTES"):
        check_file("a", b"12345", Settings(max_file_bytes=4, max_files_bytes=6))
    # A request's total limit holds for its one file too, even below the per-file limit.
    with pytest.raises(PayloadTooLarge, match="TCI_MAX_FILES_BYTES"):
        check_file("a", b"12345", Settings(max_file_bytes=8, max_files_bytes=4))
    with pytest.raises(PayloadTooLarge, match="TCI_MAX_FILES_PER_REQUEST"):
        check_file("a", b"x", Settings(max_files_per_request=0))


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


# -- listing -------------------------------------------------------------------------------


@pytest.fixture
def few_fds():
    """Let this process open only a few more files than it has open now, as a server near
    its RLIMIT_NOFILE would: a walk that holds one fd per directory fails under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 40, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_listing_many_directories_holds_few_fds(tmp_path, few_fds):
    for index in range(500):
        (tmp_path / f"d{index:03}").mkdir()
        (tmp_path / f"d{index:03}" / "f").write_text("x")
    listed = list_files(str(tmp_path), 10_000)
    assert [f.path for f in listed] == [f"d{index:03}/f" for index in range(500)]
    assert not listed.truncated


def test_listing_deep_trees_holds_few_fds(tmp_path, few_fds):
    """A chain with a side directory at every level: the walk comes back up through levels
    whose fds it closed, reopening them by name."""
    level = tmp_path
    for _ in range(300):
        (level / "s").mkdir()
        (level / "s" / "f").write_text("x")
        level = level / "d"
        level.mkdir()
    (level / "bottom").write_text("x")
    listed = list_files(str(tmp_path), 10_000, max_path=4096)
    assert len(listed) == 301 and not listed.truncated
    assert listed[0].path == "d/" * 300 + "bottom"


def test_listing_never_follows_symlinks(tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret").write_text("x")
    (outside / "sub" / "secret").write_text("x")
    work = tmp_path / "work"
    work.mkdir()
    (work / "real.txt").write_text("x")
    os.symlink(outside, work / "dirlink")
    os.symlink(outside / "secret", work / "filelink")
    assert [f.path for f in list_files(str(work), 100)] == ["real.txt"]


def test_listing_escapes_names_that_are_not_utf8(tmp_path):
    (tmp_path / os.fsdecode(b"\xff\xfe.txt")).write_text("x")
    (tmp_path / os.fsdecode(b"dir\xff")).mkdir()
    (tmp_path / os.fsdecode(b"dir\xff") / "in.txt").write_text("x")
    listed = list_files(str(tmp_path), 100)
    assert [f.path for f in listed] == ["\\xff\\xfe.txt", "dir\\xff/in.txt"]
    assert all(f.path.encode() for f in listed)  # JSON can carry every one


def test_listing_stops_at_the_files_listed_limit(tmp_path):
    for index in range(5):
        (tmp_path / f"f{index}").write_text("x")
    assert not list_files(str(tmp_path), 5).truncated
    listed = list_files(str(tmp_path), 3)
    assert len(listed) == 3 and listed.truncated


def test_listing_stops_at_the_entries_scanned_limit(tmp_path):
    """Empty directories list nothing but cost work: the scan limit counts them too."""
    for index in range(1000):
        (tmp_path / f"d{index:04}").mkdir()
    (tmp_path / "d0999" / "last.txt").write_text("x")
    # 1000 entries read, 1000 directories opened, 1 entry read in the last one.
    assert [f.path for f in list_files(str(tmp_path), 100, max_scanned=2001)] == [
        "d0999/last.txt"]
    listed = list_files(str(tmp_path), 100, max_scanned=500)
    assert listed == [] and listed.truncated


def test_listing_skips_names_longer_than_the_name_limit(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "long-name.txt").write_text("x")
    (tmp_path / "short").write_text("x")
    listed = list_files(str(tmp_path), 100, max_path=10)
    assert [f.path for f in listed] == ["short"] and listed.truncated
