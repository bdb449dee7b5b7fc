"""The `tci` command as an operator uses it: keys are created (printed as the last stdout
line, usable at once), listed with their status, revoked; names are unique; `tci serve`
on an empty data directory creates and prints a working key, and only the first time."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import TCI, cli, free_port, stdout_of
from tests.process import http_ok, wait_until_up


def create_key(data_dir: Path, name: str, env: dict | None = None) -> str:
    result = cli(data_dir, "keys", "create", "--name", name, env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"tci_[A-Za-z0-9_-]{40,}", key), result.stdout
    return key


def list_rows(data_dir: Path) -> dict[str, str]:
    """name -> the rest of its `keys list` line."""
    result = cli(data_dir, "keys", "list")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["NAME", "PREFIX", "CREATED", "STATUS"]
    return {line.split()[0]: line for line in lines}


# -- keys -------------------------------------------------------------------------------


def test_created_key_works_against_server(server):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    key = create_key(server.data_dir, name, env=server.env)
    data = server.execute("print('via new key')", key=key)
    assert data.status_code == 200, data.text
    assert stdout_of(data.json()["data"]) == "via new key\n"
    assert name in list_rows(server.data_dir)


def test_created_keys_are_distinct(tmp_path):
    keys = {create_key(tmp_path, f"k{i}") for i in range(2)}
    assert len(keys) == 2


def test_duplicate_name_fails(tmp_path):
    first = create_key(tmp_path, "dup")
    result = cli(tmp_path, "keys", "create", "--name", "dup")
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip() == "tci: a key named 'dup' already exists"
    assert first not in result.stderr
    assert list(list_rows(tmp_path)) == ["dup"]


def test_list_shows_names_and_status(tmp_path):
    assert list_rows(tmp_path) == {}
    alpha = create_key(tmp_path, "alpha")
    create_key(tmp_path, "beta")
    rows = list_rows(tmp_path)
    assert list(rows) == ["alpha", "beta"]
    for line in rows.values():
        assert line.rstrip().endswith("active"), line
    # The list shows the key's public prefix, never the key itself.
    assert alpha[:10] in rows["alpha"]
    assert alpha not in cli(tmp_path, "keys", "list").stdout


def test_revoke(tmp_path):
    create_key(tmp_path, "keep")
    create_key(tmp_path, "drop")
    result = cli(tmp_path, "keys", "revoke", "drop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "revoked key 'drop'"
    rows = list_rows(tmp_path)
    assert rows["keep"].rstrip().endswith("active")
    assert re.search(r"revoked \d{4}-\d{2}-\d{2} \d{2}:\d{2}$", rows["drop"].rstrip()), rows
    # Revoking twice is harmless; the name stays taken.
    assert cli(tmp_path, "keys", "revoke", "drop").returncode == 0
    again = cli(tmp_path, "keys", "create", "--name", "drop")
    assert again.returncode != 0
    assert "already exists" in again.stderr


def test_revoke_unknown_name_fails(tmp_path):
    result = cli(tmp_path, "keys", "revoke", "ghost")
    assert result.returncode != 0
    assert result.stderr.strip() == "tci: no key named 'ghost'"


@pytest.mark.parametrize("args", [
    ["keys", "create"],
    ["keys"],
    [],
    ["keys", "delete", "x"],
])
def test_usage_errors(tmp_path, args):
    result = cli(tmp_path, *args)
    assert result.returncode == 2
    assert "usage: tci" in result.stderr


# -- serve ------------------------------------------------------------------------------


def test_serve_help_mentions_host_and_port(tmp_path):
    result = cli(tmp_path, "serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "--host" in result.stdout
    assert "--port" in result.stdout


def test_top_level_help_lists_commands(tmp_path):
    result = cli(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "keys"):
        assert command in result.stdout


class Serve:
    """`tci serve` started by hand, its output going to a file."""

    def __init__(self, data_dir: Path, port: int, log: Path) -> None:
        self.port, self.log = port, log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [TCI, "serve", "--host", "127.0.0.1", "--port", str(port)],
                env={**os.environ, "TCI_DATA_DIR": str(data_dir)},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_healthy(self) -> str:
        wait_until_up(self.process, lambda: http_ok(f"http://127.0.0.1:{self.port}/health"),
                      timeout=60, what="tci serve", log=self.log.read_text)
        return self.log.read_text()

    def stop(self) -> None:
        """SIGTERM, as an init system would: the server shuts down cleanly."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        # uvicorn re-raises the signal after its graceful shutdown.
        assert code in (0, -signal.SIGTERM), self.log.read_text()
        assert "Application shutdown complete" in self.log.read_text()


