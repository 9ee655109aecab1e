"""Binance's stream events from one batch: book numbers and a user's execution reports."""

from __future__ import annotations

from decimal import Decimal

from exchange.api.binance.stream_events import execution_reports
from exchange.domain.events import number_books
from exchange.domain.markets import default_assets, default_markets
from exchange.domain.orders import BUY, CANCELED, FILLED, OPEN, PARTIALLY_FILLED, SELL, Order, Trade

MARKET = default_markets(default_assets())["BTC/USDT"]
NOW = 1_800_000_000_000
COIN = 10**8  # BTC units
CENT = 10**6  # USDT units (quote scale 6)


def order(**fields: object) -> Order:
    values: dict[str, object] = {
        "id": 7,
        "user_id": 1,
        "market": "BTC/USDT",
        "side": BUY,
        "type": "limit",
        "tif": "GTC",
        "post_only": False,
        "price": 3_000_000,  # 30000.00
        "amount": COIN,
        "created": NOW,
        "updated": NOW,
    }
    values.update(fields)
    return Order(**values)  # type: ignore[arg-type]


def trade(trade_id: int, amount: int, *, maker: int = 9, taker: int = 7) -> Trade:
    return Trade(
        trade_id, "BTC/USDT", 3_000_000, amount, amount * 30_000 * CENT // COIN, BUY,
        maker, taker, 2, 1, 0, amount // 1000, NOW,
    )  # fmt: skip


def test_book_numbers_follow_on_from_the_last_change_of_each_book() -> None:
    numbers: dict[str, int] = {}
    first = number_books(numbers, [order(), order(market="ETH/USDT")], 1)
    assert first == {"BTC/USDT": (1, 1), "ETH/USDT": (1, 1)}
    assert number_books(numbers, [order(type="market")], 2) == {}  # no level of a book
    assert number_books(numbers, [order()], 3) == {"BTC/USDT": (2, 3)}  # batches 2..3
    assert number_books(numbers, [order(market="ETH/USDT")], 4) == {"ETH/USDT": (2, 4)}
    assert numbers == {"BTC/USDT": 3, "ETH/USDT": 4}


def test_a_new_order_filled_in_two_trades_reports_new_then_each_fill() -> None:
    done = order(filled=COIN, quote_filled=30_000 * CENT, status=FILLED)
    fills = [trade(1, COIN // 4), trade(2, 3 * COIN // 4)]
    reports = execution_reports(done, fills, MARKET, NOW, True)
    assert [(r["x"], r["X"]) for r in reports] == [
        ("NEW", "NEW"),
        ("TRADE", "PARTIALLY_FILLED"),
        ("TRADE", "FILLED"),
    ]
    assert [Decimal(r["z"]) for r in reports] == [Decimal(0), Decimal("0.25"), Decimal(1)]
    assert [Decimal(r["Z"]) for r in reports] == [Decimal(0), Decimal(7500), Decimal(30000)]
    assert [r["t"] for r in reports] == [-1, 1, 2]
    assert reports[1]["l"] == MARKET.format_amount(COIN // 4) and reports[1]["N"] == "BTC"
    assert reports[2]["n"] == MARKET.format_amount(3 * COIN // 4 // 1000)
    assert reports[1]["m"] is False and reports[1]["w"] is True and reports[2]["w"] is False
    assert all(key in reports[0] for key in "esScSofqpPFgCxXrilzLnNTtIwmMOZYQWV")


def test_a_resting_order_partly_filled_then_cancelled() -> None:
    earlier = NOW - 60_000
    rest = order(created=earlier, filled=COIN // 2, quote_filled=15_000 * CENT)
    partly = order(created=earlier, filled=COIN // 2, quote_filled=15_000 * CENT)
    partly.status = PARTIALLY_FILLED
    maker_fill = trade(5, COIN // 4, maker=7, taker=8)
    reports = execution_reports(partly, [maker_fill], MARKET, NOW, False)
    assert [(r["x"], r["X"], r["m"]) for r in reports] == [("TRADE", "PARTIALLY_FILLED", True)]
    assert Decimal(reports[0]["z"]) == Decimal("0.5")  # counted from the quarter before
    rest.status = CANCELED
    rest.client_order_id = "mine"
    reports = execution_reports(rest, [], MARKET, NOW, False)
    assert [(r["x"], r["X"], r["C"], r["c"]) for r in reports] == [
        ("CANCELED", "CANCELED", "mine", "mine")
    ]


def test_an_ioc_rest_expires_and_a_refused_post_only_is_not_reported() -> None:
    ioc = order(tif="IOC", side=SELL, filled=COIN // 2, quote_filled=15_000 * CENT)
    ioc.status = CANCELED
    reports = execution_reports(ioc, [trade(3, COIN // 2, maker=9, taker=7)], MARKET, NOW, True)
    assert [r["x"] for r in reports] == ["NEW", "TRADE", "EXPIRED"]
    assert reports[1]["N"] == "USDT"  # a seller's fee is in the quote
    refused = order(post_only=True)
    refused.status = "rejected"
    assert execution_reports(refused, [], MARKET, NOW, True) == []
    assert execution_reports(order(created=NOW - 1, status=OPEN), [], MARKET, NOW, False) == []
