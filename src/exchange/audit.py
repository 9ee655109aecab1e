"""``exchange audit``: prove the books from the database alone, while the server runs.

Read-only, in one snapshot (SQLite: one deferred read transaction in WAL mode,
which never waits for nor holds up the writer; PostgreSQL: a read-only
REPEATABLE READ transaction), so a batch committed meanwhile is either wholly
in it or wholly out. It checks:

1. every stored balance equals the sum of its ledger entries, and no account
   the entries name is missing from the balances;
2. per asset, the balances of all accounts (users and the system accounts)
   sum to exactly zero, and no user's available or frozen amount is negative;
3. every ledger entry points at the row it is about (an order, a trade, a
   withdrawal, an operator's credit);
4. every trade: its orders exist, in its market, on the right sides and users;
   its entries add up to zero per asset; the fee account received exactly its
   maker and taker fees;
5. every order: ``filled`` and ``quote_filled`` are the sums of its trades,
   its ``frozen`` is what its own entries and its trades' entries left frozen,
   its status agrees with its fill, a closed order holds nothing;
6. every user's frozen amount equals what their open orders hold plus their
   pending withdrawals, and each pending withdrawal holds its amount.

Each difference is one line naming the row and both values; none means the
books are right. Memory grows with the number of orders, trades and accounts
(ledger entries are summed by the database).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine as SyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.tables import (
    balances,
    engine_inbox,
    ledger_entries,
    orders,
    trades,
    withdrawals,
)
from exchange.domain.ledger import FEE_ACCOUNT, SYSTEM_ACCOUNTS
from exchange.domain.orders import CANCELED, FILLED, OPEN, PARTIALLY_FILLED, REJECTED
from exchange.domain.withdrawals import PENDING

__all__ = ["audit"]

LIVE = (OPEN, PARTIALLY_FILLED)
CLOSED = (FILLED, CANCELED, REJECTED)
#: ledger reason -> the table its ``ref`` names.
REFERS_TO = {
    "order": "order",
    "order_release": "order",
    "trade": "trade",
    "fee": "trade",
    "withdrawal": "withdrawal",
    "withdrawal_fee": "withdrawal",
    "withdrawal_rejected": "withdrawal",
    "deposit": "inbox",
}


@contextmanager
def snapshot(database: SyncEngine) -> Iterator[Connection]:
    """One consistent, read-only view of the whole database."""
    engine = reading(database)
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
    with engine.connect() as conn, conn.begin():
        yield conn


def audit(database: SyncEngine) -> list[str]:
    """Every difference found, one line each (empty: the books are right)."""
    with snapshot(database) as conn:
        return list(_differences(conn))


def _differences(conn: Connection) -> Iterator[str]:
    stored = {
        (r.user_id, r.asset): (int(r.available), int(r.frozen))
        for r in conn.execute(select(balances))
    }
    # (user, asset, reason, ref) -> (sum of d_available, sum of d_frozen)
    sums: dict[tuple[int, str, str, int], tuple[int, int]] = {
        (r.user_id, r.asset, r.reason, r.ref): (int(r.a), int(r.f))
        for r in conn.execute(
            select(
                ledger_entries.c.user_id,
                ledger_entries.c.asset,
                ledger_entries.c.reason,
                ledger_entries.c.ref,
                func.sum(ledger_entries.c.d_available).label("a"),
                func.sum(ledger_entries.c.d_frozen).label("f"),
            ).group_by(
                ledger_entries.c.user_id,
                ledger_entries.c.asset,
                ledger_entries.c.reason,
                ledger_entries.c.ref,
            )
        )
    }
    all_orders = {r.id: r for r in conn.execute(select(orders))}
    all_trades = {r.id: r for r in conn.execute(select(trades))}
    all_withdrawals = {r.id: r for r in conn.execute(select(withdrawals))}
    inbox_ids = {r.id for r in conn.execute(select(engine_inbox.c.id))}
    yield from _balances(stored, sums)
    yield from _references(sums, all_orders, all_trades, all_withdrawals, inbox_ids)
    yield from _trades(sums, all_orders, all_trades)
    yield from _orders(sums, all_orders, all_trades)
    yield from _frozen(stored, sums, all_orders, all_withdrawals)


def _who(user: int) -> str:
    names = {-1: "the deposit account", -2: "the fee account", -3: "the withdrawal account"}
    return names.get(user, f"user {user}")


def _balances(
    stored: dict[tuple[int, str], tuple[int, int]],
    sums: dict[tuple[int, str, str, int], tuple[int, int]],
) -> Iterator[str]:
    from_entries: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    for (user, asset, _reason, _ref), (available, frozen) in sums.items():
        account = from_entries[(user, asset)]
        account[0] += available
        account[1] += frozen
    for key in sorted(set(stored) | set(from_entries)):
        user, asset = key
        have = stored.get(key)
        want = tuple(from_entries.get(key, (0, 0)))
        if have is None:
            if want != (0, 0):
                yield (
                    f"balance of {_who(user)} in {asset}: no row, the ledger entries sum to "
                    f"available {want[0]}, frozen {want[1]}"
                )
            continue
        if have != want:
            yield (
                f"balance of {_who(user)} in {asset}: stored available {have[0]}, frozen "
                f"{have[1]}; the ledger entries sum to available {want[0]}, frozen {want[1]}"
            )
        if user not in SYSTEM_ACCOUNTS and (have[0] < 0 or have[1] < 0):
            yield f"balance of {_who(user)} in {asset} is negative: {have[0]} / {have[1]}"
    per_asset: dict[str, int] = defaultdict(int)
    for (_user, asset), (available, frozen) in stored.items():
        per_asset[asset] += available + frozen
    for asset, total in sorted(per_asset.items()):
        if total != 0:
            yield f"asset {asset}: the balances of all accounts sum to {total}, not 0"


def _references(
    sums: dict[tuple[int, str, str, int], tuple[int, int]],
    all_orders: dict[int, Any],
    all_trades: dict[int, Any],
    all_withdrawals: dict[int, Any],
    inbox_ids: set[int],
) -> Iterator[str]:
    tables: dict[str, Any] = {
        "order": all_orders,
        "trade": all_trades,
        "withdrawal": all_withdrawals,
        "inbox": inbox_ids,
    }
    for user, asset, reason, ref in sorted(sums):
        table = REFERS_TO.get(reason)
        if table is None:
            yield f"ledger entries of {_who(user)} in {asset}: unknown reason {reason!r}"
        elif ref not in tables[table] and not (reason == "deposit" and ref == 0):
            yield (
                f"ledger entries '{reason}' of {_who(user)} in {asset} name {table} {ref}, "
                "which does not exist"
            )


def _trades(
    sums: dict[tuple[int, str, str, int], tuple[int, int]],
    all_orders: dict[int, Any],
    all_trades: dict[int, Any],
) -> Iterator[str]:
    per_trade: dict[tuple[int, str], int] = defaultdict(int)  # trade, asset -> net change
    fees: dict[tuple[int, str], int] = defaultdict(int)
    for (user, asset, reason, ref), (available, frozen) in sums.items():
        if reason in ("trade", "fee"):
            per_trade[(ref, asset)] += available + frozen
            if reason == "fee" and user == FEE_ACCOUNT:
                fees[(ref, asset)] += available + frozen
    for trade_id, t in sorted(all_trades.items()):
        base, quote = t.market.split("/")
        maker, taker = all_orders.get(t.maker_order_id), all_orders.get(t.taker_order_id)
        for role, order, user in (
            ("maker", maker, t.maker_user_id),
            ("taker", taker, t.taker_user_id),
        ):
            if order is None:
                yield f"trade {trade_id}: its {role} order does not exist"
            elif order.market != t.market or order.user_id != user:
                yield f"trade {trade_id}: its {role} order {order.id} is not {user}'s on {t.market}"
        if maker is not None and taker is not None and maker.side == taker.side:
            yield f"trade {trade_id}: maker and taker are both on the {maker.side} side"
        if taker is not None and taker.side != t.taker_side:
            yield f"trade {trade_id}: taker side {t.taker_side}, its taker order is {taker.side}"
        for asset in (base, quote):
            if per_trade.get((trade_id, asset), 0) != 0:
                yield (
                    f"trade {trade_id}: its ledger entries in {asset} sum to "
                    f"{per_trade[(trade_id, asset)]}, not 0"
                )
        buyer_fee = t.taker_fee if t.taker_side == "buy" else t.maker_fee
        seller_fee = t.maker_fee if t.taker_side == "buy" else t.taker_fee
        for asset, fee in ((base, buyer_fee), (quote, seller_fee)):
            taken = fees.get((trade_id, asset), 0)
            if taken != fee:
                yield f"trade {trade_id}: fee {fee} {asset}, the fee account received {taken}"


def _orders(
    sums: dict[tuple[int, str, str, int], tuple[int, int]],
    all_orders: dict[int, Any],
    all_trades: dict[int, Any],
) -> Iterator[str]:
    trades_of: dict[int, list[Any]] = defaultdict(list)
    for t in all_trades.values():
        trades_of[t.maker_order_id].append(t)
        trades_of[t.taker_order_id].append(t)
    for order_id, o in sorted(all_orders.items()):
        base, quote = o.market.split("/")
        asset = quote if o.side == "buy" else base
        mine = trades_of.get(order_id, [])
        own = sum(
            sums.get((o.user_id, asset, reason, order_id), (0, 0))[1]
            for reason in ("order", "order_release")
        )
        by_trades = sum(sums.get((o.user_id, asset, "trade", t.id), (0, 0))[1] for t in mine)
        if o.frozen != own + by_trades:
            yield (
                f"order {order_id}: frozen {o.frozen} {asset}, its ledger entries leave "
                f"{own + by_trades}"
            )
        filled = sum(t.amount for t in mine)
        if o.filled != filled:
            yield f"order {order_id}: filled {o.filled}, its trades sum to {filled}"
        quote_filled = sum(t.quote for t in mine)
        if o.quote_filled != quote_filled:
            yield (
                f"order {order_id}: quote_filled {o.quote_filled}, its trades sum to {quote_filled}"
            )
        if o.status not in LIVE and o.status not in CLOSED:
            yield f"order {order_id}: unknown status {o.status!r}"
        if o.status in CLOSED and o.frozen != 0:
            yield f"order {order_id}: {o.status} but still holds {o.frozen} {asset}"
        if (
            (o.status == OPEN and o.filled != 0)
            or (o.status == PARTIALLY_FILLED and not 0 < o.filled < o.amount)
            or (o.status == FILLED and o.filled != o.amount)
        ):
            yield f"order {order_id}: status {o.status} with {o.filled} of {o.amount} filled"


def _frozen(
    stored: dict[tuple[int, str], tuple[int, int]],
    sums: dict[tuple[int, str, str, int], tuple[int, int]],
    all_orders: dict[int, Any],
    all_withdrawals: dict[int, Any],
) -> Iterator[str]:
    held: dict[tuple[int, str], int] = defaultdict(int)
    for o in all_orders.values():
        if o.status in LIVE:
            base, quote = o.market.split("/")
            held[(o.user_id, quote if o.side == "buy" else base)] += o.frozen
    for withdrawal_id, w in sorted(all_withdrawals.items()):
        if w.status != PENDING:
            continue
        held[(w.user_id, w.coin)] += w.amount
        hold = sums.get((w.user_id, w.coin, "withdrawal", withdrawal_id), (0, 0))[1]
        if hold != w.amount:
            yield f"withdrawal {withdrawal_id}: pending {w.amount} {w.coin}, its hold is {hold}"
    for key in sorted(set(held) | {k for k in stored if k[0] not in SYSTEM_ACCOUNTS}):
        user, asset = key
        frozen = stored.get(key, (0, 0))[1]
        if frozen != held.get(key, 0):
            yield (
                f"balance of {_who(user)} in {asset}: frozen {frozen}, open orders and pending "
                f"withdrawals hold {held.get(key, 0)}"
            )
