"""What every stream endpoint shares: admission, bounded queues, senders, slow clients.

Both dialects of the live streams (the seed's ``/ws`` in ``api/ws.py`` and
Binance's in ``api/binance/streams.py``) are fed by engine listeners that run
synchronously after each durable commit and must never wait on a client. So
each connection has a bounded queue and its own sender task: a listener formats
an event once and ``put_nowait``s the text into its subscribers' queues. A
queue that is full means the client does not keep up: it is disconnected
(close code 1008, "too slow") instead of slowing anyone else.

``Admission`` counts connections per process and per client address across
both dialects, so a second dialect is not a second allowance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from exchange.api.limits import Bucket
from exchange.metrics import WS_CONNECTIONS, WS_DROPPED, WS_SUBSCRIPTIONS

__all__ = ["QUEUE_SIZE", "Admission", "Connection", "Subscribers", "Topic"]

log = logging.getLogger("exchange.ws")

QUEUE_SIZE = 1_000
TOO_SLOW = 1008
TRY_AGAIN_LATER = 1013
CLOSE_SECONDS = 2.0  # float-ok: seconds to wait for a close handshake
REPORT_MS = 1000  # how often the connection and subscription gauges are set

#: ("trades", "BTC/USDT"), ("kline:5min", "BTC/USDT"), ("orders", "#42"): private topics are
#: keyed by user id so that a listener finds a user's connections without a scan.
Topic = tuple[str, str]


class Connection:
    """One client: its subscriptions, sequence counters and bounded outgoing queue."""

    __slots__ = (
        "address",
        "api",
        "auth_failures",
        "auth_refused_until",
        "closing",
        "combined",
        "host",
        "key",
        "queue",
        "seqs",
        "socket",
        "token",
        "topics",
        "user_id",
    )

    def __init__(
        self, socket: Any, queue_size: int = QUEUE_SIZE, address: str = "", host: str = ""
    ) -> None:
        self.socket = socket
        self.address = address  # the client's address as limits count it (an IPv6 /64)
        self.host = host  # the client's own address (what an API key's allow-list names)
        self.auth_failures: Bucket | None = None  # made at the first failed auth
        self.auth_refused_until = 0  # monotonic ns
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.topics: set[Topic] = set()
        self.seqs: dict[tuple[str, str | None], int] = {}
        self.user_id: int | None = None
        self.token: str | None = None  # the session (or API key) behind user_id, checked again
        self.key: object = None  # the Binance dialect: the API key of a user data stream
        self.combined = False  # the Binance dialect: events wrapped as {"stream", "data"}
        self.api = False  # the Binance dialect's WebSocket API: events wrapped with their id
        self.closing = False

    def push(self, text: str) -> bool:
        """Queue a message; False (and the caller drops the client) when the queue is full."""
        if self.closing:
            return False
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            return False
        return True

    def event(self, channel: str, pair: str | None, head: str, data: str) -> bool:
        """A seed event: numbered per channel and pair on this connection."""
        key = (channel, pair)
        seq = self.seqs.get(key, 0) + 1
        self.seqs[key] = seq
        return self.push(f'{head}"seq":{seq},"data":{data}}}')


class Admission:
    """Connections admitted per process and per client address (counted before any await)."""

    def __init__(self, max_connections: int = 2048, max_per_address: int = 16) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.per_address: dict[str, int] = {}
        self.active = 0

    def enter(self, address: str) -> tuple[str, str] | None:
        """None when admitted (``leave`` later), else the refusal's code and sentence."""
        held = self.per_address.get(address, 0)
        if held >= self.max_per_address:
            return "rate_limited", "too many connections from your address"
        if self.active >= self.max_connections:
            return "overloaded", "too many connections; try again"
        self.per_address[address] = held + 1
        self.active += 1
        return None

    def leave(self, address: str) -> None:
        self.active -= 1
        left = self.per_address.get(address, 1) - 1
        if left > 0:
            self.per_address[address] = left
        else:
            self.per_address.pop(address, None)


