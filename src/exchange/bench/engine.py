"""Matching engine throughput in memory, with balance checks, the way the writer uses it.

The command stream is generated before the clock starts (the generator is not
what is measured): limit orders around a mid price on all default markets,
about half of them crossing the spread, some IOC and market orders, and about
one cancel in ten. The outbox is drained every ``batch`` commands, as the
journal would. ``processes=2`` runs one engine per market group in separate
processes (the deployment shape for two cores) and reports their sum.
"""

from __future__ import annotations

import contextlib
import gc
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

from exchange.domain.commands import PlaceOrder
from exchange.domain.errors import ExchangeError
from exchange.domain.ledger import Ledger
from exchange.domain.markets import MAX_UNITS, default_assets, default_markets
from exchange.domain.matching import MatchingEngine

__all__ = ["main", "run"]

USERS = 1_000
_DEFAULT_GC = gc.get_threshold()


class _Command(NamedTuple):
    """A placement (built before the clock starts, as the API builds it), or a cancel."""

    order: PlaceOrder | None  # None: a cancel
    back: int  # for a cancel: how many placements ago the target was placed


# mid price (price units), half-spread of the passive grid, amount range (step multiples)
_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "BTC/USDT": (3_000_000, 200, 20, 400),  # 30000.00, orders 0.0002..0.004 BTC
    "ETH/USDT": (200_000, 100, 30, 600),  # 2000.00, orders 0.003..0.06 ETH
    "ETH/BTC": (66_000, 100, 20, 300),  # 0.066000, orders 0.002..0.03 ETH
}


def _commands(count: int, seed: int, markets: list[str]) -> list[_Command]:
    rng = random.Random(seed)
    engine_markets = default_markets(default_assets())
    out: list[_Command] = []
    for _ in range(count):
        user = rng.randrange(1, USERS + 1)
        if rng.random() < 0.1:
            out.append(_Command(None, rng.randrange(1, 50)))
            continue
        symbol = markets[rng.randrange(len(markets))]
        market = engine_markets[symbol]
        mid, spread, low, high = _SHAPES[symbol]
        side = "buy" if rng.random() < 0.5 else "sell"
        amount = rng.randint(low, high) * market.step
        offset = rng.randint(1, spread) * market.tick
        crossing = rng.random() < 0.5
        above = (side == "buy") == crossing
        price = mid + offset if above else mid - offset
        kind, tif = "limit", "GTC"
        roll = rng.random()
        if crossing and roll < 0.1:
            kind, tif = "market", "IOC"
            price = 0 if side == "sell" else price
        elif crossing and roll < 0.2:
            tif = "IOC"
        out.append(_Command(PlaceOrder(user, symbol, side, amount, price, kind, tif), 0))
    return out


def _engine(markets: list[str]) -> MatchingEngine:
    assets = default_assets()
    all_markets = default_markets(assets)
    engine = MatchingEngine({symbol: all_markets[symbol] for symbol in markets}, Ledger(assets))
    for user in range(1, USERS + 1):
        engine.credit(user, "USDT", 10**9 * 10**6)
        engine.credit(user, "BTC", 10**5 * 10**8)
        engine.credit(user, "ETH", 10**6 * 10**8)
    engine.drain()
    return engine


def _run_shard(
    orders: int, seed: int, markets: list[str], batch: int, tuned_gc: bool
) -> dict[str, float | int]:
    commands = _commands(orders, seed, markets)
    engine = _engine(markets)
    if tuned_gc:
        # The writer allocates many small long-lived objects (orders, entries);
        # CPython's default gen-0 threshold (700) makes it rescan them constantly.
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
    place = engine.place
    cancel = engine.cancel
    drain = engine.drain
    placed: list[int] = []
    trades = refused = 0
    now = 1_700_000_000_000
    start = time.perf_counter()
    for index, command in enumerate(commands):
        try:
            if command.order is not None:
                result = place(command.order, now)
                placed.append(result.order_id)
                trades += len(result.trades)
            elif len(placed) >= command.back:
                target = engine.order(placed[-command.back])
                if target is not None:
                    cancel(target.user_id, target.id, now)
        except ExchangeError:
            refused += 1
        if index % batch == 0:
            drain()
    drain()
    elapsed = time.perf_counter() - start
    if tuned_gc:
        gc.set_threshold(*_DEFAULT_GC)
        gc.unfreeze()
    engine.check_invariants()
    return {
        "commands": len(commands),
        "seconds": elapsed,
        "orders_per_second": len(commands) / elapsed,
        "trades": trades,
        "refused": refused,
        "resting": len(engine.open_orders()),
    }


def run(
    orders: int = 200_000,
    seed: int = 1,
    processes: int = 1,
    batch: int = 500,
    tuned_gc: bool = True,
) -> dict[str, float | int]:
    """Run the benchmark and return its figures (orders/s counts placements and cancels)."""
    symbols = list(_SHAPES)
    if processes <= 1:
        result = _run_shard(orders, seed, symbols, batch, tuned_gc)
        result["processes"] = 1
        return result
    groups = [symbols[index::processes] for index in range(processes)]
    share = orders // processes
    with ProcessPoolExecutor(max_workers=processes) as pool:
        futures = [
            pool.submit(_run_shard, share, seed + index, group, batch, tuned_gc)
            for index, group in enumerate(groups)
        ]
        shards = [future.result() for future in futures]
    total = sum(int(shard["commands"]) for shard in shards)
    slowest = max(float(shard["seconds"]) for shard in shards)
    return {
        "commands": total,
        "seconds": slowest,
        "orders_per_second": total / slowest,
        "trades": sum(int(shard["trades"]) for shard in shards),
        "refused": sum(int(shard["refused"]) for shard in shards),
        "resting": sum(int(shard["resting"]) for shard in shards),
        "processes": processes,
    }


def unfunded_market_buy(resting: int = 100_000, tries: int = 200) -> float:
    """Writer time (seconds) to refuse one unfunded market buy against ``resting`` asks.

    The buy asks for far more than the whole book, from a user with no quote at
    all: the refusal must not cost a walk of the book (a cheap way to burn the
    single writer's time).
    """
    assets = default_assets()
    market = default_markets(assets)["BTC/USDT"]
    engine = MatchingEngine({market.symbol: market}, Ledger(assets))
    seller = 1
    engine.credit(seller, "BTC", resting * 1_000 * market.step)
    for index in range(resting):
        engine.place(
            PlaceOrder(seller, market.symbol, "sell", 100 * market.step, 3_000_000 + index), now=0
        )
        if index % 10_000 == 0:
            engine.drain()
    engine.drain()
    # ~10,000,000 BTC: the largest amount an order may have (MAX_UNITS is refused before
    # any walk), so the refusal measured is the balance check's.
    huge = MAX_UNITS - 1 - (MAX_UNITS - 1) % market.step
    command = PlaceOrder(2, market.symbol, "buy", huge, 0, type="market")  # made by the API
    start = time.perf_counter()
    for _ in range(tries):
        with contextlib.suppress(ExchangeError):
            engine.place(command, now=0)
    return (time.perf_counter() - start) / tries


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    orders = int(args[0]) if args else 200_000
    processes = int(args[1]) if len(args) > 1 else 1
    tuned_gc = not (len(args) > 2 and args[2] == "default-gc")
    figures = run(orders, processes=processes, tuned_gc=tuned_gc)
    for key, value in figures.items():
        if key != "orders_per_second":
            print(f"engine_{key} {value}")
    print(f"engine_orders_per_second {figures['orders_per_second']:.0f} orders/s")


if __name__ == "__main__":
    main()
