"""Public market data throughput and candle latency (``exchange bench market``).

1. Seed a fresh SQLite database in-process through the real app and engine: a
   resting book of 50 price levels per side on BTC/USDT and one trade per
   minute for the last ``minutes`` minutes (a ManualClock walks through them),
   so that candles, tickers and depth have realistic sizes.
2. Server time of a 500-candle ``get_coin_k_line``: the method handler plus
   the envelope's serialisation, timed in-process on the seeded app (what the
   server spends per request, excluding HTTP parsing and the network).
3. Start the real ``exchange serve`` process on that database and drive
   ``get_depth`` and ``get_coin`` through ``/router`` with the lean keep-alive
   load generator (``bench/load.py``), from ``processes`` client processes of
   ``connections`` connections each. On a two-core machine the client takes
   one core and the server (one worker) the other: the figure is what one
   worker answers with a client beside it, not a theoretical maximum.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from exchange.api.context import Call
from exchange.api.envelope import envelope_response
from exchange.api.methods import METHODS
from exchange.bench.load import LoadResult, get, run_load
from exchange.bench.server import exchange_env, free_port, running_server
from exchange.clock import ManualClock, now_ms
from exchange.config import Settings
from exchange.domain.commands import Credit, PlaceOrder

__all__ = ["main", "run"]

MIN = 60_000
MAKER, TAKER, BOOK = 1, 2, 3
PAIR = "BTC/USDT"
Figure = tuple[str, float, str]


async def _seed(url: str, minutes: int, samples: int) -> list[int]:
    """Fill the database; return the in-process timings (ns) of 500-candle k-lines."""
    from exchange.runtime import build_runtime

    start = now_ms() - minutes * MIN
    clock = ManualClock(start)
    settings = Settings(
        database_url=url,
        rate_limits="off",
        sqlite_synchronous="NORMAL",
        log_level="warning",
        metrics_address="",
    )
    runtime = build_runtime(settings, clock=clock)
    rng = random.Random(5)
    async with runtime.running():
        services = runtime.services
        engine = services.engine
        for user in (MAKER, TAKER, BOOK):
            await engine.submit(Credit(user, "USDT", 10**15, 0))
            await engine.submit(Credit(user, "BTC", 10**13, 0))
        for level in range(50):  # 50 levels a side, well away from where trades happen
            amount = (100 + level) * 1_000
            await engine.submit(PlaceOrder(BOOK, PAIR, "buy", amount, 2_800_000 - level * 500))
            await engine.submit(PlaceOrder(BOOK, PAIR, "sell", amount, 3_200_000 + level * 500))
        price = 3_000_000
        for minute in range(minutes):
            clock.now = start + minute * MIN + rng.randrange(MIN)
            price += rng.randrange(-2_000, 2_001)
            amount = rng.randrange(20, 500) * 1_000  # 0.0002+ BTC: above the 5 USDT minimum
            await engine.submit(PlaceOrder(MAKER, PAIR, "sell", amount, price))
            await engine.submit(PlaceOrder(TAKER, PAIR, "buy", amount, price))
        clock.now = start + minutes * MIN
        method = METHODS["get_coin_k_line"]
        params: dict[str, object] = {"pair": PAIR, "interval": "1min", "limit": "500"}
        first = await method.run(Call(services, dict(params), "bench"))
        assert isinstance(first, list) and len(first) == 500, "the seed made too few candles"
        timings = []
        for _ in range(samples):
            began = time.perf_counter_ns()
            result = await method.run(Call(services, dict(params), "bench"))
            envelope_response(result)
            timings.append(time.perf_counter_ns() - began)
        return timings


def _load(port: int, path: str, connections: int, seconds: float) -> LoadResult:
    request = get(path)
    # An answer counts when it is a success: the envelope's, or Binance's depth.
    accepted = b'{"lastUpdateId"' if path.startswith("/api/v3/") else b'{"status":true'
    return asyncio.run(
        run_load(
            port,
            lambda _c, _n: request,
            connections=connections,
            seconds=seconds,
            accepted=accepted,
        )
    )


def _throughput(
    port: int, path: str, processes: int, connections: int, seconds: float
) -> tuple[float, float, int]:
    """Requests/s summed over client processes, p99 latency (ms), failed requests."""
    _load(port, path, 8, 0.5)  # warm up: connections, caches
    with ProcessPoolExecutor(processes) as pool:
        futures = [pool.submit(_load, port, path, connections, seconds) for _ in range(processes)]
        results = [future.result() for future in futures]
    rate = sum(result.rate() for result in results)
    p99 = max(result.percentile_ms(0.99) for result in results)
    failed = sum(result.refused + result.errors for result in results)
    return rate, p99, failed


def _ms(nanoseconds: float) -> float:
    return nanoseconds / 1e6


def run(
    *,
    seconds: float = 5.0,
    processes: int = 1,
    connections: int = 64,
    minutes: int = 720,
    workers: int = 1,
) -> list[Figure]:
    from exchange.bench.report import label

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'market.db'}"
        timings = asyncio.run(_seed(url, minutes, 2_000))
        ordered = sorted(timings)
        figures += [
            ("get_coin_k_line_500_server_p50", _ms(statistics.median(ordered)), "ms"),
            ("get_coin_k_line_500_server_p99", _ms(ordered[int(len(ordered) * 0.99)]), "ms"),
        ]
        port = free_port()
        env = exchange_env(url, EXCHANGE_LOG_LEVEL="error")
        args = ("--workers", str(workers)) if workers > 1 else ()
        with running_server(port, env, Path(tmp) / "server.log", args=args):
            rates: dict[str, float] = {}
            for name, path in (
                ("get_depth", f"/router?router=get_depth&pair={PAIR}"),
                ("api_v3_depth", f"/api/v3/depth?symbol={PAIR.replace('/', '')}&limit=50"),
                ("get_coin", f"/router?router=get_coin&pair={PAIR}"),
            ):
                rate, p99, failed = _throughput(port, path, processes, connections, seconds)
                rates[name] = rate
                figures += [
                    (f"{label(name, workers)}_per_second", rate, "req/s"),
                    (f"{label(name, workers)}_p99", p99, "ms"),
                    (f"{label(name, workers)}_failed", float(failed), "requests"),
                ]
            # The Binance dialect's depth against the seed's, same book, same run.
            ratio = rates["api_v3_depth"] / rates["get_depth"] if rates["get_depth"] else 0.0
            figures.append((label("api_v3_depth_vs_get_depth", workers), ratio, "x"))
            kline = _load(port, f"/router?router=get_coin_k_line&pair={PAIR}&limit=500", 1, 2.0)
            figures.append(("get_coin_k_line_500_http_p50", kline.percentile_ms(0.5), "ms"))
    return figures


def main(
    *,
    seconds: float = 5.0,
    processes: int = 1,
    connections: int = 64,
    minutes: int = 720,
    workers: int = 1,
    as_json: bool = False,
) -> Any:
    from exchange.bench.report import print_figures

    figures = run(
        seconds=seconds,
        processes=processes,
        connections=connections,
        minutes=minutes,
        workers=workers,
    )
    print_figures(figures, as_json)
    return figures
