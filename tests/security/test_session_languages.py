"""A session's other runtimes (worker/kernels/: Node for JavaScript/TypeScript, bash, R) are
the worker's children inside the same sandbox: from inside, each reports the sandbox's uid
1000, no capabilities, no_new_privs and seccomp filtering; from the host, every process of the
session (worker, node, bash, what they started) runs under the filter with the session's own
unprivileged uid. Run on both start paths (fork, and TCI_SANDBOX_START=bwrap)."""

from __future__ import annotations

from tests.conftest import outputs_of, stdout_of
from tests.security.conftest import HostView, new_session, status_of
from tests.security.test_kernel import assert_filtered_on_host

FIELDS = ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
          "Seccomp")
EXPECTED = {"Uid": "1000\t1000\t1000\t1000", "Gid": "1000\t1000\t1000\t1000",
            **{cap: "0000000000000000" for cap in FIELDS if cap.startswith("Cap")},
            "NoNewPrivs": "1", "Seccomp": "2"}

# Each runtime prints its own /proc status lines ("Key:\tvalue"); bash's $$ is bash itself.
PATTERN = f"^({'|'.join(FIELDS)}):"
READ_STATUS = {
    "javascript": ("require('fs').readFileSync('/proc/self/status', 'utf8').split('\\n')"
                   f".filter((line) => /{PATTERN}/.test(line)).forEach((l) => console.log(l))"),
    "bash": f"grep -E '{PATTERN}' /proc/$$/status",
}


def parse(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines())


def test_node_and_bash_runtimes_are_confined_like_the_worker(hardened):
    session = new_session(hardened)
    for language, code in READ_STATUS.items():
        response = hardened.execute(code, session, language=language)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert not outputs_of(data, "error"), data
        seen = parse(stdout_of(data))
        assert seen == EXPECTED, (language, seen)
    # Both runtimes live on between calls: the host sees them, under the filter, as the
    # session's own uid, inside its pid namespace.
    host = HostView(session)
    names = {status_of(pid).get("Name", "") for pid in host.inner_processes()}
    assert {"node", "bash"} <= names, names
    assert_filtered_on_host(session)
