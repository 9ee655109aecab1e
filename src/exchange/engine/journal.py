"""Group commit: one database transaction per batch of engine commands.

The writer hands over a whole batch (orders in their final state, trades, ledger
entries, touched balances, withdrawals, processed inbox commands) and the answers
to that batch's callers are released only after this commit returns. Writing
whole batches — never one transaction per order — is what makes durable order
placement fast (DESIGN.md, performance).

Each table's rows go in ONE multi-row ``INSERT … VALUES (…), (…)`` statement
(chunked under the databases' bound-parameter limits) through the DB-API: a
per-row ``executemany`` releases and re-takes the GIL around every row, and under
load each hand-back waits for the busy event loop — a convoy that made batches
take tens of milliseconds. SQLAlchemy's per-row parameter processing also cost
more than the database's own work. Every value is still a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Engine

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

ORDER_COLUMNS = (
    "id",
    "user_id",
    "market",
    "side",
    "type",
    "tif",
    "post_only",
    "price",
    "amount",
    "filled",
    "quote_filled",
    "frozen",
    "status",
    "client_order_id",
    "created",
    "updated",
)
ORDER_MUTABLE = ("filled", "quote_filled", "frozen", "status", "updated")
TRADE_COLUMNS = (
    "id",
    "market",
    "price",
    "amount",
    "quote",
    "taker_side",
    "maker_order_id",
    "taker_order_id",
    "maker_user_id",
    "taker_user_id",
    "maker_fee",
    "taker_fee",
    "time",
)
ENTRY_COLUMNS = ("user_id", "asset", "d_available", "d_frozen", "reason", "ref", "time")
BALANCE_COLUMNS = ("user_id", "asset", "available", "frozen")
WITHDRAWAL_COLUMNS = (
    "id",
    "user_id",
    "coin",
    "amount",
    "fee",
    "address",
    "status",
    "txid",
    "reason",
    "created",
    "updated",
)
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
            self.orders
            or self.trades
            or self.entries
            or self.balances
            or self.withdrawals
            or self.inbox
        )


MAX_PARAMETERS = 30_000  # SQLite allows 32,766 bound parameters, PostgreSQL 65,535


class MultiRow:
    """``INSERT`` (or upsert) of many rows in one statement, SQL cached per row count."""

    def __init__(
        self,
        table: Table,
        columns: tuple[str, ...],
        mark: str,
        keys: tuple[str, ...] = (),
        mutable: tuple[str, ...] = (),
    ) -> None:
        for name in (*columns, *keys, *mutable):
            assert name in table.c, f"{table.name}.{name}"
        self.head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
        self.row = "(" + ", ".join(mark for _ in columns) + ")"
        self.tail = ""
        if keys:
            updates = ", ".join(f"{name} = excluded.{name}" for name in mutable)
            self.tail = f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        self.chunk = MAX_PARAMETERS // len(columns)
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        text = self._sql.get(rows)
        if text is None:
            text = self._sql[rows] = self.head + ", ".join([self.row] * rows) + self.tail
        return text

    def run(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        for start in range(0, len(rows), self.chunk):
            part = rows[start : start + self.chunk]
            cursor.execute(self.sql(len(part)), [value for row in part for value in row])


def _order_row(o: Order) -> tuple[Any, ...]:
    return (
        o.id,
        o.user_id,
        o.market,
        o.side,
        o.type,
        o.tif,
        o.post_only,
        o.price,
        o.amount,
        o.filled,
        o.quote_filled,
        o.frozen,
        o.status,
        o.client_order_id,
        o.created,
        o.updated,
    )


def _trade_row(t: Trade) -> tuple[Any, ...]:
    return (
        t.id,
        t.market,
        t.price,
        t.amount,
        t.quote,
        t.taker_side,
        t.maker_order_id,
        t.taker_order_id,
        t.maker_user_id,
        t.taker_user_id,
        t.maker_fee,
        t.taker_fee,
        t.time,
    )


class Journal:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        mark = "?" if self.sqlite else "%s"
        self.orders = MultiRow(orders, ORDER_COLUMNS, mark, ("id",), ORDER_MUTABLE)
        self.trades = MultiRow(trades, TRADE_COLUMNS, mark)
        self.entries = MultiRow(ledger_entries, ENTRY_COLUMNS, mark)
        self.balances = MultiRow(
            balances, BALANCE_COLUMNS, mark, ("user_id", "asset"), ("available", "frozen")
        )
        self.withdrawals = MultiRow(
            withdrawals, WITHDRAWAL_COLUMNS, mark, ("id",), WITHDRAWAL_MUTABLE
        )
        self.sql_inbox = (
            f"UPDATE {engine_inbox.name} SET status = {mark}, result = {mark}, done = {mark} "
            f"WHERE id = {mark}"
        )

    def commit(self, batch: Batch) -> None:
        """Write one batch in one transaction (runs in a worker thread)."""
        if batch.empty():
            return
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            if self.sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            try:
                self._write(cursor, batch)
            except BaseException:
                if self.sqlite:
                    cursor.execute("ROLLBACK")
                else:
                    raw.rollback()
                raise
            if self.sqlite:
                cursor.execute("COMMIT")
            else:
                raw.commit()
            cursor.close()
        finally:
            raw.close()

    def _write(self, cursor: Any, batch: Batch) -> None:
        if batch.orders:
            self.orders.run(cursor, [_order_row(o) for o in batch.orders])
        if batch.trades:
            self.trades.run(cursor, [_trade_row(t) for t in batch.trades])
        if batch.entries:
            stamp = (batch.time,)
            self.entries.run(cursor, [tuple(e) + stamp for e in batch.entries])
        if batch.balances:
            self.balances.run(cursor, batch.balances)
        if batch.withdrawals:
            self.withdrawals.run(
                cursor,
                [tuple(row[name] for name in WITHDRAWAL_COLUMNS) for row in batch.withdrawals],
            )
        if batch.inbox:
            cursor.executemany(
                self.sql_inbox,
                [
                    (status, result, batch.time, inbox_id)
                    for inbox_id, status, result in batch.inbox
                ],
            )
