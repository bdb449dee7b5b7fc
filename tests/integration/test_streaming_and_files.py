"""Streaming execute (Server-Sent Events), ending a session, and the files endpoints."""

import threading

from tests.conftest import assert_streams_while_running, read_events, stdout_of


def test_stream_sends_output_while_the_cell_runs_then_the_whole_response(server):
    session_id = server.run("import os, time")["session_id"]
    assert_streams_while_running(server, server, session_id)


def test_stream_result_event_holds_the_tci_response(server):
    body = {"language": "python", "code": "print('a')\n1 + 1", "stream": True}
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as response:
        events = read_events(response)
    assert [name for name, _ in events][-1] == "result"
    result = events[-1][1]
    assert result["errors"] is None
    assert result["data"]["outputs"] == [
        {"type": "stdout", "data": "a\n"},
        {"type": "execute_result", "data": {"text/plain": "2"}},
    ]
    streamed = [payload for name, payload in events if name == "output"]
    assert "".join(p["data"] for p in streamed if p["type"] == "stdout") == "a\n"


def test_stream_to_unknown_session_is_a_plain_404(server):
    response = server.execute("1", session_id="ses_unknown", stream=True)
    assert response.status_code == 404
    assert response.json()["errors"] == ["session ses_unknown not found"]


def test_disconnecting_a_stream_interrupts_the_cell(server):
    session_id = server.run("state = 'idle'")["session_id"]
    body = {"language": "python", "session_id": session_id, "stream": True,
            "code": "state = 'running'\nprint('started', flush=True)\nimport time\n"
                    "time.sleep(60)\nstate = 'finished'"}
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as response:
        for line in response.iter_lines():
            if "started" in line:
                break  # leave: the connection closes mid-cell
    # The next call runs as soon as the interrupted cell has stopped, long before 60 s.
    data = server.run("print(state)", session_id)
    assert stdout_of(data) == "running\n"


def test_delete_ends_the_session_and_frees_it(server):
    session_id = server.run("x = 1")["session_id"]
    with server.client() as client:
        response = client.delete(f"/v1/tci/sessions/{session_id}")
        assert response.status_code == 200
        assert response.json() == {"data": {"id": session_id, "ended": True}, "errors": None}
        listed = [s["id"] for s in client.get("/v1/tci/sessions").json()["data"]["sessions"]]
        assert session_id not in listed
        again = client.delete(f"/tci/sessions/{session_id}")
        assert again.status_code == 410
        assert "ended by the client" in again.json()["errors"][0]


def test_files_list_download_and_upload(server):
    session_id = server.run("import os\nos.makedirs('sub', exist_ok=True)\n"
                            "open('sub/out.bin', 'wb').write(bytes(range(256)))\n"
                            "os.symlink('/etc/passwd', 'link')")["session_id"]
    with server.client() as client:
        listing = client.get(f"/v1/tci/sessions/{session_id}/files").json()["data"]["files"]
        assert [(f["path"], f["size"]) for f in listing] == [("sub/out.bin", 256)]
        assert listing[0]["modified"].endswith("+00:00")
        download = client.get(f"/v1/tci/sessions/{session_id}/files/sub/out.bin")
        assert download.status_code == 200 and download.content == bytes(range(256))
        assert client.get(f"/v1/tci/sessions/{session_id}/files/link").status_code == 400
        assert client.get(f"/v1/tci/sessions/{session_id}/files/nope").status_code == 404
        assert client.get(f"/v1/tci/sessions/{session_id}/files/..%2Fx").status_code in (400, 404)
        put = client.put(f"/v1/tci/sessions/{session_id}/files/new/in.txt", content=b"hi\n")
        assert put.json() == {"data": {"path": "new/in.txt", "size": 3}, "errors": None}
    assert stdout_of(server.run("print(open('new/in.txt').read(), end='')", session_id)) == "hi\n"


def test_files_of_another_key_are_not_found(server):
    session_id = server.run("open('secret.txt', 'w').write('s')")["session_id"]
    other = server.new_key(f"other-{threading.get_ident()}")
    with server.client(other) as client:
        for response in (client.get(f"/v1/tci/sessions/{session_id}/files"),
                         client.get(f"/v1/tci/sessions/{session_id}/files/secret.txt"),
                         client.put(f"/v1/tci/sessions/{session_id}/files/x", content=b"x"),
                         client.delete(f"/v1/tci/sessions/{session_id}")):
            assert response.status_code == 404
            assert response.json()["errors"] == [f"session {session_id} not found"]
