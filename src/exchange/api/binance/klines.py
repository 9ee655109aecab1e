"""Binance's fifteen kline intervals, built from the five the candle store keeps.

Each Binance interval is summed from the widest kept series whose candles fit
in it exactly (``3m`` from 1-minute candles, ``6h`` from 30-minute ones, weeks
and months from days). Weeks start on Monday 00:00 UTC and months on the 1st,
as Binance's do; every other interval is aligned to the epoch. Quiet intervals
repeat the previous close with zero volume, and nothing is shown before the
market's first trade.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from exchange.domain.candles import Candle
from exchange.domain.markets import Market

__all__ = ["INTERVALS", "LAST_TIME", "Interval", "rows", "window"]

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
MONDAY = 4 * DAY  # the epoch was a Thursday
_EPOCH = date(1970, 1, 1).toordinal()
#: The last millisecond a request may name (9999-12-31): calendar months end there.
LAST_TIME = 253_402_300_799_999


class Interval:
    """One Binance interval: its name, the kept series it is built from, its boundaries."""

    __slots__ = ("base", "name", "offset", "width")

    def __init__(self, name: str, base: str, width: int, offset: int = 0) -> None:
        self.name = name
        self.base = base
        self.width = width  # 0: calendar months
        self.offset = offset

    def floor(self, time: int) -> int:
        """The start of the interval that holds ``time``."""
        if self.width:
            return time - (time - self.offset) % self.width
        day = date.fromordinal(_EPOCH + time // DAY)
        return (day.replace(day=1).toordinal() - _EPOCH) * DAY

    def next(self, start: int) -> int:
        if self.width:
            return start + self.width
        day = date.fromordinal(_EPOCH + start // DAY)
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        return (date(year, month, 1).toordinal() - _EPOCH) * DAY

    def back(self, start: int, count: int) -> int:
        """The start ``count`` intervals before ``start``."""
        if self.width:
            return start - count * self.width
        for _ in range(count):
            start = self.floor(start - 1)
        return start


INTERVALS: dict[str, Interval] = {
    interval.name: interval
    for interval in (
        Interval("1m", "1min", MINUTE),
        Interval("3m", "1min", 3 * MINUTE),
        Interval("5m", "5min", 5 * MINUTE),
        Interval("15m", "5min", 15 * MINUTE),
        Interval("30m", "30min", 30 * MINUTE),
        Interval("1h", "30min", HOUR),
        Interval("2h", "30min", 2 * HOUR),
        Interval("4h", "4h", 4 * HOUR),
        Interval("6h", "30min", 6 * HOUR),
        Interval("8h", "4h", 8 * HOUR),
        Interval("12h", "4h", 12 * HOUR),
        Interval("1d", "1d", DAY),
        Interval("3d", "1d", 3 * DAY),
        Interval("1w", "1d", WEEK, MONDAY),
        Interval("1M", "1d", 0),
    )
}


def window(
    interval: Interval, now: int, start: int | None, end: int | None, limit: int
) -> tuple[int, int]:
    """The first and last interval starts a request asks for (Binance's rules).

    ``startTime``: from the first interval that opens at or after it; ``endTime``
    alone: the ``limit`` intervals up to the one that holds it; neither: the
    newest ``limit``, the open one included.
    """
    current = interval.floor(now)
    if start is not None:
        first = interval.floor(start)
        if first < start:
            first = interval.next(first)
        stop = current if end is None else min(current, interval.floor(end))
        if first > stop:  # starts in the future, or after endTime: nothing
            return first, first - 1
        last = first
        for _ in range(limit - 1):
            following = interval.next(last)
            if following > stop:
                break
            last = following
        return first, last
    last = current if end is None else min(current, interval.floor(end))
    return interval.back(last, limit - 1), last


def rows(
    interval: Interval, market: Market, candles: list[Candle], first: int, last: int
) -> list[list[Any]]:
    """Binance kline rows for [first, last] from the kept series' traded ``candles``.

    ``candles`` are oldest first and may begin with one before ``first`` (whose
    close fills a leading quiet interval).
    """
    price, amount, quote = market.format_price, market.format_amount, market.format_quote
    out: list[list[Any]] = []
    index = 0
    count = len(candles)
    close: int | None = None
    while index < count and candles[index].time < first:
        close = candles[index].close
        index += 1
    start = first
    while start <= last:
        following = interval.next(start)
        o = h = low = c = None
        volume = quote_volume = trades = buy_volume = buy_quote = 0
        while index < count and candles[index].time < following:
            candle = candles[index]
            if o is None:
                o, h, low = candle.open, candle.high, candle.low
            else:
                h = max(h or 0, candle.high)
                low = min(low or candle.low, candle.low)
            c = candle.close
            volume += candle.volume
            quote_volume += candle.quote
            trades += candle.count
            buy_volume += candle.buy_volume
            buy_quote += candle.buy_quote
            index += 1
        if o is None:
            if close is None:  # before the first trade: no row
                start = following
                continue
            o = h = low = c = close
        assert h is not None and low is not None and c is not None
        close = c
        out.append(
            [
                start,
                price(o),
                price(h),
                price(low),
                price(c),
                amount(volume),
                following - 1,
                quote(quote_volume),
                trades,
                amount(buy_volume),
                quote(buy_quote),
                "0",
            ]
        )
        start = following
    return out
