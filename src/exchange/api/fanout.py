"""The seed stream's fan-out: every committed batch, formatted once, to each subscriber.

The engine calls ``FanOut.on_commit`` synchronously after each durable commit
(after market data has folded the batch in). The connections, their bounded
queues and the dropping of slow clients are ``api/subscribers.py``'s, shared
with the Binance dialect's streams; a dropped client reconnects and reloads a
snapshot over REST, as the web UI does.

The endpoint that speaks the protocol (subscriptions, auth, limits) is
``api/ws.py``'s ``Stream``, a ``FanOut``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from exchange.api.subscribers import Admission, Connection, Subscribers, Topic
from exchange.api.views import balances_view, order_info
from exchange.domain.candles import INTERVALS
from exchange.domain.errors import ExchangeError
from exchange.domain.events import Committed
from exchange.domain.orders import Trade
from exchange.engine.port import Balances, EnginePort
from exchange.services.marketdata import MarketData

__all__ = ["FanOut", "private_topic", "seq_key"]

DEPTH_LEVELS = 50


def private_topic(channel: str, user_id: int) -> Topic:
    return (channel, f"#{user_id}")


def seq_key(topic: Topic) -> tuple[str, str | None]:
    """Events count per channel and pair: kline intervals share a counter; private pair = None."""
    channel, key = topic
    return channel.split(":", 1)[0], None if key.startswith("#") else key


class FanOut(Subscribers):
    """The seed's events of each committed batch, for the subscribed connections."""

    def __init__(
        self, market: MarketData, engine: EnginePort, admission: Admission | None = None
    ) -> None:
        super().__init__(admission)
        self.market = market
        self.engine = engine

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
                    self.spawn(self._publish_balances(user))
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
