"""`files` in an execute request: written into /workspace before the code runs, exact bytes,
sub-directories created, owned by the session's own host uid; a bad file (unsafe name,
symlink or FIFO in the way, bad encoding, too large) refuses the whole request with a
readable 4xx and writes nothing at all."""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_server, outputs_of, stdout_of

LIST_WORKSPACE = """
import os
found = []
for top, dirs, names in os.walk('.'):
    for entry in dirs + names:
        path = os.path.join(top, entry)[2:]
        found.append(path + ('@' if os.path.islink(path) else ''))
print(sorted(found))
"""


def workspace_of(server, session_id: str) -> list[str]:
    """Every path in the session's workspace, as its own code sees it (symlinks end in '@')."""
    data = server.run(LIST_WORKSPACE, session_id)
    assert outputs_of(data, "error") == []
    return eval(stdout_of(data))


def assert_refused(response: httpx.Response, status: int, *fragments: str) -> list[str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["data"] is None
    errors = body["errors"]
    assert isinstance(errors, list) and errors
    assert all(isinstance(e, str) and e for e in errors)
    for fragment in fragments:
        assert any(fragment in e for e in errors), (fragment, errors)
    return errors


def text(name: str, content: str) -> dict:
    return {"name": name, "encoding": "string", "content": content}


def end_session(server, session_id: str) -> None:
    """Free the worker once a test is done with it (there is no end call in the API)."""
    server.execute("import os; os._exit(0)", session_id)


def fresh_session(server) -> Iterator[str]:
    """A fresh session whose workspace is empty, ended once the test is done with it."""
    data = server.run("pass")
    assert workspace_of(server, data["session_id"]) == []
    yield data["session_id"]
    end_session(server, data["session_id"])


@pytest.fixture
def session_id(server):
    yield from fresh_session(server)


# -- what is written --------------------------------------------------------------------


def test_files_exist_before_code_runs(server):
    data = server.run(
        "print(open('data.csv').read(), end='')",
        files=[text("data.csv", "a,b\n1,2\n")],
    )
    assert data["outputs"] == [{"type": "stdout", "data": "a,b\n1,2\n"}]


def test_encoding_defaults_to_string(server):
    data = server.run("print(open('plain.txt').read())",
                      files=[{"name": "plain.txt", "content": "no encoding given"}])
    assert stdout_of(data) == "no encoding given\n"


def test_subdirectories_are_created(server):
    data = server.run(
        "import os\n"
        "print(os.path.isdir('a'), os.path.isdir('a/b'), open('a/b/c.txt').read())\n"
        "print(open('a/top.txt').read())",
        files=[text("a/b/c.txt", "deep"), text("a/top.txt", "shallow"),
               text("./x/./y.txt", "dots")],
    )
    assert stdout_of(data) == "True True deep\nshallow\n"
    assert workspace_of(server, data["session_id"]) == [
        "a", "a/b", "a/b/c.txt", "a/top.txt", "x", "x/y.txt"]


def test_base64_round_trips_binary_bytes(server):
    payload = bytes(range(256)) * 64 + b"\x00\xff\r\n\x1a"
    data = server.run(
        "import hashlib\n"
        "raw = open('blob.bin', 'rb').read()\n"
        "print(len(raw), hashlib.sha256(raw).hexdigest())",
        files=[{"name": "blob.bin", "encoding": "base64",
                "content": base64.b64encode(payload).decode()}],
    )
    assert stdout_of(data) == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n"


def test_empty_file(server):
    data = server.run("import os; print(os.path.getsize('empty.txt'))",
                      files=[text("empty.txt", ""),
                             {"name": "empty.bin", "encoding": "base64", "content": ""}])
    assert stdout_of(data) == "0\n"


def test_string_content_is_utf8(server):
    content = "héllo wörld ✓ 日本語 🐍\nzweite Zeile\r\n"
    data = server.run(
        "raw = open('uni.txt', 'rb').read()\n"
        "print(raw.hex())\n"
        "print(raw.decode('utf-8') == " + repr(content) + ")",
        files=[text("uni.txt", content)],
    )
    assert stdout_of(data) == f"{content.encode('utf-8').hex()}\nTrue\n"


def test_unicode_file_name(server):
    data = server.run("import os; print(os.listdir('données'))",
                      files=[text("données/résumé ✓.txt", "x")])
    assert stdout_of(data) == "['résumé ✓.txt']\n"


def test_overwrite_in_same_session(server):
    first = server.run("print(open('notes.txt').read())",
                       files=[text("notes.txt", "a much longer first version")])
    sid = first["session_id"]
    assert stdout_of(first) == "a much longer first version\n"
    second = server.run("print(repr(open('notes.txt').read()))", sid,
                        files=[text("notes.txt", "short")])
    assert stdout_of(second) == "'short'\n"
    # A file the code itself wrote is replaced too.
    server.run("open('own.txt', 'w').write('written by code, long')", sid)
    third = server.run("print(repr(open('own.txt').read()))", sid,
                       files=[text("own.txt", "upload")])
    assert stdout_of(third) == "'upload'\n"


def test_files_are_owned_by_session_uid(server):
    data = server.run(
        "import os\n"
        "with open('own/dir/f.txt', 'a') as f: f.write(' appended')\n"
        "os.mkdir('own/dir/made-by-code')\n"
        "print(open('own/dir/f.txt').read())",
        files=[text("own/dir/f.txt", "uploaded")],
    )
    sid = data["session_id"]
    # The session's code can modify what was uploaded, so it owns it.
    assert outputs_of(data, "error") == []
    assert stdout_of(data) == "uploaded appended\n"
    found = glob.glob(f"/var/tmp/tci/*/{sid}/vol/work")
    assert len(found) == 1, found
    work = Path(found[0])
    uid = work.stat().st_uid
    assert uid >= 200_000
    for relative in ("own", "own/dir", "own/dir/f.txt", "own/dir/made-by-code"):
        info = (work / relative).stat()
        assert (relative, info.st_uid, info.st_gid) == (relative, uid, uid)


# -- refused names: 400 and nothing written ---------------------------------------------


BAD_NAMES = [
    pytest.param("/abs.txt", "absolute", id="absolute"),
    pytest.param("/etc/cron.d/evil", "absolute", id="absolute-etc"),
    pytest.param("../escape.txt", "'..'", id="dotdot"),
    pytest.param("a/../../escape.txt", "'..'", id="dotdot-inner"),
    pytest.param("a/..", "'..'", id="dotdot-last"),
    pytest.param("nul\x00.txt", "NUL", id="nul"),
    pytest.param("", "empty", id="empty"),
    pytest.param("   ", "empty", id="blank"),
    pytest.param("/", "absolute", id="root"),
    pytest.param(".", "names no file", id="dot"),
    pytest.param("dir/", "directory", id="trailing-slash"),
    pytest.param("a\\b.txt", "backslash", id="backslash"),
    pytest.param(("d" * 200 + "/") * 5 + "f" * 20, "TCI_MAX_FILENAME_LENGTH", id="long-name"),
    pytest.param("ok/" + "c" * 256, "255", id="long-component"),
    pytest.param("é" * 128, "255", id="long-component-utf8"),
]


@pytest.mark.parametrize(("name", "fragment"), BAD_NAMES)
def test_bad_name_refused_nothing_written(server, session_id, name, fragment):
    response = server.execute(
        "print('code ran')", session_id,
        files=[text("good.txt", "fine"), text("sub/good.txt", "fine"), text(name, "bad")],
    )
    assert_refused(response, 400, fragment)
    assert workspace_of(server, session_id) == []


def test_bad_name_in_new_session_refused(server):
    with server.client() as client:
        before = client.get("/v1/tci/sessions").json()["data"]["sessions"]
        response = client.post("/v1/tci/execute", json={
            "language": "python", "code": "print('code ran')",
            "files": [text("good.txt", "x"), text("../bad", "x")]})
        assert_refused(response, 400, "'..'")
        after = client.get("/v1/tci/sessions").json()["data"]["sessions"]
    assert {s["id"] for s in after} == {s["id"] for s in before}


def test_name_length_limits_are_inclusive(server, session_id):
    longest = ("d" * 200 + "/") * 5 + "f" * 19
    assert len(longest) == 1024
    widest = "w" * 255
    data = server.run(f"import os; print(len(os.listdir('.')), os.path.isfile({longest!r}))",
                      session_id, files=[text(longest, "1"), text(widest, "2")])
    assert stdout_of(data) == "2 True\n"


def test_duplicate_name_refused(server, session_id):
    response = server.execute("pass", session_id,
                              files=[text("twice.txt", "1"), text("./twice.txt", "2")])
    assert_refused(response, 400, "twice")
    assert workspace_of(server, session_id) == []


def test_name_both_file_and_directory_refused(server, session_id):
    response = server.execute("pass", session_id,
                              files=[text("both", "1"), text("both/inner.txt", "2")])
    assert_refused(response, 400, "both a file and a directory")
    assert workspace_of(server, session_id) == []


# -- hostile workspace contents ---------------------------------------------------------


def test_symlinked_directory_not_followed(server, session_id):
    server.run("import os; os.symlink('/etc', 'link')", session_id)
    marker = f"tci-escape-{uuid.uuid4().hex}"
    response = server.execute("print('code ran')", session_id,
                              files=[text("good.txt", "x"), text(f"link/{marker}", "pwned")])
    assert_refused(response, 400, "symlink")
    assert not os.path.exists(f"/etc/{marker}")
    assert workspace_of(server, session_id) == ["link@"]


def test_symlink_deeper_in_path_not_followed(server, session_id, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    server.run(f"import os; os.makedirs('a/b'); os.symlink({str(outside)!r}, 'a/b/c')",
               session_id)
    response = server.execute("pass", session_id, files=[text("a/b/c/d/e.txt", "pwned")])
    assert_refused(response, 400, "symlink")
    assert list(outside.iterdir()) == []
    assert workspace_of(server, session_id) == ["a", "a/b", "a/b/c@"]


def test_symlink_as_file_not_written_through(server, session_id, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    missing = tmp_path / "target"
    server.run(f"import os; os.symlink({str(victim)!r}, 'f'); os.symlink({str(missing)!r}, 'g')",
               session_id)
    for name in ("f", "g"):
        response = server.execute("pass", session_id,
                                  files=[text("good.txt", "x"), text(name, "pwned")])
        assert_refused(response, 400, "symlink")
    assert victim.read_text() == "original"
    assert not missing.exists()
    data = server.run("import os; print(os.readlink('f'), os.readlink('g'))", session_id)
    assert stdout_of(data) == f"{victim} {missing}\n"
    assert workspace_of(server, session_id) == ["f@", "g@"]


def test_fifo_as_file_refused(server, session_id):
    server.run("import os; os.mkfifo('pipe')", session_id)
    response = server.execute("pass", session_id,
                              files=[text("good.txt", "x"), text("pipe", "data")])
    assert_refused(response, 400, "not a regular file")
    assert workspace_of(server, session_id) == ["pipe"]


def test_directory_as_file_refused(server, session_id):
    server.run("import os; os.mkdir('folder')", session_id)
    response = server.execute("pass", session_id, files=[text("folder", "data")])
    assert_refused(response, 400, "not a regular file")
    assert workspace_of(server, session_id) == ["folder"]


def test_file_as_directory_refused(server, session_id):
    server.run("open('plain', 'w').write('keep')", session_id)
    response = server.execute("pass", session_id,
                              files=[text("good.txt", "x"), text("plain/inner.txt", "data")])
    assert_refused(response, 400, "not a directory")
    assert workspace_of(server, session_id) == ["plain"]
    assert stdout_of(server.run("print(open('plain').read())", session_id)) == "keep\n"


# -- content encodings ------------------------------------------------------------------


@pytest.mark.parametrize("content", ["not base64!!", "abc", "YW=Jj", "YW Jj", "=YWJ"])
def test_invalid_base64_refused(server, session_id, content):
    response = server.execute("pass", session_id, files=[
        text("good.txt", "x"), {"name": "b.bin", "encoding": "base64", "content": content}])
    assert_refused(response, 400, "'b.bin' is not valid base64")
    assert workspace_of(server, session_id) == []


def test_unknown_encoding_refused(server, session_id):
    response = server.execute("pass", session_id, files=[
        text("good.txt", "x"), {"name": "h.txt", "encoding": "hex", "content": "00"}])
    errors = assert_refused(response, 422, "encoding")
    assert any("'string'" in e and "'base64'" in e for e in errors), errors
    assert workspace_of(server, session_id) == []


@pytest.mark.parametrize("item", [
    {"name": "x.txt"},
    {"content": "x"},
    {"name": 5, "content": "x"},
    {"name": "x.txt", "content": 5},
    {"name": "x.txt", "content": "x", "mode": "0777"},
    "x.txt",
])
def test_malformed_file_entry_refused(server, session_id, item):
    response = server.execute("pass", session_id, files=[text("good.txt", "x"), item])
    assert_refused(response, 422, "files.1")
    assert workspace_of(server, session_id) == []


# -- size limits ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    instance = make_server(
        tmp_path_factory.mktemp("tci-small"),
        max_file_bytes=1000, max_files_bytes=1500, max_files_per_request=3,
        max_request_bytes=20_000,
    )
    yield instance
    instance.stop()


@pytest.fixture
def small_session(small):
    yield from fresh_session(small)


def test_file_at_size_limit_accepted(small, small_session):
    data = small.run("import os; print(os.path.getsize('a'), os.path.getsize('b'))",
                     small_session,
                     files=[text("a", "x" * 1000),
                            {"name": "b", "encoding": "base64",
                             "content": base64.b64encode(b"\0" * 500).decode()}])
    assert stdout_of(data) == "1000 500\n"


def test_file_too_large(small, small_session):
    response = small.execute("pass", small_session,
                             files=[text("ok", "x"), text("big", "x" * 1001)])
    assert_refused(response, 413, "TCI_MAX_FILE_BYTES", "1000")
    assert workspace_of(small, small_session) == []


def test_file_too_large_counts_decoded_bytes(small, small_session):
    # 700 characters of string content, but 1400 bytes once UTF-8 encoded.
    response = small.execute("pass", small_session, files=[text("wide", "é" * 700)])
    assert_refused(response, 413, "TCI_MAX_FILE_BYTES")
    assert workspace_of(small, small_session) == []


def test_files_too_large_in_total(small, small_session):
    response = small.execute("pass", small_session,
                             files=[text("one", "x" * 800), text("two", "y" * 800)])
    assert_refused(response, 413, "TCI_MAX_FILES_BYTES", "1500")
    assert workspace_of(small, small_session) == []


def test_too_many_files(small, small_session):
    response = small.execute("pass", small_session,
                             files=[text(f"f{i}", "x") for i in range(4)])
    assert_refused(response, 413, "TCI_MAX_FILES_PER_REQUEST", "3")
    assert workspace_of(small, small_session) == []


def test_request_too_large(small, small_session):
    response = small.execute("pass", small_session, files=[text("pad", "x")],
                             padding="p" * 25_000)
    assert_refused(response, 413, "TCI_MAX_REQUEST_BYTES", "20000")
    assert workspace_of(small, small_session) == []


def test_chunked_request_too_large(small, small_session):
    body = json.dumps({"language": "python", "code": "pass", "session_id": small_session,
                       "files": [text("pad", "x")], "padding": "p" * 25_000}).encode()

    def chunks():
        for start in range(0, len(body), 4096):
            yield body[start:start + 4096]

    with small.client() as client:
        response = client.post("/v1/tci/execute", content=chunks(),
                               headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_refused(response, 413, "TCI_MAX_REQUEST_BYTES")
    assert workspace_of(small, small_session) == []


def test_chunked_request_within_limit_accepted(small, small_session):
    body = json.dumps({"language": "python", "code": "print(open('c.txt').read())",
                       "session_id": small_session, "files": [text("c.txt", "chunked")]})

    def chunks():
        for start in range(0, len(body), 16):
            yield body[start:start + 16].encode()

    with small.client() as client:
        response = client.post("/v1/tci/execute", content=chunks(),
                               headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert stdout_of(response.json()["data"]) == "chunked\n"
