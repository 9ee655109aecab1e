"""``exchange bench orders`` as an operator runs it: the curve, the ceilings, the ratios.

No figure is judged here (speed is the benchmark's to print, not a test's to
assert); what is checked is that every figure the README and docs/performance.md
quote is printed, and that each ratio is the quotient of the figures it names.
"""

from __future__ import annotations

import subprocess

import pytest

from exchange.bench.server import BIN

COMMAND = ("bench", "orders", "--database", "sqlite", "--clients", "1,4", "--seconds", "1")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bench_orders_prints_the_curve_with_its_ceilings_and_ratios(db_url: str) -> None:
    done = subprocess.run(
        [str(BIN / "exchange"), *COMMAND],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = {}
    for line in done.stdout.splitlines():
        name, value, _unit = line.split(" ", 2)
        figures[name] = float(value)
    loop = figures["ceiling_sqlite_commit_loop_per_second"]
    bare = figures["ceiling_bare_asgi_per_second"]
    assert loop > 0 and bare > 0
    assert 0 < figures["ceiling_sqlite_commit_p50"] <= figures["ceiling_sqlite_commit_p99"]
    for clients in (1, 4):
        kind = f"orders_sqlite_c{clients}"
        rate = figures[f"{kind}_per_second"]
        assert rate > 0 and figures[f"{kind}_refused"] == 0
        assert figures[f"{kind}_p50"] <= figures[f"{kind}_p99"]
        assert figures[f"{kind}_server_cpu_per_order"] > 0
        # printed with two decimals
        assert figures[f"{kind}_vs_commit_loop"] == pytest.approx(rate / loop, abs=0.006)
        assert figures[f"{kind}_vs_bare_asgi"] == pytest.approx(rate / bare, abs=0.006)
    assert figures["orders_sqlite_at_1000_per_second_p99"] > 0


def test_bench_servers_measures_the_exchange_under_uvicorn_and_granian() -> None:
    """The HTTP server is chosen by this measurement: both servers really serve orders."""
    done = subprocess.run(
        [str(BIN / "exchange"), "bench", "servers", "--seconds", "1", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = {line.split(" ")[0]: float(line.split(" ")[1]) for line in done.stdout.splitlines()}
    for server in ("uvicorn", "granian"):
        assert figures[f"server_{server}_bare_per_second"] > 0
        assert figures[f"server_{server}_orders_per_second"] > 0
    granian, uvicorn = (figures[f"server_{s}_orders_per_second"] for s in ("granian", "uvicorn"))
    ratio = granian / uvicorn
    assert figures["server_granian_vs_uvicorn_orders"] == pytest.approx(ratio, abs=0.006)
