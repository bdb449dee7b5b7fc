"""The languages one-shot runs offer: for each, its source file, its compile (if any), its
command, the names SandboxFusion's clients use for it, and how the memory limit applies.

Every language runs under the same confinement and limits as Python (worker/oneshot.py): the
run's memory cgroup is the real bound on every one of them. No RLIMIT_AS is set for any
(the JVM and Go reserve far more address space than they touch); runtimes that size their
heap by the machine's memory are told the run's limit instead, so they collect garbage before
the cgroup kills them: the JVM by -XX:MaxRAM (heap up to 75 % of it), Go by GOMEMLIMIT, Node
by --max-old-space-size (75 %).

Toolchains come from Debian (`make toolchains`); Node's packages (lodash, esbuild for
TypeScript) and C++'s precompiled <bits/stdc++.h> are built into the runtime directory, which
every sandbox sees read-only at RUNTIME_SITE/tci-languages. A language whose tools are missing
is reported at start and in /health, and refused with a 400 naming the ones offered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tci.sandbox.bwrap import RUNTIME_SITE, sandbox_env

LANGUAGES_DIR_NAME = "tci-languages"  # under the runtime's site directory (make toolchains)
LANGUAGES_DIR = f"{RUNTIME_SITE}/{LANGUAGES_DIR_NAME}"  # as the sandboxes see it
NODE_MODULES = f"{LANGUAGES_DIR}/node_modules"
ESBUILD = f"{NODE_MODULES}/@esbuild/linux-x64/bin/esbuild"
CPP_PCH_DIR = f"{LANGUAGES_DIR}/pch"  # holds bits/stdc++.h.gch, built for CPP_FLAGS
JAVATUPLES = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java
JAVAC_ARCHIVE = f"{LANGUAGES_DIR}/java/javac.jsa"  # javac's classes, archived (CDS)
BUILD_DIR = "/tmp/tci-build"  # worker/native.py's: where a compile writes
WORKSPACE = "/workspace"
CPP_FLAGS = ("-std=c++17", "-O2")  # the precompiled header is built with exactly these
_HEAP_SHARE = 0.75
# `#include <bits/stdc++.h>` as the program's first directive: only then is the header
# precompiled ahead of it the same program (no macro of the program's precedes it).
_STDCXX_FIRST = re.compile(r"\A(?:\s|//[^\n]*\n|/\*.*?\*/)*#\s*include\s*<bits/stdc\+\+\.h>",
                           re.DOTALL)
# TypeScript is transpiled to an ES module; these give it CommonJS's names too (SandboxFusion's
# tests `require` lodash from TypeScript as well as `import` it).
_ESM_BANNER = ("import { createRequire as __tciRequire } from 'node:module';"
               "import { fileURLToPath as __tciPath } from 'node:url';"
               "const require = __tciRequire(import.meta.url);"
               "const __filename = __tciPath(import.meta.url);"
               "const __dirname = __tciPath(new URL('.', import.meta.url));")


@dataclass(frozen=True)
class Commands:
    """What the sandbox executes for one run (worker/native.py)."""

    compile: list[str] | None
    run: list[str]
    env: dict[str, str]
    node_modules: str | None = None


Argv = Callable[[str, int], list[str]]  # (code, memory bytes) -> argv


@dataclass(frozen=True)
class Language:
    name: str  # tci's name (what /v1/tci/batch takes)
    source: str  # the code's file name in /workspace
    run: Argv
    compile: Argv | None = None
    # Other names it answers to: SandboxFusion's, and the usual ones.
    aliases: tuple[str, ...] = ()
    # Files the sandbox needs (absolute, as it sees them; all under /usr or the runtime).
    needs: tuple[str, ...] = ()
    env: Callable[[int], dict[str, str]] = field(default=lambda memory: {})
    node_modules: bool = False
    memory_policy: str = "the run's memory cgroup"

    @property
    def compiled(self) -> bool:
        return self.compile is not None

    def commands(self, code: str, memory: int) -> Commands:
        env = {**sandbox_env(), **self.env(memory)}
        if self.node_modules:
            env["NODE_PATH"] = NODE_MODULES
        return Commands(compile=self.compile(code, memory) if self.compile else None,
                        run=self.run(code, memory), env=env,
                        node_modules=NODE_MODULES if self.node_modules else None)


def _cpp_compile(code: str, memory: int) -> list[str]:
    # g++ takes bits/stdc++.h.gch from the first include directory for the program's own
    # #include, when that is its first directive (anything before could change its meaning).
    pch = (["-I", CPP_PCH_DIR]
           if _STDCXX_FIRST.match(code) and os.path.exists(f"{_host_dir()}/pch") else [])
    return ["/usr/bin/g++", *CPP_FLAGS, "-pipe", *pch, f"{WORKSPACE}/main.cpp",
            "-o", f"{BUILD_DIR}/main", "-lpthread"]


def _java_classpath() -> str:
    return ":".join([BUILD_DIR, WORKSPACE, *([JAVATUPLES] if os.path.exists(JAVATUPLES)
                                             else [])])


def _jvm_memory(memory: int) -> list[str]:
    # One GC thread, heap sized by the run's limit rather than by the host's memory.
    return ["-XX:+UseSerialGC", f"-XX:MaxRAM={memory}", "-XX:MaxRAMPercentage=75",
            "-Xshare:auto"]


def _javac(code: str, memory: int) -> list[str]:
    # javac's own JVM: quick to start (C1 only, one GC thread, its classes from the archive
    # make toolchains built) and within the run's memory.
    archive = ([f"-XX:SharedArchiveFile={JAVAC_ARCHIVE}"]
               if os.path.exists(_host_path(JAVAC_ARCHIVE)) else [])
    flags = [f"-J{flag}" for flag in (*_jvm_memory(memory), "-XX:TieredStopAtLevel=1",
                                      *archive)]
    return ["/usr/bin/javac", *flags, "-encoding", "UTF-8", "-cp", _java_classpath(),
            "-d", BUILD_DIR, f"{WORKSPACE}/Main.java"]


def _java(code: str, memory: int) -> list[str]:
    return ["/usr/bin/java", *_jvm_memory(memory), "-ea", "-cp", _java_classpath(), "Main"]


def _go_env(memory: int) -> dict[str, str]:
    return {"GOCACHE": "/tmp/.cache/go-build", "GOPATH": "/tmp/go", "GO111MODULE": "off",
            "GOMEMLIMIT": str(memory), "GOFLAGS": "-buildvcs=false", "CGO_ENABLED": "0"}


def _node_heap(memory: int) -> str:
    return f"--max-old-space-size={max(int(memory * _HEAP_SHARE) >> 20, 16)}"


def _fixed(*argv: str) -> Argv:
    return lambda code, memory: list(argv)


def _node(path: str) -> Argv:
    return lambda code, memory: ["/usr/bin/node", _node_heap(memory), path]


PYTHON = Language("python", "main.py", _fixed("/usr/bin/python3.11", "main.py"),
                  aliases=("python3",), needs=("/usr/bin/python3.11",))

LANGUAGES: tuple[Language, ...] = (
    PYTHON,
    Language("cpp", "main.cpp", _fixed(f"{BUILD_DIR}/main"), compile=_cpp_compile,
             aliases=("c++", "cxx"), needs=("/usr/bin/g++",)),
    Language("c", "main.c", _fixed(f"{BUILD_DIR}/main"),
             compile=_fixed("/usr/bin/gcc", "-std=gnu11", "-O2", "-pipe",
                            f"{WORKSPACE}/main.c", "-o", f"{BUILD_DIR}/main", "-lm"),
             needs=("/usr/bin/gcc",)),
    Language("java", "Main.java", _java, compile=_javac, needs=("/usr/bin/javac",
                                                                  "/usr/bin/java"),
             memory_policy="the cgroup; the JVM sizes its heap by the run's limit "
                           "(-XX:MaxRAM, 75 %)"),
    Language("go", "main.go", _fixed(f"{BUILD_DIR}/main"),
             # Without the symbol table and DWARF: a third of the size to hand each run.
             compile=_fixed("/usr/bin/go", "build", "-ldflags=-s -w", "-o", f"{BUILD_DIR}/main",
                            f"{WORKSPACE}/main.go"),
             env=_go_env, needs=("/usr/bin/go",),
             memory_policy="the cgroup; GOMEMLIMIT is the run's limit"),
    Language("rust", "main.rs", _fixed(f"{BUILD_DIR}/main"),
             # Without the standard library's debug info (4 MB of a hello world's 4.3).
             compile=_fixed("/usr/bin/rustc", "-O", "--edition", "2021", "-C",
                            "strip=debuginfo", f"{WORKSPACE}/main.rs", "-o", f"{BUILD_DIR}/main"),
             needs=("/usr/bin/rustc",)),
    Language("nodejs", "main.js", _node(f"{WORKSPACE}/main.js"),
             aliases=("javascript", "js", "node"), needs=("/usr/bin/node", NODE_MODULES),
             node_modules=True,
             memory_policy="the cgroup; V8's heap is 75 % of the run's limit"),
    Language("typescript", "main.ts", _node(f"{BUILD_DIR}/main.mjs"),
             compile=_fixed(ESBUILD, f"{WORKSPACE}/main.ts", "--format=esm",
                            "--platform=node", "--target=node20", "--log-level=error",
                            f"--banner:js={_ESM_BANNER}", f"--outfile={BUILD_DIR}/main.mjs"),
             aliases=("ts",), needs=("/usr/bin/node", ESBUILD), node_modules=True,
             memory_policy="the cgroup; V8's heap is 75 % of the run's limit"),
    Language("bash", "main.sh", _fixed("/usr/bin/bash", f"{WORKSPACE}/main.sh"),
             aliases=("sh", "shell"), needs=("/usr/bin/bash",)),
    Language("R", "main.R", _fixed("/usr/bin/Rscript", f"{WORKSPACE}/main.R"),
             aliases=("r",), needs=("/usr/bin/Rscript",)),
    Language("ruby", "main.rb", _fixed("/usr/bin/ruby", f"{WORKSPACE}/main.rb"),
             aliases=("rb",), needs=("/usr/bin/ruby",)),
    Language("lua", "main.lua", _fixed("/usr/bin/lua5.4", f"{WORKSPACE}/main.lua"),
             needs=("/usr/bin/lua5.4",)),
    Language("php", "main.php", _fixed("/usr/bin/php", "-f", f"{WORKSPACE}/main.php"),
             needs=("/usr/bin/php",)),
    Language("perl", "main.pl", _fixed("/usr/bin/perl", f"{WORKSPACE}/main.pl"),
             aliases=("pl",), needs=("/usr/bin/perl",)),
)
BY_NAME = {language.name: language for language in LANGUAGES}
# Every name a run may give (tci's and the aliases) -> its language.
NAMES = {name: language for language in LANGUAGES
         for name in (language.name, *language.aliases)}
RUN_LANGUAGES = tuple(BY_NAME)


def source_text(language: Language, code: str) -> str:
    """The source file's text: PHP's interpreter prints a file without `<?php` as it is
    (SandboxFusion's runner adds the tag where the code has none)."""
    if language.name == "php" and "<?php" not in code:
        return "<?php\n" + code
    return code


_runtime_site: Path | None = None


def _host_dir() -> str:
    """The runtime's tci-languages directory on the host (what the sandboxes see at
    LANGUAGES_DIR)."""
    return str(_runtime_site / LANGUAGES_DIR_NAME) if _runtime_site else "/nonexistent"


def _host_path(path: str) -> str:
    if path.startswith(LANGUAGES_DIR + "/"):
        return _host_dir() + path[len(LANGUAGES_DIR):]
    return path


def _present(path: str) -> bool:
    """Whether a sandbox sees `path`: under /usr (links resolved as the sandbox resolves
    them: /etc/alternatives is in its view) or in the runtime directory."""
    host = _host_path(path)
    if not os.path.exists(host):
        return False
    real = os.path.realpath(host)
    return real.startswith(("/usr/", _host_dir() + "/", os.path.realpath(_host_dir()) + "/"))


def availability(runtime_site: Path) -> dict[str, bool]:
    """Which languages this host can run: their tools are where the sandboxes see them."""
    global _runtime_site
    _runtime_site = runtime_site
    return {language.name: all(_present(path) for path in language.needs)
            for language in LANGUAGES}
