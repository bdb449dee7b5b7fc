"""Signals a server inherited ignored reach no session: `make serve` starts the server with
glibc's internal signals 32 and 33 ignored (GNU make runs its commands by posix_spawn), and
`nohup` with SIGHUP ignored; SIG_IGN survives fork and exec. A program a session starts sees
every signal at its default, on both start paths (the fork template and bubblewrap's init
each set them back)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import IGNORING_SIGNALS, make_server

SHOW_IGNORED = (
    "import subprocess\n"
    "status = subprocess.run(['cat', '/proc/self/status'], capture_output=True, text=True)\n"
    "print(next(l for l in status.stdout.splitlines() if l.startswith('SigIgn')))\n")


def test_a_session_program_inherits_no_ignored_signal(tmp_path):
    server = make_server(tmp_path, started_by=IGNORING_SIGNALS)
    try:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        assert int(status.split("SigIgn:")[1].split()[0], 16) & (1 << 31), "setup: 32 ignored"
        answer = server.run(SHOW_IGNORED)
        shown = "".join(o["data"] for o in answer["outputs"] if o["type"] == "stdout")
        assert shown.startswith("SigIgn:"), answer
        assert int(shown.split()[1], 16) == 0, shown  # Python's subprocess resets SIGPIPE too
    finally:
        server.stop()
