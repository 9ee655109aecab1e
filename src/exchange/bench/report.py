"""``exchange bench``: figures as ``name value unit`` lines, plus ``--json``."""

from __future__ import annotations

import json
import os
import platform

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


def order_figures(
    seconds: float, clients: int, database: str, workers: int = 1, api: str = "seed"
) -> list[Figure]:
    """``api``: seed, binance, or both (the Binance figures then with their ratio)."""
    from exchange.bench.orders import measure

    figures: list[Figure] = []
    kinds = ["sqlite", "postgres"] if database == "both" else [database]
    dialects = ["seed", "binance"] if api == "both" else [api]
    for database_kind, dialect in ((k, d) for k in kinds for d in dialects):
        kind = label(database_kind, workers) + ("_binance" if dialect == "binance" else "")
        result = measure(database_kind, seconds, clients, workers=workers, api=dialect)
        figures += [
            (f"orders_{kind}_per_second", result.rate(), "orders/s"),
            (f"orders_{kind}_p50", result.percentile_ms(0.50), "ms"),
            (f"orders_{kind}_p99", result.percentile_ms(0.99), "ms"),
            (f"orders_{kind}_refused", float(result.refused + result.errors), "requests"),
        ]
        if dialect == "binance" and api == "both":
            seed_rate = next(
                v
                for n, v, _ in figures
                if n == f"orders_{label(database_kind, workers)}_per_second"
            )
            figures.append((f"orders_{kind}_vs_seed", result.rate() / seed_rate, "ratio"))
            continue
        paced = measure(database_kind, seconds, 32, rate=1000.0, workers=workers, api=dialect)
        figures += [
            (f"orders_{kind}_at_1000_per_second_p50", paced.percentile_ms(0.50), "ms"),
            (f"orders_{kind}_at_1000_per_second_p99", paced.percentile_ms(0.99), "ms"),
        ]
    return figures


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
    seconds: float, clients: int, database: str, workers: int, *, as_json: bool, api: str = "seed"
) -> None:
    print_figures(order_figures(seconds, clients, database, workers, api), as_json)


def run_all(*, as_json: bool) -> None:
    from exchange.bench import market

    figures = (
        engine_figures(200_000)
        + order_figures(10.0, 64, "both")
        + market.run()
        + memory_figures(1_000_000)
    )
    print_figures(figures, as_json)
