"""An HTTP worker's engine: the writer process, reached over its Unix socket.

Commands go to the writer and are answered after the writer's group commit, so
durability and single-writer matching are exactly those of one process. What
a worker reads from memory it keeps locally, fed by the writer's stream of
committed batches: the depth of every book (aggregated levels, updated from the
new totals of the levels each batch touched) and, through the same listener
interface as ``Engine``, market data and the WebSocket fan-out. Balances are
asked of the writer (one round trip on the socket, no database).

If the connection drops, commands in flight get ``internal_error`` with a
sentence saying the outcome is unknown (the writer may have committed them; a
``client_order_id`` makes the retry safe), and new commands get 503 until the
client has reconnected and reloaded market data (batches were missed). A gap
in the batches' sequence numbers is treated like a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import islice
from typing import Any, TypeVar

from sortedcontainers import SortedDict

from exchange.domain.commands import Returns
from exchange.domain.errors import ExchangeError
from exchange.domain.events import Committed, number_books
from exchange.domain.markets import Asset, Market, assets_of
from exchange.domain.orders import BUY
from exchange.engine.port import Balances, Levels, Listener
from exchange.engine.wire import (
    decode_balances,
    decode_error,
    decode_outbox,
    decode_result,
    encode_command,
    frame,
    read_frame,
)

__all__ = ["EngineClient", "LevelBook"]

R = TypeVar("R")
log = logging.getLogger("exchange.client")

RECONNECT_SECONDS = 0.2  # float-ok: seconds between reconnection attempts
BALANCES_SECONDS = 5.0  # float-ok: seconds a balance read may wait for the writer
#: Batches held while market data loads; past this the link is restarted (a fresh
#: snapshot empties the list) rather than let a worker that cannot load grow forever.
HELD_MAX = 20_000


def _unknown_outcome() -> ExchangeError:
    return ExchangeError(
        "internal_error",
        "the connection to the matching engine was lost while this was in flight; it may "
        "or may not have been applied: check get_orders or get_withdrawals before retrying",
    )


def _not_connected() -> ExchangeError:
    return ExchangeError(
        "overloaded", "the matching engine is not reachable now; try again", retry_after=1
    )


class LevelBook:
    """One market's aggregated depth: price -> total remaining, per side."""

    __slots__ = ("asks", "bids")

    def __init__(self, levels: Sequence[Sequence[Sequence[int]]]) -> None:
        bids, asks = levels
        self.bids: SortedDict = SortedDict({price: total for price, total in bids})
        self.asks: SortedDict = SortedDict({price: total for price, total in asks})

    def set(self, side: str, price: int, total: int) -> None:
        levels = self.bids if side == BUY else self.asks
        if total > 0:
            levels[price] = total
        else:
            levels.pop(price, None)

    def depth(self, limit: int) -> Levels:
        bids, asks = self.bids, self.asks
        return (
            [(price, bids[price]) for price in islice(reversed(bids), limit)],
            [(price, asks[price]) for price in islice(asks, limit)],
        )


