"""Layers that must not reach up: the store depends on nothing above storage (only the error
tree), so hosts, metering and the Ray code can use it without it reaching back into them; the
settings depend on nothing of tci at all, since every layer reads them."""

from __future__ import annotations

import json
import subprocess
import sys


def tci_modules_loaded_by(module: str) -> list[str]:
    return json.loads(subprocess.run(
        [sys.executable, "-c", f"import json, sys, {module}; "
         "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'tci')))"],
        capture_output=True, text=True, check=True).stdout)


def test_the_store_imports_nothing_of_tci_above_storage():
    loaded = tci_modules_loaded_by("tci.storage.store")
    above = [m for m in loaded if m not in ("tci", "tci.errors") and m != "tci.storage"
             and not m.startswith("tci.storage.")]
    assert above == [], f"tci.storage.store loads modules above storage: {above}"


def test_the_settings_import_nothing_of_tci():
    assert tci_modules_loaded_by("tci.config") == ["tci", "tci.config"]
