"""The seeds' examples (the original TCI docs) work against this server unchanged, except for
the base URL and the key: through the official `together` SDK 2.x, configured by arguments or
by its environment variables, and through the real `curl` binary as the seeds show it."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess

import pytest
from together import Together

from tests.conftest import REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEED_HOST = "https://api.together.ai"


@pytest.fixture
def client(server):
    with Together(base_url=server.base_url, api_key=server.key) as sdk:
        yield sdk


def sdk_outputs(response) -> list[tuple[str, object]]:
    return [(o.type, o.data) for o in response.data.outputs]


def sdk_stdout(response, errors_allowed: bool = True) -> str:
    """The call's stdout; with errors_allowed=False, asserting it has no error output."""
    if not errors_allowed:
        assert [o for o in response.data.outputs if o.type == "error"] == []
    return "".join(o.data for o in response.data.outputs if o.type == "stdout")


def png_size(payload: str) -> tuple[int, int]:
    """Width and height of a base64 PNG, after checking it is one."""
    raw = base64.b64decode(payload, validate=True)
    assert raw[:8] == PNG_SIGNATURE
    assert raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_hello_world(client):
    response = client.code_interpreter.execute(
        code='print("Hello from TCI!")',
        language="python",
    )
    assert response.errors is None
    assert response.data.status == "completed"
    assert response.data.session_id.startswith("ses_")
    assert sdk_outputs(response) == [("stdout", "Hello from TCI!\n")]


def test_sdk_from_environment(server, monkeypatch):
    monkeypatch.setenv("TOGETHER_BASE_URL", server.base_url)
    monkeypatch.setenv("TOGETHER_API_KEY", server.key)
    with Together() as sdk:
        response = sdk.code_interpreter.execute(
            code='print("Hello from TCI!")',
            language="python",
        )
        listed = sdk.code_interpreter.sessions.list()
    assert response.data.status == "completed"
    assert sdk_outputs(response) == [("stdout", "Hello from TCI!\n")]
    assert response.data.session_id in {s.id for s in listed.data.sessions}


def test_session_reuse(client):
    response1 = client.code_interpreter.execute(code="x = 42", language="python")
    session_id = response1.data.session_id
    assert sdk_outputs(response1) == []

    response2 = client.code_interpreter.execute(
        code='print(f"x = {x}")',
        language="python",
        session_id=session_id,
    )
    assert response2.data.session_id == session_id
    assert sdk_outputs(response2) == [("stdout", "x = 42\n")]


def test_upload_file_and_run_it(client):
    script_file = {"name": "data.py", "encoding": "string", "content": "print('loaded')"}
    response = client.code_interpreter.execute(
        code="!python data.py",
        language="python",
        files=[script_file],
    )
    assert response.data.status == "completed"
    assert sdk_outputs(response) == [("stdout", "loaded\n")]


def test_pip_install_then_import_in_same_cell(client):
    lock = (REPO / "runtime" / "requirements.lock").read_text()
    assert not re.search("tabulate", lock, re.IGNORECASE), "pick a package not in the runtime"
    response = client.code_interpreter.execute(
        code=(
            "!pip install tabulate\n"
            "import tabulate\n"
            "print(tabulate.__version__)\n"
            'print(tabulate.tabulate([[1, 2]], headers=["a", "b"]))'
        ),
        language="python",
    )
    stdout = sdk_stdout(response, errors_allowed=False)
    assert "Successfully installed tabulate" in stdout
    assert stdout.endswith("  a    b\n---  ---\n  1    2\n")


def test_numpy_data_analysis(client):
    code = (
        "!pip install numpy\n"
        "import numpy as np\n"
        "data = np.arange(1, 101)\n"
        'print(f"Mean: {np.mean(data):.2f}")\n'
        'print(f"Standard deviation: {np.std(data):.2f}")\n'
        "slope, intercept = np.polyfit(data, 3 * data + 2, 1)\n"
        'print(f"Fit: {slope:.2f} x + {intercept:.2f}")\n'
    )
    response = client.code_interpreter.execute(code=code, language="python")
    stdout = sdk_stdout(response, errors_allowed=False)
    assert "Requirement already satisfied: numpy" in stdout
    assert stdout.endswith("Mean: 50.50\nStandard deviation: 28.87\nFit: 3.00 x + 2.00\n")


