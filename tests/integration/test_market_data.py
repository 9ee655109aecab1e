"""Market data over the API (SPEC §5), on SQLite and PostgreSQL.

Trades are made through the API at times set on a ManualClock; every expected
figure is computed here from the scripted trades (a small reference model or
literals worked out by hand), never by the code under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import create_engine, delete, func, select

from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.tables import candles
from exchange.clock import ManualClock
from exchange.config import Settings
from exchange.domain.commands import Credit
from exchange.domain.events import Outbox
from exchange.domain.markets import default_assets, default_markets
from exchange.domain.orders import Trade as DomainTrade
from exchange.engine.engine import Engine
from exchange.services.marketdata import MarketData
from support import Mailbox, assert_envelope, login, make_settings, register, running_app

DAY0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
WIDTHS = {"1min": MIN, "5min": 5 * MIN, "30min": 30 * MIN, "4h": 4 * HOUR, "1d": DAY}
INTERVAL_SPELLINGS = {
    "1min": ["", "1min", "1m"],
    "5min": ["5min", "5m"],
    "30min": ["30min", "30m"],
    "4h": ["4h", "240min"],
    "1d": ["1d", "1day"],
}

Trade = tuple[int, str, str]  # time, price, amount (decimal text as typed)


def settings_for(database_url: str, smtp_port: int) -> Settings:
    """Sessions that outlive the scripted days the ManualClock jumps through."""
    return make_settings(
        database_url, smtp_port, session_idle=30 * DAY // SEC, session_lifetime=30 * DAY // SEC
    )


@pytest.fixture
async def app_client(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with running_app(settings_for(database_url, mail[1]), clock) as pair:
        yield pair


class Trader:
    def __init__(self, client: httpx.AsyncClient, token: str, user_id: int) -> None:
        self.client = client
        self.token = token
        self.user_id = user_id

    async def order(self, side: str, pair: str, price: str, amount: str) -> dict[str, Any]:
        answer = await self.client.post(
            f"/api/{side}",
            data={"pair": pair, "price": price, "amount": amount},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        data: dict[str, Any] = assert_envelope(answer, 200)
        return data

    async def cancel(self, order_id: int) -> None:
        answer = await self.client.post(
            "/api/cancel_order",
            data={"order_id": str(order_id)},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert_envelope(answer, 200)


async def trader(app: Any, client: httpx.AsyncClient, mailbox: Mailbox, email: str) -> Trader:
    await register(client, mailbox, email)
    token = await login(client, email)
    client.cookies.clear()  # each trader authenticates with its own bearer token
    services = app.runtime.services
    user_id = await services.sessions.resolve(token)
    assert user_id is not None
    for asset, units in (("USDT", 10**15), ("BTC", 10**12), ("ETH", 10**12)):
        await services.engine.submit(Credit(user_id, asset, units, 0))
    return Trader(client, token, user_id)


async def two_traders(
    app: Any, client: httpx.AsyncClient, mailbox: Mailbox
) -> tuple[Trader, Trader]:
    return (
        await trader(app, client, mailbox, "maker@example.com"),
        await trader(app, client, mailbox, "taker@example.com"),
    )


async def cross(
    clock: ManualClock,
    maker: Trader,
    taker: Trader,
    trade: Trade,
    *,
    taker_side: str = "buy",
    pair: str = "BTC/USDT",
) -> dict[str, Any]:
    at, price, amount = trade
    clock.now = at
    maker_side = "sell" if taker_side == "buy" else "buy"
    await maker.order(maker_side, pair, price, amount)
    order = await taker.order(taker_side, pair, price, amount)
    assert order["status"] == "filled", order
    return order


async def get(client: httpx.AsyncClient, method: str, **params: Any) -> Any:
    return assert_envelope(await client.get(f"/api/{method}", params=params), 200)


# -- the reference model --------------------------------------------------------


def expected_candles(
    trades: list[Trade], width: int, now: int, price_dp: int = 2, amount_dp: int = 8
) -> list[list[Any]]:
    """Candles with gaps filled, computed from the scripted trades alone."""
    price_q = Decimal(1).scaleb(-price_dp)
    buckets: dict[int, list[Decimal]] = {}
    for at, price_text, amount_text in sorted(trades, key=lambda t: t[0]):
        start = at // width * width
        price, amount = Decimal(price_text), Decimal(amount_text)
        if start not in buckets:
            buckets[start] = [price, price, price, price, amount]
        else:
            o, h, low, _c, v = buckets[start]
            buckets[start] = [o, max(h, price), min(low, price), price, v + amount]
    rows: list[list[Any]] = []
    close = Decimal(0)
    for start in range(min(buckets), now // width * width + 1, width):
        if start in buckets:
            o, h, low, c, v = buckets[start]
            close = c
            cells = [str(x.quantize(price_q)) for x in (o, h, low, c)]
            rows.append([start, *cells, f"{v:.{amount_dp}f}"])
        else:
            text = str(close.quantize(price_q))
            rows.append([start, text, text, text, text, "0"])
    return rows


def expected_change(price: str, open_today: str) -> str:
    value = ((Decimal(price) - Decimal(open_today)) * 100 / Decimal(open_today)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_EVEN
    )
    return "0.00" if value == 0 else (f"+{value}" if value > 0 else str(value))


SCRIPT: list[Trade] = [
    (DAY0 - 2 * MIN + 5 * SEC, "100.00", "0.1"),  # 2025-12-31 23:58:05
    (DAY0 - 1, "101.50", "0.2"),  # 23:59:59.999, the last trade of the year
    (DAY0 + 10 * SEC, "99.00", "0.3"),  # the day's first trade: today's open
    (DAY0 + 40 * SEC, "102.00", "0.1"),
    (DAY0 + 7 * MIN, "98.25", "0.5"),
    (DAY0 + 4 * HOUR + 3 * MIN, "105.00", "0.1"),
]
#: Stored candles of the script: one per (interval, traded interval).
SCRIPT_CANDLES = sum(len({at // width for at, _p, _a in SCRIPT}) for width in WIDTHS.values())
SCRIPT_NOW = DAY0 + 4 * HOUR + 12 * MIN


async def play_script(
    app: Any, client: httpx.AsyncClient, mailbox: Mailbox, clock: ManualClock
) -> None:
    clock.now = DAY0 - HOUR
    maker, taker = await two_traders(app, client, mailbox)
    for index, trade in enumerate(SCRIPT):
        await cross(clock, maker, taker, trade, taker_side="sell" if index == 1 else "buy")
    clock.now = SCRIPT_NOW


# -- candles -----------------------------------------------------------------------


async def test_candles_in_every_interval(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, clock: ManualClock
) -> None:
    app, client = app_client
    await play_script(app, client, mailbox, clock)
    for interval, spellings in INTERVAL_SPELLINGS.items():
        expected = expected_candles(SCRIPT, WIDTHS[interval], SCRIPT_NOW)
        for spelling in spellings:
            rows = await get(client, "get_coin_k_line", pair="btc_usdt", interval=spelling)
            assert rows == expected, (interval, spelling)
    # Worked out by hand: the year's last day and 2026-01-01 (UTC days).
    assert await get(client, "get_coin_k_line", pair="BTC/USDT", interval="1d") == [
        [DAY0 - DAY, "100.00", "101.50", "100.00", "101.50", "0.30000000"],
        [DAY0, "99.00", "105.00", "98.25", "105.00", "1.00000000"],
    ]
    assert await get(client, "get_coin_k_line", pair="BTC/USDT", interval="4h") == [
        [DAY0 - 4 * HOUR, "100.00", "101.50", "100.00", "101.50", "0.30000000"],
        [DAY0, "99.00", "102.00", "98.25", "98.25", "0.90000000"],
        [DAY0 + 4 * HOUR, "105.00", "105.00", "105.00", "105.00", "0.10000000"],
    ]
    one_minute = await get(client, "get_coin_k_line", pair="BTC/USDT")
    assert len(one_minute) == 4 * 60 + 12 + 2 + 1  # 23:58 .. 04:12, no gaps
    assert one_minute[2] == [DAY0, "99.00", "102.00", "99.00", "102.00", "0.40000000"]
    assert one_minute[3] == [DAY0 + MIN, "102.00", "102.00", "102.00", "102.00", "0"]
    # limit and since
    last3 = await get(client, "get_coin_k_line", pair="BTC/USDT", interval="5min", limit=3)
    assert last3 == expected_candles(SCRIPT, 5 * MIN, SCRIPT_NOW)[-3:]
    page = await get(client, "get_coin_k_line", pair="BTC/USDT", since=DAY0 + 1, limit=5)
    assert [row[0] for row in page] == [DAY0 + k * MIN for k in range(1, 6)]
    assert await get(client, "get_coin_k_line", pair="BTC/USDT", since=SCRIPT_NOW + MIN) == []
    # other markets have no trades: no candles
    assert await get(client, "get_coin_k_line", pair="ETH/USDT", interval="1d") == []
    # a quiet hour later, the last candle repeats the close
    clock.advance(HOUR)
    rows = await get(client, "get_coin_k_line", pair="BTC/USDT", interval="30min", limit=2)
    assert rows == [
        [DAY0 + 4 * HOUR + 30 * MIN + k * 30 * MIN, "105.00", "105.00", "105.00", "105.00", "0"]
        for k in range(2)
    ]


async def test_kline_arguments(client: httpx.AsyncClient) -> None:
    for params, status, code in [
        ({"pair": "BTC/USDT", "interval": "2min"}, 400, "invalid_argument"),
        ({"pair": "BTC/USDT", "interval": "1h"}, 400, "invalid_argument"),
        ({"pair": "BTC/USDT", "limit": "1501"}, 400, "invalid_argument"),
        ({"pair": "BTC/USDT", "limit": "0"}, 400, "invalid_argument"),
        ({"pair": "BTC/USDT", "since": "yesterday"}, 400, "invalid_argument"),
        ({"pair": "DOGE/USDT"}, 404, "unknown_pair"),
        ({}, 400, "missing_argument"),
    ]:
        answer = await client.get("/api/get_coin_k_line", params=params)
        assert_envelope(answer, status, code)
    assert_envelope(
        await client.get(
            "/router", params={"router": "get_coin_k_line", "pair": "BTC-USDT", "limit": "1500"}
        ),
        200,
    )
    for method in ("get_coin", "get_depth", "get_deal_record", "get_simple_k_line"):
        assert_envelope(
            await client.get(f"/api/{method}", params={"pair": "X/Y"}), 404, "unknown_pair"
        )
        assert_envelope(
            await client.post(f"/api/{method}", data={"pair": "BTC/USDT"}),
            405,
            "method_not_allowed",
        )
    for method, limit in (("get_depth", 501), ("get_deal_record", 501)):
        answer = await client.get(f"/api/{method}", params={"pair": "BTC/USDT", "limit": limit})
        assert_envelope(answer, 400, "invalid_argument")


async def test_simple_k_line(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, clock: ManualClock
) -> None:
    app, client = app_client
    await play_script(app, client, mailbox, clock)
    points = await get(client, "get_simple_k_line", pair="BTC/USDT")
    current = SCRIPT_NOW // (30 * MIN) * (30 * MIN)
    assert [p[0] for p in points] == [current - (47 - k) * 30 * MIN for k in range(48)]
    closes = {p[0]: p[1] for p in points}
    assert closes[DAY0 - HOUR] is None  # before the first trade
    assert closes[DAY0 - 30 * MIN] == "101.50"
    assert closes[DAY0] == "98.25"
    assert closes[DAY0 + 3 * HOUR + 30 * MIN] == "98.25"
    assert closes[current] == "105.00"
    empty = await get(client, "get_simple_k_line", pair="ETH/BTC")
    assert len(empty) == 48 and all(close is None for _t, close in empty)


# -- tickers and rank --------------------------------------------------------------


async def test_coin_and_rank_for_a_scripted_day(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, clock: ManualClock
) -> None:
    app, client = app_client
    clock.now = DAY0 - 5 * HOUR
    maker, taker = await two_traders(app, client, mailbox)
    btc: list[Trade] = [
        (DAY0 - 3 * HOUR, "100.00", "0.5"),
        (DAY0 + HOUR, "101.00", "0.25"),
        (DAY0 + 2 * HOUR, "99.00", "0.125"),
    ]
    eth: list[Trade] = [(DAY0 + HOUR, "2000.00", "1.5"), (DAY0 + 3 * HOUR, "2050.00", "0.5")]
    for trade in btc:
        await cross(clock, maker, taker, trade)
    for trade in eth:
        await cross(clock, maker, taker, trade, taker_side="sell", pair="ETH/USDT")

    clock.now = DAY0 + 4 * HOUR
    btc_change = expected_change("99.00", "101.00")
    eth_change = expected_change("2050.00", "2000.00")
    assert (btc_change, eth_change) == ("-1.98", "+2.50")
    assert await get(client, "get_coin", pair="btc-usdt") == [
        "BTC/USDT",
        "99.00",
        "0.87500000",
        btc_change,
        "101.00",
    ]
    assert await get(client, "get_coin", pair="ETH/USDT") == [
        "ETH/USDT",
        "2050.00",
        "2.00000000",
        eth_change,
        "2000.00",
    ]
    assert await get(client, "get_coin", pair="ETH/BTC") == ["ETH/BTC", None, "0", "0.00", None]
    assert await get(client, "get_rank") == [
        {
            "rank": 1,
            "pair": "ETH/USDT",
            "price": "2050.00",
            "volume_24h": "2.00000000",
            "change_percent": "+2.50",
            "open_today": "2000.00",
        },
        {
            "rank": 2,
            "pair": "ETH/BTC",
            "price": None,
            "volume_24h": "0",
            "change_percent": "0.00",
            "open_today": None,
        },
        {
            "rank": 3,
            "pair": "BTC/USDT",
            "price": "99.00",
            "volume_24h": "0.87500000",
            "change_percent": "-1.98",
            "open_today": "101.00",
        },
    ]

    # The next UTC day, no trades: today's open is the last price, change 0.
    clock.now = DAY0 + DAY + HOUR  # the window now starts at DAY0 + 1 h + 1 min
    assert await get(client, "get_coin", pair="BTC/USDT") == [
        "BTC/USDT",
        "99.00",
        "0.12500000",
        "0.00",
        "99.00",
    ]
    assert await get(client, "get_coin", pair="ETH/USDT") == [
        "ETH/USDT",
        "2050.00",
        "0.50000000",
        "0.00",
        "2050.00",
    ]
    # A trade today moves the change against the new open.
    await cross(clock, maker, taker, (DAY0 + DAY + HOUR, "99.50", "0.1"))
    assert await get(client, "get_coin", pair="BTC/USDT") == [
        "BTC/USDT",
        "99.50",
        "0.22500000",
        expected_change("99.50", "99.50"),
        "99.50",
    ]
    await cross(clock, maker, taker, (DAY0 + DAY + 2 * HOUR, "101.49", "0.1"))
    coin = await get(client, "get_coin", pair="BTC/USDT")
    assert coin[3] == expected_change("101.49", "99.50") == "+2.00"
    ranked = await get(client, "get_rank")
    assert [(r["rank"], r["pair"]) for r in ranked] == [
        (1, "BTC/USDT"),
        (2, "ETH/USDT"),
        (3, "ETH/BTC"),
    ]


async def test_volume_window_slides_without_trades(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, clock: ManualClock
) -> None:
    app, client = app_client
    maker, taker = await two_traders(app, client, mailbox)
    first = DAY0 + 10 * HOUR + 30 * SEC
    await cross(clock, maker, taker, (first, "50.00", "0.2"))
    await cross(clock, maker, taker, (first + 6 * HOUR, "52.00", "0.3"))
    for now, volume in [
        (first + 6 * HOUR, "0.50000000"),
        (first - 30 * SEC + 23 * HOUR + 59 * MIN + 59 * SEC, "0.50000000"),  # last ms inside
        (first - 30 * SEC + DAY, "0.30000000"),  # the first trade's minute has left
        (first + 6 * HOUR + DAY - 30 * SEC - 1, "0.30000000"),
        (first + 6 * HOUR + DAY - 30 * SEC, "0"),
    ]:
        clock.now = now
        coin = await get(client, "get_coin", pair="BTC/USDT")
        assert coin[1:3] == ["52.00", volume], now - first


# -- trades and depth --------------------------------------------------------------


async def test_deal_record(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, clock: ManualClock
) -> None:
    app, client = app_client
    await play_script(app, client, mailbox, clock)
    deals = await get(client, "get_deal_record", pair="BTC/USDT")
    assert [(d["price"], d["amount"], d["time"], d["side"]) for d in deals] == [
        (price, f"{Decimal(amount):.8f}", at, "sell" if index == 1 else "buy")
        for index, (at, price, amount) in reversed(list(enumerate(SCRIPT)))
    ]
    ids = [d["id"] for d in deals]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(SCRIPT)
    assert await get(client, "get_deal_record", pair="BTC/USDT", limit=2) == deals[:2]
    assert await get(client, "get_deal_record", pair="ETH/BTC") == []


async def test_deal_record_answers_sixty_by_default(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, clock: ManualClock
) -> None:
    app, client = app_client
    maker, taker = await two_traders(app, client, mailbox)
    clock.now = DAY0
    await maker.order("sell", "ETH/BTC", "0.050000", "6.5")
    ids = []
    for _ in range(65):  # each buy of 0.1 trades once against the resting sell
        order = await taker.order("buy", "ETH/BTC", "0.050000", "0.1")
        ids.append(order["trades"][0]["trade_id"])
    deals = await get(client, "get_deal_record", pair="ETH/BTC")
    assert [d["id"] for d in deals] == ids[::-1][:60]
    assert all(d["price"] == "0.050000" and d["amount"] == "0.10000000" for d in deals)
    assert all(d["side"] == "buy" for d in deals)
    assert len(await get(client, "get_deal_record", pair="ETH/BTC", limit=500)) == 65


def depth_of(orders: list[tuple[str, str, str]], scale: int = 8) -> dict[str, list[list[str]]]:
    """Sum of the remaining amounts per price, best first: the expected book."""
    sums: dict[tuple[str, Decimal], Decimal] = {}
    for side, price, remaining in orders:
        if Decimal(remaining) > 0:
            key = (side, Decimal(price))
            sums[key] = sums.get(key, Decimal(0)) + Decimal(remaining)
    bids = sorted(((p, a) for (s, p), a in sums.items() if s == "buy"), reverse=True)
    asks = sorted((p, a) for (s, p), a in sums.items() if s == "sell")
    return {
        "bids": [[f"{p:.2f}", f"{a:.{scale}f}"] for p, a in bids],
        "asks": [[f"{p:.2f}", f"{a:.{scale}f}"] for p, a in asks],
    }


async def test_depth_is_the_sum_of_resting_orders(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, clock: ManualClock
) -> None:
    app, client = app_client
    seller, buyer = await two_traders(app, client, mailbox)
    clock.now = DAY0 + 123
    empty = await get(client, "get_depth", pair="ETH/USDT")
    assert empty == {"timetick": DAY0 + 123, "bids": [], "asks": []}
    resting: dict[int, list[str]] = {}  # order id -> [side, price, remaining]
    for side, who, price, amount in [
        ("sell", seller, "2001.00", "1.0"),
        ("sell", seller, "2001.00", "0.5"),
        ("sell", seller, "2002.50", "2.0"),
        ("sell", seller, "2010.00", "0.1"),
        ("buy", buyer, "1999.00", "0.3"),
        ("buy", buyer, "1998.00", "0.2"),
        ("buy", buyer, "1999.00", "0.05"),
    ]:
        order = await who.order(side, "ETH/USDT", price, amount)
        resting[order["order_id"]] = [side, price, amount]

    async def check(limit: int | None = None) -> None:
        params = {"pair": "ETH/USDT"} if limit is None else {"pair": "ETH/USDT", "limit": limit}
        depth = await get(client, "get_depth", **params)
        expected = depth_of([(s, p, a) for s, p, a in resting.values()])
        if limit is not None:
            expected = {side: levels[:limit] for side, levels in expected.items()}
        assert depth == {"timetick": clock.now, **expected}

    await check()
    assert (await get(client, "get_depth", pair="ETH/USDT"))["asks"][0] == ["2001.00", "1.50000000"]
    # A buy of 1.2 at 2001.00 fills the first ask (1.0) and 0.2 of the second.
    clock.advance(1000)
    taken = await buyer.order("buy", "ETH/USDT", "2001.00", "1.2")
    assert taken["status"] == "filled" and len(taken["trades"]) == 2
    first, second = sorted(k for k, v in resting.items() if v[1] == "2001.00")
    resting[first][2] = "0"
    resting[second][2] = "0.3"
    await check()
    # A sell of 0.32 at 1999.00 takes the 0.3 bid and 0.02 of the 0.05 one.
    taken = await seller.order("sell", "ETH/USDT", "1999.00", "0.32")
    assert taken["status"] == "filled"
    bid_a, bid_b = sorted(k for k, v in resting.items() if v[1] == "1999.00")
    resting[bid_a][2] = "0"
    resting[bid_b][2] = "0.03"
    await check()
    # Cancels remove what was left.
    far = next(k for k, v in resting.items() if v[1] == "2002.50")
    await seller.cancel(far)
    resting[far][2] = "0"
    await seller.cancel(second)
    resting[second][2] = "0"
    await check()
    await check(limit=1)
    depth = await get(client, "get_depth", pair="ETH/USDT", limit=1)
    assert depth["asks"] == [["2010.00", "0.10000000"]]
    assert depth["bids"] == [["1999.00", "0.03000000"]]


# -- restarts ----------------------------------------------------------------------


async def snapshot(client: httpx.AsyncClient) -> dict[str, Any]:
    seen: dict[str, Any] = {"rank": await get(client, "get_rank")}
    for pair in ("BTC/USDT", "ETH/USDT"):
        seen[f"coin {pair}"] = await get(client, "get_coin", pair=pair)
        seen[f"deals {pair}"] = await get(client, "get_deal_record", pair=pair, limit=500)
        seen[f"spark {pair}"] = await get(client, "get_simple_k_line", pair=pair)
        for interval in WIDTHS:
            seen[f"{interval} {pair}"] = await get(
                client, "get_coin_k_line", pair=pair, interval=interval, limit=1500
            )
    return seen


@asynccontextmanager
async def app_at(
    database_url: str, smtp_port: int, clock: ManualClock
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with running_app(settings_for(database_url, smtp_port), clock) as pair:
        yield pair


def count_candles(database_url: str) -> int:
    engine = make_sync_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(candles)).scalar_one())
    finally:
        engine.dispose()


def drop_candles_from(database_url: str, start: int) -> int:
    """Lose the newest candles, as a crash between two flushes would."""
    engine = make_sync_engine(database_url)
    try:
        with engine.begin() as conn:
            return int(conn.execute(delete(candles).where(candles.c.time >= start)).rowcount)
    finally:
        engine.dispose()


async def test_history_survives_a_restart(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    mailbox, port = mail
    async with app_at(database_url, port, clock) as (app, client):
        await play_script(app, client, mailbox, clock)
        maker, taker = await two_traders_again(app, client)
        await cross(clock, maker, taker, (SCRIPT_NOW, "2000.00", "0.5"), pair="ETH/USDT")
        before = await snapshot(client)
    assert count_candles(database_url) == SCRIPT_CANDLES + 5  # the ETH trade: one per interval
    async with app_at(database_url, port, clock) as (_app, client):
        assert await snapshot(client) == before
    # Candles are a cache of the trades: lost ones are rebuilt from the trades table.
    assert drop_candles_from(database_url, DAY0) > 0
    async with app_at(database_url, port, clock) as (_app, client):
        assert await snapshot(client) == before
    assert drop_candles_from(database_url, 0) == SCRIPT_CANDLES + 5
    async with app_at(database_url, port, clock) as (_app, client):
        assert await snapshot(client) == before
        clock.advance(DAY)  # and the window still slides after the restart
        coin = await get(client, "get_coin", pair="BTC/USDT")
        assert coin == ["BTC/USDT", "105.00", "0", "0.00", "105.00"]


async def two_traders_again(app: Any, client: httpx.AsyncClient) -> tuple[Trader, Trader]:
    """The script's traders, logged in again (same database, same users)."""
    found = []
    for email in ("maker@example.com", "taker@example.com"):
        token = await login(client, email)
        client.cookies.clear()
        user_id = await app.runtime.services.sessions.resolve(token)
        found.append(Trader(client, token, user_id))
    return found[0], found[1]


