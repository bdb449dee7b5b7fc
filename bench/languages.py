"""Runs in every language (`make bench`, part `languages`; alone: `python -m bench.languages`):
per language, hello-world runs/s through /v1/tci/batch (a fresh sandbox each) beside the same
program compiled once and run the same number of times locally, without a sandbox, with the
same commands and flags (runs/languages.py's, paths mapped to a temporary directory), as many
at once as the server runs (TCI_RUN_CONCURRENCY); and a C++ compile + run of a program never
seen before (no kept build), through tci and locally.

The batch of one program compiles it once (runs/compiles.py), as the local side does, so the
runs/s compare what a run costs: sandbox and program start. Same machine, same run, one side
after the other.

A second table is the RL shape: N different programs (each prints its own number, so no build
is kept) in one batch, against compiling and running each locally; for an interpreted
language it is the first table with nothing cached. `--languages c,go` measures a few.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tci.config import Settings
from tci.runs import languages as table

from .server import TciServer, on_own_server, to_stderr
from .stats import markdown_table

HELLO = {
    "python": "print('hello')\n",
    "cpp": "#include <cstdio>\nint main(){puts(\"hello\");}\n",
    "c": "#include <stdio.h>\nint main(){puts(\"hello\");return 0;}\n",
    "java": "public class Main{public static void main(String[] a){"
            "System.out.println(\"hello\");}}\n",
    "go": "package main\nimport \"fmt\"\nfunc main(){fmt.Println(\"hello\")}\n",
    "rust": "fn main(){println!(\"hello\");}\n",
    "nodejs": "console.log('hello');\n",
    "typescript": "const s: string = 'hello';\nconsole.log(s);\n",
    "bash": "echo hello\n",
    "R": "cat('hello\\n')\n",
    "ruby": "puts 'hello'\n",
    "lua": "print('hello')\n",
    "php": "<?php echo \"hello\\n\";\n",
    "perl": "print \"hello\\n\";\n",
}
# Programs per language in the RL-shape table: each compiles on both sides (seconds for C++,
# Java, Rust), so fewer than the hello-world table's runs.
DISTINCT_RUNS = 16
CPP_PROGRAMS = {
    "<iostream>": "#include <iostream>\nint main(){std::cout<<\"hello\"<<std::endl;}\n",
    "<bits/stdc++.h>": "#include <bits/stdc++.h>\nint main(){std::cout<<\"hello\"<<std::endl;}\n",
}


@dataclass
class LanguageRow:
    language: str
    tci_rate: float
    local_rate: float
    tci_ok: int
    runs: int


@dataclass
class DistinctRow:
    """N different programs (nothing kept between them): tci's batch against local compile
    (if the language compiles) + run of each."""

    language: str
    compiles: bool
    tci_rate: float
    local_rate: float
    tci_ok: int
    runs: int


@dataclass
class CompileRow:
    program: str
    tci_seconds: float
    local_seconds: float


@dataclass
class LanguagesResult:
    rows: list[LanguageRow] = field(default_factory=list)
    distinct: list[DistinctRow] = field(default_factory=list)
    compiles: list[CompileRow] = field(default_factory=list)
    concurrency: int = 0
    missing: list[str] = field(default_factory=list)


@functools.cache
def _settings() -> Settings:
    """Read once: the local side of the RL-shape table prepares a program per run, and
    reading the environment's settings each time would be the bench's cost, not local's."""
    return Settings()


def _local_paths(work: Path) -> Callable[[str], str]:
    host_languages = str(_settings().runtime_dir / "site" / table.LANGUAGES_DIR_NAME)
    pairs = [(table.BUILD_DIR, str(work / "build")), (table.LANGUAGES_DIR, host_languages),
             (table.WORKSPACE, str(work)), ("/tmp/", f"{work}/tmp/")]

    pattern = re.compile("|".join(re.escape(sandbox) for sandbox, _ in pairs))
    hosts = dict(pairs)

    def mapped(text: str) -> str:  # one pass: a mapped path is never mapped again
        return pattern.sub(lambda match: hosts[match.group(0)], text)
    return mapped


