"""Binance's stream events of one committed batch: market streams and user data.

Pure functions of a batch (its orders and trades, market data after the batch
was folded in, and the engine's books), shaped as Binance's spot streams
document them (``web-socket-streams.md``, ``user-data-stream.md``). Amounts are
decimal strings at the asset's scale, as in the REST answers.

A batch holds each changed order once, in its final state; a user's
``executionReport``s are rebuilt from it and the batch's trades: ``NEW`` for an
order placed in the batch, one ``TRADE`` per fill (cumulative figures counted
up from what the order had before the batch), then ``CANCELED`` or ``EXPIRED``
if it ended so. A post-only order refused for crossing was never accepted
(the request got -2010) and is not reported.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from exchange.api.binance.klines import Interval, rows
from exchange.api.binance.tickers import best, ticker
from exchange.api.binance.views import client_id_of, fee_of, status_of, symbol_of, type_of
from exchange.domain.candles import CandleSeries
from exchange.domain.markets import Asset, Market
from exchange.domain.money import format_units
from exchange.domain.orders import BUY, FILLED, LIMIT, REJECTED, SELL, Order, Trade
from exchange.engine.port import Balances, EnginePort
from exchange.services.marketdata import MarketData

__all__ = [
    "account_position",
    "agg_trade_events",
    "book_ticker",
    "depth_diff",
    "execution_reports",
    "kline_event",
    "partial_depth",
    "ticker_event",
    "trade_event",
]


def trade_event(trade: Trade, market: Market, now: int) -> dict[str, Any]:
    return {
        "e": "trade",
        "E": now,
        "s": symbol_of(market),
        "t": trade.id,
        "p": market.format_price(trade.price),
        "q": market.format_amount(trade.amount),
        "T": trade.time,
        "m": trade.taker_side != BUY,  # the buyer was the maker
        "M": True,
    }


def agg_trade_events(aggregates: list[dict[str, Any]], market: Market, now: int) -> list[Any]:
    """The REST ``aggTrades`` items of the batch's trades, as ``aggTrade`` events."""
    symbol = symbol_of(market)
    return [{"e": "aggTrade", "E": now, "s": symbol, **item} for item in aggregates]


def depth_diff(
    market: Market,
    engine: EnginePort,
    touched: set[tuple[str, int]],
    first: int,
    last: int,
    now: int,
) -> dict[str, Any]:
    """``depthUpdate``: the new total at each price the batch touched (0: the level is gone).

    ``first``/``last`` (``U``/``u``) are batch numbers, the same as REST
    ``depth``'s ``lastUpdateId``: the diff holds every change after batch
    ``first - 1`` up to and including batch ``last``.
    """
    price, amount = market.format_price, market.format_amount
    total = engine.level_total
    symbol = market.symbol
    bids = sorted((p for side, p in touched if side == BUY), reverse=True)
    asks = sorted(p for side, p in touched if side != BUY)
    return {
        "e": "depthUpdate",
        "E": now,
        "s": symbol_of(market),
        "U": first,
        "u": last,
        "b": [[price(p), amount(total(symbol, BUY, p))] for p in bids],
        "a": [[price(p), amount(total(symbol, SELL, p))] for p in asks],
    }


def partial_depth(data: MarketData, market: Market, levels: int, now: int) -> dict[str, Any]:
    book = data.depth(market.symbol, levels, now)
    return {
        "lastUpdateId": data.update_id(market.symbol),
        "bids": book["bids"],
        "asks": book["asks"],
    }


def kline_event(
    interval: Interval, market: Market, series: CandleSeries, time: int, now: int
) -> dict[str, Any] | None:
    """The ``kline`` event of the interval that holds ``time`` (None before any trade)."""
    start = interval.floor(time)
    end = interval.next(start) - 1
    candles = series.candles
    times = series.times
    low, high = bisect_left(times, start), bisect_right(times, end)
    found = rows(interval, market, candles[max(low - 1, 0) : high], start, start)
    if not found:
        return None
    row = found[0]
    traded = candles[low:high]
    return {
        "e": "kline",
        "E": now,
        "s": symbol_of(market),
        "k": {
            "t": start,
            "T": end,
            "s": symbol_of(market),
            "i": interval.name,
            "f": traded[0].first_id if traded else -1,
            "L": traded[-1].trade_id if traded else -1,
            "o": row[1],
            "c": row[4],
            "h": row[2],
            "l": row[3],
            "v": row[5],
            "n": row[8],
            "x": now > end,
            "q": row[7],
            "V": row[9],
            "Q": row[10],
            "B": "0",
        },
    }


