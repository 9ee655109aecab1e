"""Binance's ``{"code": -NNNN, "msg": "..."}`` errors, and the seed codes they stand for.

Binance's error page is the contract (codes and messages: ccxt maps some by the
code, some by the exact message, e.g. ``Account has insufficient balance for
requested action.`` to ``InsufficientFunds``). A refusal from the services or the
engine (an ``ExchangeError`` with a seed code) is translated here, once; the
dialect's own parameter checks raise ``BinanceError`` directly.
"""

from __future__ import annotations

from exchange.domain import errors as rules
from exchange.domain.errors import ExchangeError

__all__ = ["BinanceError", "bad_parameter", "from_exchange", "illegal_value", "mandatory"]


class BinanceError(Exception):
    def __init__(
        self, code: int, msg: str, status: int = 400, *, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.status = status
        self.retry_after = retry_after


def mandatory(name: str) -> BinanceError:
    return BinanceError(
        -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def bad_parameter(name: str) -> BinanceError:
    return BinanceError(-1100, f"Illegal characters found in parameter '{name}'.")


def illegal_value(name: str) -> BinanceError:
    return BinanceError(-1130, f"Invalid data sent for a parameter: '{name}'.")


FILTER_OF_RULE = {
    rules.PRICE_TICK: "PRICE_FILTER",
    rules.PRICE_RANGE: "PRICE_FILTER",
    rules.AMOUNT_STEP: "LOT_SIZE",
    rules.AMOUNT_RANGE: "LOT_SIZE",
    rules.AMOUNT_MINIMUM: "LOT_SIZE",
    rules.NOTIONAL_MINIMUM: "NOTIONAL",
}

INSUFFICIENT = "Account has insufficient balance for requested action."
UNKNOWN_ORDER = "Unknown order sent."
NO_ORDER = "Order does not exist."
WOULD_TAKE = "Order would immediately match and take."
BAD_KEY = "Invalid API-key, IP, or permissions for action."


def filter_failure(name: str) -> BinanceError:
    return BinanceError(-1013, f"Filter failure: {name}")


def from_exchange(error: ExchangeError, *, placing: bool = False) -> BinanceError:
    """The Binance error for a seed refusal; ``placing``: it refused a new order."""
    code = error.code
    if error.rule is not None:
        return filter_failure(FILTER_OF_RULE[error.rule])
    if code == "insufficient_balance":
        return BinanceError(-2010, INSUFFICIENT)
    if code == "order_not_found":
        return BinanceError(-2011, UNKNOWN_ORDER)
    if code == "unknown_pair":
        return BinanceError(-1121, "Invalid symbol.")
    if code == "rate_limited":
        return BinanceError(
            -1003,
            "Too many requests; current limit is exceeded. Please use the websocket for live "
            "updates to avoid polling the API.",
            429,
            retry_after=error.retry_after or 1,
        )
    if code in ("invalid_api_key", "forbidden"):
        return BinanceError(-2015, BAD_KEY, 401)
    if code == "invalid_signature":
        return BinanceError(-1022, "Signature for this request is not valid.")
    if code == "market_halted":
        return BinanceError(-2010, "Market is closed.")
    if code == "account_frozen":
        return BinanceError(-2010, "This action is disabled on this account.")
    if code == "overloaded":
        return BinanceError(
            -1008,
            "Server is currently overloaded with other requests. Please try again in a few "
            "minutes.",
            503,
            retry_after=error.retry_after or 1,
        )
    if code == "internal_error":
        return BinanceError(-1000, "An unknown error occurred while processing the request.", 500)
    if placing or code == "below_minimum":
        return BinanceError(-2010, error.message)  # the engine's own sentence, e.g. a reused id
    return BinanceError(-1102, error.message)