def test_matplotlib_chart_comes_back_as_png(client):
    code = (
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "x = np.linspace(0, 10, 100)\n"
        "plt.figure(figsize=(8, 4))\n"
        "plt.plot(x, np.sin(x))\n"
        'plt.title("Sine wave")\n'
        "plt.show()\n"
    )
    response = client.code_interpreter.execute(code=code, language="python")
    outputs = response.data.outputs
    assert [o.type for o in outputs] == ["display_data"]
    png = outputs[0].data.image_png
    assert isinstance(png, str)
    width, height = png_size(png)
    assert width > 400 and height > 200
    assert len(base64.b64decode(png)) > 5000  # a drawn chart, not an empty canvas


def test_list_sessions(client):
    once = client.code_interpreter.execute(code="a = 1", language="python").data.session_id
    thrice = client.code_interpreter.execute(code="b = 1", language="python").data.session_id
    for _ in range(2):
        client.code_interpreter.execute(code="b += 1", language="python", session_id=thrice)

    response = client.code_interpreter.sessions.list()
    assert response.errors is None
    sessions = {s.id: s for s in response.data.sessions}
    assert sessions[once].execute_count == 1
    assert sessions[thrice].execute_count == 3
    for session_id in (once, thrice):
        session = sessions[session_id]
        for stamp in (session.started_at, session.last_execute_at, session.expires_at):
            assert stamp.tzinfo is not None and stamp.utcoffset() is not None
        assert session.started_at <= session.last_execute_at <= session.expires_at
        lifetime = (session.expires_at - session.started_at).total_seconds()
        assert abs(lifetime - 3600) < 1
    assert sessions[thrice].last_execute_at > sessions[thrice].started_at


# The seeds' shell examples, verbatim but for the host (the seeds' sessions example lost its
# text; it is the same call with GET).
CURL_EXECUTE = """curl -X POST "https://api.together.ai/tci/execute" \\
  -H "Authorization: Bearer $TOGETHER_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{"language": "python", "code": "print(\\"Hello from TCI!\\")"}'"""

CURL_SESSIONS = """curl -X GET "https://api.together.ai/tci/sessions" \\
  -H "Authorization: Bearer $TOGETHER_API_KEY\""""


def run_seed_curl(server, command: str) -> dict:
    assert shutil.which("curl"), "the curl binary is needed to run the seeds' examples"
    result = subprocess.run(
        ["bash", "-c", command.replace(SEED_HOST, server.url)],
        env={"PATH": os.environ["PATH"], "TOGETHER_API_KEY": server.key},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_curl_execute_without_v1(server):
    body = run_seed_curl(server, CURL_EXECUTE)
    assert body["errors"] is None
    data = body["data"]
    assert data["status"] == "completed"
    assert data["session_id"].startswith("ses_")
    assert data["outputs"] == [{"type": "stdout", "data": "Hello from TCI!\n"}]


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_curl_list_sessions(server, prefix):
    session_id = server.run("pass")["session_id"]
    command = CURL_SESSIONS.replace("/tci/sessions", f"{prefix}/tci/sessions")
    body = run_seed_curl(server, command)
    assert body["errors"] is None
    listed = {s["id"]: s for s in body["data"]["sessions"]}
    assert listed[session_id]["execute_count"] == 1
    assert set(listed[session_id]) == {
        "id", "execute_count", "started_at", "last_execute_at", "expires_at", "status",
    }
    assert listed[session_id]["status"] == "running"  # or "paused" (API.md, issue 21)
    for field in ("started_at", "last_execute_at", "expires_at"):
        assert re.search(r"(Z|[+-]\d\d:\d\d)$", listed[session_id][field])

