"""Reading one Binance request's parameters, with Binance's error for each kind of bad value.

Parameters arrive as text (query string, form body). Numbers are checked
against Binance's patterns before the exchange's parsers see them, so a client
gets -1100 for ``price=abc`` and -1013 (the filter) for a price off the tick.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from exchange.api.binance.errors import BinanceError, bad_parameter, illegal_value, mandatory
from exchange.api.context import Services
from exchange.api.limits import RateLimiter
from exchange.domain.markets import Market
from exchange.services.api_keys import ApiKey

__all__ = ["BinanceCall", "decimal", "integer", "market", "markets", "optional_market"]

_LONG = re.compile(r"[0-9]{1,20}")
_DECIMAL = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?")
CLIENT_ID = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")


@dataclass(slots=True)
class BinanceCall:
    """One request to the Binance dialect: its parameters and, when signed, its key's owner."""

    services: Services
    limiter: RateLimiter
    symbols: Mapping[str, Market]  # "BTCUSDT" -> the market
    params: dict[str, str]
    client: str
    now: int
    user_id: int = 0
    key: ApiKey | None = None


def text(call: BinanceCall, name: str) -> str | None:
    value = call.params.get(name)
    return value if value else None


def required(call: BinanceCall, name: str) -> str:
    value = call.params.get(name)
    if not value:
        raise mandatory(name)
    return value


def integer(
    call: BinanceCall, name: str, default: int | None = None, *, low: int = 0, high: int = 2**63 - 1
) -> int | None:
    value = call.params.get(name)
    if value is None or value == "":
        return default
    if not _LONG.fullmatch(value):
        raise bad_parameter(name)
    number = int(value)
    if not low <= number <= high:
        raise illegal_value(name)
    return number


def decimal(call: BinanceCall, name: str) -> str | None:
    """The decimal text as sent (the market parses it exactly at its scale)."""
    value = call.params.get(name)
    if value is None or value == "":
        return None
    if not _DECIMAL.fullmatch(value):
        raise bad_parameter(name)
    return value


def _market(call: BinanceCall, symbol: str) -> Market:
    found = call.symbols.get(symbol.upper())
    if found is None:
        raise BinanceError(-1121, "Invalid symbol.")
    return found


def market(call: BinanceCall) -> Market:
    return _market(call, required(call, "symbol"))


def optional_market(call: BinanceCall) -> Market | None:
    symbol = text(call, "symbol")
    return None if symbol is None else _market(call, symbol)


def markets(call: BinanceCall) -> list[Market]:
    """``symbol``, ``symbols=["A","B"]`` (JSON) or, with neither, every market."""
    one = optional_market(call)
    if one is not None:
        if text(call, "symbols") is not None:
            raise BinanceError(-1101, "Parameter 'symbol' and 'symbols' cannot be sent together.")
        return [one]
    many = text(call, "symbols")
    if many is None:
        return list(call.symbols.values())
    try:
        names = orjson.loads(many)
    except orjson.JSONDecodeError:
        raise bad_parameter("symbols") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad_parameter("symbols")
    return [_market(call, name) for name in names]
