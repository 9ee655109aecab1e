"""Rebuild books and balances from the database at start.

Everything the engine ever acknowledged was committed by the journal in the same
transaction as its balances, so loading the committed state is the whole
recovery: no replay, no half-applied batch can exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from exchange.adapters.db.records import order_from_row, withdrawal_from_row
from exchange.adapters.db.tables import balances, controls, orders, trades, withdrawals
from exchange.domain.orders import OPEN, PARTIALLY_FILLED, Order
from exchange.domain.withdrawals import PENDING, Withdrawal


@dataclass(slots=True)
class State:
    balances: list[tuple[int, str, int, int]]
    open_orders: list[Order]
    client_ids: list[tuple[int, str, int, int]]
    next_order_id: int
    next_trade_id: int
    next_withdrawal_id: int
    pending_withdrawals: list[Withdrawal] = field(default_factory=list)
    #: (kind, key) of the operator controls in force (halted markets, frozen accounts).
    controls: list[tuple[str, str]] = field(default_factory=list)


def load_state(conn: Connection, client_ids_since: int = 0) -> State:
    """The committed state; client ids only of orders created at or after ``client_ids_since``."""
    balance_rows = [
        (r.user_id, r.asset, r.available, r.frozen)
        for r in conn.execute(
            select(balances.c.user_id, balances.c.asset, balances.c.available, balances.c.frozen)
        )
    ]
    open_rows = conn.execute(
        select(orders).where(orders.c.status.in_((OPEN, PARTIALLY_FILLED))).order_by(orders.c.id)
    )
    open_orders = [order_from_row(row) for row in open_rows]
    client_ids = [
        (r.user_id, r.client_order_id, r.id, r.created)
        for r in conn.execute(
            select(orders.c.user_id, orders.c.client_order_id, orders.c.id, orders.c.created).where(
                orders.c.client_order_id.is_not(None), orders.c.created >= client_ids_since
            )
        )
    ]
    max_order = conn.execute(select(func.max(orders.c.id))).scalar() or 0
    max_trade = conn.execute(select(func.max(trades.c.id))).scalar() or 0
    max_withdrawal = conn.execute(select(func.max(withdrawals.c.id))).scalar() or 0
    pending = [
        withdrawal_from_row(r)
        for r in conn.execute(
            select(withdrawals).where(withdrawals.c.status == PENDING).order_by(withdrawals.c.id)
        )
    ]
    return State(
        balances=balance_rows,
        open_orders=open_orders,
        client_ids=client_ids,
        next_order_id=int(max_order) + 1,
        next_trade_id=int(max_trade) + 1,
        next_withdrawal_id=int(max_withdrawal) + 1,
        pending_withdrawals=pending,
        controls=[
            (r.kind, r.key)
            for r in conn.execute(
                select(controls.c.kind, controls.c.key).where(controls.c.active.is_(True))
            )
        ],
    )
