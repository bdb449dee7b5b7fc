"""Browser fixtures: Debian's Chromium driven by Playwright (no browser download), headless,
with a fresh profile per test and the flags this machine's closed network needs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import Server

CHROMIUM = os.environ.get("TCI_TEST_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
UI_TIMEOUT_MS = 30_000  # a cold session start plus numpy/matplotlib imports on a busy 2-core box


# Package scope: Playwright's sync API keeps an event loop running in this thread while it
# is started, which later tests calling asyncio.run() must not find.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (own storage); any uncaught script error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    tab = context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    yield tab
    context.close()
    assert not script_errors, script_errors


def sign_in(page: Page, server: Server, key: str) -> None:
    page.goto(server.url + "/")
    page.fill("#api-key", key)
    page.click("form.signin button[type=submit]")
    expect(page.locator("#new-session")).to_be_visible()


def open_new_session(page: Page) -> str:
    """Clicks "New session" and returns the session id the notebook shows."""
    page.click("#new-session")
    expect(page.locator(".notebook .cell").first).to_be_visible()
    session_id = page.locator("#session-id").inner_text()
    assert re.fullmatch(r"ses_\w+", session_id), session_id
    return session_id


def run_in_cell(page: Page, index: int, code: str) -> None:
    """Types `code` into cell `index` (replacing what is there), runs it with Shift+Enter and
    returns once the cell has finished."""
    start_cell(page, index, code)
    cell = page.locator(".notebook .cell").nth(index)
    expect(cell.locator(".cell-status")).to_have_text(FINISHED)
    expect(cell).not_to_have_class(re.compile(r"\brunning\b"))


FINISHED = re.compile(r"^(Done in|Failed in|Not run)")


def start_cell(page: Page, index: int, code: str) -> None:
    cells = page.locator(".notebook .cell")
    while cells.count() <= index:
        page.click("button.add-cell")
    editor = cells.nth(index).locator("textarea")
    editor.fill(code)
    editor.press("Shift+Enter")
