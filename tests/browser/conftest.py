"""The ops console in a real browser: Debian's chromium, driven by Selenium through Debian's chromedriver.

`live` runs a gateway (real RabbitMQ, journal on SQLite) and a backend simulator on an event
loop in a thread of their own, so the test's WebDriver calls, which block, never stall them;
`live.run(coro)` runs a coroutine there (post messages, switch the simulator) and returns
its result. `console` is a fresh headless chromium per test, its downloads going to the
test's own folder, with a screenshot of the last page saved to build/browser-screenshots/
(gitignored) after every test, failed or not.

Selenium is given the driver and the browser by path, and SE_OFFLINE is set, so Selenium
Manager never downloads anything. Missing chromium, chromium-driver or selenium: the tests
skip locally and fail in CI (`CI` set), like the broker fixtures (ops/setup-env.sh installs
them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.tools.simulator import Simulator
from tests.helpers import (
    ROOT,
    RunningGateway,
    config_doc,
    delete_topology,
    fast_destination,
    run_gateway,
    write_settings,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "build" / "browser-screenshots"
T = TypeVar("T")


@pytest.fixture(scope="session")
def browser_ready() -> None:
    """chromium, its driver and selenium are here. Missing locally → skip; missing in CI → fail."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip, the dev extras)")
    if missing:
        text = f"the console's browser tests need {', '.join(missing)} (ops/setup-env.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(text)
        pytest.skip(text)


class Live:
    """A gateway and a simulator on their own event loop thread; see the module docstring."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-gateway", daemon=True)
        self.thread.start()
        self.gw: RunningGateway
        self.sim: Simulator

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @property
    def url(self) -> str:
        return f"{self.gw.url}/console"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def live(tmp_path: Path, rabbit_url: str, prefix: str) -> Iterator[Live]:
    """Role "all", the admin API on the partner port, one fast destination `vnaccs` at the simulator."""
    live = Live()
    stack = contextlib.AsyncExitStack()

    async def start() -> None:
        live.sim = await stack.enter_async_context(Simulator())
        settings = write_settings(tmp_path, config_doc(prefix, destinations=[fast_destination("vnaccs", live.sim)]))
        stack.push_async_callback(delete_topology, settings)
        live.gw = await stack.enter_async_context(run_gateway(settings))

    try:
        live.run(start())
        yield live
    finally:
        live.run(stack.aclose())
        live.close()


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def console(browser_ready: None, downloads: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A headless chromium (a laptop-sized window) whose downloads land in `downloads`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,860", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console's errors, CSP reports too
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")  # Selenium Manager, were it ever asked, must not download a driver
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(SCREENSHOTS / f"{request.node.name}.png"))
        driver.quit()


def keep_screenshot(driver: Any, name: str) -> Path:
    """Save the page now as build/browser-screenshots/<name>.png (docs/img/console.png is one of these)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
