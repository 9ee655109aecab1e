"""The web UI in headless Chromium against the real ``exchange serve`` process.

A user's journeys, typed into the real forms and clicked on the real buttons:
register with the mailed code, log in, see balances, trade against a resting
order placed over the API, cancel, read the chart and the home page, set
withdrawal addresses, and use the trade page at phone width. Screenshots of
every page go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import ccxt
import httpx
import pytest
from browser_support import (
    PASSWORD,
    Exchange,
    PageErrors,
    element_screenshot,
    login_cookie,
    screenshot,
    serving,
    wait_for_candles,
)
from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.browser

expect.set_options(timeout=10_000)


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    with serving(tmp_path_factory.mktemp("browser")) as running:
        yield running


@pytest.fixture(scope="module")
def traders(exchange: Exchange) -> dict[str, str]:
    """Users made over the API and funded with the admin CLI: name -> session token."""
    funds = {
        "maker": (("BTC", "1"), ("ETH", "10")),
        "taker": (("USDT", "100000"),),
        "buyer": (("USDT", "1000"),),
        "wallet": (),
        "phone": (),
        "bot": (("USDT", "250.5"),),
    }
    tokens = {name: exchange.new_user(f"{name}@example.com") for name in funds}
    exchange.credit(
        *(
            (f"{name}@example.com", coin, amount)
            for name, coins in funds.items()
            for coin, amount in coins
        )
    )
    return tokens


@pytest.fixture(scope="module")
def market_with_trades(exchange: Exchange, traders: dict[str, str]) -> dict[str, str]:
    """Two trades on every market between the maker and the taker; the books end empty.

    Returns the price of each market's last fill made here.
    """
    fills = {
        "BTC/USDT": (("20000", "0.01"), ("20100", "0.01")),  # the taker gets BTC here
        "ETH/USDT": (("3000", "0.1"), ("3030", "0.1")),
        "ETH/BTC": (("0.05", "0.1"), ("0.0505", "0.1")),  # ... and spends it here
    }
    for pair, orders in fills.items():
        for price, amount in orders:
            exchange.call(traders["maker"], "sell", pair=pair, price=price, amount=amount)
            order = exchange.call(traders["taker"], "buy", pair=pair, price=price, amount=amount)
            assert order["status"] == "filled", order
    return {pair: orders[-1][0] for pair, orders in fills.items()}


def test_register_login_and_balances(page: Page, exchange: Exchange) -> None:
    email = "alice@example.com"
    page.goto("/register")
    expect(page.locator("h1")).to_have_text("Create an account")

    page.locator("#register-email").fill(email)
    page.locator("#send-code").click()
    expect(page.locator("#message")).to_contain_text(f"We sent a code to {email}")
    code = exchange.wait_code(email)

    # A weak password: refused in words, and the form keeps what was typed.
    page.locator("#register-code").fill(code)
    page.locator("#register-password").fill("password")
    page.locator("#register-submit").click()
    message = page.locator("#message")
    expect(message).to_have_class(re.compile(r"\berror\b"))
    expect(message).to_contain_text("Please choose a stronger password.")
    expect(page.locator("#register-email")).to_have_value(email)
    expect(page.locator("#register-code")).to_have_value(code)
    expect(page.locator("#register-password")).to_have_value("password")
    screenshot(page, "register")

    page.locator("#register-password").fill(PASSWORD)
    with page.expect_response("**/api/regeist_user") as registered:
        page.locator("#register-submit").click()
    assert registered.value.json()["status"] is True, registered.value.text()
    # The page takes the new user to the login form, the e-mail filled in.
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.locator("#login-email")).to_have_value(email)
    screenshot(page, "login")

    # A wrong password is refused in words; the right one opens the account page.
    page.locator("#login-password").fill("not-the-password-1")
    page.locator("#login-submit").click()
    expect(message).to_contain_text("Wrong e-mail address or password.")
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.locator("#login-email")).to_have_value(email)

    page.locator("#login-password").fill(PASSWORD)
    page.locator("#login-submit").click()
    expect(page).to_have_url(re.compile(r"/account$"))
    balances = page.locator("#balances")
    for coin, zero in (("BTC", "0.00000000"), ("ETH", "0.00000000"), ("USDT", "0.000000")):
        row = balances.locator(f'.balance-row[data-coin="{coin}"]')
        expect(row.locator(".available")).to_have_text(zero)
        expect(row.locator(".frozen")).to_have_text(zero)

    exchange.credit((email, "USDT", "1250.5"), (email, "btc", "0.25"))
    page.reload()
    expect(balances.locator('.balance-row[data-coin="USDT"] .available')).to_have_text(
        "1250.500000"
    )
    expect(balances.locator('.balance-row[data-coin="BTC"] .available')).to_have_text("0.25000000")
    expect(balances.locator('.balance-row[data-coin="ETH"] .available')).to_have_text("0.00000000")


def test_login_never_leaves_the_site(page: Page, exchange: Exchange) -> None:
    """After login the page goes to its ``next`` only if that stays on this site, read
    the way the browser reads a URL ("/%2e//evil.example" is "//evil.example")."""
    email = "redirect@example.com"
    exchange.new_user(email)
    for next_page, lands in (
        ("/trade/BTC_USDT", r"/trade/BTC_USDT$"),
        ("/%2e//evil.example", r"/account$"),
        ("/\t/evil.example", r"/account$"),
    ):
        page.context.clear_cookies()
        page.goto("/login")
        # As if the server had let it through: the script must refuse it by itself.
        page.evaluate(
            "next => { document.getElementById('login-form').dataset.next = next; }", next_page
        )
        page.locator("#login-email").fill(email)
        page.locator("#login-password").fill(PASSWORD)
        page.locator("#login-submit").click()
        expect(page).to_have_url(re.compile(lands))
        assert page.url.startswith(exchange.url), page.url


def test_trade_crosses_a_resting_sell_and_cancels(
    page: Page, exchange: Exchange, traders: dict[str, str]
) -> None:
    buyer = traders["buyer"]
    resting = exchange.call(traders["maker"], "sell", pair="BTC/USDT", price="30000", amount="0.01")
    assert resting["status"] == "open", resting

    login_cookie(page, exchange, buyer)
    page.goto("/trade/BTC_USDT")
    expect(page.locator(".pair-name")).to_have_text("BTC/USDT")
    quote = page.locator("#balance-quote")
    base = page.locator("#balance-base")
    expect(quote).to_have_text("1000.000000")
    expect(base).to_have_text("0.00000000")
    expect(page.locator("#book-asks .level.ask", has_text="30000.00")).to_be_visible()

    buy = page.locator("#buy-form")
    buy.locator('input[name="price"]').fill("30000")
    buy.locator('input[name="amount"]').fill("0.01")
    expect(buy.locator('output[name="total"]')).to_have_text("300.000000")
    expect(buy.locator('output[name="fee"]')).to_have_text("0.00002000")
    buy.locator('button[type="submit"]').click()

    expect(page.locator("#message")).to_contain_text("filled 0.01")
    first_trade = page.locator("#trades .trade-row").first
    expect(first_trade).to_contain_text("30000.00")
    expect(first_trade).to_contain_text("0.01")
    # 0.01 BTC bought at the maker's 30000: 300 USDT paid, 0.2 % fee taken from the BTC.
    expect(base).to_have_text("0.00998000")
    expect(quote).to_have_text("700.000000")
    expect(page.locator("#book-asks .level", has_text="30000.00")).to_have_count(0)
    expect(page.locator("#my-trades .my-trade-row").first).to_contain_text("30000.00")

    # A buy far below the market rests: 0.5 × 100 = 50 USDT frozen, then canceled.
    buy.locator('input[name="price"]').fill("100")
    buy.locator('input[name="amount"]').fill("0.5")
    buy.locator('button[type="submit"]').click()
    orders = page.locator("#open-orders .order-row")
    expect(orders).to_have_count(1)
    expect(orders.first).to_contain_text("100.00")
    expect(quote).to_have_text("650.000000")
    page.evaluate("() => window.scrollTo(0, 0)")  # the sticky top bar at the top of the shot
    screenshot(page, "trade")

    orders.first.locator(".cancel-btn").click()
    expect(page.locator("#message")).to_contain_text("Order canceled.")
    expect(orders).to_have_count(0)
    expect(quote).to_have_text("700.000000")
    expect(base).to_have_text("0.00998000")
    expect(page.locator("#order-history .history-row", has_text="canceled")).to_have_count(1)


def test_chart_draws_candles_and_switches_interval(
    page: Page, market_with_trades: dict[str, str]
) -> None:
    page.goto("/trade/BTC_USDT")
    chart = page.locator("#chart")
    expect(chart.locator("canvas").first).to_be_visible()
    expect(page.locator("#chart-empty")).to_be_hidden()
    expect(page.locator("#trades .trade-row").first).to_be_visible()

    wait_for_candles(page)

    for label, interval in (("5m", "5min"), ("1d", "1d"), ("1m", "1min")):
        button = page.locator(f'#interval-switcher button[data-interval="{interval}"]')
        with page.expect_response(
            re.compile(rf"/api/get_coin_k_line\?.*interval={interval}\b")
        ) as answer:
            button.click()
        assert answer.value.ok
        expect(button).to_have_text(label)
        expect(button).to_have_attribute("aria-pressed", "true")
        expect(page.locator('#interval-switcher button[aria-pressed="true"]')).to_have_count(1)
        wait_for_candles(page)
    element_screenshot(chart, "trade-chart")


def test_home_lists_every_market_with_a_sparkline(
    page: Page, exchange: Exchange, market_with_trades: dict[str, str]
) -> None:
    page.goto("/")
    rank = page.locator("#rank")
    for pair in market_with_trades:
        price = httpx.get(f"{exchange.url}/api/get_coin", params={"pair": pair}).json()["data"][1]
        row = rank.locator(f'.rank-row[data-pair="{pair}"]')
        expect(row).to_have_count(1)
        expect(row.locator(".price")).to_have_text(price)
        expect(row.locator("svg.spark polyline, svg.spark path")).to_have_count(1)
    expect(rank.locator(".rank-row")).to_have_count(3)
    screenshot(page, "home")

    # A click anywhere on a row (here its price) opens that market.
    rank.locator('.rank-row[data-pair="ETH/BTC"] .price').click()
    expect(page).to_have_url(re.compile(r"/trade/ETH_BTC$"))
    expect(page.locator(".pair-name")).to_have_text("ETH/BTC")


def test_withdrawal_addresses(page: Page, exchange: Exchange, traders: dict[str, str]) -> None:
    token = traders["wallet"]
    login_cookie(page, exchange, token)
    page.goto("/account")
    expect(page.locator('#balances .balance-row[data-coin="ETH"] .available')).to_have_text(
        "0.00000000"
    )
    form = page.locator("#address-form")
    message = page.locator("#message")
    address = "0x52908400098527886E0F7030069857D2E4169EE7"
    form.locator('select[name="coin"]').select_option("ETH")
    form.locator('input[name="address"]').fill(address)
    form.locator('button[type="submit"]').click()
    expect(message).to_contain_text("ETH address saved. It can be used from")

    saved = exchange.call(token, "get_withdraw_address", coin="ETH")
    assert saved["address"] == address
    usable = datetime.fromtimestamp(saved["usable_from"] / 1000, UTC)
    shown = usable.strftime("%Y-%m-%d %H:%M:%S")
    row = page.locator('#addresses .address-row[data-coin="ETH"]')
    expect(row).to_contain_text(address)
    expect(row).to_contain_text(shown)
    expect(message).to_contain_text(shown)
    expect(page.locator('#addresses .address-row[data-coin="BTC"]')).to_contain_text("not set")

    # The default cooldown (24 h) is running: a withdrawal is refused in words.
    withdraw = page.locator("#withdraw-form")
    withdraw.locator('select[name="coin"]').select_option("ETH")
    withdraw.locator('input[name="amount"]').fill("0.5")
    withdraw.locator('button[type="submit"]').click()
    expect(message).to_contain_text("cannot be used yet")
    expect(withdraw.locator('input[name="amount"]')).to_have_value("0.5")

    for coin, bad in (
        ("ETH", "0x52908400098527886e0F7030069857D2E4169EE7"),  # EIP-55 checksum broken
        ("BTC", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb"),  # base58check checksum broken
    ):
        message.evaluate("box => { box.replaceChildren(); box.className = 'message'; }")
        form.locator('select[name="coin"]').select_option(coin)
        form.locator('input[name="address"]').fill(bad)
        form.locator('button[type="submit"]').click()
        expect(message).to_have_class(re.compile(r"\berror\b"))
        expect(message).to_contain_text("This address is not valid for the chosen coin.")
        # What was typed stays; the saved ETH address is unchanged.
        expect(form.locator('input[name="address"]')).to_have_value(bad)
        expect(form.locator('select[name="coin"]')).to_have_value(coin)
        expect(row).to_contain_text(address)
    assert exchange.call(token, "get_withdraw_address", coin="BTC")["address"] is None
    screenshot(page, "account")


def test_api_keys_on_the_account_page(
    page: Page, exchange: Exchange, traders: dict[str, str]
) -> None:
    """Create a key, use it from ccxt with the settings the page shows, delete it."""
    login_cookie(page, exchange, traders["bot"])
    page.goto("/account")
    form = page.locator("#key-form")
    form.locator('input[name="label"]').fill("freqtrade")
    form.locator('select[name="permissions"]').select_option("trade")
    form.locator('button[type="submit"]').click()
    expect(page.locator("#message")).to_contain_text('API key "freqtrade" created.')
    key = page.locator("#new-key-key").inner_text()
    secret = page.locator("#new-key-secret").inner_text()
    assert len(key) == 64 and len(secret) == 64
    snippet = page.locator("#ccxt-snippet").inner_text()
    assert f'"{exchange.url}/api/v3"' in snippet and secret in snippet
    freqtrade = json.loads("{" + page.locator("#freqtrade-snippet").inner_text() + "}")
    assert freqtrade["exchange"]["key"] == key and freqtrade["exchange"]["secret"] == secret
    urls = freqtrade["exchange"]["ccxt_config"]["urls"]["api"]
    streams = urls.pop("ws")
    assert urls == {name: f"{exchange.url}/api/v3" for name in ("public", "private", "sapi")}
    ws = exchange.url.replace("http://", "ws://")
    assert streams == {"spot": f"{ws}/ws", "ws-api": {"spot": f"{ws}/ws-api/v3"}}
    row = page.locator("#keys .key-row")
    expect(row).to_have_count(1)
    expect(row.locator(".permissions")).to_have_text("read, trade")
    screenshot(page, "account-api-key")

    api = f"{exchange.url}/api/v3"

    def client() -> ccxt.binance:  # a new one each time: ccxt remembers having logged in
        return ccxt.binance(
            {
                "apiKey": key,
                "secret": secret,
                "urls": {"api": {"public": api, "private": api, "sapi": api}},
                "options": {
                    "fetchMarkets": {"types": ["spot"]},
                    "fetchCurrencies": False,
                    "fetchMargins": False,
                },
            }
        )

    rows = client().fetch_balance()["info"]["balances"]
    assert {"asset": "USDT", "free": "250.500000", "locked": "0.000000"} in rows

    row.locator("button.delete-key").click()
    expect(page.locator("#message")).to_contain_text("API key deleted")
    expect(page.locator("#keys .key-row")).to_have_count(0)
    expect(page.locator("#new-key")).to_be_hidden()
    with pytest.raises(ccxt.AuthenticationError, match="-2015"):
        client().fetch_balance()


def test_trade_page_fits_a_phone(
    browser: Browser,
    exchange: Exchange,
    traders: dict[str, str],
    market_with_trades: dict[str, str],
) -> None:
    token = traders["phone"]
    context = browser.new_context(
        base_url=exchange.url,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        timezone_id="UTC",
    )
    try:
        page = context.new_page()
        errors = PageErrors()
        errors.watch(page)
        login_cookie(page, exchange, token)
        page.goto("/trade/BTC_USDT")
        expect(page.locator("#balance-quote")).to_have_text("0.000000")
        expect(page.locator("#trades .trade-row").first).to_be_visible()
        expect(page.locator("#chart canvas").first).to_be_visible()
        for form in ("#buy-form", "#sell-form"):
            expect(page.locator(form)).to_be_visible()
            page.locator(form).scroll_into_view_if_needed()
            box = page.locator(form).bounding_box()
            assert box is not None
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (form, box)
        widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"horizontal page scroll at 390 px: {widths}"
        page.evaluate("() => window.scrollTo(0, 0)")
        screenshot(page, "trade-phone")
        # The other pages at phone width, once their data has loaded.
        for name, path, loaded in (
            ("home", "/", "#rank .rank-row svg.spark polyline"),
            ("account", "/account", '#addresses .address-row[data-coin="USDT"]'),
            ("login", "/login", "#login-form"),
        ):
            page.goto(path)
            page.locator(loaded).first.wait_for(state="attached")
            widths = page.evaluate(
                "() => [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert widths[0] <= widths[1], f"horizontal page scroll at 390 px on {path}: {widths}"
            screenshot(page, f"{name}-phone")
        assert errors.errors == [], errors.errors
    finally:
        context.close()
