"""Order and trade history of one user, read from the committed database.

Reads here come after the engine acknowledged (the answer is sent only after the
commit), so a user always finds the order the server just confirmed.
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.pages import bounded
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

    async def order_by_client_id(self, user_id: int, client_order_id: str) -> Order | None:
        """The newest of the user's orders with this client id (ids are reusable after a while)."""
        query = (
            select(orders)
            .where(orders.c.user_id == user_id, orders.c.client_order_id == client_order_id)
            .order_by(orders.c.id.desc())
            .limit(1)
        )
        async with self._reads.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else order_from_row(row)

    async def orders_since(
        self,
        user_id: int,
        market: str,
        from_id: int | None,
        start: int | None,
        end: int | None,
        limit: int,
    ) -> list[Order]:
        """Oldest first: from ``from_id`` on, or in [start, end] by creation, else the newest."""
        c = orders.c
        query = select(orders).where(c.user_id == user_id, c.market == market)
        query, ascending = bounded(query, c.id, c.created, from_id, start, end, limit)
        async with self._reads.connect() as conn:
            found = [order_from_row(row) for row in await conn.execute(query)]
        return found if ascending else found[::-1]

    async def trades_since(
        self,
        user_id: int,
        market: str,
        *,
        order_id: int | None,
        from_id: int | None,
        start: int | None,
        end: int | None,
        limit: int,
    ) -> list[Trade]:
        """The user's trades on one market, oldest first (the newest ``limit`` if no bound)."""
        c = trades.c
        mine = or_(c.maker_user_id == user_id, c.taker_user_id == user_id)
        query = select(trades).where(c.market == market, mine)
        if order_id is not None:
            query = query.where(
                or_(
                    and_(c.maker_order_id == order_id, c.maker_user_id == user_id),
                    and_(c.taker_order_id == order_id, c.taker_user_id == user_id),
                )
            )
        query, ascending = bounded(query, c.id, c.time, from_id, start, end, limit)
        async with self._reads.connect() as conn:
            found = [trade_from_row(row) for row in await conn.execute(query)]
        return found if ascending else found[::-1]

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
