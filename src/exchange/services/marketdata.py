"""Market data served from memory: tickers, rank, recent trades, depth, candles.

Where the data comes from: the engine calls ``on_commit`` right after each
durable commit with the batch's trades and changed orders; nothing here
queries the database per request. ``on_commit`` is synchronous and cheap (a
few int updates per trade), so it adds microseconds to the writer and market
data reflects a trade before its order's answer is even sent.

Persistence: candles change in memory on every trade and are marked dirty; a
background task writes the dirty ones every ``FLUSH_SECONDS`` in one
transaction through the async database engine, off the writer's hot path (the
journal never waits for candles). The trades table stays the source of truth:
on start, persisted candles are loaded, then every trade newer than the last
one folded into each series is replayed, so a crash between two flushes loses
nothing and the history after a restart is identical. Tickers are rebuilt from
the candles (1-minute volumes for the 24 h window, the 1-day candle for
today's open) and the last 500 trades per market are read once.

Caches: formatted answers are cached per market and invalidated by a version
counter that ``on_commit`` bumps, and by the minute (the 24 h window and the
UTC day move with the clock even without trades).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Any

from exchange.adapters.db.candle_store import CandleRow, CandleStore
from exchange.clock import Clock
from exchange.domain.candles import (
    INTERVALS,
    KEPT,
    SIMPLE_POINTS,
    Candle,
    CandleSeries,
    format_volume,
)
from exchange.domain.events import Committed
from exchange.domain.markets import Market
from exchange.domain.matching import HALT
from exchange.domain.orders import BUY, Trade
from exchange.domain.tickers import DAY, WINDOW, Ticker, change_percent
from exchange.engine.port import EnginePort

__all__ = ["DEALS_KEPT", "FLUSH_SECONDS", "MarketData", "Rolling"]

log = logging.getLogger("exchange.marketdata")

DEALS_KEPT = 500
FLUSH_SECONDS = 0.5  # float-ok: seconds between candle flushes
MINUTE = 60_000
_DEPTH_LIMITS_CACHED = 8

Levels = tuple[list[list[str]], list[list[str]]]


@dataclass(slots=True)
class Rolling:
    """A market's last 24 h, summed from minute candles (all units; None: no trade)."""

    start: int
    end: int
    open: int | None = None
    high: int = 0
    low: int = 0
    close: int | None = None
    prev_close: int | None = None
    volume: int = 0
    quote: int = 0
    count: int = 0
    first_id: int = -1
    last_id: int = -1

    def add(self, candle: Candle) -> None:
        if self.open is None:
            self.open, self.high, self.low = candle.open, candle.high, candle.low
            self.first_id = candle.first_id
        self.high = max(self.high, candle.high)
        self.low = min(self.low, candle.low)
        self.close = candle.close
        self.volume += candle.volume
        self.quote += candle.quote
        self.count += candle.count
        self.last_id = candle.trade_id


class _TickerView:
    """A ticker's formatted figures, valid for one (minute, version)."""

    __slots__ = ("change", "item", "key", "order")

    def __init__(self, key: tuple[int, int], item: dict[str, Any], order: int) -> None:
        self.key = key
        self.item = item
        self.change = item["change_percent"]
        self.order = order  # hundredths of a percent, for the rank sort


