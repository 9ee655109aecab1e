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
from exchange.adapters.db.tables import candles, trades
from exchange.domain.orders import Trade

__all__ = ["CandleRow", "CandleStore"]

#: (market, period, time, open, high, low, close, volume, trade_id)
CandleRow = tuple[str, str, int, int, int, int, int, int, int]

REPLAY_CHUNK = 10_000
_VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "trade_id")


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

    async def load(self) -> list[CandleRow]:
        """Every persisted candle, oldest first per series."""
        c = candles.c
        query = select(
            c.market, c.period, c.time, c.open, c.high, c.low, c.close, c.volume, c.trade_id
        ).order_by(c.market, c.period, c.time)
        async with self._reads.connect() as conn:
            result = await conn.execute(query)
            return [
                (r.market, r.period, r.time, r.open, r.high, r.low, r.close, r.volume, r.trade_id)
                for r in result
            ]

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
