"""Order and trade history of one user, read from the committed database.

Reads here come after the engine acknowledged (the answer is sent only after the
commit), so a user always finds the order the server just confirmed.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.records import order_from_row, trade_from_row
from exchange.adapters.db.tables import orders, trades
from exchange.domain.orders import OPEN, PARTIALLY_FILLED, Order, Trade


class History:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db
        self._reads = reading(db)  # reads take no write lock on SQLite

    async def order(self, user_id: int, order_id: int) -> tuple[Order, list[Trade]] | None:
        async with self._reads.connect() as conn:
            row = (
                await conn.execute(
                    select(orders).where(orders.c.id == order_id, orders.c.user_id == user_id)
                )
            ).first()
            if row is None:
                return None
            trade_rows = await conn.execute(
                select(trades)
                .where(
                    or_(trades.c.maker_order_id == order_id, trades.c.taker_order_id == order_id)
                )
                .order_by(trades.c.id)
            )
            return order_from_row(row), [trade_from_row(t) for t in trade_rows]

    async def orders(
        self, user_id: int, market: str | None, open_only: bool, limit: int
    ) -> list[Order]:
        query = select(orders).where(orders.c.user_id == user_id)
        if market is not None:
            query = query.where(orders.c.market == market)
        if open_only:
            query = query.where(orders.c.status.in_((OPEN, PARTIALLY_FILLED)))
        query = query.order_by(orders.c.id.desc()).limit(limit)
        async with self._reads.connect() as conn:
            return [order_from_row(row) for row in await conn.execute(query)]

    async def trades(self, user_id: int, market: str | None, limit: int) -> list[Trade]:
        """Newest first; a self-matched trade cannot exist (self-trade prevention)."""
        found: list[Trade] = []
        async with self._reads.connect() as conn:
            for column in (trades.c.maker_user_id, trades.c.taker_user_id):
                query = select(trades).where(column == user_id)
                if market is not None:
                    query = query.where(trades.c.market == market)
                query = query.order_by(trades.c.id.desc()).limit(limit)
                found.extend(trade_from_row(row) for row in await conn.execute(query))
        found.sort(key=lambda t: t.id, reverse=True)
        return found[:limit]
