"""JavaScript and TypeScript: one Node process serves both (node_kernel.js)."""

from __future__ import annotations

import os

from .base import HERE, SubKernel

NODE = "/usr/bin/node"
# Where the sandbox sees the Node packages `make toolchains` installs (lodash; esbuild, which
# transpiles TypeScript): runs/languages.py's NODE_MODULES, under the runtime's site dir.
NODE_MODULES = "/usr/local/lib/python3.11/dist-packages/tci-languages/node_modules"


class NodeKernel(SubKernel):
    language = "javascript"
    runtime = NODE
    display_name = "Node.js"

    def argv(self) -> list[str]:
        return [NODE, str(HERE / "node_kernel.js")]

    def environment(self) -> dict[str, str]:
        # `require("lodash")` from a call finds the shared packages; V8 sizes its heap by the
        # machine, so the cgroup's limit (not the heap's) is what ends a hog, as for Python.
        paths = [NODE_MODULES, *filter(None, os.environ.get("NODE_PATH", "").split(":"))]
        return {"NODE_PATH": ":".join(paths), "NODE_NO_WARNINGS": "1"}
