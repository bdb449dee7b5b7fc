"""Session start per language (`make bench`, part `sessions_languages`; alone:
`python -m bench.sessions_languages`): issue 20's figure "session start time for each stateful
language vs its plain runtime's start". Per language, p50 over the samples of:
- new session + first call: a call without session_id in that language, until it answers
  (sandbox start, the sub-kernel's start on first use, the call);
- runtime start in a live session: the first call in that language on a session that has
  already answered a Python call (the sub-kernel's start + the call);
- warm call: the next call (the sub-kernel kept);
- the plain runtime started locally, no sandbox: `node -e 1`, `bash -c :`, `Rscript -e 1`.
Python's row is the same session's own start (no sub-kernel) and `python3 -c pass`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .server import TciServer, on_own_server, to_stderr
from .stats import Series, fmt_seconds, markdown_table

# language: (a small call's code, the plain runtime's local start)
LANGUAGES: dict[str, tuple[str, list[str]]] = {
    "python": ("1 + 1", [sys.executable, "-S", "-c", "pass"]),
    "javascript": ("1 + 1", ["node", "-e", "1"]),
    "typescript": ("const n: number = 1; n + 1", ["node", "-e", "1"]),
    "bash": ("echo 2", ["bash", "-c", ":"]),
    "r": ("1 + 1", ["Rscript", "-e", "1"]),
}


@dataclass
class LanguageStarts:
    language: str
    new_session: Series = field(default_factory=lambda: Series("new session + first call"))
    in_session: Series = field(default_factory=lambda: Series("runtime start in a session"))
    warm: Series = field(default_factory=lambda: Series("warm call"))
    local: Series = field(default_factory=lambda: Series("plain runtime, local"))


@dataclass
class SessionLanguagesResult:
    samples: int
    rows: list[LanguageStarts] = field(default_factory=list)


def _timed_call(client: httpx.Client, body: dict[str, object]) -> tuple[float, str]:
    started = time.perf_counter()
    response = client.post("/v1/tci/execute", json=body)
    elapsed = time.perf_counter() - started
    data = response.json().get("data") if response.status_code == 200 else None
    if data is None or any(o["type"] == "error" for o in data["outputs"]):
        raise RuntimeError(f"{body.get('language')}: HTTP {response.status_code}: "
                           f"{response.text[:300]}")
    return elapsed, data["session_id"]


def _local_start(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


def measure(server: TciServer, samples: int,
            progress: Callable[[str], None]) -> SessionLanguagesResult:
    result = SessionLanguagesResult(samples)
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=300) as client:
        for language, (code, local) in LANGUAGES.items():
            progress(f"session start in {language} ({samples} samples)")
            row = LanguageStarts(language)
            for _ in range(samples):
                body: dict[str, object] = {"language": language, "code": code}
                elapsed, session = _timed_call(client, body)
                row.new_session.samples.append(elapsed)
                row.warm.samples.append(_timed_call(client, {**body, "session_id": session})[0])
                client.delete(f"/v1/tci/sessions/{session}")
                _, other = _timed_call(client, {"language": "python", "code": "1"})
                if language != "python":
                    row.in_session.samples.append(
                        _timed_call(client, {**body, "session_id": other})[0])
                client.delete(f"/v1/tci/sessions/{other}")
                row.local.samples.append(_local_start(local))
            result.rows.append(row)
    return result


def table_text(result: SessionLanguagesResult) -> str:
    rows = []
    for row in result.rows:
        in_session = row.in_session.p50 if row.in_session.samples else None
        rows.append([row.language, fmt_seconds(row.new_session.p50),
                     fmt_seconds(row.new_session.p99), fmt_seconds(in_session),
                     fmt_seconds(row.warm.p50), fmt_seconds(row.local.p50),
                     f"{row.new_session.p50 / row.local.p50:.1f}x"])
    return "\n\n".join([
        "## Session start per language (issue 20)",
        f"{result.samples} samples each (p50 unless said). New session: a call without "
        "session_id in the language until it answers. Runtime start: the first call in the "
        "language on a live session (its sub-kernel starts). Local: the plain runtime, no "
        "sandbox (`python3 -S -c pass`, `node -e 1`, `bash -c :`, `Rscript -e 1`).",
        markdown_table(["language", "new session + call", "p99", "runtime start in session",
                        "warm call", "plain runtime local", "new session / local"], rows),
    ])


def measure_with_server(work: Path, progress: Callable[[str], None],
                        samples: int) -> SessionLanguagesResult:
    return on_own_server(work, "tci-server-session-languages",
                         lambda server: measure(server, samples, progress))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions_languages",
                                     description=__doc__)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tci-bench-session-languages-") as work:
        result = measure_with_server(Path(work), to_stderr, args.samples)
    print(table_text(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TCI_POOL_SIZE", "2")
    sys.exit(main())
