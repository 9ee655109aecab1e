"""Group commit: one database transaction per batch of engine commands.

The writer hands over a whole batch (orders in their final state, trades, ledger
entries, touched balances, withdrawals, processed inbox commands) and the answers
to that batch's callers are released only after this commit returns. Writing
whole batches — never one transaction per order — is what makes durable order
placement fast (docs/architecture.md, "the writer").

Rows go through the DB-API (see ``TableWriter``): SQLAlchemy's per-row
parameter processing cost more than the database's own work. Every value is
still a bound parameter.

The journal keeps one connection for its transactions instead of taking one
from the pool for each: a checkout cost ~7 µs on SQLite and ~50 µs on
PostgreSQL (the pool's pre-ping, a round trip), a fixed cost of every batch
that a lone order pays whole (docs/performance.md). What the pre-ping gave is
kept: a kept connection found lost is replaced once by a fresh one from the
pool (which pings it), as nothing that could commit was sent on the lost one.

On PostgreSQL a batch's statements go out in psycopg's pipeline mode: ``BEGIN``
and every table's statement in one flight, then ``COMMIT`` in a second, instead
of a round trip each (six for a batch with trades). The rows' errors are still
known before ``COMMIT`` is sent (the pipeline is synced after the writes), so a
refused batch is rolled back and a failed ``COMMIT`` stays the only unknown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from sqlalchemy import Boolean, Connection, String, Table, Text, select, update
from sqlalchemy.engine import Engine

from exchange.adapters.db.records import ORDER_FIELDS, TRADE_FIELDS, WITHDRAWAL_FIELDS
from exchange.adapters.db.tables import (
    balances,
    controls,
    engine_inbox,
    ledger_entries,
    orders,
    trades,
    withdrawals,
)
from exchange.domain.commands import (
    ApproveWithdrawal,
    CancelOrders,
    Command,
    Credit,
    RejectWithdrawal,
    SetControl,
)
from exchange.domain.ledger import Entry
from exchange.domain.orders import Order, Trade
from exchange.domain.withdrawals import Withdrawal

log = logging.getLogger("exchange.journal")

#: Columns are the records' fields, in order: a row is ``attrgetter(*columns)(record)``.
ORDER_COLUMNS = ORDER_FIELDS
ORDER_MUTABLE = ("filled", "quote_filled", "frozen", "status", "updated")
TRADE_COLUMNS = TRADE_FIELDS
ENTRY_COLUMNS = (*Entry._fields, "time")
BALANCE_COLUMNS = ("user_id", "asset", "available", "frozen")
WITHDRAWAL_COLUMNS = WITHDRAWAL_FIELDS
WITHDRAWAL_MUTABLE = ("status", "txid", "reason", "updated")
CONTROL_COLUMNS = ("kind", "key", "active", "updated")
_order_row = attrgetter(*ORDER_COLUMNS)
_trade_row = attrgetter(*TRADE_COLUMNS)
_withdrawal_row = attrgetter(*WITHDRAWAL_COLUMNS)


@dataclass(slots=True)
class Batch:
    time: int
    orders: list[Order] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    balances: list[tuple[int, str, int, int]] = field(default_factory=list)
    withdrawals: list[Withdrawal] = field(default_factory=list)
    inbox: list[tuple[int, str, str]] = field(default_factory=list)  # id, status, result
    controls: list[tuple[str, str, bool]] = field(default_factory=list)  # kind, key, active

    def empty(self) -> bool:
        return not (
            self.orders
            or self.trades
            or self.entries
            or self.balances
            or self.withdrawals
            or self.inbox
            or self.controls
        )


class TableWriter:
    """Write many rows of one table in one round trip, each database its fastest way.

    SQLite: ``executemany`` of a one-row statement (prepared once, stepped in C).
    PostgreSQL: one ``INSERT … SELECT FROM unnest(%s::type[], …)`` with one array
    parameter per column — a single statement whatever the batch size (psycopg's
    per-row ``executemany`` and giant multi-row VALUES both cost ~70 µs a row).
    """

    def __init__(
        self,
        table: Table,
        columns: tuple[str, ...],
        sqlite: bool,
        keys: tuple[str, ...] = (),
        mutable: tuple[str, ...] = (),
    ) -> None:
        for name in (*columns, *keys, *mutable):
            assert name in table.c, f"{table.name}.{name}"
        self.sqlite = sqlite
        self.width = len(columns)
        tail = ""
        if keys:
            updates = ", ".join(f"{name} = excluded.{name}" for name in mutable)
            tail = f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        head = f"INSERT INTO {table.name} ({', '.join(columns)}) "
        if sqlite:
            self.sql = head + "VALUES (" + ", ".join("?" for _ in columns) + ")" + tail
        else:
            arrays = ", ".join(f"%s::{_pg_type(table, name)}[]" for name in columns)
            self.sql = head + f"SELECT * FROM unnest({arrays})" + tail

    def run(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        if self.sqlite:
            cursor.executemany(self.sql, rows)
        else:
            cursor.execute(self.sql, [list(column) for column in zip(*rows, strict=True)])


def _pg_type(table: Table, name: str) -> str:
    kind = table.c[name].type
    if isinstance(kind, Boolean):
        return "boolean"
    if isinstance(kind, (String, Text)):
        return "text"
    return "bigint"


class Journal:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        #: The pool's connection the transactions run on: taken at the first, let go
        #: after a failure that leaves its state unknown, given back by ``close``.
        self._kept: Any = None
        #: One transaction at a time on it (the writer awaits each, but a cancelled
        #: writer's commit may still be running in its thread).
        self._guard = threading.Lock()
        lite = self.sqlite
        mark = "?" if lite else "%s"  # only the inbox update below is not a TableWriter
        self.orders = TableWriter(orders, ORDER_COLUMNS, lite, ("id",), ORDER_MUTABLE)
        self.trades = TableWriter(trades, TRADE_COLUMNS, lite)
        self.entries = TableWriter(ledger_entries, ENTRY_COLUMNS, lite)
        self.balances = TableWriter(
            balances, BALANCE_COLUMNS, lite, ("user_id", "asset"), ("available", "frozen")
        )
        self.withdrawals = TableWriter(
            withdrawals, WITHDRAWAL_COLUMNS, lite, ("id",), WITHDRAWAL_MUTABLE
        )
        self.controls = TableWriter(
            controls, CONTROL_COLUMNS, lite, ("kind", "key"), ("active", "updated")
        )
        self.sql_inbox = (
            f"UPDATE {engine_inbox.name} SET status = {mark}, result = {mark}, done = {mark} "
            f"WHERE id = {mark}"
        )

    def commit(self, batch: Batch) -> None:
        """Write one batch in one transaction (runs in a worker thread)."""
        if batch.empty():
            return
        self._transaction(lambda cursor: self._write(cursor, batch))

    def mark_inbox(self, inbox_id: int, status: str, result: str, time: int) -> None:
        """Record an operator command's outcome on its own (its batch could not be)."""
        self._transaction(
            lambda cursor: cursor.execute(self.sql_inbox, (status, result, time, inbox_id))
        )

    @staticmethod
    def release_claims(conn: Connection) -> None:
        """Claims of a batch that never committed (or of a dead writer) go back to the queue.

        Called in the transaction that loads the writer's state: only one writer
        exists, so no claim is live then.
        """
        conn.execute(
            update(engine_inbox).where(engine_inbox.c.status == "claimed").values(status="pending")
        )

    def claim_inbox(self, limit: int = 500) -> list[tuple[int, str, str]]:
        """(id, kind, payload) of pending operator commands, now claimed, oldest first.

        Claimed, so that a CLI that gives up may cancel only unclaimed ones; each
        is marked done or failed in the commit of the batch that applies it.
        """
        with self.engine.begin() as conn:
            ids = (
                conn.execute(
                    select(engine_inbox.c.id)
                    .where(engine_inbox.c.status == "pending")
                    .order_by(engine_inbox.c.id)
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            if not ids:
                return []
            claimed = conn.execute(
                update(engine_inbox)
                .where(engine_inbox.c.id.in_(ids), engine_inbox.c.status == "pending")
                .values(status="claimed")
                .returning(engine_inbox.c.id, engine_inbox.c.kind, engine_inbox.c.payload)
            )
            return sorted((r.id, r.kind, r.payload) for r in claimed)

    def close(self) -> None:
        """Give the kept connection back to the pool (the writer has stopped)."""
        with self._guard:
            kept, self._kept = self._kept, None
            if kept is not None:
                try:
                    kept.close()
                except Exception as error:
                    log.warning("the journal's connection could not be returned (%s)", error)

    def _transaction(self, write: Callable[[Any], None]) -> None:
        """Run ``write`` in one transaction; an exception means nothing was committed.

        The writer relies on that: it rolls its memory back when this raises for
        anything but an unavailable database (which it answers with a reload, as a
        failed COMMIT may have committed). So once COMMIT has returned, a failure to
        tidy up (closing the cursor) is only logged.
        """
        with self._guard:
            kept = self._kept is not None
            try:
                self._attempt(write)
            except _Lost as lost:
                if not kept:  # fresh from the pool, checked: the database is away
                    raise lost.error from None
                # Lost while it was kept (a restarted server, a cut network): COMMIT
                # was not sent, so once more on a connection the pool checks first.
                log.warning("the journal's connection was lost (%s): taking another", lost.error)
                try:
                    self._attempt(write)
                except _Lost as again:
                    raise again.error from None

    def _attempt(self, write: Callable[[Any], None]) -> None:
        """One transaction on the kept connection; _Lost if it is lost before COMMIT."""
        if self._kept is None:
            self._kept = self.engine.raw_connection()
        if self.sqlite:
            self._attempt_sqlite(self._kept, write)
        else:
            self._attempt_pipelined(self._kept, write)

    def _attempt_sqlite(self, raw: Any, write: Callable[[Any], None]) -> None:
        rolled_back = False
        try:
            cursor = raw.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                write(cursor)
            except BaseException:
                cursor.execute("ROLLBACK")
                rolled_back = True
                raise
        except BaseException as error:
            lost = self._failed(error, raw, rolled_back)
            if lost is not None:
                raise lost from error
            raise
        try:
            cursor.execute("COMMIT")
        except BaseException:
            self._let_go()  # whether it committed is unknown: the writer reloads
            raise
        self._close(cursor)

    def _attempt_pipelined(self, raw: Any, write: Callable[[Any], None]) -> None:
        """PostgreSQL, in psycopg's pipeline mode: two round trips a transaction.

        ``BEGIN`` and the rows go out together and the pipeline is synced, so the
        rows' errors are known before ``COMMIT`` is sent (a refused batch is rolled
        back, as on SQLite); ``COMMIT`` then goes with the Sync that leaves pipeline
        mode, and an error of it is raised there, an unknown outcome like any failed
        COMMIT. A row's error can arrive while later statements are still queued:
        those are then reported as "pipeline aborted" at the next sync, so one sync
        takes them before the rollback, whose own must not fail on them.
        """
        connection = raw.dbapi_connection
        mode = connection.pipeline()
        rolled_back = False
        try:
            pipeline = mode.__enter__()
            try:
                cursor = raw.cursor()
                write(cursor)
                pipeline.sync()
            except BaseException:
                with suppress(Exception):
                    pipeline.sync()
                connection.rollback()
                rolled_back = True
                raise
        except BaseException as error:
            with suppress(Exception):  # the transaction's own error is the one to report
                mode.__exit__(type(error), error, error.__traceback__)
            lost = self._failed(error, raw, rolled_back)
            if lost is not None:
                raise lost from error
            raise
        try:
            cursor.execute("COMMIT", prepare=False)  # with the Sync that ends the pipeline
            mode.__exit__(None, None, None)
        except BaseException:
            self._let_go()  # whether it committed is unknown: the writer reloads
            raise
        self._close(cursor)

    def _failed(self, error: BaseException, raw: Any, rolled_back: bool) -> _Lost | None:
        """A transaction failed before COMMIT: ``_Lost`` to raise if its connection is
        gone (else the error itself is raised); the connection is let go unless it was
        rolled back, as its state is unknown then."""
        if not isinstance(error, Exception):  # cancelled, interrupted: anywhere
            self._let_go()
            return None
        lost = self._is_lost(error, raw)
        if lost or not rolled_back:
            self._let_go()
        return _Lost(error) if lost else None

    def _close(self, cursor: Any) -> None:
        """After COMMIT has returned a failure cannot undo it: it is only logged."""
        try:
            cursor.close()
        except Exception:
            log.warning("a committed transaction's cursor could not be closed cleanly")
            self._let_go()

    def _is_lost(self, error: Exception, raw: Any) -> bool:
        """Whether ``error`` says the connection itself is gone (SQLAlchemy's own test)."""
        dialect: Any = self.engine.dialect  # it takes the driver's errors, whatever they are
        try:
            return bool(dialect.is_disconnect(error, raw.dbapi_connection, None))
        except Exception:
            return False

    def _let_go(self) -> None:
        """Close the kept connection for good (the pool opens another when asked)."""
        kept, self._kept = self._kept, None
        if kept is not None:
            try:
                kept.invalidate()
            except Exception as error:
                log.warning("the journal's connection could not be closed (%s)", error)

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
            self.withdrawals.run(cursor, [_withdrawal_row(w) for w in batch.withdrawals])
        if batch.controls:
            self.controls.run(cursor, [(*control, batch.time) for control in batch.controls])
        if batch.inbox:
            cursor.executemany(
                self.sql_inbox,
                [
                    (status, result, batch.time, inbox_id)
                    for inbox_id, status, result in batch.inbox
                ],
            )


class _Lost(Exception):
    """A transaction failed because its connection is lost; ``error`` is the driver's."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def command_from_inbox(kind: str, payload: dict[str, Any], inbox_id: int) -> Command:
    """The command an operator queued in the inbox (``exchange admin …``); ValueError if bad."""
    if kind == "credit":
        return Credit(
            int(payload["user_id"]), str(payload["asset"]), int(payload["amount"]), inbox_id
        )
    if kind == "approve":
        return ApproveWithdrawal(int(payload["withdrawal_id"]), str(payload["txid"]))
    if kind == "reject":
        return RejectWithdrawal(int(payload["withdrawal_id"]), str(payload["reason"]))
    if kind == "control":
        return SetControl(str(payload["kind"]), str(payload["key"]), bool(payload["active"]))
    if kind == "cancel_orders":
        market = payload.get("market")
        return CancelOrders(int(payload["user_id"]), None if market is None else str(market))
    raise ValueError(f"unknown inbox command {kind!r}")
