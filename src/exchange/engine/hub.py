"""The writer's end of the worker socket: commands in; answers and committed batches out.

Each worker holds one connection. A command frame is queued on the engine like
any local ``submit`` (so commands of every worker share one group commit) and
answered from the future's callback, after the commit. Each committed batch goes
to every worker as one ``events`` frame, written by the engine listener before
the batch's answers (future callbacks run on a later loop turn), so a worker
always knows a batch before it tells a client the batch's outcome.

The writer never waits for a worker: frames are written to the transport's
buffer, and a worker whose buffer passes ``max_buffer`` is disconnected (it
reconnects and starts again from a ``hello`` snapshot), as ``/ws`` drops a slow
client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from functools import partial
from typing import Any

from exchange.domain.book import OrderBook
from exchange.domain.errors import ExchangeError, unavailable
from exchange.domain.events import Committed
from exchange.engine.engine import Engine
from exchange.engine.port import Levels
from exchange.engine.wire import (
    decode_command,
    encode_error,
    encode_events,
    encode_result,
    frame,
    read_frame,
)

__all__ = ["WriterHub", "book_levels"]

log = logging.getLogger("exchange.hub")

MAX_BUFFER = 64 * 1024 * 1024


def book_levels(book: OrderBook) -> Levels:
    """Every level of a book: (bids best first, asks best first) of (price, total)."""
    return book.depth(max(len(book.bids), len(book.asks)))


class _Peer:
    __slots__ = ("closed", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.closed = False

    def send(self, data: bytes, max_buffer: int) -> bool:
        """Buffer a frame; False when the worker is gone or too far behind (then closed)."""
        if self.closed or self.writer.is_closing():
            self.closed = True
            return False
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > max_buffer:
            log.warning("a worker does not keep up with the event stream: disconnecting it")
            self.close()
            return False
        return True

    def close(self) -> None:
        self.closed = True
        self.writer.close()


class WriterHub:
    def __init__(self, engine: Engine, path: str, *, max_buffer: int = MAX_BUFFER) -> None:
        self.engine = engine
        self.path = path
        self.max_buffer = max_buffer
        self.seq = 0
        self._peers: set[_Peer] = set()
        self._known: dict[str, OrderBook] = {}
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        previous = os.umask(0o177)  # the socket is born 0600: only this user's workers
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        finally:
            os.umask(previous)
        self._known = dict(self.engine.books)
        self.seq = self.engine.batches
        self.engine.subscribe(self.on_commit)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in list(self._peers):
            peer.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    @property
    def workers(self) -> int:
        return len(self._peers)

    # -- one worker's connection ---------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        peer = _Peer(writer)
        # The snapshot and the registration happen in one step, between two batches:
        # the worker misses no batch, sees none twice, and never sees the state of a
        # batch that is not committed (or is being rolled back).
        self.engine.when_idle(partial(self._greet, peer))
        try:
            while not peer.closed:
                message = await read_frame(reader)
                kind = message.get("t")
                if kind == "cmd":
                    self._command(peer, message)
                elif kind == "bal":
                    request_id = int(message["id"])
                    if not self.engine.ready:
                        peer.send(encode_error(request_id, unavailable()), self.max_buffer)
                        continue
                    answer = partial(self._balances, peer, request_id, int(message["u"]))
                    self.engine.when_idle(answer)
                elif kind == "revoke":
                    data = frame({"t": "revoke", "key": str(message["key"])})
                    for other in list(self._peers):
                        other.send(data, self.max_buffer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away; what it queued still commits
        except (ValueError, TypeError, KeyError) as error:
            log.error("a worker sent a malformed frame (%s): disconnecting it", error)
        finally:
            self._peers.discard(peer)
            peer.close()
            if task is not None:
                self._handlers.discard(task)

    def _command(self, peer: _Peer, message: dict[str, Any]) -> None:
        request_id = int(message["id"])
        try:
            future = self.engine.enqueue(decode_command(message))
        except ExchangeError as refusal:
            peer.send(encode_error(request_id, refusal), self.max_buffer)
            return
        except (ValueError, TypeError) as error:
            log.error("a worker sent a malformed command (%s)", error)
            peer.send(encode_error(request_id, error), self.max_buffer)
            return
        future.add_done_callback(partial(self._answer, peer, request_id))

    def _greet(self, peer: _Peer) -> None:
        if not self.engine.ready:  # the batch failed: greet after the reload, not before
            self.engine.when_idle(partial(self._greet, peer))
        elif peer.send(self._hello(), self.max_buffer):
            self._peers.add(peer)

    def _balances(self, peer: _Peer, request_id: int, user_id: int) -> None:
        if self.engine.ready:
            data = encode_result(request_id, self.engine.balances(user_id))
        else:
            data = encode_error(request_id, unavailable())
        peer.send(data, self.max_buffer)

    def _answer(self, peer: _Peer, request_id: int, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            data = encode_error(request_id, ExchangeError("overloaded", "try again"))
        elif (error := future.exception()) is not None:
            data = encode_error(request_id, error)
        else:
            data = encode_result(request_id, future.result())
        peer.send(data, self.max_buffer)

    # -- what every worker is told ---------------------------------------------

    def _hello(self) -> bytes:
        books = self.engine.books
        return frame(
            {
                "t": "hello",
                "seq": self.seq,
                "numbers": self.engine.book_numbers,
                "books": {symbol: book_levels(book) for symbol, book in books.items()},
            }
        )

    def on_commit(self, outbox: Committed, now: int) -> None:
        """The engine listener: one ``events`` frame per committed batch, for all workers."""
        self.seq = self.engine.batches  # the engine's number: one count for every process
        try:
            self._broadcast(outbox, now)
        except Exception:  # a worker that misses a batch must start again, not drift
            log.exception("cannot send batch %d to the workers: disconnecting them", self.seq)
            for peer in list(self._peers):
                peer.close()
            self._peers.clear()

    def _broadcast(self, outbox: Committed, now: int) -> None:
        books = self.engine.books
        replaced: dict[str, Levels] = {}
        for symbol, book in books.items():
            if self._known.get(symbol) is not book:  # rebuilt from the database
                if self._peers:
                    replaced[symbol] = book_levels(book)
                self._known[symbol] = book
        if not self._peers:
            return
        touched = {
            (order.market, order.side, order.price)
            for order in outbox.orders
            if order.market not in replaced and order.market in books
        }
        total = self.engine.level_total
        levels = [
            (market, side, price, total(market, side, price)) for market, side, price in touched
        ]
        data = encode_events(self.seq, now, outbox, levels, replaced)
        for peer in list(self._peers):
            if not peer.send(data, self.max_buffer):
                self._peers.discard(peer)
