"""The official TypeScript SDK (`together-ai` from npm, pinned in tests/e2e/ts/package.json)
works against tci unchanged: pointed at the server with `baseURL` it executes code, keeps a
session's state across calls, lists the caller's sessions, and surfaces a 404 for an unknown
session as the SDK's NotFoundError carrying TCI's error body."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TS_DIR = Path(__file__).resolve().parent / "ts"
SCRIPT = TS_DIR / "sdk_session.mjs"


@pytest.fixture(scope="module")
def node_project() -> Path:
    """tests/e2e/ts with its locked dependencies (what `make test` installs with `npm ci`)."""
    assert shutil.which("node"), "node (>= 20) is required for the TypeScript SDK test"
    if not (TS_DIR / "node_modules" / "together-ai" / "package.json").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TS_DIR, check=True,
                       capture_output=True, timeout=300)
    installed = json.loads((TS_DIR / "node_modules/together-ai/package.json").read_text())
    pinned = json.loads((TS_DIR / "package.json").read_text())["dependencies"]["together-ai"]
    assert installed["version"] == pinned
    return TS_DIR


def run_script(server, key: str) -> dict:
    env = {**os.environ, "TOGETHER_BASE_URL": server.base_url, "TOGETHER_API_KEY": key}
    result = subprocess.run(["node", str(SCRIPT)], cwd=TS_DIR, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_typescript_sdk_execute_session_and_list(server, node_project):
    key = server.new_key("typescript-sdk")  # a key of its own: the list holds only its session
    out = run_script(server, key)

    first = out["first"]
    assert first["errors"] is None
    assert first["data"]["status"] == "completed"
    session_id = first["data"]["session_id"]
    assert session_id.startswith("ses_")
    assert first["data"]["outputs"] == [{"type": "stdout", "data": "Hello from TCI!\n"}]

    second = out["second"]
    assert second["data"]["session_id"] == session_id
    assert second["data"]["outputs"] == [{"type": "stdout", "data": "42\n"}]

    sessions = out["listed"]["data"]["sessions"]
    assert [s["id"] for s in sessions] == [session_id]
    assert sessions[0]["execute_count"] == 2
    assert {"started_at", "last_execute_at", "expires_at"} <= sessions[0].keys()

    unknown = out["unknownSession"]
    assert unknown["name"] == "NotFoundError"
    assert unknown["status"] == 404
    assert unknown["error"]["data"] is None
    assert unknown["error"]["errors"] == ["session no-such-session not found"]


def test_typescript_sdk_refuses_without_base_url(node_project):
    """The script never falls back to the SDK's default host (the hosted API)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOGETHER_")}
    result = subprocess.run(["node", str(SCRIPT)], cwd=TS_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "TOGETHER_BASE_URL and TOGETHER_API_KEY must be set" in result.stderr
