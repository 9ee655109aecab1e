"""Helpers for the browser tests: Debian's chromium, the real server, users made over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Locator,
    Page,
    sync_playwright,
)

from exchange.bench.server import Server, admin, exchange_env, free_port, running_server
from support import Mailbox, smtp_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PASSWORD = "correct-horse-42"
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian chromium; a clear failure (never a skip) when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's chromium. "
            "Run `make test` (its `chromium` target installs it with apt-get).",
            pytrace=False,
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Exchange:
    """The running ``exchange serve`` process, its settings and the captured mail."""

    server: Server
    env: dict[str, str]
    mailbox: Mailbox

    @property
    def url(self) -> str:
        return self.server.url

    def wait_code(self, email: str, timeout: float = 10.0) -> str:
        """The 6-digit code mailed to ``email`` (the mail may land just after the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            if any(to == email for to, _subject, _body in self.mailbox.messages):
                return self.mailbox.code_for(email)
            if time.monotonic() > deadline:
                raise AssertionError(f"no mail to {email} within {timeout} s")
            time.sleep(0.05)

    def credit(self, *credits: tuple[str, str, str]) -> None:
        """``exchange admin credit EMAIL COIN AMOUNT`` for each triple, run side by side
        (each CLI run takes seconds to start; the engine applies them one by one)."""
        with ThreadPoolExecutor(max_workers=len(credits) or 1) as pool:
            runs = list(
                pool.map(lambda c: admin(self.env, "credit", *c, "--note", "browser test"), credits)
            )
        for triple, done in zip(credits, runs, strict=True):
            assert done.returncode == 0, (triple, done.stderr)

    def new_user(self, email: str) -> str:
        """Register ``email`` over the API and log it in; its session token."""
        with httpx.Client(base_url=self.url, timeout=10) as client:
            answer = client.post("/api/make_valid_code", data={"user": email})
            assert answer.json()["status"], answer.text
            answer = client.post(
                "/api/regeist_user",
                data={"user": email, "pass": PASSWORD, "valid_code": self.wait_code(email)},
            )
            assert answer.json()["status"], answer.text
            answer = client.post("/api/login", data={"user": email, "pass": PASSWORD})
            assert answer.json()["status"], answer.text
            token: str = answer.json()["data"]["session"]
        return token

    def call(self, token: str, method: str, **params: str) -> Any:
        """An authenticated API call that must succeed; its ``data``."""
        answer = httpx.post(
            f"{self.url}/api/{method}",
            data=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        body = answer.json()
        assert body["status"], (method, params, answer.text)
        return body["data"]


@contextmanager
def serving(directory: Path, **settings: str) -> Iterator[Exchange]:
    """``exchange serve`` on a SQLite file in ``directory``, with a real SMTP server."""
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(f"sqlite:///{directory / 'exchange.db'}", smtp_port, **settings)
        with running_server(free_port(), env, directory / "server.log") as server:
            yield Exchange(server, env, mailbox)


@contextmanager
def browser_page(browser: Browser, exchange: Exchange) -> Iterator[Page]:
    """A fresh browser context on ``exchange`` (desktop size, UTC); fails on page errors."""
    context = browser.new_context(
        base_url=exchange.url,
        viewport={"width": 1280, "height": 900},
        timezone_id="UTC",
        locale="en-US",
    )
    page = context.new_page()
    errors = PageErrors()
    errors.watch(page)
    try:
        yield page
    finally:
        context.close()
    assert errors.errors == [], errors.errors


@dataclass
class PageErrors:
    """Uncaught exceptions and console errors of a page (failed fetches excluded:
    the pages show API refusals to the user, which the browser also logs)."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def element_screenshot(locator: Locator, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    locator.screenshot(path=str(path))
    return path


def login_cookie(page: Page, exchange: Exchange, token: str) -> None:
    """Put a session made over the API into the browser, as the login form would."""
    page.context.add_cookies(
        [{"name": "session", "value": token, "url": exchange.url, "httpOnly": True}]
    )


# Counts the pixels of the candle colours (#16c784 up, #ea3943 down) drawn on the chart's
# plot area (the canvases of its widest cell, so the price-axis label does not count).
CANDLE_PIXELS_JS = """
(box) => {
  const canvases = [...box.querySelectorAll('canvas')].filter((c) => c.width && c.height);
  const widest = Math.max(0, ...canvases.map((c) => c.width));
  let up = 0, down = 0;
  for (const canvas of canvases.filter((c) => c.width === widest)) {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] < 200) continue;
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      if (Math.abs(r - 22) < 24 && Math.abs(g - 199) < 24 && Math.abs(b - 132) < 24) up += 1;
      if (Math.abs(r - 234) < 24 && Math.abs(g - 57) < 24 && Math.abs(b - 67) < 24) down += 1;
    }
  }
  return { up, down, canvases: canvases.length, widest };
}
"""


def candle_pixels(page: Page, selector: str = "#chart") -> dict[str, int]:
    counts: dict[str, int] = page.locator(selector).evaluate(CANDLE_PIXELS_JS)
    return counts


def wait_for_candles(page: Page, selector: str = "#chart", minimum: int = 20) -> None:
    """Waits (polling on animation frames) until candles cover ``minimum`` pixels."""
    handle = page.locator(selector).element_handle()
    try:
        page.wait_for_function(
            f"([box, minimum]) => {{ const c = ({CANDLE_PIXELS_JS})(box); "
            "return c.up + c.down >= minimum; }",
            arg=[handle, minimum],
            timeout=10_000,
        )
    except Error as exc:
        raise AssertionError(f"the chart drew no candles: {candle_pixels(page, selector)}") from exc