@pytest.mark.parametrize("limit", [500])
async def test_kline_limit_counts_gap_rows(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, clock: ManualClock, limit: int
) -> None:
    app, client = app_client
    maker, taker = await two_traders(app, client, mailbox)
    await cross(clock, maker, taker, (DAY0, "10.00", "1"))
    clock.now = DAY0 + 2000 * MIN
    rows = await get(client, "get_coin_k_line", pair="BTC/USDT", limit=limit)
    assert len(rows) == limit
    assert rows[-1] == [DAY0 + 2000 * MIN, "10.00", "10.00", "10.00", "10.00", "0"]
    assert rows[0][0] == DAY0 + (2001 - limit) * MIN


class FlakyStore:
    """A candle store whose writes fail (or hang) on demand."""

    def __init__(self) -> None:
        self.saved: dict[tuple[str, str, int], tuple[int, ...]] = {}
        self.fail = False
        self.hang = False
        self.hanging = asyncio.Event()  # a save is stuck in the hang

    async def save(self, rows: list[tuple[Any, ...]]) -> None:
        if self.hang:
            self.hanging.set()
            await asyncio.Event().wait()
        if self.fail:
            raise OSError("disk on fire")
        for market, period, time, *values in rows:
            self.saved[(market, period, time)] = tuple(values)


