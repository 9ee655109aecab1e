"""The unmodified ccxt package against a real ``exchange serve`` process (issue 14).

ccxt is configured only as a user would (the README's "Connect your tools"):
its ``urls.api`` point at this server, spot markets only, no currency or margin
lookups. Every figure is compared exactly, as a Decimal from the strings the
server sent (ccxt's own floats are only used where ccxt computes them).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import ccxt
import ccxt.async_support as ccxt_async
import httpx
import pytest
from ccxt_support import (
    Exchange,
    balances,
    create_key,
    options,
    started,
)
from Crypto.PublicKey import ECC

from exchange.bench.server import exchange_env, running_server
from support import free_port


@pytest.fixture
def exchange(db_url: str, tmp_path: Path) -> Iterator[Exchange]:
    with started(db_url, tmp_path) as running:
        yield running


def test_markets_match_the_settings(exchange: Exchange) -> None:
    client = exchange.alice.client(exchange.url)
    markets = client.load_markets()
    assert sorted(markets) == ["BTC/USDT", "ETH/BTC", "ETH/USDT"]
    expected = {  # SPEC §3's defaults: tick, step, minimum amount, minimum notional
        "BTC/USDT": ("0.01", "0.00001", "0.00001", "5"),
        "ETH/USDT": ("0.01", "0.0001", "0.0001", "5"),
        "ETH/BTC": ("0.000001", "0.0001", "0.0001", "0.0001"),
    }
    for symbol, (tick, step, minimum, notional) in expected.items():
        market = markets[symbol]
        assert market["spot"] and market["active"] and market["type"] == "spot"
        assert Decimal(str(market["precision"]["price"])) == Decimal(tick)
        assert Decimal(str(market["precision"]["amount"])) == Decimal(step)
        assert Decimal(str(market["limits"]["amount"]["min"])) == Decimal(minimum)
        assert Decimal(str(market["limits"]["cost"]["min"])) == Decimal(notional)
        assert Decimal(str(market["limits"]["price"]["min"])) == Decimal(tick)
    # ccxt's rounding agrees with the server's filters: what it sends is accepted.
    assert client.price_to_precision("BTC/USDT", 30000.123) == "30000.12"
    assert client.amount_to_precision("BTC/USDT", 0.123456789) == "0.12345"
    before = time.time() * 1000
    server_time = client.fetch_time()
    assert before - 1000 <= server_time <= time.time() * 1000 + 1000


def test_trading_through_ccxt(exchange: Exchange) -> None:
    url = exchange.url
    alice, bob = exchange.alice.client(url), exchange.bob.client(url)
    alice.load_markets()
    bob.load_markets()
    assert balances(alice)["USDT"] == (Decimal("10000"), Decimal(0))

    sell = bob.create_order("BTC/USDT", "limit", "sell", 0.5, 30000)
    assert sell["status"] == "open" and sell["filled"] == 0
    assert balances(bob)["BTC"] == (Decimal("1.5"), Decimal("0.5"))
    buy = alice.create_order("BTC/USDT", "limit", "buy", 0.1, 30000)
    assert buy["status"] == "closed"
    fill = buy["info"]["fills"][0]
    assert (fill["price"], fill["qty"], fill["commissionAsset"]) == (
        "30000.00",
        "0.10000000",
        "BTC",
    )
    assert Decimal(fill["commission"]) == Decimal("0.0002")  # 0.2 % of 0.1 BTC
    assert balances(alice)["BTC"] == (Decimal("0.0998"), Decimal(0))
    assert balances(alice)["USDT"] == (Decimal("7000"), Decimal(0))
    assert balances(bob)["USDT"] == (Decimal("2994"), Decimal(0))  # 3,000 less 0.2 %
    assert balances(bob)["BTC"] == (Decimal("1.5"), Decimal("0.4"))

    # A market buy takes the rest of the resting sell, at its price.
    market_buy = alice.create_order("BTC/USDT", "market", "buy", 0.2)
    assert market_buy["status"] == "closed" and market_buy["filled"] == 0.2
    assert Decimal(market_buy["info"]["cummulativeQuoteQty"]) == Decimal("6000")
    assert balances(alice)["USDT"] == (Decimal("1000"), Decimal(0))
    assert balances(alice)["BTC"] == (Decimal("0.2994"), Decimal(0))

    # Post-only: resting is fine, crossing is refused as ccxt expects.
    maker = alice.create_order("BTC/USDT", "limit", "buy", 0.01, 29000, {"postOnly": True})
    assert maker["status"] == "open" and maker["postOnly"]
    with pytest.raises(ccxt.OrderImmediatelyFillable):
        bob.create_order("BTC/USDT", "limit", "sell", 0.01, 28000, {"postOnly": True})

    # The book, the tickers and the trades agree with what happened.
    book = alice.fetch_order_book("BTC/USDT")
    assert book["bids"] == [[29000.0, 0.01]] and book["asks"] == [[30000.0, 0.2]]
    raw = httpx.get(f"{url}/api/v3/depth", params={"symbol": "BTCUSDT"}).json()
    assert book["nonce"] == raw["lastUpdateId"] and raw["bids"] == [["29000.00", "0.01000000"]]
    ticker = alice.fetch_ticker("BTC/USDT")
    info = ticker["info"]
    assert (info["lastPrice"], info["bidPrice"], info["askPrice"]) == (
        "30000.00",
        "29000.00",
        "30000.00",
    )
    assert Decimal(info["volume"]) == Decimal("0.3") and info["count"] == 2
    assert Decimal(info["quoteVolume"]) == Decimal("9000")
    assert set(alice.fetch_tickers()) == {"BTC/USDT", "ETH/USDT", "ETH/BTC"}
    trades = alice.fetch_trades("BTC/USDT")
    assert [(t["side"], t["price"], t["amount"]) for t in trades] == [
        ("buy", 30000.0, 0.1),
        ("buy", 30000.0, 0.2),
    ]

    # Every interval ccxt lists, with since: one candle holding both trades.
    first_trade = trades[0]["timestamp"]
    for timeframe in alice.timeframes:
        if timeframe == "1s":
            continue  # Binance's 1-second klines: not kept here (ccxt lists them)
        candles = alice.fetch_ohlcv("BTC/USDT", timeframe, since=first_trade - 10 * 86_400_000)
        assert candles, timeframe
        assert candles[0][0] <= first_trade, timeframe  # nothing before the first trade
        assert all(row[1:5] == [30000.0] * 4 for row in candles), timeframe
        assert Decimal(str(sum(row[5] for row in candles))) == Decimal("0.3"), timeframe
    with pytest.raises(ccxt.BadRequest):
        alice.public_get_klines({"symbol": "BTCUSDT", "interval": "7m"})

    # Orders: one, the open ones, the closed ones; cancel one and all.
    found = bob.fetch_order(sell["id"], "BTC/USDT")
    assert found["status"] == "open" and found["filled"] == 0.3 and found["remaining"] == 0.2
    assert found["clientOrderId"] == sell["clientOrderId"]
    by_client = bob.fetch_order(None, "BTC/USDT", {"origClientOrderId": sell["clientOrderId"]})
    assert by_client["id"] == sell["id"]
    open_orders = alice.fetch_open_orders("BTC/USDT")
    assert [order["id"] for order in open_orders] == [maker["id"]]
    closed = alice.fetch_closed_orders("BTC/USDT")
    assert {order["id"] for order in closed} == {buy["id"], market_buy["id"]}
    canceled = alice.cancel_order(maker["id"], "BTC/USDT")
    assert canceled["status"] == "canceled"
    assert balances(alice)["USDT"] == (Decimal("1000"), Decimal(0))
    for price in (29000, 29100):
        alice.create_order("BTC/USDT", "limit", "buy", 0.001, price)
    assert balances(alice)["USDT"][1] == Decimal("58.1")
    assert len(alice.cancel_all_orders("BTC/USDT")) == 2
    assert balances(alice)["USDT"] == (Decimal("1000"), Decimal(0))
    assert alice.fetch_open_orders("BTC/USDT") == []

    mine = alice.fetch_my_trades("BTC/USDT")
    assert [(t["side"], t["takerOrMaker"], t["amount"]) for t in mine] == [
        ("buy", "taker", 0.1),
        ("buy", "taker", 0.2),
    ]
    assert [Decimal(t["info"]["commission"]) for t in mine] == [
        Decimal("0.0002"),
        Decimal("0.0004"),
    ]
    bob_trades = bob.fetch_my_trades("BTC/USDT")
    assert [(t["side"], t["takerOrMaker"]) for t in bob_trades] == [("sell", "maker")] * 2
    assert [Decimal(t["info"]["commission"]) for t in bob_trades] == [Decimal(6), Decimal(12)]
    assert sum(Decimal(t["info"]["quoteQty"]) for t in bob_trades) == Decimal(9000)

    # A market buy by value (quoteOrderQty): 600 USDT buys 0.02 BTC at 30,000.
    by_cost = alice.create_market_buy_order_with_cost("BTC/USDT", 600)
    assert by_cost["status"] == "closed" and by_cost["info"]["origQuoteOrderQty"] == "600.000000"
    assert Decimal(by_cost["info"]["executedQty"]) == Decimal("0.02")
    assert balances(alice)["USDT"] == (Decimal("400"), Decimal(0))
    assert balances(alice)["BTC"] == (Decimal("0.2994") + Decimal("0.01996"), Decimal(0))


def test_refusals_are_the_errors_ccxt_knows(exchange: Exchange) -> None:
    url = exchange.url
    alice = exchange.alice.client(url)
    alice.load_markets()
    with pytest.raises(ccxt.InsufficientFunds):
        alice.create_order("BTC/USDT", "limit", "buy", 1, 30000)  # 30,000 USDT > 10,000
    with pytest.raises(ccxt.OrderNotFound):
        alice.cancel_order("999999", "BTC/USDT")
    with pytest.raises(ccxt.OrderNotFound):
        alice.fetch_order("999999", "BTC/USDT")
    with pytest.raises(ccxt.InvalidOrder, match="PRICE_FILTER"):  # off the tick, sent raw
        alice.private_post_order(
            {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
             "quantity": "0.001", "price": "30000.001"}
        )  # fmt: skip
    with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):
        alice.private_post_order(
            {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
             "quantity": "0.000001", "price": "30000"}
        )  # fmt: skip
    with pytest.raises(ccxt.BadSymbol):
        alice.public_get_ticker_24hr({"symbol": "DOGEUSDT"})

    # Authentication: a wrong secret, a read-only key, an address the key does not allow,
    # a revoked key; an old timestamp is a nonce error.
    wrong = ccxt.binance({"apiKey": exchange.alice.key, "secret": "0" * 64, **options(url)})
    with pytest.raises(ccxt.AuthenticationError):
        wrong.fetch_balance()
    read_only = create_key(url, exchange.alice.token, permissions="read")

    def reader() -> ccxt.binance:
        # A fresh client each time: after one success ccxt reads -2015 as a temporary ban.
        return ccxt.binance(
            {"apiKey": read_only["api_key"], "secret": read_only["secret"], **options(url)}
        )

    assert balances(reader())["USDT"] == (Decimal("10000"), Decimal(0))
    placing = reader()
    placing.load_markets()
    with pytest.raises(ccxt.AuthenticationError, match="-2015"):
        placing.create_order("BTC/USDT", "limit", "buy", 0.001, 20000)
    elsewhere = create_key(url, exchange.alice.token, ips="203.0.113.7")
    remote = ccxt.binance(
        {"apiKey": elsewhere["api_key"], "secret": elsewhere["secret"], **options(url)}
    )
    with pytest.raises(ccxt.AuthenticationError):
        remote.fetch_balance()
    answer = httpx.post(
        f"{url}/api/delete_api_key",
        headers={"Authorization": f"Bearer {exchange.alice.token}"},
        data={"id": str(read_only["id"])},
    )
    assert answer.json()["status"], answer.text
    with pytest.raises(ccxt.AuthenticationError, match="-2015"):
        reader().fetch_balance()
    # Binance's third example: part in the query, part in the body, signed as received.
    now = int(time.time() * 1000)
    query = "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC"
    body = f"quantity=0.001&price=20000.00&recvWindow=60000&timestamp={now}"
    signature = hmac.new(
        exchange.alice.secret.encode(), (query + body).encode(), hashlib.sha256
    ).hexdigest()
    headers = {"X-MBX-APIKEY": exchange.alice.key}
    mixed = httpx.post(
        f"{url}/api/v3/order/test?{query}", content=f"{body}&signature={signature}",
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert (mixed.status_code, mixed.json()) == (200, {})
    reordered = httpx.post(  # the same parameters in another order: another payload
        f"{url}/api/v3/order/test?{query}",
        content=f"price=20000.00&quantity=0.001&recvWindow=60000&timestamp={now}"
        f"&signature={signature}",
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (reordered.status_code, reordered.json()["code"]) == (400, -1022)
    late = exchange.alice.client(url)
    late.options["timeDifference"] = 70_000  # its clock is 70 s behind the server's
    with pytest.raises(ccxt.InvalidNonce):
        late.fetch_balance()
    assert balances(alice)["USDT"] == (Decimal("10000"), Decimal(0))  # nothing happened
    # No newClientOrderId (ccxt always sends one; other clients may not): the order
    # is shown as ex-<orderId>, and that id finds it again.
    real = httpx.post(
        f"{url}/api/v3/order?{query}", content=f"{body}&signature={signature}",
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    placed = real.json()
    assert real.status_code == 200 and placed["clientOrderId"] == f"ex-{placed['orderId']}"
    again = alice.fetch_order(None, "BTC/USDT", {"origClientOrderId": placed["clientOrderId"]})
    assert again["id"] == str(placed["orderId"]) and again["status"] == "open"
    with pytest.raises(ccxt.OrderNotFound):
        alice.fetch_order(None, "BTC/USDT", {"origClientOrderId": "ex-999999"})
    alice.cancel_order(None, "BTC/USDT", {"origClientOrderId": placed["clientOrderId"]})


def test_ed25519_keys_sign_through_ccxt(exchange: Exchange, db_url: str) -> None:
    private = ECC.generate(curve="ed25519")
    public_pem = private.public_key().export_key(format="PEM")
    key = create_key(exchange.url, exchange.bob.token, kind="ed25519", public_key=public_pem)
    assert key["secret"] is None
    client = ccxt.binance(
        {
            "apiKey": key["api_key"],
            "secret": private.export_key(format="PEM"),
            **options(exchange.url),
        }
    )
    client.load_markets()
    assert balances(client)["BTC"] == (Decimal(2), Decimal(0))
    order = client.create_order("ETH/BTC", "limit", "sell", 1, 0.05)
    assert order["status"] == "open"
    assert client.cancel_order(order["id"], "ETH/BTC")["status"] == "canceled"
    # The HMAC secrets are sealed: neither is in the database as written.
    if db_url.startswith("sqlite"):
        stored = b"".join(
            path.read_bytes()
            for path in Path(db_url.removeprefix("sqlite:///")).parent.glob("exchange.db*")
        )
    else:
        stored = _pg_secrets(db_url)
    for trader in (exchange.alice, exchange.bob):
        assert trader.secret.encode() not in stored


def _pg_secrets(url: str) -> bytes:
    from sqlalchemy import select

    from exchange.adapters.db.database import make_sync_engine
    from exchange.adapters.db.tables import api_keys

    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            return b"".join(row[0].encode() for row in conn.execute(select(api_keys.c.secret)))
    finally:
        engine.dispose()


def test_async_ccxt(exchange: Exchange) -> None:
    async def main() -> None:
        url = exchange.url
        alice = ccxt_async.binance(
            {"apiKey": exchange.alice.key, "secret": exchange.alice.secret, **options(url)}
        )
        bob = ccxt_async.binance(
            {"apiKey": exchange.bob.key, "secret": exchange.bob.secret, **options(url)}
        )
        try:
            await asyncio.gather(alice.load_markets(), bob.load_markets())
            sell = await bob.create_order("ETH/USDT", "limit", "sell", 2, 2000)
            buy = await alice.create_order("ETH/USDT", "limit", "buy", 1.5, 2000)
            assert buy["status"] == "closed" and buy["filled"] == 1.5
            found = await bob.fetch_order(sell["id"], "ETH/USDT")
            assert found["status"] == "open" and found["filled"] == 1.5
            book = await alice.fetch_order_book("ETH/USDT")
            assert book["asks"] == [[2000.0, 0.5]]
            account = (await alice.fetch_balance())["info"]["balances"]
            free = {row["asset"]: Decimal(row["free"]) for row in account}
            assert free["ETH"] == Decimal("1.497") and free["USDT"] == Decimal("7000")
            canceled = await bob.cancel_order(sell["id"], "ETH/USDT")
            assert canceled["status"] == "canceled"
            trades = await bob.fetch_my_trades("ETH/USDT")
            assert [Decimal(t["info"]["commission"]) for t in trades] == [Decimal(6)]
            candles = await alice.fetch_ohlcv("ETH/USDT", "1m", since=buy["timestamp"] - 60_000)
            # The trade's minute holds it (a quiet minute may follow if the clock has
            # moved on since: it is the open candle then, with no volume).
            minute = buy["timestamp"] - buy["timestamp"] % 60_000
            assert [row[5] for row in candles if row[0] == minute] == [1.5]
            assert all(row[5] == 0 for row in candles if row[0] != minute)
        finally:
            await asyncio.gather(alice.close(), bob.close())

    asyncio.run(main())


def test_through_workers(tmp_path: Path) -> None:
    """``--workers 2``: keys, orders, balances and the book agree whichever process answers."""
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    with started(url, tmp_path, "--workers", "2") as running:
        alice, bob = running.alice.client(running.url), running.bob.client(running.url)
        alice.load_markets()
        bob.load_markets()
        sell = bob.create_order("BTC/USDT", "limit", "sell", 0.3, 30000)
        for _ in range(3):  # several requests: both workers take some
            alice.create_order("BTC/USDT", "limit", "buy", 0.1, 30000)
        assert bob.fetch_order(sell["id"], "BTC/USDT")["status"] == "closed"
        assert balances(alice)["BTC"] == (Decimal("0.2994"), Decimal(0))
        assert balances(bob)["USDT"] == (Decimal("8982"), Decimal(0))
        assert [t["amount"] for t in bob.fetch_my_trades("BTC/USDT")] == [0.1] * 3
        for _ in range(4):
            assert alice.fetch_order_book("BTC/USDT")["asks"] == []


def test_request_weight_limit(tmp_path: Path) -> None:
    """Over the weight limit: 429 with Retry-After, -1003 (ccxt: DDoSProtection)."""
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    env = exchange_env(url, EXCHANGE_RATE_LIMITS="on", EXCHANGE_RATE_LIMIT_WEIGHT="30/86400")
    with running_server(free_port(), env, tmp_path / "server.log") as server:
        client = ccxt.binance({**options(server.url), "enableRateLimit": False})
        client.load_markets()  # weight 20
        used = httpx.get(f"{server.url}/api/v3/ping").headers["x-mbx-used-weight-1m"]
        assert int(used) == 21
        with pytest.raises(ccxt.DDoSProtection, match="-1003"):
            for _ in range(10):
                client.fetch_order_book("BTC/USDT", 5)  # weight 5 each
        answer = httpx.get(f"{server.url}/api/v3/time")
        assert answer.status_code == 429 and answer.json()["code"] == -1003
        assert int(answer.headers["retry-after"]) >= 1
