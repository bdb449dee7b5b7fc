"""The console's sessions list, usage page and error states in real headless Chromium."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.conftest import open_new_session, run_in_cell, sign_in
from tests.conftest import Server


def test_bad_key_is_refused_with_a_clear_message(page: Page, server: Server) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#nav")).to_be_hidden()
    page.fill("#api-key", "tci_not-a-real-key")
    page.click("form.signin button[type=submit]")
    expect(page.locator(".form-error")).to_contain_text("not accepted")
    assert page.evaluate("sessionStorage.getItem('tci.key')") is None

    # A key that stops working mid-visit (revoked, or a tab restored with an old one) sends
    # the user back to sign-in with the reason, instead of a page of errors.
    sign_in(page, server, server.new_key("console-bad-key"))
    page.evaluate("sessionStorage.setItem('tci.key', 'tci_revoked')")
    page.reload()
    expect(page.locator(".form-error")).to_contain_text("no longer accepts this key")
    expect(page.locator("#nav")).to_be_hidden()


def test_sessions_list_counts_down_opens_and_ends(page: Page, server: Server) -> None:
    key = server.new_key("console-list")
    sign_in(page, server, key)
    expect(page.locator(".state.empty")).to_contain_text("No live sessions")

    # One session made by an API client, used twice: the console lists it.
    with server.client(key) as client:
        made = client.post("/v1/tci/execute", json={"language": "python", "code": "a = 1"})
        session_id = made.json()["data"]["session_id"]
        client.post("/v1/tci/execute", json={"language": "python", "code": "a += 1",
                                             "session_id": session_id})
    page.reload()
    row = page.locator(f"tr[data-session='{session_id}']")
    expect(row.locator(".execute-count")).to_have_text("2")
    countdown = row.locator(".countdown")
    expect(countdown).to_have_text(re.compile(r"^(59|60):\d\d$"))
    first = countdown.inner_text()
    expect(countdown).not_to_have_text(first)  # it ticks

    # Open: the notebook of that very session, its state there.
    row.locator("a.button", has_text="Open").click()
    expect(page.locator("#session-id")).to_have_text(session_id)
    run_in_cell(page, 0, "print(a)")
    expect(page.locator(".notebook .cell").first.locator("pre.stdout")).to_have_text("2\n")

    # End (asks once more first), from the notebook page.
    end = page.locator("#end-session")
    end.click()
    expect(end).to_have_text("End it now?")
    end.click()
    expect(page.locator(".state.empty")).to_contain_text("No live sessions")
    with server.client(key) as client:
        assert client.get("/v1/tci/sessions").json()["data"]["sessions"] == []

    # Its old address now says what happened to it.
    page.goto(f"{server.url}/#/session/{session_id}")
    ended = page.locator("#session-ended")
    expect(ended).to_contain_text("This session is not available")
    expect(ended.locator(".reason")).to_contain_text("ended")


def test_end_from_the_list(page: Page, server: Server) -> None:
    key = server.new_key("console-end-list")
    sign_in(page, server, key)
    session_id = open_new_session(page)
    page.click("a[href='#/sessions']:has-text('Sessions')")
    row = page.locator(f"tr[data-session='{session_id}']")
    expect(row.locator(".execute-count")).to_have_text("0")
    row.locator("button", has_text="End").click()
    row.locator("button", has_text="End now?").click()
    expect(row).to_have_count(0)
    with server.client(key) as client:
        assert client.get("/v1/tci/sessions").json()["data"]["sessions"] == []


def test_a_session_ended_elsewhere_shows_why_and_offers_a_new_one(
    page: Page, server: Server
) -> None:
    key = server.new_key("console-ended")
    sign_in(page, server, key)
    session_id = open_new_session(page)
    with server.client(key) as client:
        assert client.delete(f"/v1/tci/sessions/{session_id}").status_code == 200

    run_in_cell(page, 0, "print('too late')")
    cell = page.locator(".notebook .cell").first
    expect(cell.locator(".output.problem")).to_contain_text("ended")
    expect(cell.locator("pre.stdout")).to_have_count(0)
    banner = page.locator("#banner")
    expect(banner).to_contain_text("This session has ended")
    banner.locator("button", has_text="Start a new session").click()
    expect(page.locator("#session-id")).not_to_have_text(session_id)
    run_in_cell(page, 0, "print('fresh')")
    expect(page.locator(".notebook .cell").first.locator("pre.stdout")).to_have_text("fresh\n")


def test_limits_hit_are_explained(page: Page, server_factory) -> None:
    limited = server_factory(max_sessions="1", max_file_bytes="1000")
    sign_in(page, limited, limited.key)
    open_new_session(page)

    # A file over TCI_MAX_FILE_BYTES: the panel says so and lists nothing.
    big = page.evaluate_handle("""() => {
        const transfer = new DataTransfer();
        transfer.items.add(new File(["x".repeat(5000)], "big.txt"));
        return transfer;
    }""")
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": big})
    status = page.locator(".files-status")
    expect(status).to_have_class(re.compile(r"\berror\b"))
    expect(status).to_contain_text("big.txt")
    expect(status).to_contain_text("TCI_MAX_FILE_BYTES")
    expect(page.locator("#files li")).to_have_count(0)

    # A second session over TCI_MAX_SESSIONS: the server's reason, in the banner.
    page.click("a[href='#/sessions']:has-text('Sessions')")
    page.click("#new-session")
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("maximum of 1 sessions (TCI_MAX_SESSIONS)")
    expect(page.locator("#new-session")).to_be_enabled()
    with limited.client() as client:
        assert len(client.get("/v1/tci/sessions").json()["data"]["sessions"]) == 1


def test_usage_shows_totals_and_a_chart(page: Page, server: Server) -> None:
    key = server.new_key("console-usage")
    sign_in(page, server, key)
    page.click("a[data-nav='usage']")
    chart_card = page.locator(".chart-card")
    expect(chart_card.locator(".state.empty")).to_contain_text("Nothing used")

    with server.client(key) as client:
        for _ in range(2):
            session_id = client.post("/v1/tci/execute", json={
                "language": "python", "code": "sum(range(10**6))"}).json()["data"]["session_id"]
            client.post("/v1/tci/execute", json={"language": "python", "code": "1",
                                                 "session_id": session_id})
        totals = client.get("/v1/tci/usage").json()["data"]
    assert (totals["sessions"], totals["executions"]) == (2, 4)

    page.reload()
    cards = page.locator("#usage-totals")
    expect(cards.locator("[data-metric='executions'] .stat-value")).to_have_text("4")
    expect(cards.locator("[data-metric='sessions'] .stat-value")).to_have_text("2")
    expect(cards.locator("[data-metric='cost_usd'] .stat-value")).to_have_text(
        f"${totals['cost_usd']:.2f}")
    bars = page.locator(".chart rect.bar")
    expect(bars.first).to_be_attached()
    heights = [float(h) for h in bars.evaluate_all(
        "bars => bars.map(b => b.getAttribute('height'))")]
    assert sum(1 for h in heights if h > 0) == 1  # everything happened this hour
    assert len(heights) >= 24

    cards.locator("[data-metric='sessions']").click()
    expect(page.locator(".chart-card h2")).to_have_text("Sessions per hour")
    page.select_option("#usage-window", "30d")
    expect(page.locator(".chart-card h2")).to_have_text("Sessions per day")
    day_bars = page.locator(".chart rect.bar").count()
    assert 30 <= day_bars <= 31, day_bars  # a day per bar, the window's ends partial


def test_a_server_that_went_away_is_reported_not_hidden(page: Page, server_factory) -> None:
    gone = server_factory()
    sign_in(page, gone, gone.key)
    gone.stop()
    page.click("a[data-nav='usage']")
    expect(page.locator("#banner")).to_contain_text("The server could not be reached.")
    expect(page.locator(".usage-body .state.error")).to_have_text("Could not load usage.")
