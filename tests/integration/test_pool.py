"""The warm pool: new sessions come from pre-started workers with the heavy packages already
imported, each worker is used by one session only, and the pool refills itself."""

import time

import httpx

from tests.conftest import stdout_of


def wait_pool_full(server, deadline_seconds: float = 120) -> dict:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        health = httpx.get(f"{server.url}/health").json()
        if health["pool"]["ready"] == health["pool"]["size"]:
            return health
        time.sleep(0.2)
    raise AssertionError(f"pool did not refill: {health}")


def test_pooled_session_has_packages_preimported_and_refills(server_factory):
    server = server_factory(pool_size="2")
    assert wait_pool_full(server)["pool"] == {"ready": 2, "size": 2}
    data = server.run("import sys\nprint(sorted(m for m in ('numpy', 'pandas', "
                      "'matplotlib.pyplot') if m in sys.modules))")
    assert stdout_of(data) == "['matplotlib.pyplot', 'numpy', 'pandas']\n"
    # The handed-out worker runs at normal priority, not the pool's background niceness.
    assert stdout_of(server.run("import os; print(os.getpriority(os.PRIO_PROCESS, 0))",
                                data["session_id"])) == "0\n"
    assert wait_pool_full(server)["pool"]["ready"] == 2


def test_pooled_workers_are_never_shared(server_factory):
    server = server_factory(pool_size="2")
    wait_pool_full(server)
    first = server.run("secret = 'mine'\nimport os\nopen('f', 'w').write('x')\nprint(os.getpid())")
    second = server.run("print('secret' in globals(), __import__('os').listdir('.'))")
    assert first["session_id"] != second["session_id"]
    assert stdout_of(second) == "False []\n"


def test_cell_numbering_starts_at_one_in_a_pooled_worker(server_factory):
    server = server_factory(pool_size="1")
    wait_pool_full(server)
    data = server.run("1/0")
    assert "Cell In[1]" in data["outputs"][-1]["data"]
