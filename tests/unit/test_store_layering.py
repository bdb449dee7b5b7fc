"""The storage boundary: the store depends on nothing above storage (only the error tree), so
hosts, metering and the Ray code can use it without it reaching back into them."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_store_imports_nothing_of_tci_above_storage():
    loaded = json.loads(subprocess.run(
        [sys.executable, "-c", "import json, sys, tci.storage.store; "
         "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'tci')))"],
        capture_output=True, text=True, check=True).stdout)
    above = [m for m in loaded if m not in ("tci", "tci.errors") and m != "tci.storage"
             and not m.startswith("tci.storage.")]
    assert above == [], f"tci.storage.store loads modules above storage: {above}"
