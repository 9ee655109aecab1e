"""Public market data methods of SPEC §5 (GET, no session), answered from memory.

Each handler parses its few parameters and asks ``services.market`` (which
keeps formatted answers cached), so the hot path is a dict lookup and orjson.
"""

from __future__ import annotations

from exchange.api import schemas
from exchange.api.context import Call, Method, choice, integer, pair
from exchange.domain.candles import ALIASES, INTERVALS, MAX_LIMIT

NO_SINCE = -1
PAIR = pair()
DEALS = integer("limit", "trades, newest first", default=60, low=1, high=500)
LEVELS = integer("limit", "levels per side", default=50, low=1, high=500)
INTERVAL = choice(
    "interval",
    "1min, 5min, 30min, 4h, 1d; also 1m, 5m, 30m, 240min, 1day",
    tuple(INTERVALS),
    default="1min",
    aliases=ALIASES,
)
CANDLES = integer("limit", "candles", default=500, low=1, high=MAX_LIMIT)
SINCE = integer(
    "since", "ms: candles that start at or after it", default=NO_SINCE, low=0, high=2**62
)


async def get_rank(call: Call) -> object:
    services = call.services
    return services.market.rank(services.clock())


async def get_coin(call: Call) -> object:
    market = PAIR.of(call)
    services = call.services
    return services.market.coin(market.symbol, services.clock())


async def get_deal_record(call: Call) -> object:
    return call.services.market.deal_records(PAIR.of(call).symbol, DEALS.of(call))


async def get_depth(call: Call) -> object:
    services = call.services
    return services.market.depth(PAIR.of(call).symbol, LEVELS.of(call), services.clock())


async def get_simple_k_line(call: Call) -> object:
    market = PAIR.of(call)
    services = call.services
    return services.market.simple_klines(market.symbol, services.clock())


async def get_coin_k_line(call: Call) -> object:
    since = SINCE.of(call)
    services = call.services
    return await services.market.klines(
        PAIR.of(call).symbol,
        INTERVAL.of(call),
        CANDLES.of(call),
        None if since == NO_SINCE else since,
        services.clock(),
    )


METHODS = (
    Method(
        "get_rank",
        "GET",
        get_rank,
        "Every market, best 24 h change first.",
        list[schemas.RankItem],
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
        list[schemas.Deal],
        (PAIR, DEALS),
        tag="market",
    ),
    Method(
        "get_depth",
        "GET",
        get_depth,
        "The order book, aggregated by price, best first.",
        schemas.Depth,
        (PAIR, LEVELS),
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
        (PAIR, INTERVAL, CANDLES, SINCE),
        tag="market",
    ),
)
