"""The ``/ws`` live stream of SPEC §8: subscriptions, sequence numbers, slow clients.

The engine calls ``Stream.on_commit`` synchronously after each durable commit
(after market data has folded the batch in). It must never wait on a client,
so each connection has a bounded queue and its own sender task: the listener
only formats each event once and ``put_nowait``s it into the queues of the
subscribers. A queue that is full means the client does not keep up: it is
disconnected (close code 1008, "too slow") instead of slowing anyone else; it
reconnects and reloads a snapshot over REST, as the web UI does.

Messages (JSON text):

* client: ``{"op": "subscribe" | "unsubscribe", "channel", "pair", ["interval"]}``,
  ``{"op": "auth", "session": token}``, ``{"op": "ping"}``;
* server: ``{"op": "subscribed" | "unsubscribed", "channel", "pair"[, "interval"]}``,
  ``{"op": "authenticated"}``, ``{"op": "pong"}``,
  ``{"op": "error", "description": "code: sentence"}`` and events
  ``{"channel", "pair", ["interval",] "seq", "data"}``.

``seq`` counts 1, 2, 3... per channel and pair on one connection (all kline
intervals of a pair share one counter, matching the web client's gap check).
Private channels (``orders``, ``balances``) have ``pair`` null and need a
session: the ``session`` cookie at the upgrade (same-origin only, so another
site cannot read a user's stream) or an ``auth`` message first.

Limits (settings ``EXCHANGE_WS_*``): connections per process and per client
address (beyond them a connection gets a ``rate_limited`` or ``overloaded``
error and is closed with 1013, "try again later"); the message size (the
server's frame limit is the same, so a large frame is never read whole); failed
``auth`` messages per connection (beyond the budget they are refused without a
session lookup, and unknown tokens are remembered briefly by ``Sessions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from typing import Any

import orjson
from starlette.websockets import WebSocket

from exchange.api.front_door import same_origin
from exchange.api.limits import Bucket, RateLimiter, address_key, parse_rate
from exchange.api.views import balances_view, order_info
from exchange.domain.candles import ALIASES, INTERVALS
from exchange.domain.errors import ExchangeError
from exchange.domain.events import Committed
from exchange.domain.markets import normalize_pair
from exchange.domain.orders import Trade
from exchange.engine.port import Balances, EnginePort
from exchange.services.marketdata import MarketData
from exchange.services.sessions import Sessions

__all__ = ["Connection", "Stream"]

log = logging.getLogger("exchange.ws")

PUBLIC = frozenset(("trades", "depth", "ticker", "kline"))
PRIVATE = frozenset(("orders", "balances"))
QUEUE_SIZE = 1_000
MAX_SUBSCRIPTIONS = 64
MAX_MESSAGE = 4_096
TRY_AGAIN_LATER = 1013
#: How often private streams check that their session still lives (logout, expiry).
REVALIDATE_MS = 2_000
DEPTH_LEVELS = 50
TOO_SLOW = 1008
CLOSE_SECONDS = 2.0  # float-ok: seconds to wait for a close handshake

#: ("trades", "BTC/USDT"), ("kline:5min", "BTC/USDT"), ("orders", "#42"): private topics are
#: keyed by user id so that the fan-out finds a user's connections without a scan.
Topic = tuple[str, str]


def _error(code: str, message: str) -> str:
    return orjson.dumps({"op": "error", "description": f"{code}: {message}"}).decode()


def _private(channel: str, user_id: int) -> Topic:
    return (channel, f"#{user_id}")


def _seq_key(topic: Topic) -> tuple[str, str | None]:
    """Events count per channel and pair: kline intervals share a counter; private pair = None."""
    channel, key = topic
    return channel.split(":", 1)[0], None if key.startswith("#") else key


class Connection:
    """One client: its subscriptions, sequence counters and bounded outgoing queue."""

    __slots__ = (
        "address",
        "auth_failures",
        "auth_refused_until",
        "closing",
        "queue",
        "seqs",
        "socket",
        "token",
        "topics",
        "user_id",
    )

    def __init__(self, socket: Any, queue_size: int = QUEUE_SIZE, address: str = "") -> None:
        self.socket = socket
        self.address = address
        self.auth_failures: Bucket | None = None  # made at the first failed auth
        self.auth_refused_until = 0  # monotonic ns
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.topics: set[Topic] = set()
        self.seqs: dict[tuple[str, str | None], int] = {}
        self.user_id: int | None = None
        self.token: str | None = None  # the session behind user_id, checked again and again
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
        key = (channel, pair)
        seq = self.seqs.get(key, 0) + 1
        self.seqs[key] = seq
        return self.push(f'{head}"seq":{seq},"data":{data}}}')


class Stream:
    def __init__(
        self,
        market: MarketData,
        sessions: Sessions,
        engine: EnginePort,
        *,
        allowed_origins: Iterable[str] = (),
        queue_size: int = QUEUE_SIZE,
        max_message: int = MAX_MESSAGE,
        max_connections: int = 2048,
        max_per_address: int = 16,
        auth_failures: str = "5/60",
        limiter: RateLimiter | None = None,
    ) -> None:
        self.market = market
        self.sessions = sessions
        self.engine = engine
        self.allowed_origins = frozenset(allowed_origins)
        self.queue_size = queue_size
        self.max_message = max_message
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.auth_failures = parse_rate(auth_failures)
        #: Failed auths per client address, shared with the HTTP API's dispatcher.
        self.limiter = limiter
        self.per_address: dict[str, int] = {}
        self.active = 0  # connections admitted (counted before any await)
        self.connections: set[Connection] = set()
        self.subscribers: dict[Topic, set[Connection]] = defaultdict(set)
        self.dropped = 0
        self._closers: set[asyncio.Task[None]] = set()
        self._revalidator: asyncio.Task[None] | None = None

    # -- fan-out (the engine listener: synchronous, never blocks) -------------

    def on_commit(self, outbox: Committed, now: int) -> None:
        if not self.connections:
            return
        subscribers = self.subscribers
        by_market: dict[str, list[Trade]] = defaultdict(list)
        for trade in outbox.trades:
            by_market[trade.market].append(trade)
        changed = {order.market for order in outbox.orders} | set(by_market)
        market = self.market
        for symbol, trades in by_market.items():
            if symbol not in market.markets:
                continue
            listeners = subscribers.get(("trades", symbol))
            if listeners:
                for trade in trades:
                    self._publish(listeners, "trades", symbol, market.deal_row(trade))
            for interval in INTERVALS:
                listeners = subscribers.get((f"kline:{interval}", symbol))
                if listeners:
                    for row in market.candle_rows(symbol, interval, trades):
                        self._publish(listeners, "kline", symbol, row, interval)
            listeners = subscribers.get(("ticker", symbol))
            if listeners:
                self._publish(listeners, "ticker", symbol, market.ticker_item(symbol, now))
        for symbol in changed:
            listeners = subscribers.get(("depth", symbol))
            if listeners and symbol in market.markets:
                self._publish(listeners, "depth", symbol, market.depth(symbol, DEPTH_LEVELS, now))
        for order in outbox.orders:
            listeners = subscribers.get(_private("orders", order.user_id))
            if listeners and order.market in market.markets:
                info = order_info(order, market.markets[order.market])
                self._publish(listeners, "orders", None, info)
        for user in {user for user, _asset in outbox.accounts}:
            listeners = subscribers.get(_private("balances", user))
            if listeners:
                balances = self.engine.balances_now(user)
                if balances is None:  # a worker: the writer holds them, one round trip away
                    self._spawn(self._publish_balances(user))
                else:
                    self._publish(listeners, "balances", None, self._balances(balances))

    def _balances(self, balances: Balances) -> dict[str, dict[str, str]]:
        return balances_view(balances, self.engine.assets)

    async def _publish_balances(self, user: int) -> None:
        try:
            balances = await self.engine.read_balances(user)
        except ExchangeError:
            return  # the writer is unreachable; the next batch sends them again
        listeners = self.subscribers.get(_private("balances", user))
        if listeners:
            self._publish(listeners, "balances", None, self._balances(balances))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _publish(
        self,
        listeners: set[Connection],
        channel: str,
        pair: str | None,
        data: Any,
        interval: str | None = None,
    ) -> None:
        head = f'{{"channel":"{channel}","pair":{orjson.dumps(pair).decode()},'
        if interval is not None:
            head += f'"interval":"{interval}",'
        text = orjson.dumps(data).decode()
        for connection in list(listeners):
            if not connection.event(channel, pair, head, text):
                self.drop(connection)

    def drop(self, connection: Connection) -> None:
        """Disconnect a client that does not keep up (scheduled: the caller never waits)."""
        if connection.closing:
            return
        connection.closing = True
        self.dropped += 1
        self._forget(connection)
        self._spawn(self._close(connection, TOO_SLOW, "too slow"))

    async def _close(self, connection: Connection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(connection.socket.close(code=code, reason=reason), CLOSE_SECONDS)

    def _forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        for topic in connection.topics:
            listeners = self.subscribers.get(topic)
            if listeners is not None:
                listeners.discard(connection)
                if not listeners:
                    del self.subscribers[topic]
        connection.topics.clear()

    # -- the endpoint ------------------------------------------------------------

    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        client = websocket.client
        address = address_key(client.host) if client is not None else "unknown"
        held = self.per_address.get(address, 0)
        if held >= self.max_per_address or self.active >= self.max_connections:
            code, why = (
                ("rate_limited", "too many connections from your address")
                if held >= self.max_per_address
                else ("overloaded", "too many connections; try again")
            )
            with contextlib.suppress(Exception):
                await websocket.send_text(_error(code, why))
            await self._close(Connection(websocket), TRY_AGAIN_LATER, why)
            return
        self.per_address[address] = held + 1
        self.active += 1
        connection = Connection(websocket, self.queue_size, address)
        try:
            await self._serve(websocket, connection)
        finally:
            self.active -= 1
            left = self.per_address.get(address, 1) - 1
            if left > 0:
                self.per_address[address] = left
            else:
                self.per_address.pop(address, None)

    async def _serve(self, websocket: WebSocket, connection: Connection) -> None:
        token = websocket.cookies.get("session")
        if token and self._same_origin(websocket):
            connection.user_id = await self._resolve(token)
            connection.token = token if connection.user_id is not None else None
        self.connections.add(connection)
        sender = asyncio.create_task(self._send_loop(connection), name="ws-sender")
        try:
            while not connection.closing:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    self._reply(connection, _error("invalid_argument", "send JSON text frames"))
                    continue
                await self._handle(connection, text)
        except Exception as error:  # a broken socket ends this connection only
            log.debug("websocket ended: %r", error)
        finally:
            self._forget(connection)
            connection.closing = True
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _send_loop(self, connection: Connection) -> None:
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

    def _same_origin(self, websocket: WebSocket) -> bool:
        headers = websocket.headers
        return same_origin(headers.get("origin"), headers.get("host", ""), self.allowed_origins)

    async def _resolve(self, token: object) -> int | None:
        if not isinstance(token, str) or not token:
            return None
        try:
            return await self.sessions.resolve(token)
        except Exception as error:
            log.warning("cannot resolve a websocket session (%s)", error)
            return None

    def _reply(self, connection: Connection, text: str) -> None:
        if not connection.push(text):
            self.drop(connection)

    async def _handle(self, connection: Connection, text: str) -> None:
        try:
            if len(text) > self.max_message:
                raise ExchangeError(
                    "invalid_argument", f"messages are at most {self.max_message} bytes"
                )
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise ExchangeError("invalid_argument", "the message is not valid JSON") from None
            if not isinstance(message, dict):
                raise ExchangeError("invalid_argument", "the message must be a JSON object")
            op = message.get("op")
            if op in ("subscribe", "unsubscribe"):
                self._subscription(connection, message, op == "subscribe")
            elif op == "auth":
                now = time.monotonic_ns()
                if now < connection.auth_refused_until:  # no lookup: a guesser waits
                    wait = -(-(connection.auth_refused_until - now) // 1_000_000_000)
                    raise ExchangeError(
                        "rate_limited", f"too many failed auth messages; try again in {wait} s"
                    )
                if self.limiter is not None:  # and so does an address with many sockets
                    self.limiter.refuse_failed_auth(connection.address)
                user_id = await self._resolve(message.get("session"))
                if user_id is None:
                    self._auth_failed(connection, now)
                    if self.limiter is not None:
                        self.limiter.failed_auth(connection.address)
                    raise ExchangeError("not_logged_in", "the session is not valid; log in again")
                if connection.user_id not in (None, user_id):
                    for topic in [t for t in connection.topics if t[1].startswith("#")]:
                        self._unsubscribe(connection, topic)
                connection.user_id = user_id
                connection.token = str(message.get("session"))
                self._reply(connection, '{"op":"authenticated"}')
            elif op == "ping":
                self._reply(connection, '{"op":"pong"}')
            else:
                raise ExchangeError(
                    "invalid_argument", "op must be subscribe, unsubscribe, auth or ping"
                )
        except ExchangeError as refusal:
            self._reply(connection, _error(refusal.code, refusal.message))

    def _auth_failed(self, connection: Connection, now: int) -> None:
        bucket = connection.auth_failures
        if bucket is None:
            capacity, seconds = self.auth_failures
            bucket = connection.auth_failures = Bucket(capacity, seconds, now)
        wait = bucket.take(now)
        if wait:
            connection.auth_refused_until = now + wait * 1_000_000_000

    def _subscription(self, connection: Connection, message: dict[str, Any], on: bool) -> None:
        channel, pair, interval = self._topic_of(message)
        topic: Topic
        if channel in PRIVATE:
            if connection.user_id is None:
                if not on:
                    raise ExchangeError("not_logged_in", f"not subscribed to {channel}")
                raise ExchangeError("not_logged_in", f"log in to subscribe to {channel}")
            topic = _private(channel, connection.user_id)
        else:
            assert pair is not None
            topic = (f"kline:{interval}" if interval else channel, pair)
        if on:
            if topic not in connection.topics and len(connection.topics) >= MAX_SUBSCRIPTIONS:
                raise ExchangeError(
                    "invalid_argument", f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
                )
            connection.topics.add(topic)
            self.subscribers[topic].add(connection)
        else:
            self._unsubscribe(connection, topic)
        ack: dict[str, Any] = {
            "op": "subscribed" if on else "unsubscribed",
            "channel": channel,
            "pair": pair,
        }
        if interval:
            ack["interval"] = interval
        self._reply(connection, orjson.dumps(ack).decode())

    def _unsubscribe(self, connection: Connection, topic: Topic) -> None:
        connection.topics.discard(topic)
        listeners = self.subscribers.get(topic)
        if listeners is not None:
            listeners.discard(connection)
            if not listeners:
                del self.subscribers[topic]
        key = _seq_key(topic)
        if not any(_seq_key(other) == key for other in connection.topics):
            connection.seqs.pop(key, None)

    def _topic_of(self, message: dict[str, Any]) -> tuple[str, str | None, str | None]:
        channel = message.get("channel")
        if not isinstance(channel, str) or not channel:
            raise ExchangeError("missing_argument", "'channel' is required")
        interval: str | None = None
        if channel.startswith("kline:"):
            channel, interval = "kline", channel[6:]
        if channel in PRIVATE:
            return channel, None, None
        if channel not in PUBLIC:
            names = ", ".join(sorted(PUBLIC | PRIVATE))
            raise ExchangeError("invalid_argument", f"channel must be one of {names}")
        pair = message.get("pair")
        if not isinstance(pair, str) or not pair:
            raise ExchangeError("missing_argument", f"'pair' is required for {channel}")
        symbol = normalize_pair(pair[:32])
        if symbol not in self.market.markets:
            raise ExchangeError("unknown_pair", f"{pair[:32]!r} is not a listed pair")
        if channel == "kline":
            wanted = message.get("interval", interval)
            if wanted in (None, ""):
                wanted = "1min"
            if not isinstance(wanted, str) or wanted.strip().lower() not in ALIASES:
                raise ExchangeError(
                    "invalid_argument", "interval must be one of 1min, 5min, 30min, 4h, 1d"
                )
            interval = ALIASES[wanted.strip().lower()]
        return channel, symbol, interval

    def start(self) -> None:
        self._revalidator = asyncio.create_task(self._revalidate_loop(), name="ws-sessions")

    async def _revalidate_loop(self) -> None:
        """End private streams whose session ended (logout, expiry) within a few seconds."""
        while True:
            await asyncio.sleep(REVALIDATE_MS / 1000)
            for connection in [c for c in self.connections if c.user_id is not None]:
                try:
                    user_id = await self.sessions.resolve(connection.token)
                except Exception as error:  # the database is down: decide next time
                    log.debug("cannot check a websocket session (%s)", error)
                    continue
                if user_id == connection.user_id or connection.closing:
                    continue
                for topic in [t for t in connection.topics if t[1].startswith("#")]:
                    self._unsubscribe(connection, topic)
                connection.user_id = None
                connection.token = None
                self._reply(connection, _error("not_logged_in", "the session ended; log in again"))

    async def stop(self) -> None:
        """Close every client (server shutdown)."""
        if self._revalidator is not None:
            self._revalidator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._revalidator
        connections = list(self.connections)
        for connection in connections:
            connection.closing = True
            self._forget(connection)
        await asyncio.gather(*(self._close(c, 1001, "server shutting down") for c in connections))
        for task in list(self._closers):
            with contextlib.suppress(Exception):
                await task
