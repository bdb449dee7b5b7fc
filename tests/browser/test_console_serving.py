"""How the console is served: by `tci serve` itself, from its own origin only, under a strict
Content-Security-Policy, with no key in any URL."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, Request, expect

from tests.browser.conftest import open_new_session, run_in_cell, sign_in
from tests.conftest import Server


def test_page_and_assets_come_from_the_server_with_security_headers(server: Server) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = httpx.get(f"{server.url}/console/{asset}")
        assert response.status_code == 200, asset
        assert kind in response.headers["content-type"]
        assert "content-security-policy" in response.headers
    assert httpx.get(f"{server.url}/console/missing.js").status_code == 404
    # The page is public; the API behind it is not.
    assert httpx.get(f"{server.url}/v1/tci/sessions").status_code == 401


def test_a_whole_visit_stays_on_the_servers_origin(page: Page, server: Server) -> None:
    key = server.new_key("console-origin")
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    sign_in(page, server, key)
    open_new_session(page)
    run_in_cell(page, 0, "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()")
    expect(page.locator("img.output-image")).to_be_visible()
    page.click("a[data-nav='usage']")
    expect(page.locator("#usage-totals")).to_be_visible()

    urls = [r.url for r in requests]
    assert urls, "no requests recorded"
    foreign = [u for u in urls if not u.startswith((server.url + "/", "data:"))]
    assert not foreign, foreign
    assert not [u for u in urls if key in u], "the key must never be in a URL"
    api_calls = [r for r in requests if "/v1/tci/" in r.url]
    assert api_calls and all(
        r.headers.get("authorization") == f"Bearer {key}" for r in api_calls
    )
    # Signing out forgets the key.
    page.click("#sign-out")
    expect(page.locator("#api-key")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('tci.key')") is None
