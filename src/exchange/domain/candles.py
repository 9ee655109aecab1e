"""Candles (OHLCV) of one market and one interval, kept in memory, pure Python.

Prices and volumes are ints in minor units (price units of the market, base
minor units for volume): a candle never holds a float. Only candles that saw a
trade are stored; the gaps of SPEC §5 ("an interval with no trade repeats the
previous close with volume "0"") are filled when rows are read, so a quiet
market costs no memory and no write.

Intervals align to UTC because epoch milliseconds are UTC: every width divides
a day, and a day starts at a multiple of 86,400,000 ms.

A stored candle caches its formatted row (decimal strings), rebuilt only after
a trade changes it, so that reading 500 candles is a loop over cached lists
(the 2 ms target in the README's performance table), not 2,500 decimal formattings.

Memory is bounded: a series keeps its newest ``KEPT`` traded candles. That is
more than any request without ``since`` can reach (``MAX_LIMIT`` intervals hold
at most ``MAX_LIMIT`` candles, so the candle before the window is in memory
too) and more than the 24 h ticker needs; older ones are read from the
``candles`` table when a ``since`` asks for them (``covers``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any

from exchange.domain.markets import Market

__all__ = [
    "ALIASES",
    "INTERVALS",
    "KEPT",
    "MAX_LIMIT",
    "SIMPLE_POINTS",
    "Candle",
    "CandleSeries",
    "CandleValues",
    "format_volume",
]

MINUTE = 60_000
#: Canonical interval name -> width in ms; the order is the order of the API docs.
INTERVALS: dict[str, int] = {
    "1min": MINUTE,
    "5min": 5 * MINUTE,
    "30min": 30 * MINUTE,
    "4h": 240 * MINUTE,
    "1d": 1440 * MINUTE,
}
#: Accepted spellings (SPEC §5) -> canonical name.
ALIASES: dict[str, str] = {
    **{name: name for name in INTERVALS},
    "1m": "1min",
    "5m": "5min",
    "30m": "30min",
    "240min": "4h",
    "1day": "1d",
}
MAX_LIMIT = 1500
#: Candles a series keeps in memory: above MAX_LIMIT + 1 and the 1,440 minutes of a day.
KEPT = 2_000
_TRIM = 256  # dropped in chunks: a list's front is costly to delete one by one
SIMPLE_POINTS = 48
SIMPLE_WIDTH = INTERVALS["30min"]

Row = list[Any]  # [time, open, high, low, close, volume]: int then five decimal strings


def format_volume(market: Market, units: int) -> str:
    """Zero volume is written ``"0"`` (SPEC §5); anything else at the base asset's scale."""
    return market.format_amount(units) if units else "0"


#: A Candle's constructor arguments, in order (what the candle store persists).
CandleValues = tuple[int, int, int, int, int, int, int, int, int, int, int, int]


class Candle:
    """One interval's figures; ``trade_id`` = last trade folded in, ``first_id`` the first.

    Besides OHLCV it counts what Binance's klines and 24 h tickers show: the quote
    volume (quote minor units, each trade's exact floored quote), the number of
    trades, and the base and quote volume of trades whose taker bought.
    """

    __slots__ = (
        "_row",
        "buy_quote",
        "buy_volume",
        "close",
        "count",
        "first_id",
        "high",
        "low",
        "open",
        "quote",
        "time",
        "trade_id",
        "volume",
    )

    def __init__(
        self,
        time: int,
        open: int,
        high: int,
        low: int,
        close: int,
        volume: int,
        trade_id: int,
        quote: int,
        count: int,
        buy_volume: int,
        buy_quote: int,
        first_id: int,
    ) -> None:
        self.time = time
        self.open = open
        self.high = high
        self.low = low
        self.close = close
        self.volume = volume
        self.trade_id = trade_id
        self.quote = quote
        self.count = count
        self.buy_volume = buy_volume
        self.buy_quote = buy_quote
        self.first_id = first_id
        self._row: Row | None = None

    @classmethod
    def first(
        cls, start: int, price: int, amount: int, quote: int, taker_buys: bool, trade_id: int
    ) -> Candle:
        """The candle a trade opens."""
        bought = amount if taker_buys else 0
        return cls(
            start, price, price, price, price, amount, trade_id, quote, 1, bought,
            quote if taker_buys else 0, trade_id,
        )  # fmt: skip

    def add(self, price: int, amount: int, quote: int, taker_buys: bool, trade_id: int) -> None:
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.close = price
        self.volume += amount
        self.quote += quote
        self.count += 1
        if taker_buys:
            self.buy_volume += amount
            self.buy_quote += quote
        self.trade_id = trade_id
        self._row = None

    def row(self, market: Market) -> Row:
        row = self._row
        if row is None:
            price = market.format_price
            row = [
                self.time,
                price(self.open),
                price(self.high),
                price(self.low),
                price(self.close),
                format_volume(market, self.volume),
            ]
            self._row = row
        return row

    def values(self) -> CandleValues:
        return (
            self.time, self.open, self.high, self.low, self.close, self.volume, self.trade_id,
            self.quote, self.count, self.buy_volume, self.buy_quote, self.first_id,
        )  # fmt: skip


