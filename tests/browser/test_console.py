"""The ops console end to end: headless chromium against a live gateway, RabbitMQ and the simulator.

What an operator does in an outage, through the console only: sign in, watch a backend go
down (state and backlog change by themselves) and come back, read the outage timeline,
preview then confirm a replay of parked messages, look a message's history up, download
the report as CSV and read it. Every wait is on a DOM condition (WebDriverWait) or on the
gateway's own state, with a deadline; nothing sleeps, nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Live, keep_screenshot
from tests.helpers import ADMIN_TOKEN, admin, post_many

pytestmark = [pytest.mark.browser, pytest.mark.integration]
WAIT_S = 30


class Console:
    """The console as a user sees it: pages by their nav link, fields by their label's control id."""

    def __init__(self, driver: Any, url: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url, self.by = driver, url, By
        self.wait = WebDriverWait(driver, WAIT_S)

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        return list(self.driver.find_elements(self.by.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        found = self.find_all(css)
        return str(found[0].text) if found else ""

    def until_text(self, css: str, expected: str) -> str:
        """Wait until the element's text contains `expected`; return that text."""
        self.wait.until(lambda _: expected in self.text(css), f"{expected!r} in {css}")
        return self.text(css)

    def ask_until(self, button_css: str, done: Callable[[], bool], what: str) -> None:
        """Click `button_css` until `done()`: for what reaches the journal through its batching writer."""

        def again(_: Any) -> bool:
            if done():
                return True
            self.find(button_css).click()
            return False

        self.wait.until(again, what)

    def fill(self, control_id: str, value: str) -> None:
        """Type into the field as a person would (select all, delete, type): input events fire."""
        from selenium.webdriver.common.keys import Keys

        field = self.find(f"#{control_id}")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.BACKSPACE)
        if value:
            field.send_keys(value)

    def sign_in(self, token: str = ADMIN_TOKEN) -> None:
        """From the keyboard: type the token, press Enter."""
        from selenium.webdriver.common.keys import Keys

        self.driver.get(self.url)
        self.wait.until(lambda _: self.find("#token").is_displayed(), "the sign-in form")
        self.fill("token", token)
        self.find("#token").send_keys(Keys.ENTER)

    def signed_in(self) -> None:
        self.sign_in()
        self.wait.until(lambda _: self.find("nav").is_displayed(), "signed in")

    def go(self, page: str) -> None:
        self.find(f'nav a[data-page="{page}"]').click()
        self.wait.until(lambda _: self.find(f"#page-{page}").is_displayed(), f"the {page} page")

    def cell(self, destination: str, field: str) -> str:
        return self.text(f'#destinations-table tr[data-destination="{destination}"] td[data-field="{field}"]')


@pytest.fixture
def ui(console: Any, live: Live) -> Iterator[Console]:
    """The console; afterwards, the browser logged no script error and no CSP violation (an inline
    script or style the policy blocked would show here). Answers the tests asked for (401, 404) may."""
    yield Console(console, live.url)
    logged = console.get_log("browser")
    errors = [e["message"] for e in logged if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    assert errors == []
    assert [e["message"] for e in logged if "Content Security Policy" in e["message"]] == []


async def journal_says(live: Live, message_id: str, status: str) -> None:
    """Wait (deadline, no bare sleep) until the journal's record of VN-NSW's `message_id` has `status`."""
    deadline = time.monotonic() + WAIT_S
    while True:
        code, body = await admin(live.gw, "GET", f"/admin/messages/VN-NSW/{message_id}")
        if code == 200 and body["status"] == status:
            return
        assert time.monotonic() < deadline, f"the journal never said {message_id} is {status}: {code} {body}"
        await asyncio.sleep(0.05)


def test_sign_in_refuses_a_wrong_token_then_shows_the_destinations(ui: Console, live: Live) -> None:
    ui.sign_in("not-the-admin-token")
    assert "refused" in ui.until_text("#login-error", "refused")
    assert not ui.find("nav").is_displayed()

    ui.sign_in()
    ui.wait.until(lambda _: ui.cell("vnaccs", "state") == "closed", "vnaccs closed")
    assert ui.find("nav").is_displayed()
    assert ui.find('nav a[aria-current="page"]').text == "Destinations"
    assert ui.cell("vnaccs", "backlog") == "0"
    # The token is in this tab's sessionStorage, never in a cookie; the API refuses a call without it.
    assert ui.driver.execute_script("return sessionStorage.getItem('swgw.adminToken')") == ADMIN_TOKEN
    assert ui.driver.get_cookies() == []
    status = ui.driver.execute_async_script(
        "const done = arguments[0]; fetch('/admin/destinations').then((r) => done(r.status));"
    )
    assert status == 401

    # Keyboard use: the pages are links, reached with Tab and opened with Enter.
    from selenium.webdriver.common.keys import Keys

    ui.find('nav a[data-page="message"]').send_keys(Keys.ENTER)
    ui.wait.until(lambda _: ui.find("#page-message").is_displayed(), "the message page by keyboard")
    assert ui.driver.switch_to.active_element.get_attribute("id") == "main"

    ui.find("#logout").click()
    ui.wait.until(lambda _: ui.find("#token").is_displayed(), "signed out")
    assert ui.driver.execute_script("return sessionStorage.getItem('swgw.adminToken')") is None


def test_a_backend_going_down_shows_in_state_and_backlog_and_on_the_outage_timeline(ui: Console, live: Live) -> None:
    ui.sign_in()
    ui.wait.until(lambda _: ui.cell("vnaccs", "state") == "closed", "vnaccs closed")
    live.run(live.sim.set_mode("down"))
    live.run(post_many(live.gw, 6, "OUT"))
    # The page refreshes by itself: no click between the outage and what it shows.
    ui.wait.until(lambda _: ui.cell("vnaccs", "state") in ("open", "half_open"), "vnaccs open")
    ui.wait.until(lambda _: ui.cell("vnaccs", "backlog") == "6", "a backlog of 6")
    assert ui.cell("vnaccs", "circuit") in ("open", "half_open")
    keep_screenshot(ui.driver, "console-outage")

    ui.go("outages")
    timeline = 'article[data-destination="vnaccs"] table'
    # The circuit event reaches the journal through its batching writer: ask again until it is there.
    ui.ask_until("#outages-form button[type=submit]", lambda: "still open" in ui.text(timeline), "still open")
    assert ui.find_all('article[data-destination="vnaccs"] .track .bar')

    live.run(live.sim.set_mode("up"))
    ui.go("destinations")
    ui.wait.until(lambda _: ui.cell("vnaccs", "state") == "closed", "vnaccs closed again")
    ui.wait.until(lambda _: ui.cell("vnaccs", "backlog") == "0", "the backlog drained")
    live.run(live.sim.wait_for(6, timeout_s=WAIT_S))
    ui.go("outages")
    ui.ask_until(
        "#outages-form button[type=submit]",
        lambda: "Open for" in ui.text(timeline) and "still open" not in ui.text(timeline),
        "the outage closed on the timeline",
    )


def test_parked_messages_are_previewed_then_replayed_only_on_confirmation(ui: Console, live: Live) -> None:
    live.run(live.sim.set_mode("reject", reject_types=["CUSDEC"]))
    live.run(post_many(live.gw, 3, "PRK"))
    ui.sign_in()
    ui.wait.until(lambda _: ui.cell("vnaccs", "parked") == "3", "3 parked")

    ui.go("parked")
    ui.find("#parked-form button[type=submit]").click()
    ui.wait.until(lambda _: len(ui.find_all("#parked-table tbody tr")) == 3, "3 parked rows")
    assert {r.get_attribute("data-message-id") for r in ui.find_all("#parked-table tbody tr")} == {
        "PRK-00000",
        "PRK-00001",
        "PRK-00002",
    }
    assert ui.text('#parked-table td[data-field="reason"]') == "rejected"

    # A dry run of one message by its id; changing a filter withdraws the offer to confirm.
    ui.fill("parked-message-id", "PRK-00001")
    ui.find("#replay-preview").click()
    assert "1 of 3" in ui.until_text("#replay-summary", "would be replayed")
    assert ui.find("#replay-run").is_displayed()
    ui.fill("parked-message-id", "")
    ui.wait.until(lambda _: not ui.find("#replay-confirm").is_displayed(), "the confirmation withdrawn")
    assert live.sim.ids == []

    ui.find("#replay-preview").click()
    assert "3 of 3" in ui.until_text("#replay-summary", "would be replayed")
    assert live.sim.ids == []  # a dry run moves nothing
    keep_screenshot(ui.driver, "console-replay")  # docs/img/console.png
    live.run(live.sim.set_mode("up"))  # the backend is fixed
    ui.find("#replay-run").click()
    assert "skipped" in ui.until_text("#replay-result", "Replayed 3 message(s) to vnaccs")
    live.run(live.sim.wait_for(3, timeout_s=WAIT_S))
    assert sorted(live.sim.ids) == ["PRK-00000", "PRK-00001", "PRK-00002"]
    ui.wait.until(lambda _: ui.find_all("#parked-table tbody tr") == [], "nothing parked any more")


def test_a_message_is_looked_up_with_its_full_history(ui: Console, live: Live) -> None:
    (message_id,) = live.run(post_many(live.gw, 1, "LOOK"))
    live.run(journal_says(live, message_id, "delivered"))
    ui.signed_in()
    ui.go("message")
    ui.fill("message-sender", "VN-NSW")
    ui.fill("message-id", message_id)
    ui.find("#message-form button[type=submit]").click()
    assert ui.until_text('dd[data-field="Status"]', "delivered") == "delivered"
    assert ui.text('dd[data-field="Destination"]') == "vnaccs"
    events = [r.get_attribute("data-event") for r in ui.find_all("#message-history tbody tr")]
    assert events[0] == "received"
    assert events[-1] == "delivered"
    assert {"queued", "attempt"} <= set(events)

    ui.fill("message-id", "NO-SUCH-ID")
    ui.find("#message-form button[type=submit]").click()
    assert "Error 404" in ui.until_text("#status", "Error 404")


def test_the_report_is_shown_and_downloads_as_csv(ui: Console, live: Live, downloads: Path) -> None:
    ids = live.run(post_many(live.gw, 3, "REP"))
    for message_id in ids:
        live.run(journal_says(live, message_id, "delivered"))
    ui.signed_in()
    ui.go("report")  # the window defaults to the last 24 hours
    ui.find("#report-form button[type=submit]").click()
    assert "3 received, 3 delivered, 0 parked" in ui.until_text("#report-total", "received")
    assert ui.text('#report-table tr[data-destination="vnaccs"] td[data-field="received"]') == "3"

    ui.find("#report-csv").click()
    ui.until_text("#status", "Downloaded swgw-report-")
    ui.wait.until(lambda _: list(downloads.glob("*.csv")), "the CSV file")
    (path,) = downloads.glob("*.csv")
    assert path.name.startswith("swgw-report-")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["message_id"] for r in rows) == ids
    assert {(r["sender"], r["destination"], r["message_type"], r["status"]) for r in rows} == {
        ("VN-NSW", "vnaccs", "CUSDEC", "delivered")
    }
    assert all(r["delivered_at"] for r in rows)