class EngineClient:
    def __init__(self, path: str, markets: dict[str, Market]) -> None:
        self.path = path
        self.markets = markets
        self._assets = assets_of(markets.values())
        self.books: dict[str, LevelBook] = {symbol: LevelBook([[], []]) for symbol in markets}
        self.seq = 0
        #: The writer's ``book_numbers``: from the snapshot, then moved on by each batch.
        self.book_numbers: dict[str, int] = {}
        #: Runs after a reconnection, before missed batches could be misread as current.
        self.on_resync: Callable[[], Awaitable[None]] | None = None
        #: Runs when any worker ends a session (forget the cached copy).
        self.on_revoke: Callable[[str], None] | None = None
        self._listeners: list[Listener] = []
        self._pending: dict[int, tuple[asyncio.Future[Any], bool]] = {}
        self._next_id = 0
        #: The link requests may use: set only once market data is in step with it.
        self._writer: asyncio.StreamWriter | None = None
        self._held: list[tuple[Committed, int]] | None = None
        self._unsent_revokes: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._sync: asyncio.Task[None] | None = None
        self._generation = 0
        self._started: asyncio.Future[None] | None = None

    @property
    def assets(self) -> dict[str, Asset]:
        return self._assets

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- life cycle -----------------------------------------------------------

    async def start(self, connect_timeout: float = 10.0) -> None:  # float-ok: seconds
        """Connect, take the writer's snapshot and run ``on_resync``; then serve.

        Every connection, the first included, goes the same way: the snapshot,
        then batches are held while ``on_resync`` loads market data from the
        database (retried until it succeeds), then the held batches are folded in
        (market data skips trades its load already had) and only then may
        requests use the link, so an answer never outruns the data behind it.
        Raises ConnectionError if the writer's socket cannot be reached at all.
        """
        self._started = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(connect_timeout), name="engine-client")
        await self._started

    async def stop(self) -> None:
        for task in (self._task, self._sync):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._sync = None
        self._drop_connection()

    async def _run(self, connect_timeout: float) -> None:  # float-ok: seconds
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError as error:
                started = self._started
                if started is not None and not started.done() and time.monotonic() > deadline:
                    started.set_exception(
                        ConnectionError(f"cannot reach the writer at {self.path}: {error}")
                    )
                    return
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            try:
                self._hello(await read_frame(reader))
                self._begin_sync(writer)
                while True:
                    self._handle(await read_frame(reader))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any broken frame: start again from a snapshot
                log.error("lost the connection to the writer (%r); reconnecting", error)
            finally:
                self._drop_connection()
                writer.close()
            await asyncio.sleep(RECONNECT_SECONDS)

    def _begin_sync(self, writer: asyncio.StreamWriter) -> None:
        self._generation += 1
        self._held = []  # batches wait until market data has (re)loaded
        if self._sync is not None:
            self._sync.cancel()  # an older link's reload: its data is no use now
        self._sync = asyncio.create_task(self._synchronise(self._generation, writer))

    async def _synchronise(self, generation: int, writer: asyncio.StreamWriter) -> None:
        delay = RECONNECT_SECONDS
        while self.on_resync is not None:
            try:
                await self.on_resync()
                break
            except Exception:  # the database is away: keep the old data, hold, retry
                log.exception("cannot load market data; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)  # float-ok: seconds
        if generation != self._generation or writer.is_closing():
            return  # that link is gone; the next one synchronises again
        held, self._held = self._held, None
        for outbox, now in held or ():
            self._publish(outbox, now)
        self._writer = writer
        unsent, self._unsent_revokes = self._unsent_revokes, []
        for key in unsent:  # sessions ended while the link was down
            self.revoke(key)
        if self._started is not None and not self._started.done():
            self._started.set_result(None)

    def _drop_connection(self) -> None:
        self._writer = None
        pending, self._pending = self._pending, {}
        for future, is_command in pending.values():
            if not future.done():
                future.set_exception(_unknown_outcome() if is_command else _not_connected())

    # -- frames from the writer ------------------------------------------------

    def _hello(self, message: dict[str, Any]) -> None:
        if message.get("t") != "hello":
            raise ValueError("the writer did not start with a snapshot")
        self.seq = int(message["seq"])
        self.book_numbers = {str(s): int(n) for s, n in message.get("numbers", {}).items()}
        books = message["books"]
        self.books = {symbol: LevelBook(books.get(symbol, [[], []])) for symbol in self.markets}

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "events":
            self._events(message)
        elif kind == "ok" or kind == "err":
            entry = self._pending.pop(int(message["id"]), None)
            if entry is None or entry[0].done():
                return
            if kind == "ok":
                entry[0].set_result(decode_result(message))
            else:
                entry[0].set_exception(decode_error(message))
        elif kind == "revoke" and self.on_revoke is not None:
            self.on_revoke(str(message["key"]))

    def _events(self, message: dict[str, Any]) -> None:
        seq = int(message["seq"])
        if seq <= self.seq:
            return  # already in the snapshot
        if seq != self.seq + 1:  # a batch was lost: this replica cannot be trusted
            raise ValueError(f"batches {self.seq + 1}..{seq - 1} never arrived")
        self.seq = seq
        books = self.books
        for symbol, levels in message["books"].items():
            if symbol in books:
                books[symbol] = LevelBook(levels)
        for market, side, price, total in message["levels"]:
            book = books.get(market)
            if book is not None:
                book.set(side, price, total)
        outbox = decode_outbox(message)
        outbox.books = number_books(self.book_numbers, outbox.orders, seq)
        now = int(message["now"])
        if self._held is not None:
            if len(self._held) >= HELD_MAX:
                raise ValueError("market data is still loading and too many batches wait")
            self._held.append((outbox, now))
        else:
            self._publish(outbox, now)

    def _publish(self, outbox: Committed, now: int) -> None:
        for listener in self._listeners:
            try:
                listener(outbox, now)
            except Exception:
                log.exception("engine listener failed")

    # -- requests --------------------------------------------------------------

    def _request(self, data_for: Callable[[int], bytes], is_command: bool) -> asyncio.Future[Any]:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise _not_connected()
        self._next_id += 1
        request_id = self._next_id
        data = data_for(request_id)  # first: a frame that cannot be made leaves nothing pending
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, is_command)
        writer.write(data)
        return future

    async def submit(self, command: Returns[R]) -> R:
        """Sent to the writer; ``decode_result`` rebuilds the answer the command names."""
        answer: R = await self._request(lambda rid: encode_command(rid, command), True)
        return answer

    async def read_balances(self, user_id: int) -> Balances:
        request = self._request(lambda rid: frame({"t": "bal", "id": rid, "u": user_id}), False)
        try:
            result = await asyncio.wait_for(request, BALANCES_SECONDS)
        except TimeoutError:
            raise _not_connected() from None
        return decode_balances(result)

    async def settled(self) -> None:
        return None  # a worker only ever holds committed batches

    def balances_now(self, user_id: int) -> Balances | None:
        return None  # a round trip away: the stream asks with read_balances

    def revoke(self, key: str) -> None:
        """Tell every worker (this one too) that a session ended; kept until the link is up."""
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(frame({"t": "revoke", "key": key}))
        elif len(self._unsent_revokes) < 100_000:
            self._unsent_revokes.append(key)

    def depth_key(self, symbol: str) -> object:
        # The book changes in place as batches arrive, also while they are held back
        # from market data (a reload): its number says which batches it holds.
        return self.books[symbol], self.book_numbers.get(symbol, 0)

    def depth(self, symbol: str, limit: int) -> Levels:
        return self.books[symbol].depth(limit)

    def level_total(self, symbol: str, side: str, price: int) -> int:
        book = self.books[symbol]
        return int((book.bids if side == BUY else book.asks).get(price, 0))

    @property
    def sequence(self) -> int:
        return self.seq

    def book_number(self, symbol: str) -> int:
        return self.book_numbers.get(symbol, 0)
