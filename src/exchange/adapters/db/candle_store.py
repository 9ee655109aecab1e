"""The database side of market data: persisted candles and the trades they come from.

Only startup (``load``, ``trades_after``, ``recent_trades``) and the background
flush (``save``) touch the database; no request does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.pages import bounded
from exchange.adapters.db.tables import candles, controls, trades
from exchange.domain.candles import CandleValues
from exchange.domain.orders import Trade

__all__ = ["CandleRow", "CandleStore", "CandleValues"]

#: (market, period, then a Candle's values)
CandleRow = tuple[str, str, int, int, int, int, int, int, int, int, int, int, int, int]

REPLAY_CHUNK = 10_000
_VALUE_COLUMNS = (
    "open", "high", "low", "close", "volume", "trade_id",
    "quote_volume", "trades", "buy_volume", "buy_quote", "first_trade_id",
)  # fmt: skip
_VALUES = (candles.c.time, *(candles.c[name] for name in _VALUE_COLUMNS))


def _values(row: Any) -> CandleValues:
    return tuple(row)  # the columns of _VALUES, in order


def _trade(row: Any) -> Trade:
    return Trade(
        row.id,
        row.market,
        row.price,
        row.amount,
        row.quote,
        row.taker_side,
        row.maker_order_id,
        row.taker_order_id,
        row.maker_user_id,
        row.taker_user_id,
        row.maker_fee,
        row.taker_fee,
        row.time,
    )


class CandleStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db
        self._reads = reading(db)  # reads take no write lock on SQLite

    async def newest(self, market: str, period: str, count: int) -> list[CandleValues]:
        """The newest ``count`` persisted candles of one series, oldest first."""
        c = candles.c
        query = (
            select(*_VALUES)
            .where(c.market == market, c.period == period)
            .order_by(c.time.desc())
            .limit(count)
        )
        async with self._reads.connect() as conn:
            found = [_values(r) for r in await conn.execute(query)]
        found.reverse()
        return found

    async def window(self, market: str, period: str, start: int, span: int) -> list[CandleValues]:
        """Candles of one series for the ``span`` ms from ``start``, oldest first.

        With the candle at or before ``start`` (its close fills a leading gap); if
        there is none, ``start`` is before the first trade and the window starts at
        the first candle instead, as the rows of SPEC §5 do.
        """
        c = candles.c
        series = (c.market == market, c.period == period)
        before = select(*_VALUES).where(*series, c.time <= start).order_by(c.time.desc()).limit(1)
        async with self._reads.connect() as conn:
            first = [_values(r) for r in await conn.execute(before)]
            if not first:
                after = select(*_VALUES).where(*series, c.time > start).order_by(c.time).limit(1)
                first = [_values(r) for r in await conn.execute(after)]
                if not first:
                    return []
                start = first[0][0]
            rest = select(*_VALUES).where(*series, c.time > start, c.time <= start + span)
            return first + [_values(r) for r in await conn.execute(rest.order_by(c.time))]

    async def trades_after(self, market: str, after_id: int) -> AsyncIterator[list[Trade]]:
        """Trades of ``market`` newer than ``after_id`` in id order, in chunks."""
        last = after_id
        while True:
            query = (
                select(trades)
                .where(trades.c.market == market, trades.c.id > last)
                .order_by(trades.c.id)
                .limit(REPLAY_CHUNK)
            )
            async with self._reads.connect() as conn:
                chunk = [_trade(row) for row in await conn.execute(query)]
            if not chunk:
                return
            yield chunk
            last = chunk[-1].id

    async def halted(self) -> set[str]:
        """The markets an operator has halted (the engine writes ``controls``)."""
        async with reading(self._db).connect() as conn:
            rows = await conn.execute(
                select(controls.c.key).where(controls.c.kind == "halt", controls.c.active.is_(True))
            )
            return {str(key) for key in rows.scalars()}

    async def recent_trades(self, market: str, limit: int, through: int) -> list[Trade]:
        """The newest ``limit`` trades of ``market`` up to id ``through``, oldest first."""
        query = (
            select(trades)
            .where(trades.c.market == market, trades.c.id <= through)
            .order_by(trades.c.id.desc())
            .limit(limit)
        )
        async with self._reads.connect() as conn:
            found = [_trade(row) for row in await conn.execute(query)]
        found.reverse()
        return found

    async def trades_between(
        self, market: str, from_id: int | None, start: int | None, end: int | None, limit: int
    ) -> list[Trade]:
        """Trades of ``market`` from id ``from_id`` and/or in [start, end], oldest first.

        With a lower bound, the first ``limit`` from it; with only ``end``, the last
        ``limit`` up to it.
        """
        c = trades.c
        query, ascending = bounded(
            select(trades).where(c.market == market), c.id, c.time, from_id, start, end, limit
        )
        async with self._reads.connect() as conn:
            found = [_trade(row) for row in await conn.execute(query)]
        return found if ascending else found[::-1]

    async def save(self, rows: Sequence[CandleRow]) -> None:
        """Insert or update candles in one transaction (all of a flush or none)."""
        if not rows:
            return
        insert = pg_insert if self._db.dialect.name == "postgresql" else sqlite_insert
        statement = insert(candles)
        statement = statement.on_conflict_do_update(
            index_elements=[candles.c.market, candles.c.period, candles.c.time],
            set_={name: statement.excluded[name] for name in _VALUE_COLUMNS},
        )
        names = ("market", "period", "time", *_VALUE_COLUMNS)
        params = [dict(zip(names, row, strict=True)) for row in rows]
        async with self._db.begin() as conn:
            await conn.execute(statement, params)
