"""The sandbox runtime ships compiled bytecode (make runtime's --compile-bytecode).

A sandbox cannot write __pycache__ (the runtime is read-only), so without it every import of a
package the template did not preload compiles its sources again, in every session and run:
seconds of CPU for scikit-learn or scipy."""

from __future__ import annotations

from tests.conftest import run_json

CHECK = """
import importlib.util, json, os
found = {}
for name in ("sklearn.linear_model", "scipy.stats", "IPython.core.logger"):
    spec = importlib.util.find_spec(name)
    found[name] = bool(spec.cached) and os.path.exists(spec.cached)
print(json.dumps(found))
"""


def test_runtime_packages_import_from_bytecode(server):
    _, found = run_json(server, CHECK)
    assert found == {"sklearn.linear_model": True, "scipy.stats": True,
                     "IPython.core.logger": True}, found
