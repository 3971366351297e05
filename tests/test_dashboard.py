"""The /dashboard page in a real headless Chromium, against a real router with an API key."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import Router

KEY = "dash-key"


def _find(*candidates: str | None) -> str | None:
    return next((c for c in candidates if c and os.path.exists(c)), None)


CHROMIUM = _find("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
                 shutil.which("google-chrome"))
CHROMEDRIVER = _find("/usr/bin/chromedriver", shutil.which("chromedriver"))


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> Iterator[Router]:
    models = [{**demo_model("demo-chat"), "memory": "1GB"}, {**demo_model("demo-embed"), "memory": "1GB"}]
    with Router(tmp_path_factory.mktemp("dash"), models, {"api_key": KEY, "memory_budget": "4GB"}) as r:
        yield r


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        if sys.platform.startswith("linux"):  # CI installs them: missing there is a failure, not a skip
            pytest.fail("chromium and chromedriver are needed for this test: run "
                        "`scripts/system-deps.sh chromium chromium-driver` (as root) or install them")
        pytest.skip("no Chromium and chromedriver on this machine (CI on Linux installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver: Any, script: str, timeout: float = 30.0) -> Any:
    """Wait until ``script`` (JavaScript returning a value) returns something truthy; return it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def _shows(model: str, state: str) -> str:
    """JavaScript: the live page shows ``model`` in ``state``."""
    return (f"const r = document.querySelector('#models tr[data-model=\"{model}\"]');"
            f"return r !== null && r.dataset.state === '{state}' && r.querySelector('.badge').textContent === "
            f"'{state}' && document.querySelector('#conn .dot.live') !== null;")


def test_dashboard_shows_the_models_and_follows_a_load(router: Router, browser: Any, tmp_path: Path) -> None:
    browser.get(f"{router.base_url}/dashboard?key={KEY}")
    assert browser.title == "mlx-serve"
    names = _wait(browser, "const rows = [...document.querySelectorAll('#models tr[data-model]')];"
                           "return rows.length ? rows.map(r => r.dataset.model) : null;")
    assert names == ["demo-chat", "demo-embed"]
    assert _wait(browser, _shows("demo-chat", "stopped"))
    with router.client() as c:
        assert c.post("/api/load", json={"model": "demo-chat"}).status_code == 200
        reply = c.post("/v1/chat/completions", json={"model": "demo-chat", "max_tokens": 3,
                                                     "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200
    assert _wait(browser, _shows("demo-chat", "ready"))  # the page polls: no reload
    assert _wait(browser, _shows("demo-embed", "stopped"))
    memory = _wait(browser, "const t = document.getElementById('memlegend').textContent;"
                            "return t.includes('demo-chat') ? t : null;")
    assert "1.0 GB of 4.0 GB budget (25%)" in memory
    request_row = _wait(browser, "const r = document.querySelector('#requests tbody tr');"
                                 "return r && r.textContent.includes('/v1/chat/completions') ? r.textContent : null;")
    assert "demo-chat" in request_row and "200" in request_row
    events = _wait(browser, "const e = [...document.querySelectorAll('#events tr[data-event]')]"
                            ".map(r => r.dataset.event); return e.includes('ready') ? e : null;")
    assert "load" in events
    assert browser.find_element("id", "banner").is_displayed() is False
    # The page's own buttons send the key too: load the other model from the page.
    browser.find_element("css selector", '#models tr[data-model="demo-embed"] button').click()
    assert _wait(browser, _shows("demo-embed", "ready"), timeout=60)
    assert sorted(m["name"] for m in router.ps()) == ["demo-chat", "demo-embed"]
    if os.environ.get("MLX_SERVE_SCREENSHOT"):  # for a look during development; never committed
        browser.save_screenshot(os.environ["MLX_SERVE_SCREENSHOT"])


def test_dashboard_without_the_key_is_refused_and_says_how_to_open_it(router: Router, browser: Any) -> None:
    browser.get(f"{router.base_url}/dashboard")
    assert "?key=" in browser.find_element("tag name", "body").text


def test_the_key_in_the_query_opens_only_the_dashboard(router: Router) -> None:
    page = httpx.get(f"{router.base_url}/dashboard", params={"key": KEY})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{router.base_url}/dashboard", params={"key": "wrong"}).status_code == 401
    assert httpx.get(f"{router.base_url}/api/ps", params={"key": KEY}).status_code == 401
    assert httpx.get(f"{router.base_url}/metrics", params={"key": KEY}).status_code == 401
