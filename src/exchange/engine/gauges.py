"""The writer's state as Prometheus metrics, read when scraped (the order path counts nothing).

The engine keeps plain integer counters (commands by outcome, trades, reloads,
withdrawal changes); this collector turns them into metric families on each
scrape. It runs in the metrics listener's thread: plain reads of ints and
dict copies are safe there, and the balance totals — which must be a
committed, whole state for the conservation alert — are computed on the
engine's own event loop between two batches (``Engine.ledger_totals``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exchange.domain.ledger import DEPOSIT_ACCOUNT, FEE_ACCOUNT, WITHDRAWAL_ACCOUNT
from exchange.engine.engine import Engine

__all__ = ["EngineCollector"]

log = logging.getLogger("exchange.metrics")

TOTALS_SECONDS = 2  # how long a scrape waits for the loop to sum the balances
HOLDERS = {
    0: "users",
    DEPOSIT_ACCOUNT: "deposits",
    FEE_ACCOUNT: "fees",
    WITHDRAWAL_ACCOUNT: "withdrawals",
}
PARTS = ("available", "frozen")


def command_label(kind: type) -> str:
    """``PlaceOrder`` -> ``place_order``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind.__name__).lower()


class EngineCollector(Collector):
    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        yield GaugeMetricFamily(
            "exchange_engine_queue_depth", "Commands waiting for the writer.", engine.queued
        )
        yield GaugeMetricFamily(
            "exchange_engine_ready",
            "1 while the writer takes commands, 0 while it rebuilds memory from the database.",
            int(engine.ready),
        )
        outcomes = CounterMetricFamily(
            "exchange_commands",
            "Commands the writer answered after their commit, by command and outcome "
            "(accepted, or the refusal's code: insufficient_balance, min_notional, ...).",
            labels=["command", "outcome"],
        )
        for (kind, outcome), count in sorted(
            dict(engine.outcomes).items(), key=lambda item: (item[0][0].__name__, item[0][1])
        ):
            outcomes.add_metric([command_label(kind), outcome], count)
        yield outcomes
        yield CounterMetricFamily("exchange_trades", "Trades committed.", engine.trades)
        yield CounterMetricFamily(
            "exchange_batches", "Group commits (batches) that were committed.", engine.batches
        )
        yield CounterMetricFamily(
            "exchange_engine_reloads",
            "Times the writer rebuilt its memory from the database after a failed commit or a "
            "lost writer lock.",
            engine.reloads,
        )
        yield CounterMetricFamily(
            "exchange_engine_rollbacks",
            "Batches (or parts of one) whose changes were taken back before a retry.",
            engine.rollbacks,
        )
        yield CounterMetricFamily(
            "exchange_engine_unstorable",
            "Commands refused alone because the database would not store their rows.",
            engine.refused_unstorable,
        )
        changes = CounterMetricFamily(
            "exchange_withdrawals",
            "Withdrawal changes committed, by the status they reached (pending = requested).",
            labels=["status"],
        )
        for status, count in sorted(dict(engine.withdrawal_changes).items()):
            changes.add_metric([status], count)
        yield changes
        pending = GaugeMetricFamily(
            "exchange_withdrawals_pending",
            "Withdrawals waiting for an operator's review, by coin.",
            labels=["coin"],
        )
        waiting: dict[str, int] = dict.fromkeys(sorted(engine.assets), 0)
        for withdrawal in list(engine.core.withdrawals.values()):
            waiting[withdrawal.coin] = waiting.get(withdrawal.coin, 0) + 1
        for coin, count in waiting.items():
            pending.add_metric([coin], count)
        yield pending
        scale = GaugeMetricFamily(
            "exchange_asset_scale",
            "Decimal places of each asset: balance units / 10^scale is the amount.",
            labels=["asset"],
        )
        for code, asset in sorted(engine.assets.items()):
            scale.add_metric([code], asset.scale)
        yield scale
        yield from self._totals()

    def _totals(self) -> Iterator[Metric]:
        try:
            future = asyncio.run_coroutine_threadsafe(self.engine.ledger_totals(), self.loop)
            totals = future.result(TOTALS_SECONDS)
        except Exception as error:  # a busy or closed loop: this scrape goes without them
            log.warning("balance totals skipped in this scrape (%r)", error)
            return
        family = GaugeMetricFamily(
            "exchange_balance_units",
            "Committed balances in minor units (see exchange_asset_scale), summed per asset over "
            "all user accounts (holder=users) and per system account; per asset the sum of "
            "every series is exactly 0 (deposits are negative).",
            labels=["asset", "holder", "part"],
        )
        for code in sorted(self.engine.assets):
            for holder, name in HOLDERS.items():
                for part, part_name in enumerate(PARTS):
                    units = totals.get((code, holder, part), 0)
                    family.add_metric([code, name, part_name], units)
        yield family
