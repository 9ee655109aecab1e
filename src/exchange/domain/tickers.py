"""One market's ticker figures (SPEC §5), in memory, pure Python, ints only.

* ``price``: the last trade's price.
* ``open_today``: the first trade price of the current UTC day; when nothing
  traded yet today, the last price before it (so a quiet day shows 0 change).
* ``volume_24h``: base amount traded in a rolling window of 1,440 one-minute
  buckets that ends with the current minute (so between 23 h 59 min and 24 h
  of trades, decided per UTC minute). The window slides with the clock, not
  with trades: a quiet market's volume falls as its buckets expire.
* ``change_percent``: (price - open_today) / open_today x 100 with two
  decimals, rounded half to even, signed (``"+1.25"``, ``"-0.40"``), and
  ``"0.00"`` when it rounds to zero or nothing traded.
"""

from __future__ import annotations

from collections import deque

__all__ = ["DAY", "WINDOW", "Ticker", "change_percent"]

MINUTE = 60_000
DAY = 86_400_000
WINDOW_MINUTES = 1440
WINDOW = WINDOW_MINUTES * MINUTE


def change_percent(price: int | None, open_today: int | None) -> str:
    """Signed percent with two decimals, rounded half to even, from exact ints."""
    if price is None or not open_today:
        return "0.00"
    hundredths = (price - open_today) * 10_000  # in 1/100 of a percent, times open_today
    quotient, remainder = divmod(abs(hundredths), open_today)
    twice = 2 * remainder
    if twice > open_today or (twice == open_today and quotient % 2 == 1):
        quotient += 1
    if quotient == 0:
        return "0.00"
    sign = "+" if hundredths > 0 else "-"
    return f"{sign}{quotient // 100}.{quotient % 100:02d}"


class Ticker:
    """Last price, today's open and the rolling volume buckets of one market."""

    __slots__ = ("_buckets", "_total", "day", "day_open", "last_price", "last_time")

    def __init__(self) -> None:
        self.last_price: int | None = None
        self.last_time = 0
        self.day = 0  # start (ms) of the UTC day of the newest trade
        self.day_open = 0  # first trade price of that day
        self._buckets: deque[list[int]] = deque()  # [minute start, base volume], oldest first
        self._total = 0

    def add(self, time: int, price: int, amount: int) -> None:
        day = time - time % DAY
        if self.last_price is None or day > self.day:
            self.day = day
            self.day_open = price
        if time >= self.last_time or self.last_price is None:
            self.last_price = price
            self.last_time = time
        self._add_volume(time - time % MINUTE, amount)

    def _add_volume(self, minute: int, amount: int) -> None:
        buckets = self._buckets
        if buckets and buckets[-1][0] == minute:
            buckets[-1][1] += amount
        elif not buckets or minute > buckets[-1][0]:
            buckets.append([minute, amount])
        else:  # an older minute (a clock step back, or a replay): rare, scan from the end
            for index in range(len(buckets) - 1, -1, -1):
                if buckets[index][0] == minute:
                    buckets[index][1] += amount
                    break
                if buckets[index][0] < minute:
                    buckets.insert(index + 1, [minute, amount])
                    break
            else:
                buckets.appendleft([minute, amount])
        self._total += amount

    def restore(self, last_price: int, last_time: int, day_open: int) -> None:
        """Set price and today's open from persisted candles (volume comes from ``add_volume``)."""
        self.last_price = last_price
        self.last_time = last_time
        self.day = last_time - last_time % DAY
        self.day_open = day_open

    def add_volume(self, minute: int, amount: int) -> None:
        self._add_volume(minute - minute % MINUTE, amount)

    def volume(self, now: int) -> int:
        """Base volume of the 1,440 minutes that end with now's minute."""
        oldest = now - now % MINUTE - (WINDOW_MINUTES - 1) * MINUTE
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest:
            self._total -= buckets.popleft()[1]
        return self._total

    def open_today(self, now: int) -> int | None:
        if self.last_price is None:
            return None
        if now - now % DAY > self.day:
            return self.last_price  # nothing traded today yet: the last price before it
        return self.day_open