#: The stream tickers' short names for the REST ``ticker/24hr`` fields.
MINI_FIELDS = (
    ("s", "symbol"), ("c", "lastPrice"), ("o", "openPrice"), ("h", "highPrice"),
    ("l", "lowPrice"), ("v", "volume"), ("q", "quoteVolume"),
)  # fmt: skip
FULL_FIELDS = (
    ("s", "symbol"), ("p", "priceChange"), ("P", "priceChangePercent"),
    ("w", "weightedAvgPrice"), ("x", "prevClosePrice"), ("c", "lastPrice"), ("Q", "lastQty"),
    ("b", "bidPrice"), ("B", "bidQty"), ("a", "askPrice"), ("A", "askQty"), ("o", "openPrice"),
    ("h", "highPrice"), ("l", "lowPrice"), ("v", "volume"), ("q", "quoteVolume"),
    ("O", "openTime"), ("C", "closeTime"), ("F", "firstId"), ("L", "lastId"), ("n", "count"),
)  # fmt: skip


def ticker_event(
    data: MarketData, engine: EnginePort, market: Market, now: int, mini: bool
) -> dict[str, Any]:
    """``24hrMiniTicker`` or ``24hrTicker``: the REST ticker's figures under short names."""
    view = ticker(data, engine, market, now, mini)
    event: dict[str, Any] = {"e": "24hrMiniTicker" if mini else "24hrTicker", "E": now}
    for short, name in MINI_FIELDS if mini else FULL_FIELDS:
        event[short] = view[name]
    return event


def book_ticker(engine: EnginePort, market: Market, update_id: int) -> dict[str, Any]:
    bid, bid_qty, ask, ask_qty = best(engine, market)
    return {
        "u": update_id,
        "s": symbol_of(market),
        "b": bid,
        "B": bid_qty,
        "a": ask,
        "A": ask_qty,
    }


# -- user data ------------------------------------------------------------------


def execution_reports(
    order: Order, fills: list[Trade], market: Market, now: int, new: bool
) -> list[dict[str, Any]]:
    """What the batch did to ``order`` (``new``: placed in it), as Binance reports it."""
    if new and order.status == REJECTED:
        return []
    filled = order.filled - sum(trade.amount for trade in fills)
    quote = order.quote_filled - sum(trade.quote for trade in fills)
    reports: list[dict[str, Any]] = []
    amount, price_of, quote_of = market.format_amount, market.format_price, market.format_quote
    if new:
        reports.append(_report(order, market, now, "NEW", "NEW", filled, quote, True))
    for index, trade in enumerate(fills):
        filled += trade.amount
        quote += trade.quote
        last = index == len(fills) - 1
        status = "FILLED" if last and order.status == FILLED else "PARTIALLY_FILLED"
        working = order.is_open or not last
        report = _report(order, market, now, "TRADE", status, filled, quote, working)
        commission, asset = fee_of(trade, order, market)
        report.update(
            l=amount(trade.amount),
            L=price_of(trade.price),
            n=commission,
            N=asset,
            T=trade.time,
            t=trade.id,
            m=trade.maker_order_id == order.id,
            Y=quote_of(trade.quote),
        )
        reports.append(report)
    if not order.is_open and order.status != FILLED:
        ended = status_of(order)
        report = _report(order, market, now, ended, ended, filled, quote, False)
        if ended == "CANCELED":
            report["C"] = client_id_of(order)
        reports.append(report)
    return reports


def _report(
    order: Order,
    market: Market,
    now: int,
    execution: str,
    status: str,
    filled: int,
    quote: int,
    working: bool,
) -> dict[str, Any]:
    amount, price = market.format_amount, market.format_price
    return {
        "e": "executionReport",
        "E": now,
        "s": symbol_of(market),
        "c": client_id_of(order),
        "S": "BUY" if order.side == BUY else "SELL",
        "o": type_of(order),
        "f": order.tif if order.type == LIMIT else "GTC",
        "q": amount(order.amount),
        "p": price(order.price),
        "P": price(0),
        "F": amount(0),
        "g": -1,
        "C": "",
        "x": execution,
        "X": status,
        "r": "NONE",
        "i": order.id,
        "l": amount(0),
        "z": amount(filled),
        "L": price(0),
        "n": "0",
        "N": None,
        "T": now,
        "t": -1,
        "I": 0,
        "w": working,
        "m": False,
        "M": False,
        "O": order.created,
        "Z": market.format_quote(quote),
        "Y": market.format_quote(0),
        "Q": market.format_quote(0),
        "W": order.created,
        "V": "EXPIRE_MAKER",
    }


def account_position(
    balances: Balances, assets: dict[str, Asset], changed: set[str], now: int
) -> dict[str, Any]:
    """``outboundAccountPosition``: the user's balances of the assets the batch changed."""
    return {
        "e": "outboundAccountPosition",
        "E": now,
        "u": now,
        "B": [
            {
                "a": code,
                "f": format_units(balances[code][0], assets[code].scale),
                "l": format_units(balances[code][1], assets[code].scale),
            }
            for code in sorted(changed)
            if code in balances
        ],
    }
