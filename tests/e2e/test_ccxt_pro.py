"""The unmodified ``ccxt.pro`` against a real server: Binance's streams (issue 14).

ccxt.pro is configured as a user would: ``urls.api.ws.spot`` and
``urls.api.ws['ws-api'].spot`` point at this server, nothing else changes.
Every watched figure is compared exactly (Decimal, from the strings the server
sent) with what the REST API says after the same commits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import ccxt.pro as ccxt_pro
import httpx
import orjson
import pytest
import websockets
from ccxt_support import Exchange, Trader, options, started

T = TypeVar("T")
WAIT = 30  # seconds: a guard against a hang, never a measured time


def pro_options(url: str) -> dict[str, Any]:
    settings = options(url)
    ws = url.replace("http://", "ws://")
    settings["urls"]["api"]["ws"] = {"spot": f"{ws}/ws", "ws-api": {"spot": f"{ws}/ws-api/v3"}}
    return settings


@contextlib.asynccontextmanager
async def pro_client(url: str, trader: Trader) -> AsyncIterator[ccxt_pro.binance]:
    client = ccxt_pro.binance({"apiKey": trader.key, "secret": trader.secret, **pro_options(url)})
    try:
        await client.load_markets()
        yield client
    finally:
        await client.close()


async def until(watch: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Watch until ``done`` holds (each watch returns at the next event)."""

    async def loop() -> T:
        while True:
            value = await watch()
            if done(value):
                return value

    return await asyncio.wait_for(loop(), WAIT)


async def book_at(client: ccxt_pro.binance, symbol: str, nonce: int) -> Any:
    """The watched book once it holds every change up to ``nonce`` (REST's lastUpdateId)."""

    async def loop() -> Any:
        while True:
            held = client.orderbooks.get(symbol)
            if held is not None and held["nonce"] is not None and held["nonce"] >= nonce:
                return held
            await client.watch_order_book(symbol)

    return await asyncio.wait_for(loop(), WAIT)


def book(levels: list[list[Any]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(str(price)), Decimal(str(amount))) for price, amount, *_ in levels]


@pytest.fixture
def exchange(db_url: str, tmp_path: Path) -> Iterator[Exchange]:
    with started(db_url, tmp_path) as running:
        yield running


async def test_watch_order_book_stays_equal_to_rest_depth(exchange: Exchange) -> None:
    await order_book_through_a_burst(exchange)


async def test_watch_trades_ohlcv_ticker_and_the_user_streams(exchange: Exchange) -> None:
    await market_and_user_streams(exchange)


async def test_through_workers(tmp_path: Path) -> None:
    """REST and streams answered by different processes agree (batch numbers are global)."""
    with started(f"sqlite:///{tmp_path / 'exchange.db'}", tmp_path, "--workers", "2") as running:
        await order_book_through_a_burst(running, "ETH/USDT", 2000, 0.01)
        await market_and_user_streams(running)


async def order_book_through_a_burst(
    exchange: Exchange, symbol: str = "BTC/USDT", price: int = 29000, amount: float = 0.001
) -> None:
    url = exchange.url
    async with pro_client(url, exchange.alice) as alice, pro_client(url, exchange.bob) as bob:
        first = await alice.watch_order_book(symbol)
        assert first["bids"] == [] and first["asks"] == []
        # A burst from both sides: orders resting, crossing and cancelled.
        placed = []
        tick = price // 1000
        for index in range(12):
            buy = await alice.create_order(symbol, "limit", "buy", amount, price + index * tick)
            sell = await bob.create_order(
                symbol, "limit", "sell", 2 * amount, price + (15 - index) * tick
            )
            placed += [(alice, buy), (bob, sell)]
        for client, order in placed[::3]:
            if (await client.fetch_order(order["id"], symbol))["status"] == "open":
                await client.cancel_order(order["id"], symbol)
        assert await alice.fetch_my_trades(symbol)  # the later orders crossed
        snapshot = await alice.fetch_order_book(symbol, 1000)
        watched = await book_at(alice, symbol, snapshot["nonce"])
        assert watched["nonce"] == snapshot["nonce"]  # nothing since: the same last change
        assert book(watched["bids"]) == book(snapshot["bids"])
        assert book(watched["asks"]) == book(snapshot["asks"])
        assert watched["bids"] and watched["asks"]  # the burst left both sides


async def cached(done: Callable[[], bool], watch: Callable[[], Awaitable[object]]) -> None:
    """Until ``done()`` holds for what the client holds, taking each next event in turn."""

    async def loop() -> None:
        while not done():
            await watch()

    await asyncio.wait_for(loop(), WAIT)


