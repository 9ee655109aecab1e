"""One market's resting orders: price levels in sorted dicts, a FIFO queue per level.

Each level keeps a running total of its remaining amounts so that depth is read
from the levels without walking orders. The matching engine walks these
structures directly in its hot loop; the methods here serve everything else
(resting, cancels, depth, validation).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import islice

from sortedcontainers import SortedDict

from exchange.domain.orders import BUY, Order

__all__ = ["Level", "OrderBook"]


class Level:
    """Orders at one price in time priority, with their total remaining amount."""

    __slots__ = ("orders", "price", "total")

    def __init__(self, price: int) -> None:
        self.price = price
        self.orders: deque[Order] = deque()
        self.total = 0


class OrderBook:
    """Bids and asks of one market; both sorted ascending by price (best bid is last)."""

    __slots__ = ("asks", "bids", "market")

    def __init__(self, market: str) -> None:
        self.market = market
        self.bids: SortedDict = SortedDict()  # price -> Level
        self.asks: SortedDict = SortedDict()  # price -> Level

    def add(self, order: Order) -> None:
        """Rest an order at the back of its price level's queue (it keeps time priority)."""
        side = self.bids if order.side == BUY else self.asks
        level: Level | None = side.get(order.price)
        if level is None:
            level = Level(order.price)
            side[order.price] = level
        else:
            order.price = level.price  # one int object per level: ~32 bytes an order
        level.orders.append(order)
        level.total += order.amount - order.filled

    def remove(self, order: Order) -> None:
        """Take an order out of the book; an emptied level goes with it."""
        side = self.bids if order.side == BUY else self.asks
        level: Level = side[order.price]
        level.orders.remove(order)
        level.total -= order.amount - order.filled
        if not level.orders:
            del side[order.price]

    def resting(self) -> Iterator[Order]:
        """Every resting order (the engine's id index is the one map of open orders)."""
        for side in (self.bids, self.asks):
            for level in side.values():
                yield from level.orders

    def best_bid(self) -> int | None:
        return self.bids.peekitem(-1)[0] if self.bids else None

    def best_ask(self) -> int | None:
        return self.asks.peekitem(0)[0] if self.asks else None

    def depth(self, limit: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Aggregated (price, total) levels, best first on both sides."""
        bids = self.bids
        asks = self.asks
        return (
            [(price, bids[price].total) for price in islice(reversed(bids), limit)],
            [(price, asks[price].total) for price in islice(asks, limit)],
        )

    def problems(self) -> list[str]:
        """Everything that breaks the book's invariants, as sentences (empty = sound)."""
        found: list[str] = []
        for name, side, expected_side in (("bid", self.bids, BUY), ("ask", self.asks, "sell")):
            previous: int | None = None
            for price, level in side.items():
                if previous is not None and price <= previous:
                    found.append(f"{self.market} {name} levels out of order at {price}")
                previous = price
                if level.price != price:
                    found.append(f"{self.market} {name} level {price} says price {level.price}")
                if not level.orders:
                    found.append(f"{self.market} empty {name} level left at {price}")
                total = 0
                for order in level.orders:
                    remaining = order.amount - order.filled
                    total += remaining
                    if not order.is_open or remaining <= 0:
                        found.append(
                            f"{self.market} order {order.id} rests with status {order.status} "
                            f"and remaining {remaining}"
                        )
                    if order.side != expected_side or order.price != price:
                        found.append(f"{self.market} order {order.id} rests on the wrong level")
                if total != level.total:
                    found.append(
                        f"{self.market} {name} level {price} total {level.total} != {total}"
                    )
        bid, ask = self.best_bid(), self.best_ask()
        if bid is not None and ask is not None and bid >= ask:
            found.append(f"{self.market} crossed book: best bid {bid} >= best ask {ask}")
        return found
