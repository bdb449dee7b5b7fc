"""Snapshots against a real server: a running session's state kept under its own id while the
session runs on, new independent sessions started from it with `snapshot_id`, listing and
deletion, and the refusals (400 with session_id, 404 for another key's)."""

from __future__ import annotations

import json

from tests.conftest import outputs_of, stdout_of


def test_sessions_start_from_a_snapshot_independently(server_factory):
    server = server_factory()
    source = server.run("import numpy as np\nbase = np.arange(10)\nitems = [1]\n"
                        "def total():\n    return int(base.sum()) + sum(items)\n"
                        "open('data.txt', 'w').write('prepared')")["session_id"]
    with server.client() as client:
        made = client.post(f"/v1/tci/sessions/{source}/snapshots")
        assert made.status_code == 200, made.text
        snapshot = made.json()["data"]
        assert snapshot["id"].startswith("snap_") and snapshot["skipped"] == []
        listed = client.get("/v1/tci/snapshots").json()["data"]["snapshots"]
        assert [(s["id"], s["session_id"]) for s in listed] == [(snapshot["id"], source)]
        assert listed[0]["size_bytes"] > 0 and listed[0]["created_at"]

    server.run("items.append(1000)", source)  # the source runs on, changed after the snapshot
    first = server.run("items.append(5)\nprint(total(), open('data.txt').read())",
                       snapshot_id=snapshot["id"])
    second = server.run("print(total())", snapshot_id=snapshot["id"])
    assert stdout_of(first) == "51 prepared\n"  # 45 + 1 + 5: its own copy
    assert stdout_of(second) == "46\n"  # not the first one's append, not the source's
    assert len({source, first["session_id"], second["session_id"]}) == 3
    assert stdout_of(server.run("print(total())", source)) == "1046\n"

    with server.client() as client:
        assert client.delete(f"/v1/tci/snapshots/{snapshot['id']}").status_code == 200
        assert client.get("/v1/tci/snapshots").json()["data"]["snapshots"] == []
        assert client.delete(f"/v1/tci/snapshots/{snapshot['id']}").status_code == 404
    assert not list((server.data_dir / "state").glob(f"{snapshot['id']}*"))
    gone = server.execute("1", snapshot_id=snapshot["id"])
    assert gone.status_code == 404, gone.text
    # Sessions started from it go on.
    assert stdout_of(server.run("print(total())", first["session_id"])) == "51\n"


def test_snapshot_refusals(server_factory):
    server = server_factory()
    session_id = server.run("x = 1")["session_id"]
    with server.client() as client:
        snapshot_id = client.post(f"/v1/tci/sessions/{session_id}/snapshots").json()["data"]["id"]
    both = server.execute("x", session_id, snapshot_id=snapshot_id)
    assert both.status_code == 400 and "snapshot_id" in both.text, both.text
    other = server.new_key("other")
    assert server.execute("x", key=other, snapshot_id=snapshot_id).status_code == 404
    with server.client(other) as client:
        assert client.get("/v1/tci/snapshots").json()["data"]["snapshots"] == []
        assert client.delete(f"/v1/tci/snapshots/{snapshot_id}").status_code == 404
        assert client.post(f"/v1/tci/sessions/{session_id}/snapshots").status_code == 404
    assert server.execute("1", snapshot_id="snap_unknown").status_code == 404
    data = server.run("import json\nprint(json.dumps(x))", snapshot_id=snapshot_id)
    assert not outputs_of(data, "error") and json.loads(stdout_of(data)) == 1