async def market_and_user_streams(exchange: Exchange) -> None:
    url = exchange.url
    symbol = "BTC/USDT"
    async with pro_client(url, exchange.alice) as alice, pro_client(url, exchange.bob) as bob:
        watches = [
            asyncio.ensure_future(alice.watch_trades(symbol)),
            asyncio.ensure_future(alice.watch_ohlcv(symbol, "1m")),
            asyncio.ensure_future(alice.watch_ticker(symbol)),
            asyncio.ensure_future(alice.watch_orders(symbol)),
            asyncio.ensure_future(alice.watch_my_trades(symbol)),
            asyncio.ensure_future(alice.watch_balance()),
        ]
        await alice.authenticate()  # the user data stream is subscribed
        # Trades until every watch has seen one (a subscription still on its way
        # sees the next): each watch returns at its first event.
        pending: set[Any] = set(watches)
        for _ in range(5):
            await bob.create_order(symbol, "limit", "sell", 0.01, 30000)
            taken = await alice.create_order(symbol, "limit", "buy", 0.01, 30000)
            assert taken["status"] == "closed"
            _, pending = await asyncio.wait(watches, timeout=WAIT / 5)
            if not pending:
                break
        assert not pending, "a stream never sent its first event"
        last_trade = (await alice.fetch_my_trades(symbol))[-1]
        assert last_trade["order"] == taken["id"]

        await cached(
            lambda: any(t["id"] == last_trade["id"] for t in alice.trades[symbol]),
            lambda: alice.watch_trades(symbol),
        )
        streamed = next(t for t in alice.trades[symbol] if t["id"] == last_trade["id"])
        assert Decimal(streamed["info"]["p"]) == Decimal("30000")
        assert Decimal(streamed["info"]["q"]) == Decimal("0.01")
        assert streamed["side"] == "buy"  # the taker bought

        # The candle of the last trade's own minute (the minute may have turned since: the
        # newest REST candle would then be a quiet one, which no stream event announces).
        minute = last_trade["timestamp"] - last_trade["timestamp"] % 60_000
        (rest_candle,) = await alice.fetch_ohlcv(symbol, "1m", since=minute, limit=1)
        assert rest_candle[0] == minute
        await cached(
            lambda: any(c == rest_candle for c in alice.ohlcvs[symbol]["1m"]),
            lambda: alice.watch_ohlcv(symbol, "1m"),
        )

        rest_ticker = await alice.fetch_ticker(symbol)
        await cached(
            lambda: alice.tickers.get(symbol, {}).get("baseVolume") == rest_ticker["baseVolume"],
            lambda: alice.watch_ticker(symbol),
        )
        for field in ("last", "open", "high", "low", "baseVolume", "quoteVolume"):
            assert alice.tickers[symbol][field] == rest_ticker[field], field

        await cached(
            lambda: any(o["id"] == taken["id"] and o["status"] == "closed" for o in alice.orders),
            lambda: alice.watch_orders(symbol),
        )
        order = next(o for o in alice.orders if o["id"] == taken["id"])
        assert Decimal(str(order["filled"])) == Decimal("0.01")
        assert Decimal(order["info"]["Z"]) == Decimal("300")  # the quote spent, exact

        await cached(
            lambda: any(t["id"] == last_trade["id"] for t in alice.myTrades),
            lambda: alice.watch_my_trades(symbol),
        )
        fill = next(t for t in alice.myTrades if t["id"] == last_trade["id"])
        assert fill["order"] == taken["id"] and fill["takerOrMaker"] == "taker"
        assert Decimal(fill["info"]["n"]) == Decimal(last_trade["info"]["commission"])
        assert fill["fee"]["currency"] == "BTC" == last_trade["fee"]["currency"]

        rest = (await alice.fetch_balance())["info"]["balances"]
        expected = {row["asset"]: (Decimal(row["free"]), Decimal(row["locked"])) for row in rest}

        def same_balances() -> bool:
            held = alice.balance.get("spot") or {}
            return all(
                code in held
                and (Decimal(str(held[code]["free"])), Decimal(str(held[code]["used"])))
                == expected[code]
                for code in ("BTC", "USDT")
            )

        await cached(same_balances, alice.watch_balance)


