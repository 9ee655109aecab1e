"""The /ws stream (SPEC §8) against a real uvicorn server, with the websockets client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest
import websockets
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import ClientConnection

from exchange.adapters.db.candle_store import CandleStore
from exchange.api.binance.streams import BinanceStreams
from exchange.api.ws import Stream
from exchange.clock import ManualClock
from exchange.domain.commands import Credit
from exchange.domain.events import Outbox
from exchange.domain.markets import default_assets, default_markets
from exchange.domain.orders import Trade
from exchange.engine.engine import Engine
from exchange.services.marketdata import MarketData
from support import Mailbox, assert_envelope, login, make_settings, register, served, until

DAY0 = 1_767_225_600_000
WAIT = 5.0


@asynccontextmanager
async def serving(
    database_url: str, smtp_port: int, clock: ManualClock
) -> AsyncIterator[tuple[Any, str]]:
    async with served(make_settings(database_url, smtp_port), clock) as pair:
        yield pair


async def next_message(
    ws: ClientConnection, wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The next message that ``wanted`` accepts (others are skipped)."""
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        if wanted(message):
            return message


async def events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [json.loads(await asyncio.wait_for(ws.recv(), WAIT)) for _ in range(count)]


async def nothing_more(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def user(app: Any, http: httpx.AsyncClient, mailbox: Mailbox, email: str) -> tuple[str, int]:
    await register(http, mailbox, email)
    token = await login(http, email)
    http.cookies.clear()
    user_id = await app.runtime.services.sessions.resolve(token)
    assert user_id is not None
    for asset, units in (("USDT", 10**12), ("BTC", 10**10)):
        await app.runtime.services.engine.submit(Credit(user_id, asset, units, 0))
    return token, user_id


async def place(
    http: httpx.AsyncClient, token: str, side: str, price: str, amount: str
) -> dict[str, Any]:
    answer = await http.post(
        f"/api/{side}",
        data={"pair": "BTC/USDT", "price": price, "amount": amount},
        headers={"Authorization": f"Bearer {token}"},
    )
    data: dict[str, Any] = assert_envelope(answer, 200)
    return data


async def test_stream_of_a_crossing_order(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    mailbox, port = mail
    async with (
        serving(database_url, port, clock) as (app, host),
        httpx.AsyncClient(base_url=f"http://{host}") as http,
    ):
        seller, seller_id = await user(app, http, mailbox, "seller@example.com")
        buyer, _buyer_id = await user(app, http, mailbox, "buyer@example.com")
        url = f"ws://{host}/ws"
        async with (
            websockets.connect(url) as public,
            websockets.connect(url, additional_headers={"Cookie": f"session={seller}"}) as mine,
            websockets.connect(url) as other,
        ):
            for channel in ("trades", "depth", "ticker"):
                await send(public, op="subscribe", channel=channel, pair="btc_usdt")
                assert json.loads(await public.recv()) == {
                    "op": "subscribed",
                    "channel": channel,
                    "pair": "BTC/USDT",
                }
            await send(public, op="subscribe", channel="kline", pair="BTC/USDT", interval="5m")
            assert json.loads(await public.recv()) == {
                "op": "subscribed",
                "channel": "kline",
                "pair": "BTC/USDT",
                "interval": "5min",
            }
            for channel in ("orders", "balances"):
                await send(mine, op="subscribe", channel=channel)
                assert json.loads(await mine.recv()) == {
                    "op": "subscribed",
                    "channel": channel,
                    "pair": None,
                }
            # Without a session, private channels are refused.
            await send(other, op="subscribe", channel="orders")
            refused = json.loads(await other.recv())
            assert refused["op"] == "error"
            assert refused["description"].startswith("not_logged_in: ")
            await send(other, op="auth", session="not-a-session")
            assert json.loads(await other.recv())["description"].startswith("not_logged_in: ")

            clock.now = DAY0 + 90_000
            resting = await place(http, seller, "sell", "30000.00", "0.01")
            depth = await next_message(public, lambda m: m.get("channel") == "depth")
            assert depth["pair"] == "BTC/USDT" and depth["seq"] == 1
            assert depth["data"]["asks"] == [["30000.00", "0.01000000"]]
            opened = await next_message(mine, lambda m: m.get("channel") == "orders")
            assert opened["seq"] == 1 and opened["pair"] is None
            assert opened["data"]["order_id"] == resting["order_id"]
            assert opened["data"]["status"] == "open"
            frozen = await next_message(mine, lambda m: m.get("channel") == "balances")
            assert frozen["data"]["BTC"] == {"available": "99.99000000", "frozen": "0.01000000"}

            clock.now = DAY0 + 100_000
            await place(http, buyer, "buy", "30000.00", "0.004")
            got = {m["channel"]: m for m in await events(public, 4)}
            assert set(got) == {"trades", "kline", "ticker", "depth"}
            rest = await http.get("/api/get_deal_record", params={"pair": "BTC/USDT"})
            assert got["trades"]["data"] == rest.json()["data"][0]
            assert got["trades"]["seq"] == 1
            assert got["trades"]["data"]["side"] == "buy"
            candles = await http.get(
                "/api/get_coin_k_line", params={"pair": "BTC/USDT", "interval": "5min"}
            )
            assert got["kline"]["data"] == candles.json()["data"][-1]
            assert got["kline"]["data"] == [
                DAY0,
                "30000.00",
                "30000.00",
                "30000.00",
                "30000.00",
                "0.00400000",
            ]
            assert got["kline"]["interval"] == "5min" and got["kline"]["seq"] == 1
            rank = (await http.get("/api/get_rank")).json()["data"]
            assert got["ticker"]["data"] == next(r for r in rank if r["pair"] == "BTC/USDT")
            book = (await http.get("/api/get_depth", params={"pair": "BTC/USDT"})).json()["data"]
            assert got["depth"]["data"] == book
            assert got["depth"]["seq"] == 2 and book["asks"] == [["30000.00", "0.00600000"]]

            filled = await next_message(mine, lambda m: m.get("channel") == "orders")
            assert filled["seq"] == 2 and filled["data"]["status"] == "partially_filled"
            assert filled["data"]["filled"] == "0.00400000"
            paid = await next_message(mine, lambda m: m.get("channel") == "balances")
            assert paid["seq"] == 2
            assert paid["data"]["USDT"]["available"] == "1000119.760000"  # 120 - 0.2 % fee
            assert paid["data"]["BTC"]["frozen"] == "0.00600000"

            # Unsubscribed channels stop; the others go on counting.
            await send(public, op="unsubscribe", channel="trades", pair="BTC/USDT")
            assert json.loads(await public.recv())["op"] == "unsubscribed"
            await place(http, buyer, "buy", "30000.00", "0.001")
            later = await events(public, 3)
            assert {m["channel"] for m in later} == {"kline", "ticker", "depth"}
            assert {m["channel"]: m["seq"] for m in later} == {"kline": 2, "ticker": 2, "depth": 3}
            await nothing_more(public)
            third = await events(mine, 2)
            assert {m["channel"]: m["seq"] for m in third} == {"orders": 3, "balances": 3}
            # The other user, now authenticated, sees only its own orders.
            await send(other, op="auth", session=buyer)
            assert json.loads(await other.recv()) == {"op": "authenticated"}
            await send(other, op="subscribe", channel="orders")
            assert json.loads(await other.recv())["op"] == "subscribed"
            await place(http, buyer, "buy", "29000.00", "0.001")
            own = await next_message(other, lambda m: m.get("channel") == "orders")
            assert own["seq"] == 1 and own["data"]["price"] == "29000.00"
            assert seller_id != _buyer_id
            await nothing_more(mine)


async def test_bad_messages_get_errors(
    sqlite_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    async with (
        serving(sqlite_url, mail[1], clock) as (_app, host),
        websockets.connect(
            f"ws://{host}/ws", additional_headers={"Cookie": "session=forged"}
        ) as ws,
    ):
        for message, code in [
            ("not json", "invalid_argument"),
            ("[1, 2]", "invalid_argument"),
            (json.dumps({"op": "dance"}), "invalid_argument"),
            (json.dumps({"op": "subscribe"}), "missing_argument"),
            (
                json.dumps({"op": "subscribe", "channel": "news", "pair": "BTC/USDT"}),
                "invalid_argument",
            ),
            (json.dumps({"op": "subscribe", "channel": "trades"}), "missing_argument"),
            (
                json.dumps({"op": "subscribe", "channel": "trades", "pair": "DOGE/USDT"}),
                "unknown_pair",
            ),
            (
                json.dumps(
                    {"op": "subscribe", "channel": "kline", "pair": "BTC/USDT", "interval": "7min"}
                ),
                "invalid_argument",
            ),
            (json.dumps({"op": "subscribe", "channel": "balances"}), "not_logged_in"),
        ]:
            await ws.send(message)
            answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            assert answer["op"] == "error" and answer["description"].startswith(code + ": ")
        await ws.send(json.dumps({"op": "subscribe", "channel": "kline:1d", "pair": "ETH-BTC"}))
        assert json.loads(await ws.recv()) == {
            "op": "subscribed",
            "channel": "kline",
            "pair": "ETH/BTC",
            "interval": "1d",
        }
        await ws.send(json.dumps({"op": "ping"}))
        assert json.loads(await ws.recv()) == {"op": "pong"}


async def test_a_cookie_from_another_origin_is_ignored(
    sqlite_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    mailbox, port = mail
    async with (
        serving(sqlite_url, port, clock) as (app, host),
        httpx.AsyncClient(base_url=f"http://{host}") as http,
    ):
        token, _ = await user(app, http, mailbox, "victim@example.com")
        cookie = {"Cookie": f"session={token}"}
        async with websockets.connect(
            f"ws://{host}/ws", origin=cast(Any, "http://evil.example"), additional_headers=cookie
        ) as ws:
            await send(ws, op="subscribe", channel="balances")
            assert json.loads(await ws.recv())["description"].startswith("not_logged_in: ")
        async with websockets.connect(
            f"ws://{host}/ws", origin=cast(Any, f"http://{host}"), additional_headers=cookie
        ) as ws:
            await send(ws, op="subscribe", channel="balances")
            assert json.loads(await ws.recv())["op"] == "subscribed"


async def test_logout_ends_the_private_stream(
    sqlite_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    mailbox, port = mail
    async with (
        serving(sqlite_url, port, clock) as (app, host),
        httpx.AsyncClient(base_url=f"http://{host}") as http,
    ):
        token, user_id = await user(app, http, mailbox, "leaver@example.com")
        async with websockets.connect(f"ws://{host}/ws") as ws:
            await send(ws, op="auth", session=token)
            assert json.loads(await ws.recv())["op"] == "authenticated"
            await send(ws, op="subscribe", channel="balances")
            assert json.loads(await ws.recv())["op"] == "subscribed"
            answer = await http.post("/api/logout", headers={"Authorization": f"Bearer {token}"})
            assert_envelope(answer, 200)
            ended = await next_message(ws, lambda m: m.get("op") == "error")
            assert ended["description"].startswith("not_logged_in: ")
            # Balance changes of that user no longer reach this socket.
            await app.runtime.services.engine.submit(Credit(user_id, "BTC", 10**8, 0))
            await nothing_more(ws, 0.5)
            await send(ws, op="subscribe", channel="orders")
            assert json.loads(await ws.recv())["description"].startswith("not_logged_in: ")


# -- slow clients (no server: a socket that never drains) --------------------------


class FakeSocket:
    """Enough of starlette's WebSocket for ``Stream.endpoint``."""

    def __init__(self, *, stuck: bool) -> None:
        self.stuck = stuck
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[str] = []
        self.closed: int | None = None
        self.cookies: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        self.client = None

    async def accept(self) -> None:
        return None

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        self.sent.append(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code
        await self.incoming.put({"type": "websocket.disconnect", "code": code})

    def say(self, **message: Any) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", "text": json.dumps(message)})


def trade(trade_id: int) -> Trade:
    return Trade(trade_id, "BTC/USDT", 3_000_000, 1_000, 30_000_000, "buy", 1, 2, 1, 2, 0, 0, DAY0)


async def test_a_slow_client_is_dropped_and_the_engine_never_waits() -> None:
    markets = default_markets(default_assets())
    db = create_engine("sqlite://")
    engine = Engine(markets, db, lambda: DAY0)
    unused = create_async_engine("sqlite+aiosqlite://")  # market data never reads it here
    market = MarketData(markets, engine, lambda: DAY0, CandleStore(unused))
    stream = Stream(market, cast(Any, None), engine, queue_size=8)
    slow, fast = FakeSocket(stuck=True), FakeSocket(stuck=False)
    tasks = [asyncio.create_task(stream.endpoint(cast(Any, socket))) for socket in (slow, fast)]
    for socket in (slow, fast):
        socket.say(op="subscribe", channel="trades", pair="BTC/USDT")
    topic = ("trades", "BTC/USDT")
    await until(
        lambda: len(stream.subscribers.get(topic, ())) == 2 and len(fast.sent) == 1,
        WAIT,
        "both subscribed",
    )
    assert json.loads(fast.sent[0])["op"] == "subscribed"
    for trade_id in range(1, 41):
        outbox = Outbox([], [trade(trade_id)], [], set())
        market.on_commit(outbox, DAY0)
        stream.on_commit(outbox, DAY0)  # synchronous: returns without waiting on anyone
        await asyncio.sleep(0)
    await until(lambda: len(fast.sent) == 41 and slow.closed is not None, WAIT, "the fan-out")
    assert slow.closed == 1008 and stream.dropped == 1
    assert fast.closed is None
    seqs = [json.loads(text)["seq"] for text in fast.sent[1:]]
    assert seqs == list(range(1, 41))
    await asyncio.wait_for(tasks[0], WAIT)  # the slow client's endpoint has ended
    assert len(stream.connections) == 1
    await fast.close()
    await asyncio.wait_for(tasks[1], WAIT)
    assert not stream.connections and not stream.subscribers
    db.dispose()


async def test_a_slow_binance_client_on_ws_is_dropped_too() -> None:
    """The Binance dialect on ``/ws`` (a first ``{"method"}`` message) has the same guarantee."""
    markets = default_markets(default_assets())
    engine = Engine(markets, create_engine("sqlite://"), lambda: DAY0)
    unused = create_async_engine("sqlite+aiosqlite://")
    market = MarketData(markets, engine, lambda: DAY0, CandleStore(unused))
    stream = Stream(market, cast(Any, None), engine, queue_size=8)
    binance = BinanceStreams(
        market, engine, cast(Any, None), lambda: DAY0, admission=stream.admission, queue_size=8
    )
    stream.handover = binance.adopt
    slow, fast = FakeSocket(stuck=True), FakeSocket(stuck=False)
    tasks = [asyncio.create_task(stream.endpoint(cast(Any, socket))) for socket in (slow, fast)]
    for socket in (slow, fast):
        socket.say(method="SUBSCRIBE", params=["btcusdt@trade"], id=1)
    topic = ("btcusdt@trade", "BTC/USDT")
    await until(
        lambda: len(binance.subscribers.get(topic, ())) == 2 and len(fast.sent) == 1,
        WAIT,
        "both subscribed",
    )
    assert json.loads(fast.sent[0]) == {"result": None, "id": 1}
    assert not stream.connections  # handed over: the seed's stream does not hold them
    for trade_id in range(1, 41):
        outbox = Outbox([], [trade(trade_id)], [], set())
        market.on_commit(outbox, DAY0)
        binance.on_commit(outbox, DAY0)  # synchronous: returns without waiting on anyone
        await asyncio.sleep(0)
    await until(lambda: len(fast.sent) == 41 and slow.closed is not None, WAIT, "the fan-out")
    assert slow.closed == 1008 and binance.dropped == 1 and fast.closed is None
    assert [json.loads(text)["t"] for text in fast.sent[1:]] == list(range(1, 41))
    await asyncio.wait_for(tasks[0], WAIT)
    assert len(binance.connections) == 1 and stream.admission.active == 1
