"""What crosses NATS between writer and gateways: commands cross exactly, anything else is
refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from exchange.domain.commands import CancelOrder, PlaceOrder, RequestWithdrawal
from exchange.domain.errors import ExchangeError
from exchange.domain.events import PlaceResult
from exchange.domain.orders import Order, Trade
from exchange.engine.wire import (
    COMMANDS,
    FIELD_TYPES,
    decode_command,
    decode_error,
    decode_result,
    encode_command,
    encode_error,
    encode_result,
)


def body(data: bytes) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(data)
    return message


def test_the_type_table_names_every_field_of_every_command() -> None:
    for name, kind in COMMANDS.items():
        assert [f.name for f in dataclasses.fields(kind)] == list(FIELD_TYPES[name])


@pytest.mark.parametrize(
    "command",
    [
        PlaceOrder(7, "BTC/USDT", "buy", 10**6, 2_000_000, "limit", "IOC", False, "abc"),
        PlaceOrder(7, "BTC/USDT", "sell", 10**6, 0, "market", "FOK", False, None),
        CancelOrder(7, 2**62),
        RequestWithdrawal(7, "BTC", None, 50_000, 100_000, "bc1qexample"),
        RequestWithdrawal(7, "USDT", 10**15, 1, 2, "0xabc"),
    ],
)
def test_commands_cross_unchanged(command: Any) -> None:
    assert decode_command(body(encode_command(command))) == command


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "1"),
        ("amount", 1.5),
        ("amount", True),
        ("price", None),
        ("post_only", 1),
        ("side", 2),
        ("client_order_id", 5),
    ],
)
def test_a_wrongly_typed_field_is_refused(field: str, value: object) -> None:
    message = body(encode_command(PlaceOrder(7, "BTC/USDT", "buy", 10**6, 2_000_000)))
    message["c"][field] = value
    with pytest.raises(ValueError, match="wrong type"):
        decode_command(message)


def test_missing_extra_and_unknown_are_refused() -> None:
    message = body(encode_command(CancelOrder(7, 9)))
    for fields in ({"user_id": 7}, {"user_id": 7, "order_id": 9, "extra": 1}):
        with pytest.raises(ValueError, match="needs the fields"):
            decode_command({**message, "c": fields})
    for kind in ("Credit", "ApproveWithdrawal", "__init__", None):
        with pytest.raises(ValueError, match="not a command"):
            decode_command({**message, "k": kind})


def test_results_and_errors_cross_unchanged() -> None:
    order = Order(5, 7, "BTC/USDT", "buy", "limit", "GTC", False, 2_000_000, 10**6)
    trade = Trade(9, "BTC/USDT", 2_000_000, 10**6, 200_000, "buy", 4, 5, 8, 7, 400, 2_000, 1)
    result = PlaceResult(order, [trade], False, 5)
    decoded = decode_result(body(encode_result(result)))
    assert dataclasses.astuple(decoded.order) == dataclasses.astuple(order)
    assert [dataclasses.astuple(t) for t in decoded.trades] == [dataclasses.astuple(trade)]
    assert decoded.order_id == 5 and not decoded.duplicate
    assert dataclasses.astuple(decode_result(body(encode_result(order)))) == (
        dataclasses.astuple(order)
    )
    assert decode_result(body(encode_result({"id": 1}))) == {"id": 1}
    assert body(encode_result(order, 7))["seq"] == 7  # the batch a gateway waits for
    error = decode_error(body(encode_error(ExchangeError("rate_limited", "wait", retry_after=3))))
    assert (error.code, error.message, error.retry_after) == ("rate_limited", "wait", 3)
    hidden = decode_error(body(encode_error(RuntimeError("/secret/path.py line 3"))))
    assert hidden.code == "internal_error" and "secret" not in hidden.message
