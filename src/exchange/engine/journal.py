"""Group commit: one database transaction per batch of engine commands.

The writer hands over a whole batch (orders in their final state, trades, ledger
entries, touched balances, withdrawals, processed inbox commands) and the answers
to that batch's callers are released only after this commit returns. Writing
whole batches — never one transaction per order — is what makes durable order
placement fast (DESIGN.md, performance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Insert

from exchange.adapters.db.tables import (
    balances,
    engine_inbox,
    ledger_entries,
    orders,
    trades,
    withdrawals,
)
from exchange.domain.ledger import Entry
from exchange.domain.orders import Order, Trade

ORDER_MUTABLE = ("filled", "quote_filled", "frozen", "status", "updated")
WITHDRAWAL_MUTABLE = ("status", "txid", "reason", "updated")


@dataclass(slots=True)
class Batch:
    time: int
    orders: list[Order] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    balances: list[tuple[int, str, int, int]] = field(default_factory=list)
    withdrawals: list[dict[str, Any]] = field(default_factory=list)
    inbox: list[tuple[int, str, str]] = field(default_factory=list)  # id, status, result

    def empty(self) -> bool:
        return not (
            self.orders or self.trades or self.entries or self.balances or self.withdrawals
            or self.inbox
        )


def _upsert(engine: Engine, table: Any, keys: list[str], mutable: tuple[str, ...]) -> Insert:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    return statement.on_conflict_do_update(
        index_elements=keys, set_={name: statement.excluded[name] for name in mutable}
    )


def _order_row(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "user_id": order.user_id,
        "market": order.market,
        "side": order.side,
        "type": order.type,
        "tif": order.tif,
        "post_only": order.post_only,
        "price": order.price,
        "amount": order.amount,
        "filled": order.filled,
        "quote_filled": order.quote_filled,
        "frozen": order.frozen,
        "status": order.status,
        "client_order_id": order.client_order_id,
        "created": order.created,
        "updated": order.updated,
    }


def _trade_row(trade: Trade) -> dict[str, Any]:
    return {
        "id": trade.id,
        "market": trade.market,
        "price": trade.price,
        "amount": trade.amount,
        "quote": trade.quote,
        "taker_side": trade.taker_side,
        "maker_order_id": trade.maker_order_id,
        "taker_order_id": trade.taker_order_id,
        "maker_user_id": trade.maker_user_id,
        "taker_user_id": trade.taker_user_id,
        "maker_fee": trade.maker_fee,
        "taker_fee": trade.taker_fee,
        "time": trade.time,
    }


class Journal:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._orders = _upsert(engine, orders, ["id"], ORDER_MUTABLE)
        self._balances = _upsert(engine, balances, ["user_id", "asset"], ("available", "frozen"))
        self._withdrawals = _upsert(engine, withdrawals, ["id"], WITHDRAWAL_MUTABLE)

    def commit(self, batch: Batch) -> None:
        """Write one batch in one transaction (runs in a worker thread)."""
        if batch.empty():
            return
        with self.engine.begin() as conn:
            self.write(conn, batch)

    def write(self, conn: Connection, batch: Batch) -> None:
        if batch.orders:
            conn.execute(self._orders, [_order_row(order) for order in batch.orders])
        if batch.trades:
            conn.execute(trades.insert(), [_trade_row(trade) for trade in batch.trades])
        if batch.entries:
            now = batch.time
            conn.execute(
                ledger_entries.insert(),
                [
                    {
                        "user_id": e.user_id,
                        "asset": e.asset,
                        "d_available": e.d_available,
                        "d_frozen": e.d_frozen,
                        "reason": e.reason,
                        "ref": e.ref,
                        "time": now,
                    }
                    for e in batch.entries
                ],
            )
        if batch.balances:
            conn.execute(
                self._balances,
                [
                    {"user_id": u, "asset": a, "available": avail, "frozen": frozen}
                    for u, a, avail, frozen in batch.balances
                ],
            )
        if batch.withdrawals:
            conn.execute(self._withdrawals, batch.withdrawals)
        for inbox_id, status, result in batch.inbox:
            conn.execute(
                update(engine_inbox)
                .where(engine_inbox.c.id == inbox_id)
                .values(status=status, result=result, done=batch.time)
            )