class CandleSeries:
    """All traded candles of one market and interval, oldest first (sorted by ``time``)."""

    __slots__ = (
        "candles",
        "complete",
        "interval",
        "kept",
        "last_trade_id",
        "market",
        "times",
        "width",
    )

    def __init__(self, market: Market, interval: str, kept: int = KEPT) -> None:
        self.market = market
        self.interval = interval
        self.width = INTERVALS[interval]
        self.kept = kept
        self.times: list[int] = []
        self.candles: list[Candle] = []
        #: The newest trade folded into this series: replays skip what is already in.
        self.last_trade_id = 0
        #: False once older candles exist only in the database.
        self.complete = True

    def __len__(self) -> int:
        return len(self.candles)

    def __iter__(self) -> Iterator[Candle]:
        return iter(self.candles)

    def start_of(self, time: int) -> int:
        return time - time % self.width

    def add_trade(
        self, time: int, price: int, amount: int, trade_id: int, *, quote: int, taker_buys: bool
    ) -> Candle:
        """Fold one trade in; trades arrive in id order, normally with rising times."""
        start = time - time % self.width
        if trade_id > self.last_trade_id:
            self.last_trade_id = trade_id
        candles = self.candles
        if candles:
            last = candles[-1]
            if last.time == start:
                last.add(price, amount, quote, taker_buys, trade_id)
                return last
            if start < last.time:  # a clock step backwards: find or insert the older candle
                index = bisect_left(self.times, start)
                if self.times[index] == start:
                    candles[index].add(price, amount, quote, taker_buys, trade_id)
                    return candles[index]
                candle = Candle.first(start, price, amount, quote, taker_buys, trade_id)
                self.times.insert(index, start)
                candles.insert(index, candle)
                return candle
        candle = Candle.first(start, price, amount, quote, taker_buys, trade_id)
        self.times.append(start)
        candles.append(candle)
        if len(candles) > self.kept + _TRIM:
            self.forget_oldest()
        return candle

    def forget_oldest(self) -> None:
        """Keep the newest ``kept`` candles; the others stay in the database only."""
        extra = len(self.candles) - self.kept
        if extra > 0:
            del self.candles[:extra]
            del self.times[:extra]
            self.complete = False

    def covers(self, now: int, limit: int, since: int | None) -> bool:
        """Whether memory alone answers ``rows(now, limit, since)``.

        It does when nothing was forgotten, or when the first interval asked for
        starts at or after the oldest candle kept (then the candle before it, whose
        close fills a leading gap, is kept too).
        """
        if self.complete or not self.times:
            return True
        width = self.width
        if since is None:
            end = max(now - now % width, self.times[-1])
            start = end - (limit - 1) * width
        else:
            start = -(-since // width) * width
        return start >= self.times[0]

    def restore(self, candle: Candle) -> None:
        """Put back a persisted candle (any order; loading sorts as it goes)."""
        if candle.trade_id > self.last_trade_id:
            self.last_trade_id = candle.trade_id
        if not self.times or candle.time > self.times[-1]:
            self.times.append(candle.time)
            self.candles.append(candle)
            return
        index = bisect_left(self.times, candle.time)
        if index < len(self.times) and self.times[index] == candle.time:
            self.candles[index] = candle
        else:
            self.times.insert(index, candle.time)
            self.candles.insert(index, candle)

    def get(self, start: int) -> Candle | None:
        index = bisect_left(self.times, start)
        if index < len(self.times) and self.times[index] == start:
            return self.candles[index]
        return None

    def at_or_before(self, time: int) -> Candle | None:
        """The newest traded candle that starts at or before ``time``."""
        index = bisect_right(self.times, time) - 1
        return self.candles[index] if index >= 0 else None

    def rows(self, now: int, limit: int, since: int | None = None) -> list[Row]:
        """Gap-filled rows, oldest first (SPEC §5).

        Without ``since``: the newest ``limit`` intervals, the last one being the
        current interval. With ``since``: up to ``limit`` intervals from the first
        one that starts at or after ``since``. Nothing before the first trade.
        """
        candles = self.candles
        if not candles or limit <= 0:
            return []
        width = self.width
        first = candles[0].time
        end = max(now - now % width, candles[-1].time)
        if since is None:
            start = max(first, end - (limit - 1) * width)
        else:
            start = max(first, -(-since // width) * width)
            end = min(end, start + (limit - 1) * width)
            if start > end:
                return []
        times = self.times
        index = bisect_right(times, start) - 1  # the candle at or before start (exists)
        count = len(times)
        market = self.market
        if times[index] == start:
            index -= 1  # the loop below takes it as a traded interval
        previous = candles[max(index, 0)]
        index += 1
        out: list[Row] = []
        append = out.append
        close = ""  # the previous close as text, formatted once per gap
        t = start
        while t <= end:
            if index < count and times[index] == t:
                previous = candles[index]
                append(previous.row(market))
                index += 1
                close = ""
            else:
                if not close:
                    close = market.format_price(previous.close)
                append([t, close, close, close, close, "0"])
            t += width
        return out

    def closes(self, now: int, points: int) -> list[list[Any]]:
        """``points`` [time, close] pairs at this series' boundaries, the last one now's.

        ``close`` is the last price at the end of that interval, ``None`` before
        the first trade.
        """
        width = self.width
        current = now - now % width
        market = self.market
        out: list[list[Any]] = []
        for t in range(current - (points - 1) * width, current + 1, width):
            candle = self.at_or_before(t)
            out.append([t, None if candle is None else market.format_price(candle.close)])
        return out