class Subscribers:
    """Connections, their topics, the senders and the dropping of slow clients."""

    #: The metrics' ``dialect`` label.
    DIALECT = "seed"

    def __init__(self, admission: Admission | None = None, queue_size: int = QUEUE_SIZE) -> None:
        self.admission = admission or Admission()
        self.queue_size = queue_size
        self.connections: set[Connection] = set()
        self.subscribers: dict[Topic, set[Connection]] = defaultdict(set)
        self.dropped = 0  # slow clients disconnected
        self._closers: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    async def serve(
        self,
        websocket: Any,
        connection: Connection,
        handle: Callable[[Connection, str | None], Awaitable[None]],
        first: Iterable[str | None] = (),
    ) -> None:
        """Register ``connection``, hand each message (``first`` ones, then the socket's) to
        ``handle`` (None: not a text frame) until the client leaves or is dropped."""
        self.connections.add(connection)
        sender = asyncio.create_task(self.send_loop(connection), name="ws-sender")
        try:
            for text in first:
                await handle(connection, text)
            while not connection.closing:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await handle(connection, message.get("text"))
        finally:
            self.forget(connection)
            connection.closing = True
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    def start(self) -> None:
        """The periodic work every dialect has: the gauges of its connections."""
        self.every(REPORT_MS, self._report, "ws-metrics")

    async def _report(self) -> None:
        # Set (not counted up and down): in multiprocess mode each process's value is
        # its own file, and a worker that died no longer counts (``livesum``).
        WS_CONNECTIONS.labels(self.DIALECT).set(len(self.connections))
        WS_SUBSCRIPTIONS.labels(self.DIALECT).set(
            sum(len(connection.topics) for connection in self.connections)
        )

    def every(self, milliseconds: int, work: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``work`` every so often until ``close_all`` (checks of sessions and keys)."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(milliseconds / 1000)
                await work()

        self._loops.append(asyncio.create_task(loop(), name=name))

    def publish(self, listeners: set[Connection], text: str) -> None:
        """The same text to every listener; one that cannot take it is dropped."""
        for connection in list(listeners):
            if not connection.push(text):
                self.drop(connection)

    def reply(self, connection: Connection, text: str) -> None:
        if not connection.push(text):
            self.drop(connection)

    def subscribe(self, connection: Connection, topic: Topic) -> None:
        connection.topics.add(topic)
        self.subscribers[topic].add(connection)

    def unsubscribe(self, connection: Connection, topic: Topic) -> None:
        connection.topics.discard(topic)
        listeners = self.subscribers.get(topic)
        if listeners is not None:
            listeners.discard(connection)
            if not listeners:
                del self.subscribers[topic]

    async def send_loop(self, connection: Connection) -> None:
        socket = connection.socket
        queue = connection.queue
        try:
            while True:
                text = await queue.get()
                await socket.send_text(text)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.debug("websocket send failed: %r", error)
            self.drop(connection)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def drop(self, connection: Connection) -> None:
        """Disconnect a client that does not keep up (scheduled: the caller never waits)."""
        if connection.closing:
            return
        connection.closing = True
        self.dropped += 1
        WS_DROPPED.labels(self.DIALECT).inc()
        self.forget(connection)
        self.spawn(self.close(connection, TOO_SLOW, "too slow"))

    async def close(self, connection: Connection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(connection.socket.close(code=code, reason=reason), CLOSE_SECONDS)

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        for topic in connection.topics:
            listeners = self.subscribers.get(topic)
            if listeners is not None:
                listeners.discard(connection)
                if not listeners:
                    del self.subscribers[topic]
        connection.topics.clear()

    async def close_all(self) -> None:
        """Stop the periodic checks and close every client (server shutdown)."""
        loops, self._loops = self._loops, []
        for task in loops:
            task.cancel()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        connections = list(self.connections)
        for connection in connections:
            connection.closing = True
            self.forget(connection)
        await asyncio.gather(*(self.close(c, 1001, "server shutting down") for c in connections))
        for task in list(self._closers):
            with contextlib.suppress(Exception):
                await task
        await self._report()  # nothing open any more
