"""Resident memory of the engine holding 1,000,000 resting orders.

Orders rest on both sides of the three default markets (never crossing), from
10,000 users, with balances frozen as in production; RSS is read from /proc.
With ``client_ids`` every order also carries a distinct ``client_order_id``
(all inside the idempotency window, the most the engine keeps). Each figure is
measured in a fresh process, so one does not inherit the other's heap.
"""

from __future__ import annotations

import gc
import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from exchange.domain.commands import PlaceOrder
from exchange.domain.markets import default_assets, default_markets
from exchange.domain.matching import MatchingEngine


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(orders: int = 1_000_000, *, client_ids: bool = False) -> dict[str, int]:
    """``run`` in a new process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run, orders, client_ids=client_ids).result()


def run(
    orders: int = 1_000_000, users: int = 10_000, seed: int = 3, *, client_ids: bool = False
) -> dict[str, int]:
    before = rss_bytes()
    markets = default_markets(default_assets())
    engine = MatchingEngine(markets)
    for user in range(1, users + 1):
        engine.credit(user, "BTC", 10**14)
        engine.credit(user, "ETH", 10**14)
        engine.credit(user, "USDT", 10**14)
    rng = random.Random(seed)
    symbols = list(markets)
    mids = {"BTC/USDT": 6_500_000, "ETH/USDT": 320_000, "ETH/BTC": 49_000}  # price units
    gc.disable()  # RSS of what is kept, not of a collector's timing; collected below
    now = 1_767_225_600_000
    for n in range(orders):
        symbol = symbols[n % 3]
        market = markets[symbol]
        sell = n % 2 == 1
        offset = rng.randint(1, 2_000) * market.tick * (1 if symbol != "ETH/BTC" else 10)
        price = mids[symbol] + offset if sell else mids[symbol] - offset
        amount = market.min_amount * rng.randint(200, 2_000)
        engine.place(
            PlaceOrder(
                1 + n % users,
                symbol,
                "sell" if sell else "buy",
                amount,
                price,
                client_order_id=f"bench-{n}" if client_ids else None,
            ),
            now=now,
        )
        if n % 500 == 0:
            engine.drain()  # as the writer does after each batch, which has one clock reading
            now += 1
    engine.drain()
    gc.enable()
    gc.collect()
    resting = len(engine.open_orders())
    return {"resting_orders": resting, "rss_bytes": rss_bytes(), "rss_before_bytes": before}
