"""The writer's end of NATS: commands in; answers and committed batches out.

A command request is queued on the engine like any local ``submit`` (so commands
of every gateway share one group commit) and answered from the future's
callback, after the commit. Each committed batch is published to the JetStream
stream by the engine listener *before* the batch's answers (future callbacks
run on a later loop turn), and every outgoing message leaves through one
ordered queue on one connection: NATS keeps a connection's messages in order,
so the batch is stored before any of its answers is sent. An answer names the
batch a gateway must have applied before passing it on (``seq``).

The writer never waits for a gateway: a slow one falls behind in the stream
(its own consumer), never in the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from functools import partial
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from exchange.domain.book import OrderBook
from exchange.domain.errors import ExchangeError, unavailable
from exchange.domain.events import Committed
from exchange.engine.bus import HEARTBEAT_SECONDS, NatsAuth, Subjects, connect
from exchange.engine.engine import Engine
from exchange.engine.port import Levels
from exchange.engine.wire import (
    decode_command,
    encode_error,
    encode_events,
    encode_result,
    read,
)

__all__ = ["WriterBus", "book_levels"]

log = logging.getLogger("exchange.bus")

#: How long JetStream keeps the writer's batches, and how much of them (older go first).
EVENTS_MAX_AGE = 3600  # seconds
EVENTS_MAX_BYTES = 1024**3
#: Within this window a batch published twice (same message id) is stored once.
DUPLICATE_WINDOW = 120  # seconds


def book_levels(book: OrderBook) -> Levels:
    """Every level of a book: (bids best first, asks best first) of (price, total)."""
    return book.depth(max(len(book.bids), len(book.asks)))


class WriterBus:
    def __init__(
        self,
        engine: Engine,
        url: str,
        subjects: Subjects | None = None,
        *,
        max_age: int = EVENTS_MAX_AGE,
        max_bytes: int = EVENTS_MAX_BYTES,
        auth: NatsAuth | None = None,
    ) -> None:
        self.engine = engine
        self.url = url
        self.auth = auth
        self.subjects = subjects or Subjects()
        self.max_age = max_age
        self.max_bytes = max_bytes
        #: This run of the writer: batch numbers start at 1 again at every start.
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self.nc: Client | None = None
        self._known: dict[str, OrderBook] = {}
        self._out: asyncio.Queue[tuple[str, bytes, dict[str, str] | None]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.nc = nc = await connect(self.url, "exchange-writer", self.auth)
        subjects = self.subjects
        config = StreamConfig(
            name=subjects.stream,
            subjects=[subjects.events],
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=float(self.max_age),  # float-ok: nats-py takes seconds as a float
            max_bytes=self.max_bytes,
            duplicate_window=float(DUPLICATE_WINDOW),  # float-ok: seconds, as above
        )
        js = nc.jetstream()
        try:
            await js.add_stream(config)
        except BadRequestError:  # it exists with other limits: take the configured ones
            await js.update_stream(config)
        self._known = dict(self.engine.books)
        self.seq = self.engine.batches
        self.engine.subscribe(self.on_commit)
        self._sender = asyncio.create_task(self._send(), name="bus-sender")
        self._heart = asyncio.create_task(self._beat(), name="bus-heartbeat")
        await nc.subscribe(subjects.commands, queue="writer", cb=self._command)
        await nc.subscribe(subjects.balances, queue="writer", cb=self._balances)
        await nc.subscribe(subjects.snapshot, queue="writer", cb=self._snapshot)

    async def stop(self) -> None:
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await self._drain_queue()
                await nc.drain()
        for task in (self._heart, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sender = self._heart = None

    async def _drain_queue(self) -> None:
        """Give queued answers a moment to leave before the connection closes."""
        for _ in range(100):
            if self._out.empty():
                return
            await asyncio.sleep(0.01)  # float-ok: seconds

    # -- the one ordered way out ------------------------------------------------

    def _post(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self._out.put_nowait((subject, data, headers))

    async def _send(self) -> None:
        while True:
            subject, data, headers = await self._out.get()
            nc = self.nc
            if nc is None:
                continue
            try:
                await nc.publish(subject, data, headers=headers)
            except Exception as error:  # NATS away past the buffer: gateways see the gap
                log.warning("cannot publish on %s (%s)", subject, type(error).__name__)

    async def _beat(self) -> None:
        """The heartbeat: this run's epoch and last batch, while the engine can serve."""
        while True:
            if self.engine.ready:
                beat = orjson.dumps({"epoch": self.epoch, "seq": self.seq})
                self._post(self.subjects.alive, beat)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    # -- requests ---------------------------------------------------------------

    async def _command(self, msg: Msg) -> None:
        reply = msg.reply
        if not reply:
            return
        try:
            message = read(msg.data)
            command = decode_command(message)
            if msg.subject != self.subjects.command(type(command).__name__):
                raise ValueError("the command does not match its subject")
        except (ValueError, TypeError) as error:
            log.error("a gateway sent a malformed command (%s)", error)
            self._post(reply, encode_error(error))
            return
        try:
            future = self.engine.enqueue(command)
        except ExchangeError as refusal:
            self._post(reply, encode_error(refusal))
            return
        future.add_done_callback(partial(self._answer, reply))

    def _answer(self, reply: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            data = encode_error(ExchangeError("overloaded", "try again"))
        elif (error := future.exception()) is not None:
            data = encode_error(error)
        else:
            data = encode_result(future.result(), self.engine.batches, self.epoch)
        self._post(reply, data)

    async def _balances(self, msg: Msg) -> None:
        reply = msg.reply
        if not reply:
            return
        try:
            user_id = read(msg.data)["u"]
            if type(user_id) is not int:
                raise ValueError("u must be an integer")
        except (ValueError, KeyError) as error:
            self._post(reply, encode_error(ExchangeError("invalid_argument", str(error))))
            return
        if not self.engine.ready:
            self._post(reply, encode_error(unavailable()))
            return
        self.engine.when_idle(partial(self._balances_now, reply, user_id))

    def _balances_now(self, reply: str, user_id: int) -> None:
        if self.engine.ready:
            self._post(reply, encode_result(self.engine.balances(user_id)))
        else:
            self._post(reply, encode_error(unavailable()))

    async def _snapshot(self, msg: Msg) -> None:
        # Taken between two batches: it holds every committed batch up to ``seq`` and
        # nothing of a batch that is not committed (or is being rolled back).
        if msg.reply:
            self.engine.when_idle(partial(self._greet, msg.reply))

    def _greet(self, reply: str) -> None:
        if not self.engine.ready:  # the batch failed: answer after the reload, not before
            self.engine.when_idle(partial(self._greet, reply))
            return
        books = self.engine.books
        hello = {
            "t": "hello",
            "epoch": self.epoch,
            "seq": self.seq,
            "numbers": self.engine.book_numbers,
            "books": {symbol: book_levels(book) for symbol, book in books.items()},
        }
        self._post(reply, orjson.dumps(hello))

    # -- what every gateway is told ----------------------------------------------

    def on_commit(self, outbox: Committed, now: int) -> None:
        """The engine listener: one message per committed batch, on the stream."""
        self.seq = self.engine.batches  # the engine's number: one count for every process
        books = self.engine.books
        replaced: dict[str, Levels] = {}
        for symbol, book in books.items():
            if self._known.get(symbol) is not book:  # rebuilt from the database
                replaced[symbol] = book_levels(book)
                self._known[symbol] = book
        touched = {
            (order.market, order.side, order.price)
            for order in outbox.orders
            if order.market not in replaced and order.market in books
        }
        total = self.engine.level_total
        levels = [
            (market, side, price, total(market, side, price)) for market, side, price in touched
        ]
        data = encode_events(self.epoch, self.seq, now, outbox, levels, replaced)
        self._post(self.subjects.events, data, {"Nats-Msg-Id": f"{self.epoch}.{self.seq}"})
