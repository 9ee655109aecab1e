"""Binance's WebSocket streams on the same port: market streams, user data, the WebSocket API.

Paths, as Binance has them (``web-socket-streams.md``, ``user-data-stream.md``):

* ``/ws/<stream>`` (raw events) and ``/stream?streams=<a>/<b>`` (each event
  wrapped as ``{"stream", "data"}``); ``/ws/<anything else>`` (ccxt opens
  ``/ws/0``) starts with no stream. ``/ws`` itself is shared with the seed's
  stream: a first message in Binance's form (``{"method": ...}``) makes it a
  Binance connection. On any of them: ``SUBSCRIBE``, ``UNSUBSCRIBE``,
  ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY``/``GET_PROPERTY`` ``combined``;
  answers ``{"result": ..., "id": N}`` or ``{"error": {"code", "msg"}, "id": N}``.
  Pings are the WebSocket protocol's own (the server answers them).
* ``/ws/<listenKey>``: a user data stream (``POST /api/v3/userDataStream``
  gives the key's listen key).
* ``/ws-api/v3``: the WebSocket API's ``userDataStream.subscribe.signature``
  (what ccxt uses), ``userDataStream.subscribe`` after ``session.logon`` is not
  offered; ``userDataStream.unsubscribe``, ``ping``, ``time``. Its events come
  as ``{"subscriptionId", "event"}``.

Streams: ``<symbol>@trade``, ``@aggTrade``, ``@depth`` (``@100ms``,
``@1000ms``), ``@depth5``/``10``/``20`` (same speeds), ``@kline_<interval>``
(every Binance interval), ``@miniTicker``, ``@ticker``, ``@bookTicker``,
``!miniTicker@arr``, ``!ticker@arr``. Every event is sent after the commit of
the batch that caused it (``on_commit``, an engine listener), never before; a
diff is sent per committed batch, which is at least as often as Binance's
100 ms. Depth diffs carry batch numbers (``U``/``u``) on the same counter as
REST ``depth``'s ``lastUpdateId`` (docs/binance-api.md has the sync rules).

A user data stream lives while its API key does: the key is checked again
every few seconds, and a deleted key ends the stream (``listenKeyExpired``, or
``eventStreamTerminated`` on the WebSocket API).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.websockets import WebSocket

from exchange.api.binance import klines as kline
from exchange.api.binance.errors import BinanceError, from_exchange
from exchange.api.binance.gateway import budgeted, check_time
from exchange.api.binance.stream_events import (
    account_position,
    agg_trade_events,
    book_ticker,
    depth_diff,
    execution_reports,
    kline_event,
    partial_depth,
    ticker_event,
    trade_event,
)
from exchange.api.binance.views import aggregate_trades, symbol_of
from exchange.api.limits import RateLimiter, address_key
from exchange.api.subscribers import (
    QUEUE_SIZE,
    TRY_AGAIN_LATER,
    Admission,
    Connection,
    Subscribers,
    Topic,
)
from exchange.clock import Clock
from exchange.domain.errors import ExchangeError
from exchange.domain.events import Committed
from exchange.domain.markets import Market
from exchange.domain.orders import LIMIT, Trade
from exchange.engine.port import EnginePort
from exchange.services.api_keys import READ, ApiKey, ApiKeys
from exchange.services.marketdata import MarketData

__all__ = ["BinanceStreams"]

log = logging.getLogger("exchange.binance.ws")

MAX_STREAMS = 1024  # per connection, as Binance
MAX_MESSAGE = 4_096
REVALIDATE_MS = 5_000
SPEEDS = ("", "@100ms", "@1000ms")
PARTIAL = (5, 10, 20)
EVERYTHING = "!"  # the topic key of the all-market streams
METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"


class _Invalid(Exception):
    """A control message Binance would refuse: ``{"error": {code, msg}, "id"}``."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _user_topic(user_id: int) -> Topic:
    return ("user", f"#{user_id}")