class MarketData:
    def __init__(
        self,
        markets: dict[str, Market],
        engine: EnginePort,
        clock: Clock,
        store: CandleStore,
        *,
        persist: bool = True,
        kept: int = KEPT,
    ) -> None:
        self.markets = markets
        self.clock = clock
        self._engine = engine
        self._store = store
        #: Only the writer writes candles; a worker's copy is rebuilt from the trades.
        self.persist = persist
        self.kept = kept
        self.series: dict[str, dict[str, CandleSeries]] = {
            symbol: {name: CandleSeries(market, name, kept) for name in INTERVALS}
            for symbol, market in markets.items()
        }
        self.tickers: dict[str, Ticker] = {symbol: Ticker() for symbol in markets}
        self.deals: dict[str, deque[dict[str, Any]]] = {
            symbol: deque(maxlen=DEALS_KEPT) for symbol in markets
        }
        #: The same trades as records (the Binance dialect formats them its own way).
        self.recent: dict[str, deque[Trade]] = {
            symbol: deque(maxlen=DEALS_KEPT) for symbol in markets
        }
        self._rolling: dict[str, tuple[tuple[int, int], Rolling]] = {}
        self._version: dict[str, int] = dict.fromkeys(markets, 0)
        self._tickers: dict[str, _TickerView] = {}
        #: symbol -> (the engine's depth key, version, formatted levels per limit)
        self._depth: dict[str, tuple[object, int, dict[int, Levels]]] = {}
        self._dirty: dict[tuple[str, str, int], Candle] = {}
        #: The newest trade folded in per market: a batch that overlaps a load (a
        #: worker loads while batches arrive) must not count its trades twice.
        self._through: dict[str, int] = dict.fromkeys(markets, 0)
        self._task: asyncio.Task[None] | None = None
        #: Markets an operator has halted (new orders refused; market data says so).
        self.halted: set[str] = set()

    # -- the engine listener (synchronous: never awaits, never blocks) ---------

    def on_commit(self, outbox: Committed, now: int) -> None:
        if outbox.controls:
            for kind, key, active in outbox.controls:
                if kind == HALT:
                    (self.halted.add if active else self.halted.discard)(key)
        version = self._version
        through = self._through
        for trade in outbox.trades:
            if trade.market in version and trade.id > through[trade.market]:
                through[trade.market] = trade.id
                self._add_trade(trade)
                version[trade.market] += 1
        for order in outbox.orders:
            if order.market in version:
                version[order.market] += 1

    def _add_trade(self, trade: Trade) -> None:
        symbol = trade.market
        self.tickers[symbol].add(trade.time, trade.price, trade.amount)
        self._fold(trade)
        self.deals[symbol].append(self.deal_row(trade))
        self.recent[symbol].append(trade)

    def _fold(self, trade: Trade) -> None:
        dirty = self._dirty
        for name, series in self.series[trade.market].items():
            if trade.id > series.last_trade_id:
                candle = series.add_trade(
                    trade.time,
                    trade.price,
                    trade.amount,
                    trade.id,
                    quote=trade.quote,
                    taker_buys=trade.taker_side == BUY,
                )
                if self.persist:
                    dirty[(trade.market, name, candle.time)] = candle

    # -- views (the REST items; the stream sends the same shapes) -------------

    def deal_row(self, trade: Trade) -> dict[str, Any]:
        market = self.markets[trade.market]
        return {
            "id": trade.id,
            "price": market.format_price(trade.price),
            "amount": market.format_amount(trade.amount),
            "time": trade.time,
            "side": trade.taker_side,
        }

    def _ticker(self, symbol: str, now: int) -> _TickerView:
        key = (now - now % MINUTE, self._version[symbol])
        view = self._tickers.get(symbol)
        if view is not None and view.key == key:
            return view
        market = self.markets[symbol]
        ticker = self.tickers[symbol]
        price = ticker.last_price
        opened = ticker.open_today(now)
        change = change_percent(price, opened)
        item = {
            "pair": symbol,
            "price": None if price is None else market.format_price(price),
            "volume_24h": format_volume(market, ticker.volume(now)),
            "change_percent": change,
            "open_today": None if opened is None else market.format_price(opened),
        }
        view = _TickerView(key, item, int(change.replace(".", "")))
        self._tickers[symbol] = view
        return view

    def coin(self, symbol: str, now: int) -> list[Any]:
        """The seed's list: [pair, price, volume_24h, change_percent, open_today]."""
        item = self._ticker(symbol, now).item
        return [
            symbol,
            item["price"],
            item["volume_24h"],
            item["change_percent"],
            item["open_today"],
        ]

    def rank(self, now: int) -> list[dict[str, Any]]:
        """All markets, best 24 h change first (ties keep the configured order)."""
        views = [self._ticker(symbol, now) for symbol in self.markets]
        views.sort(key=lambda view: -view.order)
        return [{"rank": index, **view.item} for index, view in enumerate(views, 1)]

    def ticker_item(self, symbol: str, now: int) -> dict[str, Any]:
        """One market as a ``get_rank`` item, with its current rank."""
        for item in self.rank(now):
            if item["pair"] == symbol:
                return item
        raise KeyError(symbol)

    def update_id(self, symbol: str) -> int:
        """The Binance dialect's ``lastUpdateId``: the last batch that changed this book.

        Batch numbers are the same in every process (``domain.events.number_books``)
        and the depth stream's diffs carry them, so a client can tell which diffs a
        book it read (from any process) already holds.
        """
        return self._engine.book_number(symbol)

    def rolling(self, symbol: str, now: int) -> Rolling:
        """The last 24 h of one market from its minute candles (cached per minute and change)."""
        key = (now - now % MINUTE, self._version[symbol])
        cached = self._rolling.get(symbol)
        if cached is not None and cached[0] == key:
            return cached[1]
        series = self.series[symbol]["1min"]
        start = key[0] - WINDOW + MINUTE
        candles = series.candles
        index = bisect_left(series.times, start)
        figures = Rolling(start, now)
        if index > 0:
            figures.prev_close = candles[index - 1].close
        for candle in candles[index:]:
            figures.add(candle)
        self._rolling[symbol] = (key, figures)
        return figures

    async def first_trade_time(self, symbol: str) -> int | None:
        """The start of the minute of the market's first trade; None before any trade."""
        series = self.series[symbol]["1min"]
        if series.complete:
            return series.times[0] if series.times else None
        found = await self._store.window(symbol, "1min", -1, 0)
        return found[0][0] if found else None

    async def traded(self, symbol: str, interval: str, start: int, end: int) -> list[Candle]:
        """The traded candles of [start, end], oldest first, led by the newest one before it.

        From memory when it reaches back far enough, else from the database with
        memory's newer (possibly unflushed) candles laid over.
        """
        series = self.series[symbol][interval]
        times = series.times
        if series.complete or (times and times[0] < start):
            first = max(bisect_left(times, start) - 1, 0)
            last = bisect_right(times, end)
            return series.candles[first:last]
        stored = {
            values[0]: Candle(*values)
            for values in await self._store.window(symbol, interval, start - 1, end - start + 1)
        }
        for candle in series.candles:
            if candle.time in stored or start <= candle.time <= end:
                stored[candle.time] = candle
        return [stored[time] for time in sorted(stored)]

    async def trades_between(
        self, symbol: str, from_id: int | None, start: int | None, end: int | None, limit: int
    ) -> list[Trade]:
        """Committed trades of one market, oldest first (memory when it holds them all)."""
        recent = self.recent[symbol]
        if from_id is None and start is None and end is None:  # the newest
            if limit <= len(recent) or len(recent) < DEALS_KEPT:
                return list(recent)[-limit:]
            return await self._store.recent_trades(symbol, limit, self._through[symbol])
        if from_id is not None and start is None and recent and recent[0].id <= from_id:
            found = [t for t in recent if t.id >= from_id and (end is None or t.time <= end)]
            return found[:limit]
        return await self._store.trades_between(symbol, from_id, start, end, limit)

    def deal_records(self, symbol: str, limit: int) -> list[dict[str, Any]]:
        deals = self.deals[symbol]
        count = min(limit, len(deals))
        return [deals[-1 - index] for index in range(count)]

    def depth(self, symbol: str, limit: int, now: int) -> dict[str, Any]:
        engine = self._engine
        book = engine.depth_key(symbol)
        version = self._version[symbol]
        cached = self._depth.get(symbol)
        if cached is None or cached[0] != book or cached[1] != version:
            cached = (book, version, {})
            self._depth[symbol] = cached
        levels = cached[2].get(limit)
        if levels is None:
            market = self.markets[symbol]
            price, amount = market.format_price, market.format_amount
            bids, asks = engine.depth(symbol, limit)
            levels = (
                [[price(p), amount(a)] for p, a in bids],
                [[price(p), amount(a)] for p, a in asks],
            )
            if len(cached[2]) >= _DEPTH_LIMITS_CACHED:
                cached[2].clear()
            cached[2][limit] = levels
        return {"timetick": now, "bids": levels[0], "asks": levels[1]}

    async def klines(
        self, symbol: str, interval: str, limit: int, since: int | None, now: int
    ) -> list[list[Any]]:
        """Candle rows from memory; a ``since`` older than memory reads the database."""
        series = self.series[symbol][interval]
        if series.covers(now, limit, since):
            return series.rows(now, limit, since)
        width = series.width
        if since is None:
            end = max(now - now % width, series.times[-1])
            start = end - (limit - 1) * width
        else:
            start = -(-since // width) * width
        older = CandleSeries(series.market, interval)
        for values in await self._store.window(symbol, interval, start, (limit - 1) * width):
            older.restore(Candle(*values))
        if older.times:
            last = older.times[-1]
            for candle in series.candles:  # memory is newer than the table (unflushed)
                if candle.time <= last:
                    older.restore(candle)
        return older.rows(now, limit, since)

    def simple_klines(self, symbol: str, now: int) -> list[list[Any]]:
        return self.series[symbol]["30min"].closes(now, SIMPLE_POINTS)

    def candle_rows(self, symbol: str, interval: str, trades: list[Trade]) -> list[list[Any]]:
        """The current rows of the candles these trades touched, oldest first."""
        series = self.series[symbol][interval]
        starts = sorted({series.start_of(trade.time) for trade in trades})
        rows = []
        for start in starts:
            candle = series.get(start)
            if candle is not None:
                rows.append(candle.row(series.market))
        return rows

    # -- life cycle: load, background flush, stop ------------------------------

    async def load(self) -> None:
        """The newest persisted candles, a replay of newer trades, tickers and recent trades."""
        self.halted = await self._store.halted()
        for by_interval in self.series.values():
            for series in by_interval.values():
                found = await self._store.newest(
                    series.market.symbol, series.interval, series.kept + 1
                )
                for values in found:
                    series.restore(Candle(*values))
                series.forget_oldest()  # more than kept: the oldest is in the database only
        now = self.clock()
        for symbol, by_interval in self.series.items():
            after = min(series.last_trade_id for series in by_interval.values())
            replayed = 0
            async for chunk in self._store.trades_after(symbol, after):
                for trade in chunk:
                    self._fold(trade)
                replayed += len(chunk)
            if replayed:
                log.info("market data: replayed %d trades of %s into candles", replayed, symbol)
            self._restore_ticker(symbol, now)
            through = max(series.last_trade_id for series in by_interval.values())
            self._through[symbol] = through
            deals = self.deals[symbol]
            deals.clear()
            recent = self.recent[symbol]
            recent.clear()
            # Not past ``through``: a trade committed after the replay above comes
            # with the batches a worker holds meanwhile (listed twice otherwise).
            for trade in await self._store.recent_trades(symbol, DEALS_KEPT, through):
                deals.append(self.deal_row(trade))
                recent.append(trade)
            self._version[symbol] += 1

    async def reload(self) -> None:
        """Start again from the database (a worker that (re)connects to the writer).

        Loaded aside and swapped in at the end: until then (or if the database
        fails) the previous data keeps being served, never a half-loaded state.
        """
        fresh = MarketData(
            self.markets, self._engine, self.clock, self._store, persist=False, kept=self.kept
        )
        await fresh.load()
        self.series, self.tickers, self.deals = fresh.series, fresh.tickers, fresh.deals
        self.recent = fresh.recent
        self.halted = fresh.halted
        self._rolling.clear()
        self._through = fresh._through
        for symbol in self._version:
            self._version[symbol] += 1
        self._tickers.clear()
        self._depth.clear()

    def _restore_ticker(self, symbol: str, now: int) -> None:
        minutes = self.series[symbol]["1min"]
        ticker = Ticker()
        self.tickers[symbol] = ticker
        if not len(minutes):
            return
        last = minutes.candles[-1]
        day = self.series[symbol]["1d"].get(last.time - last.time % DAY)
        ticker.restore(last.close, last.time, last.open if day is None else day.open)
        oldest = now - now % MINUTE - WINDOW
        for candle in reversed(minutes.candles):
            if candle.time <= oldest:
                break
            ticker.add_volume(candle.time, candle.volume)

    def start(self) -> None:
        if self._task is None and self.persist:
            self._task = asyncio.create_task(self._flush_loop(), name="marketdata-flush")

    async def stop(self) -> None:
        """Stop the flush task, then write what is still dirty (call after the engine stops)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()

    async def flush(self) -> int:
        """Write the dirty candles in one transaction; on failure they stay dirty."""
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, {}
        # Snapshot synchronously: every trade folded so far is in these rows.
        rows: list[CandleRow] = [
            (symbol, period, *candle.values()) for (symbol, period, _), candle in dirty.items()
        ]
        try:
            await self._store.save(rows)
        except BaseException as error:  # cancelled too: a half-done flush must be redone
            for key, candle in dirty.items():
                self._dirty.setdefault(key, candle)
            if not isinstance(error, Exception):
                raise
            log.warning("cannot persist %d candles (%s); retrying later", len(rows), error)
            return 0
        return len(rows)
