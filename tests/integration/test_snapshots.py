"""Snapshots against a real server: a running session's state kept under its own id while the
session runs on, new independent sessions started from it with `snapshot_id`, listing and
deletion, and the refusals (400 with session_id, 404 for another key's)."""

from __future__ import annotations

import json

from tests.conftest import outputs_of, stdout_of, wait_for


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


def _snapshot_pool(server) -> dict:
    with server.client() as client:
        return client.get("/health").json()["details"]["snapshot_pool"]


def _take_snapshot(server, code: str) -> str:
    source = server.run(code)["session_id"]
    with server.client() as client:
        made = client.post(f"/v1/tci/sessions/{source}/snapshots")
    assert made.status_code == 200, made.text
    return made.json()["data"]["id"]


def test_starts_from_a_snapshot_take_restored_copies_kept_ready(server_factory):
    server = server_factory(snapshot_pool_size="2")
    snapshot_id = _take_snapshot(server, "import os\nitems = [1]\nos.chdir('/tmp')")
    assert _snapshot_pool(server)["ready"] == 0  # none before a first start from it
    first = server.run("items.append(2)\nprint(items)", snapshot_id=snapshot_id)
    assert stdout_of(first) == "[1, 2]\n"
    wait_for(lambda: _snapshot_pool(server)["ready"] == 2, "two restored copies ready",
             timeout=90)
    # Taken from the copies: each its own state, at full priority (the copies were restored
    # niced), restored as a cold start restores (cwd included), none a listed session before.
    taken = [server.run("import os\nitems.append(3)\nprint(items, os.nice(0), os.getcwd())",
                        snapshot_id=snapshot_id) for _ in range(2)]
    assert [stdout_of(data) for data in taken] == ["[1, 3] 0 /tmp\n"] * 2
    ids = {first["session_id"], *(data["session_id"] for data in taken)}
    assert len(ids) == 3
    with server.client() as client:
        listed = {s["id"] for s in client.get("/v1/tci/sessions").json()["data"]["sessions"]}
    assert ids <= listed and len(listed) == 4  # the source and the three: no copy listed
    wait_for(lambda: _snapshot_pool(server)["ready"] == 2, "the copies refilled", timeout=90)
    with server.client() as client:  # a deleted snapshot's copies end with it
        assert client.delete(f"/v1/tci/snapshots/{snapshot_id}").status_code == 200
    assert _snapshot_pool(server)["ready"] == 0
    assert server.execute("1", snapshot_id=snapshot_id).status_code == 404


def test_snapshot_copies_are_bounded_by_their_settings(server_factory):
    server = server_factory(snapshot_pool_size="1", snapshot_pool_snapshots="1")
    first, second = (_take_snapshot(server, f"name = {text!r}") for text in ("a", "b"))
    assert stdout_of(server.run("print(name)", snapshot_id=first)) == "a\n"
    wait_for(lambda: _snapshot_pool(server)["ready"] == 1, "a copy of the first", timeout=90)
    assert stdout_of(server.run("print(name)", snapshot_id=second)) == "b\n"
    seen: list[dict] = []

    def second_warm() -> bool:
        seen.append(_snapshot_pool(server))
        return seen[-1]["ready"] == 1
    wait_for(second_warm, "a copy of the second", timeout=90)
    # The first's copy ended when the second was started: never two snapshots warm.
    assert all(pool["snapshots_warm"] <= 1 and pool["ready"] <= 1 for pool in seen), seen
    assert stdout_of(server.run("print(name)", snapshot_id=second)) == "b\n"  # the copy

    off = server_factory(snapshot_pool_size="0")
    snapshot_id = _take_snapshot(off, "name = 'c'")
    for _ in range(2):
        assert stdout_of(off.run("print(name)", snapshot_id=snapshot_id)) == "c\n"
    assert _snapshot_pool(off) == {"ready": 0, "snapshots_warm": 0, "size": 0, "snapshots": 2}
