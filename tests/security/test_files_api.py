"""The files API against a hostile workspace: trees built to exhaust the server's file
descriptors or its time (20,000 empty directories, deep nesting) and names that are not
UTF-8. The listing must answer, hold few fds in the server (looked at from the host, in
/proc/<server>/fd, while it runs) and say when it stopped early."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import Server
from tests.security.conftest import MiB, new_session, start_hardened

LISTED = 100  # TCI_MAX_FILES_LISTED of this module's server
FD_MARGIN = 64  # what one listing may add to the server's open fds, at most


@pytest.fixture(scope="module")
def hardened(tmp_path_factory) -> Iterator[Server]:
    """Room on the volume for 20,000 directories (each takes an inode and a 4 KiB block)."""
    instance = start_hardened(tmp_path_factory, workspace_max_files=25_000,
                              workspace_max_bytes=256 * MiB, max_files_listed=LISTED)
    yield instance
    instance.stop()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def peak_fds(server: Server) -> Iterator[list[int]]:
    """Samples the server's open fds until the block ends: yields [baseline, peak]."""
    pid = server.process.pid
    counts = [open_fds(pid)] * 2
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            counts[1] = max(counts[1], open_fds(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(30)


def listing(server: Server, session_id: str) -> dict:
    with server.client() as client:
        response = client.get(f"/v1/tci/sessions/{session_id}/files")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_twenty_thousand_empty_directories_hold_no_fds(hardened):
    session = new_session(hardened, (
        "import os\n"
        "for i in range(20_000):\n"
        "    os.mkdir(f'd{i:05}')\n"
        "open('d19999/last.txt', 'w').write('x')\n"
    ))
    with peak_fds(hardened) as counts:
        answers = [listing(hardened, session) for _ in range(3)]
    for data in answers:
        assert [f["path"] for f in data["files"]] == ["d19999/last.txt"]
        assert data["truncated"] is False
    baseline, peak = counts
    assert peak - baseline < FD_MARGIN, f"the server went from {baseline} to {peak} open fds"
    assert hardened.run("1", session)["outputs"]  # the session goes on


def test_deep_nesting_holds_few_fds_and_stops_at_the_name_limit(hardened):
    """600 levels with a side directory at each (a file in every tenth): files deeper than
    TCI_MAX_FILENAME_LENGTH (1024 bytes) could not be downloaded, so the listing stops there
    and says so; the others are listed with a bounded number of fds, whatever the depth."""
    session = new_session(hardened, (
        "import os\n"
        "path = '.'\n"
        "for depth in range(600):\n"
        "    os.mkdir(f'{path}/s')\n"
        "    if depth % 10 == 0:\n"
        "        open(f'{path}/s/f', 'w').close()\n"
        "    path += '/d'\n"
        "    os.mkdir(path)\n"
    ))
    with peak_fds(hardened) as counts:
        data = listing(hardened, session)
    expected = sorted("d/" * depth + "s/f" for depth in range(0, 600, 10)
                      if 2 * depth + 3 <= 1024)
    assert [f["path"] for f in data["files"]] == expected and data["truncated"] is True
    baseline, peak = counts
    assert peak - baseline < FD_MARGIN, f"the server went from {baseline} to {peak} open fds"


def test_listing_stops_at_the_files_listed_limit_and_says_so(hardened):
    session = new_session(hardened, (
        f"for i in range({LISTED + 20}):\n"
        "    open(f'f{i:03}', 'w').close()\n"
    ))
    data = listing(hardened, session)
    assert len(data["files"]) == LISTED and data["truncated"] is True
    hardened.run(f"import os\nfor i in range({LISTED}, {LISTED + 20}): os.remove(f'f{{i:03}}')",
                 session)
    data = listing(hardened, session)
    assert len(data["files"]) == LISTED and data["truncated"] is False


def test_names_that_are_not_utf8_are_listed_escaped(hardened):
    session = new_session(hardened, (
        "open(b'\\xff\\xfe.txt', 'wb').write(b'x')\n"
        "import os\n"
        "os.mkdir(b'dir\\xff')\n"
        "open(b'dir\\xff/in.txt', 'wb').write(b'yy')\n"
    ))
    data = listing(hardened, session)
    assert {f["path"]: f["size"] for f in data["files"]} == {
        "\\xff\\xfe.txt": 1, "dir\\xff/in.txt": 2}
    assert hardened.run("1", session)["outputs"]  # the session goes on
