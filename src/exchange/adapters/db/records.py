"""Domain records to rows and back: the columns are the records' fields, in order.

One statement of each mapping, derived from the dataclasses, so a field added to
``Order``, ``Trade`` or ``Withdrawal`` (and its column) needs no list kept by
hand: the journal writes ``attrgetter(*FIELDS)(record)``, the readers below
build the record from a row's columns of the same names.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from exchange.domain.orders import Order, Trade
from exchange.domain.withdrawals import WITHDRAWAL_FIELDS, Withdrawal

__all__ = [
    "ORDER_FIELDS",
    "TRADE_FIELDS",
    "WITHDRAWAL_FIELDS",
    "order_from_row",
    "trade_from_row",
    "withdrawal_from_row",
]

ORDER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Order))
TRADE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Trade))


def order_from_row(row: Any) -> Order:
    mapping = row._mapping
    order = Order(*(mapping[name] for name in ORDER_FIELDS))
    order.post_only = bool(order.post_only)  # SQLite hands a BOOLEAN back as 0 or 1
    return order


def trade_from_row(row: Any) -> Trade:
    mapping = row._mapping
    return Trade(*(mapping[name] for name in TRADE_FIELDS))


def withdrawal_from_row(row: Any) -> Withdrawal:
    mapping = row._mapping
    return Withdrawal(*(mapping[name] for name in WITHDRAWAL_FIELDS))
