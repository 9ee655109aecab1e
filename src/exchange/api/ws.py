"""The ``/ws`` live stream of SPEC §8: subscriptions, sequence numbers, slow clients.

Each committed batch reaches the subscribers through the fan-out
(``api/fanout.py``: bounded queues, slow clients dropped with 1008, "too slow");
this module is the endpoint that speaks the protocol.

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

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from starlette.websockets import WebSocket

from exchange.api.fanout import FanOut, private_topic, seq_key
from exchange.api.front_door import same_origin
from exchange.api.limits import Bucket, RateLimiter, address_key, parse_rate
from exchange.api.subscribers import (
    QUEUE_SIZE,
    TRY_AGAIN_LATER,
    Admission,
    Connection,
    Topic,
)
from exchange.domain.candles import ALIASES
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import normalize_pair
from exchange.engine.port import EnginePort
from exchange.services.marketdata import MarketData
from exchange.services.sessions import Sessions

__all__ = ["Stream"]

log = logging.getLogger("exchange.ws")

PUBLIC = frozenset(("trades", "depth", "ticker", "kline"))
PRIVATE = frozenset(("orders", "balances"))
MAX_SUBSCRIPTIONS = 64
MAX_MESSAGE = 4_096
#: How often private streams check that their session still lives (logout, expiry).
REVALIDATE_MS = 2_000


def _error(code: str, message: str) -> str:
    return orjson.dumps({"op": "error", "description": f"{code}: {message}"}).decode()


def _binance_form(text: str) -> bool:
    """A first message like Binance's (``{"method": "SUBSCRIBE", ...}``), not the seed's."""
    if '"method"' not in text:
        return False
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and "method" in message and "op" not in message


class Stream(FanOut):
    """The ``/ws`` endpoint: the protocol, its limits and private streams' sessions."""

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
        super().__init__(market, engine, Admission(max_connections, max_per_address))
        self.queue_size = queue_size
        self.sessions = sessions
        self.allowed_origins = frozenset(allowed_origins)
        self.max_message = max_message
        self.auth_failures = parse_rate(auth_failures)
        #: Failed auths per client address, shared with the HTTP API's dispatcher.
        self.limiter = limiter
        #: The other dialect on the same path: a first message in Binance's form
        #: (``{"method": ...}``) hands the connection over to it.
        self.handover: Callable[[WebSocket, Connection, str], Awaitable[None]] | None = None

    # -- the endpoint ------------------------------------------------------------

    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        client = websocket.client
        address = address_key(client.host) if client is not None else "unknown"
        admission = self.admission
        refused = admission.enter(address)
        if refused is not None:
            code, why = refused
            with contextlib.suppress(Exception):
                await websocket.send_text(_error(code, why))
            await self.close(Connection(websocket), TRY_AGAIN_LATER, why)
            return
        connection = Connection(websocket, self.queue_size, address)
        try:
            await self._serve(websocket, connection)
        except Exception as error:  # a broken socket ends this connection only
            log.debug("websocket ended: %r", error)
        finally:
            admission.leave(address)

    async def _serve(self, websocket: WebSocket, connection: Connection) -> None:
        message = await websocket.receive()  # the first message says which dialect
        if message["type"] == "websocket.disconnect":
            return
        first = message.get("text")
        if first is not None and self.handover is not None and _binance_form(first):
            await self.handover(websocket, connection, first)
            return
        token = websocket.cookies.get("session")
        if token and self._same_origin(websocket):
            connection.user_id = await self._resolve(token)
            connection.token = token if connection.user_id is not None else None
        await self.serve(websocket, connection, self._handle_frame, [first])

    async def _handle_frame(self, connection: Connection, text: str | None) -> None:
        if text is None:
            self.reply(connection, _error("invalid_argument", "send JSON text frames"))
        else:
            await self._handle(connection, text)

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
                self.reply(connection, '{"op":"authenticated"}')
            elif op == "ping":
                self.reply(connection, '{"op":"pong"}')
            else:
                raise ExchangeError(
                    "invalid_argument", "op must be subscribe, unsubscribe, auth or ping"
                )
        except ExchangeError as refusal:
            self.reply(connection, _error(refusal.code, refusal.message))

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
            topic = private_topic(channel, connection.user_id)
        else:
            assert pair is not None
            topic = (f"kline:{interval}" if interval else channel, pair)
        if on:
            if topic not in connection.topics and len(connection.topics) >= MAX_SUBSCRIPTIONS:
                raise ExchangeError(
                    "invalid_argument", f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
                )
            self.subscribe(connection, topic)
        else:
            self._unsubscribe(connection, topic)
        ack: dict[str, Any] = {
            "op": "subscribed" if on else "unsubscribed",
            "channel": channel,
            "pair": pair,
        }
        if interval:
            ack["interval"] = interval
        self.reply(connection, orjson.dumps(ack).decode())

    def _unsubscribe(self, connection: Connection, topic: Topic) -> None:
        self.unsubscribe(connection, topic)
        key = seq_key(topic)
        if not any(seq_key(other) == key for other in connection.topics):
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
        super().start()
        self.every(REVALIDATE_MS, self._revalidate, "ws-sessions")

    async def _revalidate(self) -> None:
        """End private streams whose session ended (logout, expiry) within a few seconds."""
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
            self.reply(connection, _error("not_logged_in", "the session ended; log in again"))

    async def stop(self) -> None:
        """Close every client (server shutdown)."""
        await self.close_all()
