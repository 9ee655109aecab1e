"""Binance's kline intervals: boundaries (weeks on Monday, calendar months) and rows."""

from __future__ import annotations

from datetime import UTC, datetime

from exchange.adapters.signatures import hmac_signature, hmac_valid
from exchange.api.binance.gateway import unsigned
from exchange.api.binance.klines import INTERVALS, LAST_TIME, rows, window
from exchange.domain.candles import Candle
from exchange.domain.markets import default_assets, default_markets

MARKET = default_markets(default_assets())["BTC/USDT"]


def ms(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[arg-type]


def test_every_binance_interval_and_its_boundaries() -> None:
    assert list(INTERVALS) == [
        "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
    ]  # fmt: skip
    at = ms(2026, 12, 2, 13, 58, 7)
    assert INTERVALS["1m"].floor(at) == ms(2026, 12, 2, 13, 58)
    assert INTERVALS["15m"].floor(at) == ms(2026, 12, 2, 13, 45)
    assert INTERVALS["6h"].floor(at) == ms(2026, 12, 2, 12)
    assert INTERVALS["1w"].floor(at) == ms(2026, 11, 30)  # a Monday
    assert INTERVALS["1M"].floor(at) == ms(2026, 12, 1)
    assert INTERVALS["1M"].next(ms(2026, 12, 1)) == ms(2027, 1, 1)
    assert INTERVALS["1M"].next(ms(2027, 2, 1)) == ms(2027, 3, 1)
    assert INTERVALS["1M"].back(ms(2027, 1, 1), 3) == ms(2026, 10, 1)
    for interval in INTERVALS.values():  # each is built from a kept series that fits it
        width = {"1min": 60_000, "5min": 300_000, "30min": 1_800_000, "4h": 14_400_000}
        base = width.get(interval.base, 86_400_000)
        start = interval.floor(at)
        assert start % base == 0 and (interval.next(start) - start) % base == 0


def test_window_follows_binance() -> None:
    minute = INTERVALS["1m"]
    now = ms(2026, 12, 2, 14, 0, 30)
    assert window(minute, now, None, None, 3) == (ms(2026, 12, 2, 13, 58), ms(2026, 12, 2, 14))
    # startTime: from the first interval opening at or after it.
    start = ms(2026, 12, 2, 13, 50, 1)
    assert window(minute, now, start, None, 2) == (ms(2026, 12, 2, 13, 51), ms(2026, 12, 2, 13, 52))
    # endTime alone: the intervals up to the one holding it.
    end = ms(2026, 12, 2, 13, 30, 59)
    assert window(minute, now, None, end, 2) == (ms(2026, 12, 2, 13, 29), ms(2026, 12, 2, 13, 30))


def test_rows_sum_the_kept_candles_and_fill_quiet_intervals() -> None:
    three = INTERVALS["3m"]
    t0 = ms(2026, 12, 2, 12, 0)
    candles = [  # 1-minute candles: time, o, h, l, c, volume, last id, quote, n, buys, first id
        Candle(t0 - 60_000, 100, 100, 100, 100, 1, 1, 10, 1, 0, 0, 1),
        Candle(t0, 110, 120, 105, 115, 2, 3, 20, 2, 2, 20, 2),
        Candle(t0 + 120_000, 90, 95, 80, 85, 3, 4, 30, 1, 0, 0, 4),
    ]
    out = rows(three, MARKET, candles, t0, t0 + 2 * 180_000)
    assert out[0] == [
        t0, "1.10", "1.20", "0.80", "0.85", "0.00000005", t0 + 180_000 - 1,
        "0.000050", 3, "0.00000002", "0.000020", "0",
    ]  # fmt: skip
    quiet = [t0 + 180_000, "0.85", "0.85", "0.85", "0.85", "0.00000000", t0 + 360_000 - 1]
    assert out[1][:7] == quiet and out[1][7:11] == ["0.000000", 0, "0.00000000", "0.000000"]
    assert len(out) == 3
    assert rows(three, MARKET, candles[1:], t0 - 180_000, t0)[0][0] == t0  # none before trading


def test_the_signature_is_taken_out_of_the_payload_exactly() -> None:
    assert unsigned(b"symbol=LTCBTC&timestamp=1&signature=ab12") == (
        b"symbol=LTCBTC&timestamp=1",
        True,
    )
    assert unsigned(b"signature=ab&b=2") == (b"b=2", True)
    assert unsigned(b"b=2&a=1") == (b"b=2&a=1", False)  # never re-sorted


def test_a_start_in_the_future_or_after_the_end_asks_for_nothing() -> None:
    minute = INTERVALS["1m"]
    now = ms(2026, 12, 2, 14, 0, 30)
    first, last = window(minute, now, now + 3_600_000, None, 10)
    assert last < first
    first, last = window(minute, now, ms(2026, 12, 2, 13), ms(2026, 12, 2, 12), 10)
    assert last < first
    assert INTERVALS["1M"].floor(LAST_TIME) == ms(9999, 12, 1)


def test_a_signature_that_is_not_ascii_is_simply_not_valid() -> None:
    assert not hmac_valid("secret", b"a=1", "\u00e9" * 64)
    assert hmac_valid("secret", b"a=1", hmac_signature("secret", b"a=1").upper())
