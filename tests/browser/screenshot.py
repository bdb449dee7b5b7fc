"""Writes docs/console.png: the console on a session with a plot, as a new user sees it.

    make screenshot      (or: .venv/bin/python -m tests.browser.screenshot [PATH])
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.browser.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    UI_TIMEOUT_MS,
    open_new_session,
    run_in_cell,
    sign_in,
)
from tests.conftest import make_server

CELLS = (
    "import numpy as np\nimport matplotlib.pyplot as plt\n\n"
    "x = np.linspace(0, 4 * np.pi, 400)\n"
    "plt.figure(figsize=(7, 3.2))\n"
    "plt.plot(x, np.sin(x), label='sin')\n"
    "plt.plot(x, np.cos(x) * np.exp(-x / 8), label='damped cos')\n"
    "plt.legend(); plt.title('Plotted in a tci session')\nplt.show()\n"
    "print(f'{len(x)} points, max {np.sin(x).max():.3f}')",
    "import pandas as pd\n"
    "pd.DataFrame({'city': ['Oslo', 'Lima', 'Osaka'], 'temp_c': [4.5, 19.2, 12.8]})",
)


def main(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        server = make_server(Path(tmp))
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            sign_in(page, server, server.key)
            open_new_session(page)
            page.set_input_files("#file-picker", files=[{
                "name": "measurements.csv", "mimeType": "text/csv",
                "buffer": b"t,value\n0,1.0\n1,0.5\n"}])
            for index, code in enumerate(CELLS):
                run_in_cell(page, index, code)
            expect(page.locator("img.output-image")).to_be_visible()
            page.locator(".notebook .cell").nth(2).locator("textarea").blur()
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(target), full_page=True)
            browser.close()
        finally:
            server.stop()
    print(f"wrote {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/console.png"))