async def test_raw_streams_subscriptions_and_errors(tmp_path: Path) -> None:
    """The control messages exactly as Binance documents them, on each path."""
    with started(f"sqlite:///{tmp_path / 'exchange.db'}", tmp_path) as running:
        ws = running.url.replace("http://", "ws://")
        async with websockets.connect(f"{ws}/ws") as raw:
            await raw.send(
                '{"method":"SUBSCRIBE","params":["btcusdt@trade","btcusdt@depth"],"id":1}'
            )
            assert orjson.loads(await raw.recv()) == {"result": None, "id": 1}
            await raw.send('{"method":"LIST_SUBSCRIPTIONS","id":2}')
            assert orjson.loads(await raw.recv()) == {
                "result": ["btcusdt@depth", "btcusdt@trade"],
                "id": 2,
            }
            await raw.send('{"method":"UNSUBSCRIBE","params":["btcusdt@depth"],"id":3}')
            assert orjson.loads(await raw.recv()) == {"result": None, "id": 3}
            await raw.send('{"method":"GET_PROPERTY","params":["combined"],"id":4}')
            assert orjson.loads(await raw.recv()) == {"result": False, "id": 4}
            await raw.send('{"method":"SUBSCRIBE","params":["dogeusdt@trade"],"id":5}')
            refused = orjson.loads(await raw.recv())
            assert refused["id"] == 5 and refused["error"]["code"] == 2
            await raw.send('{"method":"FOO","id":6}')
            assert orjson.loads(await raw.recv())["error"]["code"] == 2
            await raw.send("not json")
            assert orjson.loads(await raw.recv())["error"]["code"] == 3
            await raw.send('{"method":"SUBSCRIBE","params":[],"id":-1}')
            assert "unsigned integer" in orjson.loads(await raw.recv())["error"]["msg"]
        async with websockets.connect(f"{ws}/stream?streams=btcusdt@trade/ethusdt@depth5") as both:
            await both.send('{"method":"LIST_SUBSCRIPTIONS","id":1}')
            listed = orjson.loads(await both.recv())
            assert listed == {"result": ["btcusdt@trade", "ethusdt@depth5"], "id": 1}
            trader = running.bob
            await _sell(running.url, trader, "ETH/USDT", "1", "2000")
            event = orjson.loads(await asyncio.wait_for(both.recv(), WAIT))
            assert event["stream"] == "ethusdt@depth5"
            assert book(event["data"]["asks"]) == [(Decimal("2000"), Decimal("1"))]
            assert event["data"]["lastUpdateId"] >= 1
        # The seed's stream on /ws still speaks its own dialect.
        async with websockets.connect(f"{ws}/ws") as seed:
            await seed.send('{"op":"ping"}')
            assert orjson.loads(await seed.recv()) == {"op": "pong"}
        # A listen key from REST opens a user data stream on /ws/<listenKey>.
        key = {"X-MBX-APIKEY": running.alice.key}
        made = httpx.post(f"{running.url}/api/v3/userDataStream", headers=key)
        assert made.status_code == 200, made.text
        listen_key = made.json()["listenKey"]
        assert len(listen_key) == 60
        assert httpx.post(f"{running.url}/api/v3/userDataStream", headers=key).json() == made.json()
        kept = httpx.put(
            f"{running.url}/api/v3/userDataStream", params={"listenKey": listen_key}, headers=key
        )
        assert kept.status_code == 200 and kept.json() == {}
        wrong = httpx.put(
            f"{running.url}/api/v3/userDataStream", params={"listenKey": "0" * 60}, headers=key
        )
        assert wrong.status_code == 400 and wrong.json()["code"] == -1125
        no_key = httpx.post(f"{running.url}/api/v3/userDataStream", headers={"X-MBX-APIKEY": "x"})
        assert no_key.status_code == 401 and no_key.json()["code"] == -2015
        async with websockets.connect(f"{ws}/ws/{listen_key}") as user:
            await _sell(running.url, running.bob, "ETH/USDT", "1", "2100")  # bob's: not alice's
            await _buy(running.url, running.alice, "ETH/USDT", "0.5", "2000")
            report = orjson.loads(await asyncio.wait_for(user.recv(), WAIT))
            assert report["e"] == "executionReport" and report["x"] == "NEW"
            assert report["S"] == "BUY" and report["X"] == "NEW"
            trade = orjson.loads(await asyncio.wait_for(user.recv(), WAIT))
            assert trade["x"] == "TRADE" and trade["X"] == "FILLED"
            assert Decimal(trade["l"]) == Decimal("0.5") == Decimal(trade["z"])
            assert Decimal(trade["L"]) == Decimal("2000")
            assert trade["m"] is False and trade["N"] == "ETH"
            position = orjson.loads(await asyncio.wait_for(user.recv(), WAIT))
            assert position["e"] == "outboundAccountPosition"
            assert {row["a"] for row in position["B"]} == {"ETH", "USDT"}


async def _sell(url: str, trader: Trader, symbol: str, amount: str, price: str) -> None:
    async with pro_client(url, trader) as client:
        await client.create_order(symbol, "limit", "sell", float(amount), float(price))


async def _buy(url: str, trader: Trader, symbol: str, amount: str, price: str) -> None:
    async with pro_client(url, trader) as client:
        await client.create_order(symbol, "limit", "buy", float(amount), float(price))
