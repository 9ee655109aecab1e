"""What the engine hands back: the answer to a placement, and the batch outbox.

The outbox is the engine's only output to the outside world: the journal
persists exactly it, so a change that is not in the outbox did not happen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from exchange.domain.ledger import Entry
from exchange.domain.orders import LIMIT, Order, Trade
from exchange.domain.withdrawals import Withdrawal

__all__ = ["Committed", "Outbox", "PlaceResult", "Replicated", "number_books"]


@dataclass(slots=True)
class PlaceResult:
    """``order`` is None only for a duplicate whose original is no longer in memory.

    That happens when the original closed before a restart (or fell out of the
    bounded cache of closed orders); ``order_id`` then names it so the caller
    loads it from the database. ``order_id`` is always set.
    """

    order: Order | None
    trades: list[Trade] = field(default_factory=list)
    duplicate: bool = False
    order_id: int = 0


@dataclass(slots=True)
class Outbox:
    """One batch: each changed order and withdrawal once in its final state, trades, entries."""

    orders: list[Order]
    trades: list[Trade]
    entries: list[Entry]
    accounts: set[tuple[int, str]]
    withdrawals: list[Withdrawal] = field(default_factory=list)
    #: market -> (first, last) batch numbers its book's change covers (``number_books``).
    books: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: (kind, key, active) of the operator controls changed (``MatchingEngine.set_control``).
    controls: list[tuple[str, str, bool]] = field(default_factory=list)


class Committed(Protocol):
    """What a listener of committed batches reads (market data, the stream, the hub).

    The same in the writer's process (an ``Outbox``) and on a worker (a
    ``Replicated`` batch from the writer): the ledger entries and withdrawals of
    a batch stay with the journal, so no listener can come to depend on them.
    """

    @property
    def orders(self) -> list[Order]: ...

    @property
    def trades(self) -> list[Trade]: ...

    @property
    def accounts(self) -> set[tuple[int, str]]: ...

    @property
    def books(self) -> dict[str, tuple[int, int]]: ...

    @property
    def controls(self) -> list[tuple[str, str, bool]]: ...


@dataclass(slots=True)
class Replicated:
    """A committed batch as a worker receives it: exactly what ``Committed`` names."""

    orders: list[Order]
    trades: list[Trade]
    accounts: set[tuple[int, str]]
    books: dict[str, tuple[int, int]] = field(default_factory=dict)
    controls: list[tuple[str, str, bool]] = field(default_factory=list)


def number_books(
    numbers: dict[str, int], orders: list[Order], sequence: int
) -> dict[str, tuple[int, int]]:
    """Number batch ``sequence``'s book changes; ``numbers`` (market -> last) moves on.

    A book's number is the last batch that changed it (Binance's ``lastUpdateId``);
    a batch's change of a book covers the batches from one past the previous
    change to this one, so a client that holds a book at number N can tell whether
    a change follows on from it. Every process numbers the same batches alike.
    """
    changed = {order.market for order in orders if order.type == LIMIT}
    books = {}
    for market in changed:
        books[market] = (numbers.get(market, 0) + 1, sequence)
        numbers[market] = sequence
    return books
