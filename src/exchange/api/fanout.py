"""The stream's fan-out: every committed batch, formatted once, to each subscriber.

The engine calls ``FanOut.on_commit`` synchronously after each durable commit
(after market data has folded the batch in). It must never wait on a client, so
each connection has a bounded queue and its own sender task: the listener only
formats each event once and ``put_nowait``s it into the queues of the
subscribers. A queue that is full means the client does not keep up: it is
disconnected (close code 1008, "too slow") instead of slowing anyone else; it
reconnects and reloads a snapshot over REST, as the web UI does.

The endpoint that speaks the protocol (subscriptions, auth, limits) is
``api/ws.py``'s ``Stream``, a ``FanOut``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

import orjson

from exchange.api.limits import Bucket
from exchange.api.views import balances_view, order_info
from exchange.domain.candles import INTERVALS
from exchange.domain.errors import ExchangeError
from exchange.domain.events import Committed
from exchange.domain.orders import Trade
from exchange.engine.port import Balances, EnginePort
from exchange.services.marketdata import MarketData

__all__ = ["Connection", "FanOut", "Topic", "private_topic", "seq_key"]

QUEUE_SIZE = 1_000
DEPTH_LEVELS = 50
TOO_SLOW = 1008
CLOSE_SECONDS = 2.0  # float-ok: seconds to wait for a close handshake

#: ("trades", "BTC/USDT"), ("kline:5min", "BTC/USDT"), ("orders", "#42"): private topics are
#: keyed by user id so that the fan-out finds a user's connections without a scan.
Topic = tuple[str, str]


def private_topic(channel: str, user_id: int) -> Topic:
    return (channel, f"#{user_id}")


def seq_key(topic: Topic) -> tuple[str, str | None]:
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


class FanOut:
    """Connections, their subscriptions, and the engine listener that feeds them."""

    def __init__(self, market: MarketData, engine: EnginePort) -> None:
        self.market = market
        self.engine = engine
        self.connections: set[Connection] = set()
        self.subscribers: dict[Topic, set[Connection]] = defaultdict(set)
        self.dropped = 0  # slow clients disconnected
        self._closers: set[asyncio.Task[None]] = set()

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
            listeners = subscribers.get(private_topic("orders", order.user_id))
            if listeners and order.market in market.markets:
                info = order_info(order, market.markets[order.market])
                self._publish(listeners, "orders", None, info)
        for user in {user for user, _asset in outbox.accounts}:
            listeners = subscribers.get(private_topic("balances", user))
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
        listeners = self.subscribers.get(private_topic("balances", user))
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
