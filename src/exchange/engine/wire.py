"""What crosses NATS between the writer and its gateways (``engine/bus.py``).

Each message is one orjson object with a type tag ``t``. JSON and not pickle: a
message is data, never code. Commands are checked field by field (names and
exact types) before they reach the engine's queue; a gateway is trusted like
the one-process server to set a withdrawal's fee from the settings, and nothing
more: deposits and reviews are not commands it can send.
Orders, trades and commands are slotted dataclasses, which orjson writes as
objects and the reader rebuilds with ``Cls(**fields)``.

Gateway → writer (requests): ``cmd`` (a command to apply), a user's balances,
a snapshot. Writer → gateways: ``hello`` (the snapshot: the full depth of every
book), ``events`` (one committed batch, on the JetStream stream: trades, changed
orders, touched accounts and the new totals of the touched price levels),
``ok`` / ``err`` (an answer; ``ok`` names the batch it waits for).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

import orjson

from exchange.domain.commands import CancelOrder, Command, PlaceOrder, RequestWithdrawal, Returns
from exchange.domain.errors import ExchangeError
from exchange.domain.events import Committed, PlaceResult, Replicated
from exchange.domain.orders import Order, Trade
from exchange.domain.withdrawals import Withdrawal
from exchange.engine.port import Balances, Levels

__all__ = [
    "decode_command",
    "decode_error",
    "decode_outbox",
    "decode_result",
    "encode_command",
    "encode_error",
    "encode_result",
    "read",
]

#: The commands a worker may send. Deposits and withdrawal reviews are operator
#: actions: they go through the audited inbox table, never through a worker.
COMMANDS: dict[str, type[PlaceOrder | CancelOrder | RequestWithdrawal]] = {
    "PlaceOrder": PlaceOrder,
    "CancelOrder": CancelOrder,
    "RequestWithdrawal": RequestWithdrawal,
}

#: A price level's new total: (market, side, price, total); total 0 = the level is gone.
LevelTotal = tuple[str, str, int, int]


def read(data: bytes) -> dict[str, Any]:
    """A message's object; ValueError for anything else (orjson's error is one)."""
    message = orjson.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a message must be an object")
    return message


# -- commands and their answers ------------------------------------------------


def encode_command(command: Returns[Any]) -> bytes:
    kind = type(command).__name__
    if kind not in COMMANDS:
        raise ValueError(f"{kind} is not sent by gateways")
    return orjson.dumps({"t": "cmd", "k": kind, "c": command})


def _json_types(kind: type) -> dict[str, tuple[type, ...]]:
    """A command's fields and the exact JSON types each may hold, from its annotations."""
    hints = typing.get_type_hints(kind)
    return {
        f.name: tuple(typing.get_args(hints[f.name]) or (hints[f.name],))
        for f in dataclasses.fields(kind)
    }


#: The exact JSON types of each command's fields (derived from the dataclasses). A
#: wrongly typed value would not be refused by the engine but break it mid-batch
#: (failing every command batched with it), so a message is checked here, field by
#: field, before it reaches the queue.
FIELD_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    name: _json_types(kind) for name, kind in COMMANDS.items()
}


def decode_command(message: dict[str, Any]) -> Command:
    name = str(message.get("k"))
    kind = COMMANDS.get(name)
    fields = message.get("c")
    if kind is None or not isinstance(fields, dict):
        raise ValueError("not a command message")
    expected = FIELD_TYPES[name]
    if set(fields) != set(expected):
        raise ValueError(f"{name} needs the fields {sorted(expected)}")
    for field, types in expected.items():
        if type(fields[field]) not in types:  # exact: True is not an int here
            raise ValueError(f"{name}.{field} has the wrong type")
    return kind(**fields)


def encode_result(result: Any, seq: int = 0, epoch: str = "") -> bytes:
    """An answer; ``seq``: the batch a gateway must have applied before passing it on
    (of the writer's run ``epoch``)."""
    if isinstance(result, PlaceResult):
        kind = "place"
    elif isinstance(result, Order):
        kind = "order"
    elif isinstance(result, Withdrawal):
        kind = "withdrawal"
    else:
        kind = "data"
    return orjson.dumps({"t": "ok", "k": kind, "v": result, "seq": seq, "epoch": epoch})


def decode_result(message: dict[str, Any]) -> Any:
    kind, value = message["k"], message["v"]
    if kind == "place":
        order = value["order"]
        return PlaceResult(
            None if order is None else Order(**order),
            [Trade(**trade) for trade in value["trades"]],
            value["duplicate"],
            value["order_id"],
        )
    if kind == "order":
        return Order(**value)
    if kind == "withdrawal":
        return Withdrawal(**value)
    return value


def decode_balances(value: Any) -> Balances:
    """A ``bal`` answer (asset -> [available, frozen]), checked field by field."""
    if not isinstance(value, dict):
        raise ValueError("balances are not an object")
    out: Balances = {}
    for asset, pair in value.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(n) is int for n in pair)):
            raise ValueError(f"the balance of {asset!r} is not [available, frozen]")
        out[str(asset)] = (pair[0], pair[1])
    return out


def encode_error(error: BaseException) -> bytes:
    if not isinstance(error, ExchangeError):
        error = ExchangeError("internal_error", "something went wrong on our side; try again")
    described = [error.code, error.message, error.retry_after, error.rule]
    return orjson.dumps({"t": "err", "e": described})


def decode_error(message: dict[str, Any]) -> ExchangeError:
    code, text, retry_after, rule = message["e"]
    return ExchangeError(
        str(code), str(text), retry_after=retry_after, rule=None if rule is None else str(rule)
    )


# -- committed batches -----------------------------------------------------------


def encode_events(
    epoch: str,
    seq: int,
    now: int,
    outbox: Committed,
    levels: Iterable[LevelTotal],
    books: dict[str, Levels],
) -> bytes:
    """``levels``: new totals of touched levels; ``books``: whole books rebuilt by a reload.

    ``epoch`` names the writer's run: its batch numbers start again at each start."""
    message: dict[str, Any] = {
        "t": "events",
        "epoch": epoch,
        "seq": seq,
        "now": now,
        "trades": outbox.trades,
        "orders": outbox.orders,
        "accounts": sorted(outbox.accounts),
        "levels": list(levels),
        "books": books,
    }
    if outbox.controls:  # rare (an operator's halt): no key at all on the order path
        message["controls"] = outbox.controls
    return orjson.dumps(message)


def decode_outbox(message: dict[str, Any]) -> Replicated:
    return Replicated(
        [Order(**order) for order in message["orders"]],
        [Trade(**trade) for trade in message["trades"]],
        {(int(user), str(asset)) for user, asset in message["accounts"]},
        controls=[
            (str(kind), str(key), bool(active)) for kind, key, active in message.get("controls", ())
        ],
    )
