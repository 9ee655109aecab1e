"""``exchange bench``: figures as ``name value unit`` lines, plus ``--json``."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

Figure = tuple[str, float, str]


def print_figures(figures: list[Figure], as_json: bool) -> None:
    for name, value, unit in figures:
        print(
            f"{name} {value:.2f} {unit}" if isinstance(value, float) else f"{name} {value} {unit}"
        )
    if as_json:
        summary = {
            "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
            "figures": {name: {"value": value, "unit": unit} for name, value, unit in figures},
        }
        print(json.dumps(summary, indent=2))


def engine_figures(orders: int) -> list[Figure]:
    from exchange.bench import engine as bench_engine

    result = bench_engine.run(orders)
    refusal = bench_engine.unfunded_market_buy()
    return [
        ("engine_orders_per_second", float(result["orders_per_second"]), "orders/s"),
        ("engine_unfunded_market_buy_100k_book", refusal * 10**6, "us"),
    ]


def label(name: str, workers: int) -> str:
    """``orders_sqlite`` with one process, ``orders_sqlite_2w`` behind 2 HTTP workers."""
    return name if workers == 1 else f"{name}_{workers}w"


CEILING_CONNECTIONS = 64


def ceiling_figures(seconds: float) -> list[Figure]:
    """What HTTP alone and a naive one-commit-per-row loop allow here today."""
    from exchange.bench import ceilings

    bare = ceilings.bare_asgi(seconds, CEILING_CONNECTIONS)
    loop = ceilings.commit_loop(seconds)
    return [
        ("ceiling_bare_asgi_per_second", bare.rate(), "req/s"),
        ("ceiling_sqlite_commit_loop_per_second", loop.per_second, "commits/s"),
        ("ceiling_sqlite_commit_p50", loop.p50_ms, "ms"),
        ("ceiling_sqlite_commit_p99", loop.p99_ms, "ms"),
    ]


def server_figures(seconds: float, rounds: int) -> list[Figure]:
    """The HTTP server chosen by measurement: the bare app and durable SQLite orders
    under uvicorn (what ``exchange serve`` runs, with ``server.py``'s limits) and under
    granian (the same app, no limits), alternated ``rounds`` times; the best of each."""
    from exchange.bench import ceilings
    from exchange.bench.orders import measure
    from exchange.bench.server import HTTP_SERVERS

    best: dict[str, float] = {}  # float-ok: rates
    for _ in range(rounds):
        for http in HTTP_SERVERS:
            bare = ceilings.bare_asgi(seconds, CEILING_CONNECTIONS, http)
            orders = measure("sqlite", seconds, CEILING_CONNECTIONS, http=http)
            for name, rate in (("bare", bare.rate()), ("orders", orders.rate())):
                key = f"server_{http}_{name}_per_second"
                best[key] = max(best.get(key, 0.0), rate)
    figures: list[Figure] = [
        (name, rate, "req/s" if "_bare_" in name else "orders/s") for name, rate in best.items()
    ]
    for name in ("bare", "orders"):
        of, to = f"server_granian_{name}_per_second", f"server_uvicorn_{name}_per_second"
        _ratio(figures, f"server_granian_vs_uvicorn_{name}", of, to)
    return figures


def _ratio(figures: list[Figure], name: str, of: str, to: str) -> None:
    """``name`` = figure ``of`` / figure ``to``, when both were measured in this run."""
    found = {n: v for n, v, _ in figures}
    if of in found and found.get(to):
        figures.append((name, found[of] / found[to], "x"))


def order_figures(
    seconds: float,
    clients: list[int],
    database: str,
    workers: int = 1,
    api: str = "seed",
) -> list[Figure]:
    """``api``: seed, binance, or both (the Binance figures then with their ratio).

    ``clients``: one count, or several (``orders_<kind>_c<n>_…`` each: the curve of
    throughput and latency against load). With SQLite the two ceilings are measured
    first and every SQLite figure is given as a ratio of them."""
    from exchange.bench.orders import measure

    figures: list[Figure] = []
    kinds = ["sqlite", "postgres"] if database == "both" else [database]
    if "sqlite" in kinds:
        figures += ceiling_figures(seconds)
    dialects = ["seed", "binance"] if api == "both" else [api]
    for database_kind, dialect in ((k, d) for k in kinds for d in dialects):
        base = label(database_kind, workers) + ("_binance" if dialect == "binance" else "")
        for count in clients:
            kind = base if len(clients) == 1 else f"{base}_c{count}"
            result = measure(database_kind, seconds, count, workers=workers, api=dialect)
            figures += [
                (f"orders_{kind}_per_second", result.rate(), "orders/s"),
                (f"orders_{kind}_p50", result.percentile_ms(0.50), "ms"),
                (f"orders_{kind}_p99", result.percentile_ms(0.99), "ms"),
                (f"orders_{kind}_refused", float(result.refused + result.errors), "requests"),
                (f"orders_{kind}_server_cpu_per_order", result.cpu_per_request_us(), "us"),
            ]
            rate = f"orders_{kind}_per_second"
            if database_kind == "sqlite":
                loop, bare = "ceiling_sqlite_commit_loop_per_second", "ceiling_bare_asgi_per_second"
                _ratio(figures, f"orders_{kind}_vs_commit_loop", rate, loop)
                _ratio(figures, f"orders_{kind}_vs_bare_asgi", rate, bare)
            else:
                sqlite = rate.replace(f"orders_{database_kind}", "orders_sqlite", 1)
                _ratio(figures, f"orders_{kind}_vs_sqlite", rate, sqlite)
            if dialect == "binance" and api == "both":
                seed = rate.replace("_binance", "", 1)
                _ratio(figures, f"orders_{kind}_vs_seed", rate, seed)
        if dialect == "binance" and api == "both":
            continue
        paced = measure(database_kind, seconds, 32, rate=1000.0, workers=workers, api=dialect)
        figures += [
            (f"orders_{base}_at_1000_per_second_achieved", paced.rate(), "orders/s"),
            (f"orders_{base}_at_1000_per_second_p50", paced.percentile_ms(0.50), "ms"),
            (f"orders_{base}_at_1000_per_second_p99", paced.percentile_ms(0.99), "ms"),
        ]
    return figures


def profile_figures(
    seconds: float, clients: int, database: str, workers: int, into: Path
) -> list[Figure]:
    """``bench orders``' load under py-spy: the rate, and each stage's share per process."""
    import re

    from exchange.bench.orders import measure
    from exchange.bench.profile import stage_shares

    result = measure(database, seconds, clients, workers=workers, profile=into)
    kind = label(database, workers)
    figures: list[Figure] = [(f"profiled_orders_{kind}_per_second", result.rate(), "orders/s")]
    for role, shares in stage_shares(into).items():
        for stage, share in shares.items():
            slug = re.sub(r"[^a-z]+", "_", stage.lower()).strip("_")
            figures.append((f"profile_{kind}_{role}_{slug}", 100 * share, "%"))
    return figures


def profile(
    seconds: float, clients: int, database: str, workers: int, into: Path, *, as_json: bool
) -> None:
    print_figures(profile_figures(seconds, clients, database, workers, into), as_json)
    print(f"collapsed stacks: {into} (a flame graph: speedscope, or flamegraph.pl)")


def memory_figures(orders: int) -> list[Figure]:
    from exchange.bench import memory

    result = memory.measure(orders)
    with_ids = memory.measure(orders, client_ids=True)
    return [
        ("memory_resting_orders", float(result["resting_orders"]), "orders"),
        ("memory_rss", result["rss_bytes"] / 10**6, "MB"),
        ("memory_rss_with_client_ids", with_ids["rss_bytes"] / 10**6, "MB"),
    ]


def memory(orders: int, *, as_json: bool) -> None:
    print_figures(memory_figures(orders), as_json)


def engine(orders: int, *, as_json: bool) -> None:
    print_figures(engine_figures(orders), as_json)


def orders(
    seconds: float,
    clients: list[int],
    database: str,
    workers: int,
    *,
    as_json: bool,
    api: str = "seed",
) -> None:
    print_figures(order_figures(seconds, clients, database, workers, api), as_json)


def run_all(*, as_json: bool) -> None:
    from exchange.bench import market

    figures = (
        engine_figures(200_000)
        + order_figures(10.0, [64], "both")
        + market.run()
        + memory_figures(1_000_000)
    )
    print_figures(figures, as_json)
