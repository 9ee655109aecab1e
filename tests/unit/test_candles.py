"""Candles and tickers in memory (pure): gap filling, UTC alignment, windows, change."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.domain.candles import ALIASES, INTERVALS, CandleSeries
from exchange.domain.markets import default_assets, default_markets
from exchange.domain.tickers import Ticker, change_percent

BTC = default_markets(default_assets())["BTC/USDT"]
DAY0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
HOUR = 60 * MIN


def reference_change(price: int, open_today: int) -> str:
    value = ((Decimal(price) - Decimal(open_today)) * 100 / Decimal(open_today)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_EVEN
    )
    if value == 0:
        return "0.00"
    return f"+{value}" if value > 0 else str(value)


@pytest.mark.parametrize(
    ("price", "open_today", "expected"),
    [
        (10125, 10000, "+1.25"),
        (9960, 10000, "-0.40"),
        (10000, 10000, "0.00"),
        (801, 800, "+0.12"),  # 0.125 -> half to even: 0.12
        (803, 800, "+0.38"),  # 0.375 -> 0.38
        (799, 800, "-0.12"),
        (1_000_001, 1_000_000, "0.00"),  # +0.0001 % rounds to zero: no sign
        (999_999, 1_000_000, "0.00"),
        (30000, 10000, "+200.00"),
        (1, 10000, "-99.99"),
    ],
)
def test_change_percent(price: int, open_today: int, expected: str) -> None:
    assert change_percent(price, open_today) == expected
    assert reference_change(price, open_today) == expected


def test_change_without_trades_is_zero() -> None:
    assert change_percent(None, None) == "0.00"


@given(st.integers(1, 10**12), st.integers(1, 10**12))
def test_change_percent_matches_decimal(price: int, open_today: int) -> None:
    assert change_percent(price, open_today) == reference_change(price, open_today)


def test_aliases_name_the_five_intervals() -> None:
    assert set(ALIASES.values()) == set(INTERVALS) == {"1min", "5min", "30min", "4h", "1d"}
    assert ALIASES["1m"] == "1min" and ALIASES["240min"] == "4h" and ALIASES["1day"] == "1d"


def test_rows_fill_gaps_with_the_previous_close() -> None:
    series = CandleSeries(BTC, "1min")
    series.add_trade(
        DAY0 + 10_000, 3_000_000, 100_000, 1, quote=0, taker_buys=True
    )  # 30000.00, 0.001 BTC
    series.add_trade(DAY0 + 50_000, 3_010_000, 200_000, 2, quote=0, taker_buys=True)
    series.add_trade(DAY0 + 3 * MIN + 1, 2_990_000, 300_000, 3, quote=0, taker_buys=True)
    rows = series.rows(now=DAY0 + 4 * MIN + 5, limit=500)
    assert rows == [
        [DAY0, "30000.00", "30100.00", "30000.00", "30100.00", "0.00300000"],
        [DAY0 + MIN, "30100.00", "30100.00", "30100.00", "30100.00", "0"],
        [DAY0 + 2 * MIN, "30100.00", "30100.00", "30100.00", "30100.00", "0"],
        [DAY0 + 3 * MIN, "29900.00", "29900.00", "29900.00", "29900.00", "0.00300000"],
        [DAY0 + 4 * MIN, "29900.00", "29900.00", "29900.00", "29900.00", "0"],
    ]
    assert series.rows(now=DAY0 + 4 * MIN, limit=2) == rows[-2:]
    assert series.rows(now=DAY0 + 4 * MIN, limit=2, since=DAY0 + 1) == rows[1:3]
    assert series.rows(now=DAY0 + 4 * MIN, limit=500, since=DAY0 - HOUR) == rows
    assert series.rows(now=DAY0 + 4 * MIN, limit=500, since=DAY0 + 5 * MIN) == []
    assert CandleSeries(BTC, "1min").rows(now=DAY0, limit=500) == []


def test_a_row_changes_when_a_trade_lands_in_it() -> None:
    series = CandleSeries(BTC, "5min")
    series.add_trade(DAY0 + MIN, 100, 5, 1, quote=0, taker_buys=True)
    assert series.rows(DAY0 + MIN, 10) == [[DAY0, "1.00", "1.00", "1.00", "1.00", "0.00000005"]]
    series.add_trade(DAY0 + 2 * MIN, 50, 5, 2, quote=0, taker_buys=True)
    series.add_trade(DAY0 + 3 * MIN, 70, 1, 3, quote=0, taker_buys=True)
    assert series.rows(DAY0 + MIN, 10) == [[DAY0, "1.00", "1.00", "0.50", "0.70", "0.00000011"]]


def test_daily_and_four_hour_candles_align_to_utc() -> None:
    daily = CandleSeries(BTC, "1d")
    four = CandleSeries(BTC, "4h")
    for series in (daily, four):
        series.add_trade(DAY0 - 1, 100, 1, 1, quote=0, taker_buys=True)  # 2025-12-31T23:59:59.999Z
        series.add_trade(DAY0, 200, 1, 2, quote=0, taker_buys=True)
        series.add_trade(DAY0 + 5 * HOUR, 300, 1, 3, quote=0, taker_buys=True)
    assert [row[0] for row in daily.rows(DAY0 + 5 * HOUR, 10)] == [DAY0 - 24 * HOUR, DAY0]
    assert [row[0] for row in four.rows(DAY0 + 5 * HOUR, 10)] == [
        DAY0 - 4 * HOUR,
        DAY0,
        DAY0 + 4 * HOUR,
    ]
    assert daily.rows(DAY0 + 5 * HOUR, 10)[1][1:] == ["2.00", "3.00", "2.00", "3.00", "0.00000002"]


def test_a_clock_step_back_updates_the_older_candle() -> None:
    series = CandleSeries(BTC, "1min")
    series.add_trade(DAY0 + 2 * MIN, 100, 1, 1, quote=0, taker_buys=True)
    series.add_trade(DAY0 + MIN, 90, 1, 2, quote=0, taker_buys=True)
    series.add_trade(DAY0 + 2 * MIN + 1, 110, 1, 3, quote=0, taker_buys=True)
    assert series.times == [DAY0 + MIN, DAY0 + 2 * MIN]
    assert series.rows(DAY0 + 2 * MIN, 5)[1][1:] == ["1.00", "1.10", "1.00", "1.10", "0.00000002"]


def test_closes_are_null_before_the_first_trade() -> None:
    series = CandleSeries(BTC, "30min")
    now = DAY0 + 10 * HOUR + 7 * MIN
    series.add_trade(DAY0 + 9 * HOUR + 40 * MIN, 123, 1, 1, quote=0, taker_buys=True)
    points = series.closes(now, 48)
    assert len(points) == 48
    assert points[-1] == [DAY0 + 10 * HOUR, "1.23"]
    assert points[-2] == [DAY0 + 9 * HOUR + 30 * MIN, "1.23"]
    assert points[-3] == [DAY0 + 9 * HOUR, None]
    assert points[0][0] == DAY0 + 10 * HOUR - 47 * 30 * MIN


def test_volume_window_slides_without_trades() -> None:
    ticker = Ticker()
    ticker.add(DAY0 + 30_000, 100, 7)
    ticker.add(DAY0 + HOUR + 1, 110, 5)
    assert ticker.volume(DAY0 + HOUR + 2) == 12
    assert ticker.volume(DAY0 + 24 * HOUR - 1) == 12  # minute 1439 after the first: inside
    assert ticker.volume(DAY0 + 24 * HOUR) == 5  # the first trade's minute left the window
    assert ticker.volume(DAY0 + 25 * HOUR) == 0
    assert ticker.last_price == 110


def test_open_today_is_the_first_price_of_the_utc_day() -> None:
    ticker = Ticker()
    assert ticker.open_today(DAY0) is None
    ticker.add(DAY0 - HOUR, 100, 1)
    assert ticker.open_today(DAY0 - 1) == 100
    assert ticker.open_today(DAY0 + 1) == 100  # nothing today yet: the last price before it
    ticker.add(DAY0 + HOUR, 120, 1)
    ticker.add(DAY0 + 2 * HOUR, 90, 1)
    assert ticker.open_today(DAY0 + 3 * HOUR) == 120
    assert ticker.open_today(DAY0 + 25 * HOUR) == 90


def naive_rows(trades: list[tuple[int, int, int]], width: int, now: int) -> list[list[Any]]:
    """Every interval from the first trade's to now's, built the slow, obvious way."""
    if not trades:
        return []
    rows: list[list[Any]] = []
    close = 0
    first = min(t for t, _p, _a in trades) // width * width
    for start in range(first, max(now, max(t for t, _p, _a in trades)) // width * width + 1, width):
        inside = [(p, a) for t, p, a in trades if start <= t < start + width]
        if inside:
            prices = [p for p, _a in inside]
            close = prices[-1]
            cells = [prices[0], max(prices), min(prices), close]
            volume = sum(a for _p, a in inside)
            rows.append([start, *(BTC.format_price(x) for x in cells), BTC.format_amount(volume)])
        else:
            text = BTC.format_price(close)
            rows.append([start, text, text, text, text, "0"])
    return rows


@given(
    st.lists(
        st.tuples(st.integers(0, 400 * MIN), st.integers(1, 10**7), st.integers(1, 10**6)),
        max_size=40,
    ),
    st.sampled_from(sorted(INTERVALS)),
    st.integers(0, 200 * MIN),
    st.integers(1, 600),
    st.one_of(st.none(), st.integers(0, 500 * MIN)),
)
def test_rows_match_a_naive_model(
    trades: list[tuple[int, int, int]], interval: str, later: int, limit: int, since: int | None
) -> None:
    trades = sorted(trades, key=lambda trade: trade[0])
    series = CandleSeries(BTC, interval)
    for trade_id, (t, price, amount) in enumerate(trades, 1):
        series.add_trade(DAY0 + t, price, amount, trade_id, quote=0, taker_buys=True)
    now = DAY0 + (trades[-1][0] if trades else 0) + later
    expected = naive_rows([(DAY0 + t, p, a) for t, p, a in trades], INTERVALS[interval], now)
    if since is None:
        expected = expected[-limit:]
    else:
        expected = [row for row in expected if row[0] >= DAY0 + since][:limit]
    assert series.rows(now, limit, None if since is None else DAY0 + since) == expected