def test_serve_on_empty_data_dir_prints_working_key(tmp_path):
    data_dir = tmp_path / "fresh"
    port = free_port()
    first = Serve(data_dir, port, tmp_path / "first.log")
    try:
        output = first.wait_healthy()
        keys = re.findall(r"^\s*export TOGETHER_API_KEY=(\S+)$", output, re.MULTILINE)
        assert len(keys) == 1, output
        key = keys[0]
        assert re.search(rf"^\s*export TOGETHER_BASE_URL=http://127\.0\.0\.1:{port}/v1$",
                         output, re.MULTILINE), output
        assert f"web console: http://127.0.0.1:{port}/ " in output
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
        headers = {"Authorization": f"Bearer {key}"}
        response = httpx.post(f"http://127.0.0.1:{port}/v1/tci/execute", headers=headers,
                              json={"language": "python", "code": "print(6 * 7)"}, timeout=120)
        assert response.status_code == 200, response.text
        assert stdout_of(response.json()["data"]) == "42\n"
    finally:
        first.stop()
    assert list(list_rows(data_dir)) == ["default"]

    # A second start finds the key: no new one is made or printed, the old one still works.
    second = Serve(data_dir, port, tmp_path / "second.log")
    try:
        output = second.wait_healthy()
        assert "TOGETHER_API_KEY" not in output
        assert key not in output
        response = httpx.get(f"http://127.0.0.1:{port}/v1/tci/sessions", headers=headers,
                             timeout=30)
        assert response.status_code == 200, response.text
        # The first server's session was paused by its graceful stop, not lost (issue 21).
        sessions = response.json()["data"]["sessions"]
        assert [s["status"] for s in sessions] == ["paused"], sessions
    finally:
        second.stop()
    assert list(list_rows(data_dir)) == ["default"]


def test_serve_with_existing_key_prints_none(tmp_path):
    key = create_key(tmp_path, "mine")
    port = free_port()
    serve = Serve(tmp_path, port, tmp_path / "serve.log")
    try:
        output = serve.wait_healthy()
        assert "TOGETHER_API_KEY" not in output
        response = httpx.get(f"http://127.0.0.1:{port}/tci/sessions",
                             headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == 200, response.text
    finally:
        serve.stop()
    assert list(list_rows(tmp_path)) == ["mine"]


def test_serve_runs_the_sandbox_self_check_before_serving(server_factory):
    server = server_factory()
    assert "sandbox self-check passed" in server.log()


def test_a_second_server_on_the_same_data_dir_refuses_and_leaves_the_first_alone(
    server_factory,
):
    first = server_factory()
    session_id = first.run("kept = 'still here'")["session_id"]
    second = subprocess.run(
        [TCI, "serve", "--port", str(free_port())], capture_output=True, text=True, timeout=60,
        env={**os.environ, "TCI_DATA_DIR": str(first.data_dir), **first.env},
    )
    assert second.returncode != 0
    assert f"another server (pid {first.process.pid}) is using {first.data_dir}" in second.stderr
    # The first server's session, its sandbox and its state are untouched.
    assert stdout_of(first.run("print(kept)", session_id)) == "still here\n"
    with first.client() as client:
        listed = client.get("/v1/tci/sessions").json()["data"]["sessions"]
    assert [s["id"] for s in listed] == [session_id]
