"""Binance's public endpoints: exchange information and market data, from memory.

The same market data as the seed's methods (``services.market``), shaped as
Binance shows it; ``depth``'s ``lastUpdateId`` is market data's update counter.
"""

from __future__ import annotations

from typing import Any

from exchange.api.binance import klines as kline
from exchange.api.binance.errors import BinanceError
from exchange.api.binance.params import BinanceCall, integer, market, markets, required, text
from exchange.api.binance.tickers import average, best, ticker
from exchange.api.binance.views import aggregate_trades, market_info, public_trade, symbol_of
from exchange.api.limits import parse_rate

__all__ = ["avg_price", "depth", "exchange_info", "klines", "ping", "server_time"]

AVERAGE_MINUTES = 5


async def ping(call: BinanceCall) -> object:
    return {}


async def server_time(call: BinanceCall) -> object:
    return {"serverTime": call.now}


async def exchange_info(call: BinanceCall) -> object:
    settings = call.services.settings
    weight, weight_seconds = parse_rate(settings.rate_limit_weight)
    orders, order_seconds = parse_rate(settings.rate_limit_orders)
    return {
        "timezone": "UTC",
        "serverTime": call.now,
        "rateLimits": [
            _limit("REQUEST_WEIGHT", weight_seconds, weight),
            _limit("ORDERS", order_seconds, orders),
        ],
        "exchangeFilters": [],
        "symbols": [
            market_info(found, found.symbol in call.services.market.halted)
            for found in markets(call)
        ],
    }


def _limit(kind: str, seconds: int, limit: int) -> dict[str, Any]:
    if seconds % 60 == 0:
        interval, count = "MINUTE", seconds // 60
    else:
        interval, count = "SECOND", seconds
    return {"rateLimitType": kind, "interval": interval, "intervalNum": count, "limit": limit}


def depth_weight(params: dict[str, str]) -> int:
    limit = params.get("limit", "100")
    size = int(limit) if limit.isascii() and limit.isdigit() and len(limit) < 8 else 100
    return 5 if size <= 100 else 25 if size <= 500 else 50 if size <= 1000 else 250


async def depth(call: BinanceCall) -> object:
    found = market(call)
    limit = integer(call, "limit", 100, low=1, high=5000)
    assert limit is not None
    data = call.services.market
    await call.services.engine.settled()  # never a batch that may still be rolled back
    update_id = data.update_id(found.symbol)  # read together with the book: one snapshot
    book = data.depth(found.symbol, limit, call.now)
    return {"lastUpdateId": update_id, "bids": book["bids"], "asks": book["asks"]}


async def trades(call: BinanceCall) -> object:
    found = market(call)
    limit = integer(call, "limit", 500, low=1, high=1000)
    assert limit is not None
    recent = await call.services.market.trades_between(found.symbol, None, None, None, limit)
    return [public_trade(trade, found) for trade in recent]


async def historical_trades(call: BinanceCall) -> object:
    found = market(call)
    limit = integer(call, "limit", 500, low=1, high=1000)
    assert limit is not None
    from_id = integer(call, "fromId")
    got = await call.services.market.trades_between(found.symbol, from_id, None, None, limit)
    return [public_trade(trade, found) for trade in got]


async def agg_trades(call: BinanceCall) -> object:
    found = market(call)
    limit = integer(call, "limit", 500, low=1, high=1000)
    assert limit is not None
    from_id, start, end = (
        integer(call, "fromId"),
        integer(call, "startTime"),
        integer(call, "endTime"),
    )
    if start is not None and end is not None and end - start > 3_600_000:
        raise BinanceError(-1127, "More than 1 hours between startTime and endTime.")
    got = await call.services.market.trades_between(found.symbol, from_id, start, end, limit)
    rows = aggregate_trades(got, found)
    if len(got) == limit and len(rows) > 1 and (from_id is not None or start is not None):
        rows.pop()  # its last fills may be beyond this page: the next page starts with it
    return rows[:limit]


async def klines(call: BinanceCall) -> object:
    found = market(call)
    interval = kline.INTERVALS.get(required(call, "interval"))
    if interval is None:
        raise BinanceError(-1120, "Invalid interval.")
    limit = integer(call, "limit", 500, low=1, high=1000)
    assert limit is not None
    start = integer(call, "startTime", high=kline.LAST_TIME)
    end = integer(call, "endTime", high=kline.LAST_TIME)
    data = call.services.market
    if start is not None:
        listed = await data.first_trade_time(found.symbol)
        if listed is not None and start < listed:
            start = interval.floor(listed)  # like Binance: nothing before the market's start
    first, last = kline.window(interval, call.now, start, end, limit)
    if last < first:
        return []
    candles = await data.traded(found.symbol, interval.base, first, interval.next(last) - 1)
    return kline.rows(interval, found, candles, first, last)


async def avg_price(call: BinanceCall) -> object:
    found = market(call)
    data = call.services.market
    minute = call.now - call.now % 60_000
    start = minute - (AVERAGE_MINUTES - 1) * 60_000
    candles = await data.traded(found.symbol, "1min", start, call.now)
    volume = quote = 0
    for candle in candles:
        if candle.time >= start:
            volume += candle.volume
            quote += candle.quote
    last = data.tickers[found.symbol].last_price
    return {
        "mins": AVERAGE_MINUTES,
        "price": average(found, quote, volume, last),
        "closeTime": call.now,
    }


def _one_or_all(call: BinanceCall, items: list[dict[str, Any]]) -> object:
    return items[0] if text(call, "symbol") is not None else items


async def ticker_24hr(call: BinanceCall) -> object:
    mini = call.params.get("type", "FULL") == "MINI"
    return _one_or_all(
        call,
        [
            ticker(call.services.market, call.services.engine, found, call.now, mini)
            for found in markets(call)
        ],
    )


async def ticker_price(call: BinanceCall) -> object:
    tickers = call.services.market.tickers
    items = [
        {
            "symbol": symbol_of(found),
            "price": found.format_price(tickers[found.symbol].last_price or 0),
        }
        for found in markets(call)
    ]
    return _one_or_all(call, items)


async def book_ticker(call: BinanceCall) -> object:
    items = []
    for found in markets(call):
        bid, bid_qty, ask, ask_qty = best(call.services.engine, found)
        items.append(
            {
                "symbol": symbol_of(found),
                "bidPrice": bid,
                "bidQty": bid_qty,
                "askPrice": ask,
                "askQty": ask_qty,
            }
        )
    return _one_or_all(call, items)


def per_symbols(one: int, every: int) -> Any:
    """A weight that depends on whether one symbol or all are asked for."""
    return lambda params: one if params.get("symbol") else every
