"""Public market data methods of SPEC §5 (GET, no session), answered from memory.

Each handler parses its few parameters and asks ``services.market`` (which
keeps formatted answers cached), so the hot path is a dict lookup and orjson.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from exchange.api.context import Call, Method, Param
from exchange.api.params import choice, integer
from exchange.api.trading_methods import PAIR, market_of
from exchange.services.candles import ALIASES, MAX_LIMIT

DEALS_MAX = 500
DEPTH_MAX = 500
NO_SINCE = -1


class RankItem(BaseModel):
    rank: int
    pair: str
    price: str | None = Field(description="last trade price; null before the first trade")
    volume_24h: str = Field(description='base amount traded in the last 24 h; "0" if none')
    change_percent: str = Field(description='signed, 2 decimals, against open_today: "+1.25"')
    open_today: str | None = Field(description="first price of the UTC day, else the last price")


class Deal(BaseModel):
    id: int
    price: str
    amount: str
    time: int
    side: str = Field(description="the taker's side: buy or sell")


class Depth(BaseModel):
    timetick: int = Field(description="server time of the snapshot, ms")
    bids: list[tuple[str, str]] = Field(description="[price, amount], best (highest) first")
    asks: list[tuple[str, str]] = Field(description="[price, amount], best (lowest) first")


async def get_rank(call: Call) -> object:
    services = call.services
    return services.market.rank(services.clock())


async def get_coin(call: Call) -> object:
    market = market_of(call)
    services = call.services
    return services.market.coin(market.symbol, services.clock())


async def get_deal_record(call: Call) -> object:
    market = market_of(call)
    limit = integer(call.params, "limit", 60, low=1, high=DEALS_MAX)
    return call.services.market.deal_records(market.symbol, limit)


async def get_depth(call: Call) -> object:
    market = market_of(call)
    limit = integer(call.params, "limit", 50, low=1, high=DEPTH_MAX)
    services = call.services
    return services.market.depth(market.symbol, limit, services.clock())


async def get_simple_k_line(call: Call) -> object:
    market = market_of(call)
    services = call.services
    return services.market.simple_klines(market.symbol, services.clock())


async def get_coin_k_line(call: Call) -> object:
    market = market_of(call)
    params = call.params
    interval = choice(params, "interval", ALIASES, "1min")
    limit = integer(params, "limit", 500, low=1, high=MAX_LIMIT)
    since = integer(params, "since", NO_SINCE, low=0, high=2**62)
    services = call.services
    return await services.market.klines(
        market.symbol, interval, limit, None if since == NO_SINCE else since, services.clock()
    )


METHODS = (
    Method(
        "get_rank",
        "GET",
        get_rank,
        "Every market, best 24 h change first.",
        list[RankItem],
        tag="market",
    ),
    Method(
        "get_coin",
        "GET",
        get_coin,
        "One market's ticker: [pair, price, volume_24h, change_percent, open_today].",
        list[str | None],
        (PAIR,),
        tag="market",
    ),
    Method(
        "get_deal_record",
        "GET",
        get_deal_record,
        "The market's trades, newest first.",
        list[Deal],
        (PAIR, Param("limit", "integer", description="1-500, default 60")),
        tag="market",
    ),
    Method(
        "get_depth",
        "GET",
        get_depth,
        "The order book, aggregated by price, best first.",
        Depth,
        (PAIR, Param("limit", "integer", description="levels per side, 1-500, default 50")),
        tag="market",
    ),
    Method(
        "get_simple_k_line",
        "GET",
        get_simple_k_line,
        "48 half-hourly [time, close] points of the last 24 h (close null before the first trade).",
        list[tuple[int, str | None]],
        (PAIR,),
        tag="market",
    ),
    Method(
        "get_coin_k_line",
        "GET",
        get_coin_k_line,
        "Candles [time, open, high, low, close, volume], oldest first, UTC-aligned, no gaps.",
        list[tuple[int, str, str, str, str, str]],
        (
            PAIR,
            Param(
                "interval",
                description="1min (default), 5min, 30min, 4h, 1d; also 1m, 5m, 30m, 240min, 1day",
                enum=tuple(ALIASES),
            ),
            Param("limit", "integer", description="1-1500, default 500"),
            Param("since", "integer", description="ms: candles that start at or after it"),
        ),
        tag="market",
    ),
)
