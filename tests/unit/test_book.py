"""The order book structure: levels, FIFO queues, running totals, depth."""

from __future__ import annotations

from exchange.domain.book import OrderBook
from exchange.domain.orders import Order


def _order(order_id: int, side: str, price: int, amount: int, filled: int = 0) -> Order:
    return Order(
        order_id,
        1,
        "BTC/USDT",
        side,
        "limit",
        "GTC",
        False,
        price,
        amount,
        filled=filled,
        status="open" if not filled else "partially_filled",
    )


def test_levels_aggregate_and_sort_best_first() -> None:
    book = OrderBook("BTC/USDT")
    for order in [
        _order(1, "buy", 100, 5),
        _order(2, "buy", 102, 1),
        _order(3, "buy", 100, 7, filled=2),
        _order(4, "sell", 105, 3),
        _order(5, "sell", 104, 2),
        _order(6, "sell", 110, 9),
    ]:
        book.add(order)
    assert book.depth(10) == ([(102, 1), (100, 10)], [(104, 2), (105, 3), (110, 9)])
    assert book.depth(1) == ([(102, 1)], [(104, 2)])
    assert book.best_bid() == 102
    assert book.best_ask() == 104
    assert book.problems() == []
    assert [order.id for order in book.bids[100].orders] == [1, 3]


def test_remove_keeps_totals_and_drops_empty_levels() -> None:
    book = OrderBook("BTC/USDT")
    first, second = _order(1, "sell", 104, 2), _order(2, "sell", 104, 3)
    book.add(first)
    book.add(second)
    book.remove(first)
    assert book.depth(5) == ([], [(104, 3)])
    book.remove(second)
    assert book.depth(5) == ([], [])
    assert 104 not in book.asks
    assert list(book.resting()) == []
    assert book.best_ask() is None


def test_problems_reports_broken_books() -> None:
    book = OrderBook("BTC/USDT")
    book.add(_order(1, "buy", 105, 5))
    book.add(_order(2, "sell", 104, 5))
    book.bids[105].total += 1
    found = "\n".join(book.problems())
    assert "crossed book" in found
    assert "total 6 != 5" in found
