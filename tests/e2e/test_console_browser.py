"""The operator console in headless Chromium against the real ``exchange serve`` process.

An operator made with ``exchange admin create-operator`` (the password on standard
input) logs in, scans nothing but reads the TOTP secret off the enrolment page,
confirms a code, logs out and in again with a code, approves one withdrawal and
rejects another, halts a market and reads the audit log — all by typing into the
real forms. Screenshots go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pyotp
import pytest
from browser_support import Exchange, screenshot, serving
from playwright.sync_api import Page, expect

from exchange.bench.server import admin

pytestmark = pytest.mark.browser

expect.set_options(timeout=10_000)

OPERATOR = "ops@example.com"
OPERATOR_PASSWORD = "ledger-keeper-77"
USER = "payee@example.com"
ADDRESS = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    tmp = tmp_path_factory.mktemp("console")
    with serving(tmp, EXCHANGE_WITHDRAW_ADDRESS_COOLDOWN="0") as running:
        yield running


def log_in(page: Page, code: str = "") -> None:
    page.goto("/admin")
    expect(page.locator("h1")).to_have_text("Operator login")
    page.locator("input[name=email]").fill(OPERATOR)
    page.locator("input[name=password]").fill(OPERATOR_PASSWORD)
    page.locator("input[name=code]").fill(code)
    page.locator("#login").click()


def test_an_operator_logs_in_with_totp_reviews_withdrawals_and_halts_a_market(
    page: Page, exchange: Exchange
) -> None:
    made = admin(
        exchange.env, "create-operator", OPERATOR, "--password-stdin", stdin=OPERATOR_PASSWORD
    )
    assert made.returncode == 0, made.stderr
    assert "/admin/login" in made.stdout

    token = exchange.new_user(USER)
    exchange.credit((USER, "BTC", "1"))
    exchange.call(token, "set_withdraw_address", coin="BTC", address=ADDRESS)
    sent_id = exchange.call(token, "withdraw", coin="BTC", amount="0.1")["withdrawal_id"]
    rejected_id = exchange.call(token, "withdraw", coin="BTC", amount="0.2")["withdrawal_id"]

    # First login: the password alone, then the TOTP app is set up from the page.
    log_in(page)
    expect(page.locator("h1")).to_have_text("Set up two-factor login")
    expect(page.locator("#qr")).to_be_visible()
    screenshot(page, "console-enroll")
    secret = page.locator("#secret").inner_text().replace(" ", "")
    totp = pyotp.TOTP(secret)
    page.locator("input[name=code]").fill(totp.now())
    page.locator("#confirm").click()
    expect(page.locator("#done")).to_contain_text("Two-factor login is set up")

    # Out, and in again with a code. The one just used is spent; the next time step's
    # code is accepted at once (the server allows one step of clock drift).
    page.locator("#logout").click()
    expect(page.locator("h1")).to_have_text("Operator login")
    log_in(page, "000000")
    expect(page.locator("#error")).to_contain_text("wrong e-mail address, password or code")
    log_in(page, totp.at(time.time() + totp.interval))
    expect(page.locator("h1")).to_have_text("Pending withdrawals")
    expect(page.locator("#operator")).to_have_text(OPERATOR)

    # Approve one withdrawal with its transaction id, reject the other with a reason.
    expect(page.locator(f"#withdrawal-{sent_id}")).to_contain_text(ADDRESS)
    screenshot(page, "console-withdrawals")
    row = page.locator(f"#withdrawal-{sent_id}")
    row.locator("input[name=txid]").fill(
        "f4184fc596403b9d638783cf57adfe4c75c605f6356fbc91338530e9831e9e16"
    )
    row.get_by_role("button", name="Mark sent").click()
    expect(page.locator("#done")).to_contain_text(f"Withdrawal {sent_id} marked sent")
    row = page.locator(f"#withdrawal-{rejected_id}")
    row.locator("input[name=reason]").fill("the address failed our checks")
    row.get_by_role("button", name="Reject").click()
    expect(page.locator("#done")).to_contain_text(f"Withdrawal {rejected_id} rejected")
    expect(page.locator(f"#reviewed-{sent_id}")).to_contain_text("sent")
    expect(page.locator(f"#reviewed-{rejected_id}")).to_contain_text("the address failed")
    expect(page.locator("#pending")).to_contain_text("No withdrawal waits for review.")
    screenshot(page, "console-withdrawals-reviewed")
    history = {w["withdrawal_id"]: w for w in exchange.call(token, "get_withdrawals")}
    assert history[sent_id]["status"] == "sent"
    assert history[rejected_id]["status"] == "rejected"

    # Halt a market: the page says so, and an order there is refused.
    page.locator("nav").get_by_role("link", name="Markets").click()
    market = page.locator("#market-BTC_USDT")
    expect(market).to_contain_text("trading")
    market.locator("input[name=note]").fill("chain halt upstream")
    market.get_by_role("button", name="Halt").click()
    expect(page.locator("#done")).to_contain_text("Market BTC/USDT halted")
    expect(page.locator("#market-BTC_USDT .badge")).to_have_text("halted")
    screenshot(page, "console-markets-halted")
    refused = httpx.post(
        f"{exchange.url}/api/buy",
        data={"pair": "BTC/USDT", "amount": "0.001", "price": "100"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert refused["description"].startswith("market_halted"), refused
    page.locator("#market-BTC_USDT").get_by_role("button", name="Resume").click()
    expect(page.locator("#market-BTC_USDT .badge")).to_have_text("trading")

    # The audit log names the operator for each of it.
    page.locator("nav").get_by_role("link", name="Audit log").click()
    audit = page.locator("#audit")
    for action in ("approve", "reject", "halt", "resume", "console_login"):
        expect(audit).to_contain_text(action)
    expect(audit).to_contain_text(f"{OPERATOR} (console)")
    screenshot(page, "console-audit")