async def test_a_failed_or_cancelled_flush_is_written_later() -> None:
    markets = default_markets(default_assets())
    db = create_engine("sqlite://")
    store = FlakyStore()
    market = MarketData(markets, Engine(markets, db, lambda: DAY0), lambda: DAY0, cast(Any, store))

    def commit(trade_id: int, at: int) -> None:
        trade = DomainTrade(trade_id, "ETH/BTC", 50_000, 10**7, 0, "buy", 1, 2, 1, 2, 0, 0, at)
        market.on_commit(Outbox([], [trade], [], set()), at)

    commit(1, DAY0)
    store.fail = True
    assert await market.flush() == 0 and store.saved == {}
    commit(2, DAY0 + 10 * MIN)
    store.hang, store.fail = True, False
    task = asyncio.create_task(market.flush())
    await asyncio.wait_for(store.hanging.wait(), 5)  # cancelled mid-write, not before it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store.hang = False
    assert await market.flush() == 2 * 5 - 3  # the trades share their 30min, 4h and 1d candles
    # o, h, l, c, volume, last trade; quote volume, trades, taker-buy volume and quote, first trade
    assert store.saved[("ETH/BTC", "1d", DAY0)] == (
        *(50_000, 50_000, 50_000, 50_000, 2 * 10**7, 2),
        *(0, 2, 2 * 10**7, 0, 1),
    )
    assert store.saved[("ETH/BTC", "1min", DAY0)][5] == 1
    assert await market.flush() == 0
    db.dispose()