class BinanceStreams(Subscribers):
    """The Binance dialect's connections and the engine listener that feeds them."""

    DIALECT = "binance"

    def __init__(
        self,
        market: MarketData,
        engine: EnginePort,
        api_keys: ApiKeys,
        clock: Clock,
        *,
        admission: Admission | None = None,
        limiter: RateLimiter | None = None,
        queue_size: int = QUEUE_SIZE,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        super().__init__(admission, queue_size)
        #: Failed signatures per client address, shared with the REST API.
        self.limiter = limiter
        self.market = market
        self.engine = engine
        self.api_keys = api_keys
        self.clock = clock
        self.max_message = max_message
        #: "btcusdt" -> the market (stream names carry the lower-case symbol).
        self.streams_of = {symbol_of(m).lower(): m for m in market.markets.values()}
        self._ids = {m.symbol: symbol_of(m).lower() for m in market.markets.values()}
        self._newest_order = 0  # the newest order id of the batches seen so far

    # -- endpoints -----------------------------------------------------------------

    async def raw(self, websocket: WebSocket) -> None:
        """``/ws/<stream>`` or ``/ws/<listenKey>`` (or ``/ws/<anything>``: no stream yet)."""
        rest: str = websocket.path_params.get("rest", "")
        await self._admit(websocket, rest, combined=False)

    async def combined(self, websocket: WebSocket) -> None:
        """``/stream?streams=a/b``: events wrapped as ``{"stream", "data"}``."""
        query = parse_qs(websocket.scope.get("query_string", b"").decode("latin-1"))
        await self._admit(websocket, (query.get("streams") or [""])[0], combined=True)

    async def ws_api(self, websocket: WebSocket) -> None:
        """``/ws-api/v3``: requests and answers; user data after a signed subscribe."""
        await self._admit(websocket, "", combined=False, api=True)

    async def adopt(self, websocket: WebSocket, connection: Connection, first: str) -> None:
        """A ``/ws`` connection whose first message is Binance's (the seed's endpoint asks)."""
        await self._serve(websocket, connection, [], first)

    async def _admit(
        self, websocket: WebSocket, path: str, *, combined: bool, api: bool = False
    ) -> None:
        await websocket.accept()
        client = websocket.client
        host = client.host if client is not None else "unknown"
        address = address_key(host)
        refused = self.admission.enter(address)
        if refused is not None:
            with contextlib.suppress(Exception):
                await websocket.send_text(_error(None, -1003, refused[1]))
            await self.close(Connection(websocket), TRY_AGAIN_LATER, refused[1])
            return
        connection = Connection(websocket, self.queue_size, address, host)
        connection.combined = combined
        connection.api = api
        try:
            if api:
                await self.serve(websocket, connection, self._api_request)
                return
            names = [name for name in path.split("/") if name]
            if not combined and len(names) == 1 and "@" not in names[0]:
                key = await self.api_keys.by_listen_key(names[0], host)
                if key is not None:
                    connection.key = key
                    connection.token = names[0]
                    connection.user_id = key.user_id
                    self.subscribe(connection, _user_topic(key.user_id))
                names = []  # /ws/0 (ccxt) and such: a connection with no stream yet
            await self._serve(websocket, connection, names, None)
        except Exception as error:  # a broken socket ends this connection only
            log.debug("websocket ended: %r", error)
        finally:
            self.admission.leave(address)

    async def _serve(
        self, websocket: WebSocket, connection: Connection, names: list[str], first: str | None
    ) -> None:
        if names:
            try:
                self._subscribe(connection, names)
            except _Invalid as refusal:  # a bad stream in the path: say so and close
                await websocket.send_text(_error(None, refusal.code, refusal.msg))
                await self.close(connection, 1008, "unknown stream")
                return
        await self.serve(websocket, connection, self._handle, [] if first is None else [first])

    # -- the stream protocol --------------------------------------------------------

    async def _handle(self, connection: Connection, text: str | None) -> None:
        request_id: object = None
        try:
            if text is None:
                raise _Invalid(3, "Invalid JSON: send JSON text frames")
            if len(text) > self.max_message:
                raise _Invalid(2, f"Invalid request: messages are at most {self.max_message} bytes")
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise _Invalid(3, "Invalid JSON: expected value at line 1 column 1") from None
            if not isinstance(message, dict):
                raise _Invalid(2, "Invalid request: expected a JSON object")
            request_id = message.get("id")
            if not _valid_id(request_id):
                request_id = None
                raise _Invalid(2, "Invalid request: request ID must be an unsigned integer")
            method = message.get("method")
            if method is None:
                raise _Invalid(2, "Invalid request: missing field `method`")
            params = message.get("params", [])
            if not isinstance(params, list):
                raise _Invalid(2, "Invalid request: params must be a list")
            result: Any = None
            if method == "SUBSCRIBE":
                self._subscribe(connection, params)
            elif method == "UNSUBSCRIBE":
                for name in params:
                    with contextlib.suppress(_Invalid):  # not a stream: not subscribed
                        if isinstance(name, str):
                            self.unsubscribe(connection, self._topic(name))
            elif method == "LIST_SUBSCRIPTIONS":
                result = sorted(t[0] for t in connection.topics if t[0] != "user")
            elif method in ("SET_PROPERTY", "GET_PROPERTY"):
                result = self._property(connection, method, params)
            else:
                raise _Invalid(
                    2,
                    f"Invalid request: unknown variant {str(method)[:32]!r}, expected one of "
                    f"{METHODS}",
                )
            self.reply(connection, orjson.dumps({"result": result, "id": request_id}).decode())
        except _Invalid as refusal:
            self.reply(connection, _error(request_id, refusal.code, refusal.msg))

    def _property(self, connection: Connection, method: str, params: list[Any]) -> object:
        if not params or not isinstance(params[0], str):
            raise _Invalid(2, "Invalid request: property name must be a string")
        if params[0] != "combined":
            raise _Invalid(0, "Unknown property")
        if method == "GET_PROPERTY":
            return connection.combined
        if len(params) != 2 or not isinstance(params[1], bool):
            raise _Invalid(1, "Invalid value type: expected Boolean")
        connection.combined = params[1]
        return None

    def _subscribe(self, connection: Connection, names: Iterable[object]) -> None:
        topics = []
        for name in names:
            if not isinstance(name, str):
                raise _Invalid(2, "Invalid request: stream names must be strings")
            topics.append(self._topic(name))
        fresh = [topic for topic in topics if topic not in connection.topics]
        if len(connection.topics) + len(fresh) > MAX_STREAMS:
            raise _Invalid(2, f"Invalid request: at most {MAX_STREAMS} streams per connection")
        for topic in fresh:
            self.subscribe(connection, topic)

    def _topic(self, name: str) -> Topic:
        """``btcusdt@depth5@100ms`` -> its topic; an unknown stream is refused."""
        if name in ("!miniTicker@arr", "!ticker@arr"):
            return (name, EVERYTHING)
        symbol, _, kind = name[:64].partition("@")
        found = self.streams_of.get(symbol)
        if found is None or not _known(kind):
            raise _Invalid(2, f"Invalid request: unknown stream {name[:64]!r}")
        return (name, found.symbol)

    # -- the WebSocket API (user data) ------------------------------------------------

    async def _api_request(self, connection: Connection, text: str | None) -> None:
        request_id: object = None
        try:
            if text is None:
                raise BinanceError(-1000, "Send JSON text frames.")
            if len(text) > self.max_message:
                raise BinanceError(-1000, f"Messages are at most {self.max_message} bytes.")
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise BinanceError(-1000, "The request is not valid JSON.") from None
            if not isinstance(message, dict):
                raise BinanceError(-1000, "The request must be a JSON object.")
            request_id = message.get("id")
            method = message.get("method")
            params = message.get("params") or {}
            if not isinstance(params, dict):
                raise BinanceError(-1000, "params must be an object.")
            result: object
            if method == "userDataStream.subscribe.signature":
                result = await self._subscribe_signed(connection, params)
            elif method == "userDataStream.unsubscribe":
                self._end_user_stream(connection)
                result = {}
            elif method == "ping":
                result = {}
            elif method == "time":
                result = {"serverTime": self.clock()}
            else:
                raise BinanceError(-1020, "This operation is not supported.")
            answer = {"id": request_id, "status": 200, "result": result, "rateLimits": []}
        except ExchangeError as refusal:
            failed = from_exchange(refusal)
            answer = _api_error(request_id, failed)
        except BinanceError as failed:
            answer = _api_error(request_id, failed)
        self.reply(connection, orjson.dumps(answer).decode())

    async def _subscribe_signed(self, connection: Connection, params: dict[str, Any]) -> object:
        values = {str(name): _text(value) for name, value in params.items()}
        signature = values.pop("signature", "")
        key = values.get("apiKey", "")
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", 401)
        if not signature:
            raise BinanceError(-1102, "Mandatory parameter 'signature' was not sent.")

        def number(name: str) -> int | None:
            value = values.get(name)
            if value is None:
                return None
            if not value.isascii() or not value.isdigit() or len(value) > 20:
                raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'.")
            return int(value)

        check_time(self.clock(), number("timestamp"), number("recvWindow"))
        payload = "&".join(f"{name}={values[name]}" for name in sorted(values)).encode()
        found = await budgeted(  # the same budget of failed signatures as the REST API's
            self.limiter,
            connection.address,
            lambda: self.api_keys.authenticate(key, payload, signature, connection.host, READ),
        )
        self._end_user_stream(connection)
        connection.key = found
        connection.token = key
        connection.user_id = found.user_id
        self.subscribe(connection, _user_topic(found.user_id))
        return {"subscriptionId": 0}

    def _end_user_stream(self, connection: Connection) -> None:
        if connection.user_id is not None:
            self.unsubscribe(connection, _user_topic(connection.user_id))
        connection.user_id = None
        connection.key = None

    # -- the engine listener ----------------------------------------------------------

    def on_commit(self, outbox: Committed, now: int) -> None:
        known = self._newest_order  # orders up to this one were placed in earlier batches
        for order in outbox.orders:
            if order.id > self._newest_order:
                self._newest_order = order.id
        if not self.subscribers:
            return
        subscribers = self.subscribers
        by_market: dict[str, list[Trade]] = defaultdict(list)
        for trade in outbox.trades:
            by_market[trade.market].append(trade)
        markets = self.market.markets
        touched: dict[str, tuple[set[tuple[str, int]], tuple[int, int]]] = {}
        for market, numbers in outbox.books.items():
            touched[market] = (set(), numbers)
        for order in outbox.orders:
            if order.type == LIMIT and order.market in touched:
                touched[order.market][0].add((order.side, order.price))
        changed = [s for s in markets if s in by_market or s in touched]
        for symbol in changed:
            self._market_events(markets[symbol], by_market.get(symbol, []), touched, now)
        if by_market:
            for name, mini in (("!miniTicker@arr", True), ("!ticker@arr", False)):
                listeners = subscribers.get((name, EVERYTHING))
                if listeners:
                    events = [
                        self._ticker(markets[s], now, mini) for s in markets if s in by_market
                    ]
                    self._send(listeners, name, events)
        if any(topic[0] == "user" for topic in subscribers):
            self._user_events(outbox, now, known)

    def _market_events(
        self,
        market: Market,
        trades: list[Trade],
        touched: dict[str, tuple[set[tuple[str, int]], tuple[int, int]]],
        now: int,
    ) -> None:
        subscribers = self.subscribers
        base = self._ids[market.symbol]
        symbol = market.symbol

        def listeners(kind: str) -> set[Connection] | None:
            return subscribers.get((f"{base}@{kind}", symbol))

        if trades:
            found = listeners("trade")
            if found:
                for trade in trades:
                    self._send(found, f"{base}@trade", trade_event(trade, market, now))
            found = listeners("aggTrade")
            if found:
                for event in agg_trade_events(aggregate_trades(trades, market), market, now):
                    self._send(found, f"{base}@aggTrade", event)
            series = self.market.series[symbol]
            for interval in kline.INTERVALS.values():
                found = listeners(f"kline_{interval.name}")
                if found:
                    starts = sorted({interval.floor(trade.time) for trade in trades})
                    for start in starts:
                        event = kline_event(interval, market, series[interval.base], start, now)
                        if event is not None:
                            self._send(found, f"{base}@kline_{interval.name}", event)
            for kind, mini in (("miniTicker", True), ("ticker", False)):
                found = listeners(kind)
                if found:
                    self._send(found, f"{base}@{kind}", self._ticker(market, now, mini))
        if symbol in touched:
            prices, (first, last) = touched[symbol]
            diff: dict[str, Any] | None = None
            for speed in SPEEDS:
                found = listeners(f"depth{speed}")
                if found:
                    if diff is None:
                        diff = depth_diff(market, self.engine, prices, first, last, now)
                    self._send(found, f"{base}@depth{speed}", diff)
            for levels in PARTIAL:
                partial: dict[str, Any] | None = None
                for speed in SPEEDS:
                    found = listeners(f"depth{levels}{speed}")
                    if found:
                        if partial is None:
                            partial = partial_depth(self.market, market, levels, now)
                        self._send(found, f"{base}@depth{levels}{speed}", partial)
            found = listeners("bookTicker")
            if found:
                self._send(found, f"{base}@bookTicker", book_ticker(self.engine, market, last))

    def _ticker(self, market: Market, now: int, mini: bool) -> dict[str, Any]:
        return ticker_event(self.market, self.engine, market, now, mini)

    def _send(self, listeners: set[Connection], name: str, payload: object) -> None:
        """One event to each listener: raw, or wrapped (made once) for a combined stream
        (``{"stream", "data"}``) or the WebSocket API (``{"subscriptionId", "event"}``)."""
        raw = orjson.dumps(payload).decode()
        wrapped: str | None = None
        for connection in list(listeners):
            text = raw
            if connection.api:
                text = f'{{"subscriptionId":0,"event":{raw}}}'
            elif connection.combined:
                if wrapped is None:
                    wrapped = f'{{"stream":{orjson.dumps(name).decode()},"data":{raw}}}'
                text = wrapped
            if not connection.push(text):
                self.drop(connection)

    def _user_events(self, outbox: Committed, now: int, known: int) -> None:
        subscribers = self.subscribers
        markets = self.market.markets
        fills: dict[int, list[Trade]] = defaultdict(list)
        for trade in outbox.trades:
            fills[trade.maker_order_id].append(trade)
            fills[trade.taker_order_id].append(trade)
        for order in outbox.orders:
            listeners = subscribers.get(_user_topic(order.user_id))
            if listeners and order.market in markets:
                new = order.id > known and order.created == now  # placed in this batch
                reports = execution_reports(
                    order, fills.get(order.id, []), markets[order.market], now, new
                )
                for report in reports:
                    self._send(listeners, "", report)  # user data: never combined
        changed: dict[int, set[str]] = defaultdict(set)
        for user, asset in outbox.accounts:
            if _user_topic(user) in subscribers:
                changed[user].add(asset)
        for user, assets in changed.items():
            balances = self.engine.balances_now(user)
            if balances is None:  # a worker: the writer holds them, one round trip away
                self.spawn(self._positions_later(user, assets, now))
            else:
                listeners = subscribers.get(_user_topic(user))
                if listeners:  # (its last listener may have been dropped just now)
                    event = account_position(balances, self.engine.assets, assets, now)
                    self._send(listeners, "", event)

    async def _positions_later(self, user: int, assets: set[str], now: int) -> None:
        try:
            balances = await self.engine.read_balances(user)
        except ExchangeError:
            return  # the writer is unreachable; the next batch sends them again
        listeners = self.subscribers.get(_user_topic(user))
        if listeners:
            event = account_position(balances, self.engine.assets, assets, now)
            self._send(listeners, "", event)

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        self.every(REVALIDATE_MS, self._revalidate, "binance-keys")

    async def _revalidate(self) -> None:
        """End user data streams whose API key was deleted (or may no longer be used)."""
        for connection in [c for c in self.connections if c.key is not None]:
            key = connection.key
            assert isinstance(key, ApiKey)
            try:
                await self.api_keys.identify(key.key, connection.host)
                continue
            except ExchangeError:
                pass
            except Exception as error:  # the database is down: decide next time
                log.debug("cannot check an API key of a stream (%s)", error)
                continue
            now = self.clock()
            if connection.api:
                event = {"e": "eventStreamTerminated", "E": now}
                self.reply(
                    connection, f'{{"subscriptionId":0,"event":{orjson.dumps(event).decode()}}}'
                )
            else:
                event = {"e": "listenKeyExpired", "E": now, "listenKey": connection.token}
                self.reply(connection, orjson.dumps(event).decode())
            self._end_user_stream(connection)

    async def stop(self) -> None:
        await self.close_all()


def _known(kind: str) -> bool:
    if kind in ("trade", "aggTrade", "miniTicker", "ticker", "bookTicker"):
        return True
    for speed in SPEEDS:
        if kind == f"depth{speed}" or any(kind == f"depth{n}{speed}" for n in PARTIAL):
            return True
    return kind.startswith("kline_") and kind[6:] in kline.INTERVALS


def _valid_id(value: object) -> bool:
    """Binance's request ids: an unsigned 64-bit integer, up to 36 letters and digits, or null."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 2**64
    return isinstance(value, str) and len(value) <= 36 and value.isascii() and value.isalnum()


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _error(request_id: object, code: int, msg: str) -> str:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": request_id}).decode()


def _api_error(request_id: object, failed: BinanceError) -> dict[str, Any]:
    return {
        "id": request_id,
        "status": failed.status,
        "error": {"code": failed.code, "msg": failed.msg},
        "rateLimits": [],
    }
