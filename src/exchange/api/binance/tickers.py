"""Binance's 24 h tickers and best prices, for the REST endpoints and the streams alike."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from exchange.api.binance.views import symbol_of
from exchange.domain.markets import Market
from exchange.engine.port import EnginePort
from exchange.services.marketdata import MarketData

__all__ = ["average", "best", "ticker"]


def average(found: Market, quote: int, volume: int, fallback: int | None) -> str:
    """quote / volume at the price scale (display only), or the fallback price."""
    if not volume:
        return found.format_price(fallback or 0)
    ratio = Decimal(quote).scaleb(-found.quote.scale) / Decimal(volume).scaleb(-found.base.scale)
    return str(ratio.quantize(Decimal(1).scaleb(-found.price_scale), rounding=ROUND_HALF_EVEN))


def best(engine: EnginePort, found: Market) -> tuple[str, str, str, str]:
    bids, asks = engine.depth(found.symbol, 1)
    price, amount = found.format_price, found.format_amount
    bid = (price(bids[0][0]), amount(bids[0][1])) if bids else (price(0), amount(0))
    ask = (price(asks[0][0]), amount(asks[0][1])) if asks else (price(0), amount(0))
    return bid[0], bid[1], ask[0], ask[1]


def ticker(
    data: MarketData, engine: EnginePort, found: Market, now: int, mini: bool
) -> dict[str, Any]:
    """A ``ticker/24hr`` item (``mini``: the MINI one), also the streams' 24 h tickers."""
    figures = data.rolling(found.symbol, now)
    price, amount, quote = found.format_price, found.format_amount, found.format_quote
    last = data.tickers[found.symbol].last_price
    opened = figures.open
    view: dict[str, Any] = {"symbol": symbol_of(found)}
    if not mini:
        change = 0 if opened is None or last is None else last - opened
        percent = "0.000"
        if opened:
            percent = str((Decimal(change) * 100 / opened).quantize(Decimal("0.001")))
        view["priceChange"] = price(change)
        view["priceChangePercent"] = percent
        view["weightedAvgPrice"] = average(found, figures.quote, figures.volume, 0)
        view["prevClosePrice"] = price(figures.prev_close or 0)
    view["lastPrice"] = price(last or 0)
    if not mini:
        recent = data.recent[found.symbol]
        view["lastQty"] = amount(recent[-1].amount if recent else 0)
        bid, bid_qty, ask, ask_qty = best(engine, found)
        view.update(bidPrice=bid, bidQty=bid_qty, askPrice=ask, askQty=ask_qty)
    view["openPrice"] = price(opened or 0)
    view["highPrice"] = price(figures.high)
    view["lowPrice"] = price(figures.low)
    view["volume"] = amount(figures.volume)
    view["quoteVolume"] = quote(figures.quote)
    view["openTime"] = figures.start
    view["closeTime"] = now
    view["firstId"] = figures.first_id
    view["lastId"] = figures.last_id
    view["count"] = figures.count
    return view