async def test_candle_memory_is_bounded_and_answers_do_not_change(database_url: str) -> None:
    """Each series keeps only its newest candles; a ``since`` older than memory reads the
    table, and every answer is the one an unbounded series gives (before and after a
    restart, which loads only the newest candles)."""
    from exchange.adapters.db.candle_store import CandleStore
    from exchange.adapters.db.database import make_async_engine, migrate
    from exchange.domain.candles import CandleSeries

    migrate(database_url)
    markets = default_markets(default_assets())
    db = make_async_engine(database_url)
    kept, symbol = 40, "ETH/BTC"
    clock = ManualClock(DAY0)
    engine = cast(Any, None)  # market data reads no depth here
    market = MarketData(markets, engine, clock, CandleStore(db), kept=kept)
    reference = {name: CandleSeries(markets[symbol], name, kept=10**9) for name in WIDTHS}
    at = DAY0
    for trade_id in range(1, 400):
        at += MIN * (1 + trade_id % 3)  # gaps of 0 to 2 minutes between traded minutes
        price = 50_000 + (trade_id * 37) % 900
        trade = DomainTrade(trade_id, symbol, price, 10**6, 0, "buy", 1, 2, 1, 2, 0, 0, at)
        market.on_commit(Outbox([], [trade], [], set()), at)
        for series in reference.values():
            series.add_trade(at, price, 10**6, trade_id, quote=0, taker_buys=True)
    await market.flush()
    now = at + 5 * MIN
    minutes = market.series[symbol]["1min"]
    assert len(minutes) <= kept + 256 and not minutes.complete

    async def same_answers(data: MarketData) -> None:
        for name, width in WIDTHS.items():
            for limit in (1, 7, 60, 1500):
                for since in (None, DAY0 - DAY, DAY0, DAY0 + 17 * width + 5, at - 30 * width, at):
                    got = await data.klines(symbol, name, limit, since, now)
                    assert got == reference[name].rows(now, limit, since), (name, limit, since)

    await same_answers(market)
    restarted = MarketData(markets, engine, clock, CandleStore(db), kept=kept)
    await restarted.load()
    assert len(restarted.series[symbol]["1min"]) <= kept
    await same_answers(restarted)
    await db.dispose()