@dataclass
class LocalProgram:
    """A language's program compiled (if it compiles) in a directory of its own, to be run
    as the sandbox would run it."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


def prepare_local(language: str, code: str, work: Path) -> LocalProgram:
    lang = table.BY_NAME[language]
    (work / "build").mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    (work / lang.source).write_text(table.source_text(lang, code))
    commands = lang.commands(code, _settings().run_default_memory_bytes)
    mapped = _local_paths(work)
    env = {name: mapped(value) for name, value in commands.env.items()}
    if commands.node_modules:
        for directory in (work, work / "build"):
            link = directory / "node_modules"
            if not link.exists():
                link.symlink_to(mapped(commands.node_modules))
    if commands.compile:
        done = subprocess.run([mapped(arg) for arg in commands.compile], env=env, cwd=work,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"local compile of {language} failed: {done.stderr[-2000:]}")
    argv = ([table.PYTHON.run("", 0)[0], lang.source] if lang is table.PYTHON
            else [mapped(arg) for arg in commands.run])
    return LocalProgram(argv, env, work)


def local_rate(program: LocalProgram, runs: int, concurrency: int) -> float:
    def one(_: int) -> None:
        done = subprocess.run(program.argv, env=program.env, cwd=program.cwd,
                              capture_output=True, timeout=60)
        if done.returncode != 0 or done.stdout.strip() != b"hello":
            raise RuntimeError(f"local run failed: {done.stderr[-500:]!r}")

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.monotonic()
        list(pool.map(one, range(runs)))
        return runs / (time.monotonic() - started)


def batch(server: TciServer, runs: list[dict]) -> list[dict]:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=600) as client:
        response = client.post("/v1/tci/batch", json={"runs": runs})
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines()]


def tci_rate(server: TciServer, language: str, runs: int) -> tuple[float, int]:
    run = {"language": language, "code": HELLO[language], "expected_stdout": "hello"}
    batch(server, [run])  # its build kept, as the local side compiled first too
    started = time.monotonic()
    lines = batch(server, [run] * runs)
    elapsed = time.monotonic() - started
    return runs / elapsed, sum(line["verdict"] == "OK" for line in lines)


def numbered(language: str, number: int) -> str:
    """Hello world printing `hello <number>`: a program no other run of the bench has."""
    return HELLO[language].replace("hello", f"hello {number}", 1)


def distinct_rates(server: TciServer, language: str, runs: int, concurrency: int,
                   work: Path) -> DistinctRow:
    """`runs` different programs, as an RL batch scores samples: one batch request to tci
    (each compiled in its own sandbox, nothing kept between them), against compiling and
    running each locally, `concurrency` at once."""
    programs = [numbered(language, number) for number in range(runs)]
    started = time.monotonic()
    lines = batch(server, [{"language": language, "code": code,
                            "expected_stdout": f"hello {number}"}
                           for number, code in enumerate(programs)])
    tci = runs / (time.monotonic() - started)

    def local(number: int) -> None:
        program = prepare_local(language, programs[number], work / f"{language}-{number}")
        done = subprocess.run(program.argv, env=program.env, cwd=program.cwd,
                              capture_output=True, timeout=60)
        if done.returncode != 0 or done.stdout.strip() != f"hello {number}".encode():
            raise RuntimeError(f"local run failed: {done.stderr[-500:]!r}")

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.monotonic()
        list(pool.map(local, range(runs)))
        local_rate = runs / (time.monotonic() - started)
    return DistinctRow(language, table.BY_NAME[language].compiled, tci, local_rate,
                       sum(line["verdict"] == "OK" for line in lines), runs)


def compile_and_run(server: TciServer, work: Path, samples: int) -> list[CompileRow]:
    """A program never compiled before (a fresh comment each time: no kept build), compiled
    and run once: the median of `samples`, tci's and local g++'s."""
    rows = []
    for name, code in CPP_PROGRAMS.items():
        tci, local = [], []
        for _ in range(samples):
            fresh = code + f"// {uuid.uuid4()}\n"
            started = time.monotonic()
            (line,) = batch(server, [{"language": "cpp", "code": fresh,
                                      "expected_stdout": "hello"}])
            tci.append(time.monotonic() - started)
            if line["verdict"] != "OK":
                raise RuntimeError(f"tci's C++ run failed: {line}")
            directory = Path(tempfile.mkdtemp(dir=work))
            started = time.monotonic()
            program = _plain_gpp(fresh, directory)
            done = subprocess.run(program, capture_output=True, timeout=60)
            local.append(time.monotonic() - started)
            if done.stdout.strip() != b"hello":
                raise RuntimeError("local C++ run failed")
        rows.append(CompileRow(name, sorted(tci)[len(tci) // 2], sorted(local)[len(local) // 2]))
    return rows


def _plain_gpp(code: str, directory: Path) -> list[str]:
    """g++ as a user runs it locally: the same flags, no precompiled header."""
    (directory / "main.cpp").write_text(code)
    subprocess.run(["g++", *table.CPP_FLAGS, "-pipe", str(directory / "main.cpp"), "-o",
                    str(directory / "main"), "-lpthread"], check=True, capture_output=True,
                   timeout=300)
    return [str(directory / "main")]


def measure(server: TciServer, runs: int, compile_samples: int,
            progress: Callable[[str], None], only: list[str] | None = None,
            distinct_runs: int = 0) -> LanguagesResult:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        offered = client.get("/health").json()["languages"]["runs"]
    result = LanguagesResult(concurrency=_settings().resolved_run_concurrency)
    result.missing = [name for name, ok in offered.items() if not ok]
    work = Path(tempfile.mkdtemp(prefix="tci-bench-languages-"))
    try:
        for language in HELLO:
            if not offered.get(language) or (only and language not in only):
                continue
            progress(f"languages: {language}, {runs} hello-world runs, tci then local")
            rate, ok = tci_rate(server, language, runs)
            program = prepare_local(language, HELLO[language], work / language)
            local = local_rate(program, runs, result.concurrency)
            result.rows.append(LanguageRow(language, rate, local, ok, runs))
        for language in HELLO:
            if not distinct_runs or not offered.get(language) or (only and language
                                                                   not in only):
                continue
            progress(f"languages: {language}, {distinct_runs} different programs, tci then "
                     "local")
            result.distinct.append(distinct_rates(server, language, distinct_runs,
                                                  result.concurrency, work / "distinct"))
        if compile_samples and offered.get("cpp") and (not only or "cpp" in only):
            progress(f"languages: C++ compile + run, {compile_samples} samples each")
            result.compiles = compile_and_run(server, work, compile_samples)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def table_text(result: LanguagesResult) -> str:
    rows = [[row.language, f"{row.tci_rate:.1f}", f"{row.local_rate:.1f}",
             f"{row.tci_rate / row.local_rate:.2f}x" if row.local_rate else "-",
             f"{row.tci_ok}/{row.runs}"] for row in result.rows]
    compiles = [[row.program, f"{row.tci_seconds * 1000:.0f} ms",
                 f"{row.local_seconds * 1000:.0f} ms",
                 f"{row.tci_seconds / row.local_seconds:.2f}x"] for row in result.compiles]
    text = ["## Runs in each language (issue 20)",
            f"Hello world through `/v1/tci/batch` (one request of N runs of one program: "
            f"compiled once, then a fresh sandbox per run) against the same program run "
            f"locally without a sandbox, same commands and flags, {result.concurrency} at "
            "once on both sides (target: >= 0.8x local).",
            markdown_table(["language", "tci runs/s", "local runs/s", "tci / local", "OK"],
                           rows)]
    if result.distinct:
        distinct = [[row.language, "compile + run" if row.compiles else "run",
                     f"{row.tci_rate:.1f}", f"{row.local_rate:.1f}",
                     f"{row.tci_rate / row.local_rate:.2f}x" if row.local_rate else "-",
                     f"{row.tci_ok}/{row.runs}"] for row in result.distinct]
        text += [f"The RL shape: {result.distinct[0].runs} different programs (hello world "
                 "printing a number of its own, so no build is kept between them) in one "
                 "batch request, against compiling (where the language compiles) and running "
                 f"each locally, {result.concurrency} at once on both sides. For an "
                 "interpreted language this is the table above with nothing cached.",
                 markdown_table(["language", "each program", "tci programs/s",
                                 "local programs/s", "tci / local", "OK"], distinct)]
    if result.compiles:
        text += ["C++ compile + run of a program never seen before (no kept build): tci (request "
                 "to answer; `<bits/stdc++.h>` from the precompiled header built by `make "
                 "toolchains`) against local `g++ -std=c++17 -O2` + run, medians (times: below "
                 "1x, tci is the faster).",
                 markdown_table(["program", "tci", "local", "tci / local"], compiles)]
    if result.missing:
        text.append(f"Toolchains missing on this machine: {', '.join(result.missing)}.")
    return "\n\n".join(text)


def measure_with_server(work: Path, progress: Callable[[str], None], runs: int,
                        compile_samples: int, only: list[str] | None = None,
                        distinct_runs: int = DISTINCT_RUNS) -> LanguagesResult:
    return on_own_server(work, "tci-server-languages",
                         lambda server: measure(server, runs, compile_samples, progress, only,
                                                distinct_runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.languages", description=__doc__)
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--compile-samples", type=int, default=5)
    parser.add_argument("--distinct-runs", type=int, default=DISTINCT_RUNS,
                        help="different programs per language in the RL-shape table (0: none)")
    parser.add_argument("--languages", default="",
                        help="comma-separated languages to measure (default: every one)")
    args = parser.parse_args(argv)
    only = [name for name in args.languages.split(",") if name] or None
    with tempfile.TemporaryDirectory(prefix="tci-bench-languages-") as work:
        result = measure_with_server(Path(work), to_stderr,
                                     args.runs, args.compile_samples, only,
                                     args.distinct_runs)
    print(table_text(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TCI_POOL_SIZE", "0")
    sys.exit(main())
