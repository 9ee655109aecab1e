"""``/metrics`` of a real server process, read with prometheus-client's own text parser.

1. one process (SQLite, PostgreSQL): after a known set of requests — users
   registered (codes sent), a failed and a good login, orders accepted, one
   refused by the engine for its balance and one by the API for its
   parameters, a trade, a WebSocket subscription — every metric of
   docs/operations.md is there, with exactly those counts, and the balance
   totals per asset add up to zero (the conservation alert's expression);
2. ``--workers 2`` (SQLite, PostgreSQL): requests spread over both workers are
   each counted once (the exact number sent), WebSocket connections on both
   workers add up, and kill -9 of a worker loses none of the counts (its
   connections no longer count);
3. the listener is off with an empty address, and on its own port only (the
   public port has no ``/metrics``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets
from load_support import PAIR, credit
from prometheus_client.parser import text_string_to_metric_families
from test_gateways import Writer, nats_server
from test_workers import FRESH, alive, owner_of, wait_for_workers

from exchange.bench.server import Server, exchange_env, free_port, running_server
from support import assert_envelope, register_over_http, smtp_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
HTTP_COUNT = "exchange_http_request_duration_seconds_count"


def scrape(port: int) -> Samples:
    """Every sample of the exposition, parsed by prometheus-client (a strict reader)."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def wait_until(port: int, holds: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape until ``holds``: gauges are set, and tallied histograms (HTTP requests, batches)
    folded in, once a second by each process."""
    deadline = time.monotonic() + 15
    while True:
        samples = scrape(port)
        if holds(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.2)


def wait_for(port: int, check: str, expected: float, **labels: str) -> Samples:
    """Scrape until one sample (summed over the other labels) shows ``expected``."""
    return wait_until(
        port, lambda s: value(s, check, **labels) == expected, f"{check}{labels} == {expected}"
    )


def conservation(samples: Samples) -> dict[str, float]:
    """``sum by (asset) (exchange_balance_units)``: the alert fires on anything but 0."""
    sums: dict[str, float] = defaultdict(float)
    for (name, labels), v in samples.items():
        if name == "exchange_balance_units":
            sums[dict(labels)["asset"]] += v
    return dict(sums)


def post(
    server: Server, path: str, data: dict[str, str], token: str | None = None
) -> httpx.Response:
    headers = dict(FRESH)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{server.url}{path}", data=data, headers=headers, timeout=10)


def test_metrics_of_one_process(db_url: str, tmp_path: Path) -> None:
    metrics_port = free_port()
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(db_url, smtp_port, EXCHANGE_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}")
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            before = scrape(metrics_port)
            assert value(before, "exchange_engine_ready") == 1
            assert value(before, "exchange_codes_sent_total") == 0
            # The public port serves no metrics.
            assert httpx.get(f"{server.url}/metrics").status_code == 404

            seller = register_over_http(server.url, mailbox, "seller@example.com")
            buyer = register_over_http(server.url, mailbox, "buyer@example.com")
            refused = post(server, "/api/login", {"user": "buyer@example.com", "pass": "wrong-1"})
            assert_envelope(refused, 401, "invalid_credentials")
            credit(
                db_url, ("seller@example.com", "BTC", "1"), ("buyer@example.com", "USDT", "30000")
            )

            sold = post(
                server, "/api/sell", {"pair": PAIR, "amount": "0.5", "price": "20000"}, seller
            )
            assert sold.json()["status"], sold.text
            bought = post(
                server, "/api/buy", {"pair": PAIR, "amount": "0.3", "price": "20000"}, buyer
            )
            assert bought.json()["data"]["status"] == "filled", bought.text
            poor = post(server, "/api/buy", {"pair": PAIR, "amount": "9", "price": "20000"}, buyer)
            assert_envelope(poor, 400, "insufficient_balance")
            bad = post(server, "/api/buy", {"pair": PAIR, "amount": "-1", "price": "20000"}, buyer)
            assert_envelope(bad, 400, "invalid_argument")

            async def watch() -> Samples:
                async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                    await ws.send('{"op": "subscribe", "channel": "trades", "pair": "BTC/USDT"}')
                    await ws.recv()
                    return await asyncio.to_thread(
                        wait_for, metrics_port, "exchange_ws_subscriptions", 1, dialect="seed"
                    )

            during = asyncio.run(watch())
            assert value(during, "exchange_ws_connections", dialect="seed") == 1
            after = wait_until(
                metrics_port,
                lambda s: (
                    value(s, "exchange_ws_connections", dialect="seed") == 0
                    and value(s, HTTP_COUNT, method="POST", status="200") >= 8
                ),
                "the connection closed and every POST folded in",
            )

    orders = {"command": "place_order"}
    assert value(after, "exchange_commands_total", outcome="accepted", **orders) == 2
    assert value(after, "exchange_commands_total", outcome="insufficient_balance", **orders) == 1
    assert value(after, "exchange_commands_total", outcome="accepted", command="credit") == 2
    assert value(after, "exchange_api_refusals_total", api="seed", method="buy") == 2
    assert value(after, "exchange_api_refusals_total", method="buy", code="invalid_argument") == 1
    assert value(after, "exchange_trades_total") == 1
    assert value(after, "exchange_codes_sent_total") == 2
    assert value(after, "exchange_logins_total", outcome="ok") == 2
    assert value(after, "exchange_logins_total", outcome="invalid_credentials") == 1
    assert value(after, "exchange_batches_total") >= 4  # two credits and three orders at least
    assert value(after, "exchange_batch_commands_count") == value(after, "exchange_batches_total")
    assert value(after, "exchange_batch_commands_sum") == value(after, "exchange_commands_total")
    assert value(after, "exchange_commit_duration_seconds_count") == value(
        after, "exchange_batches_total"
    )
    # The HTTP histogram: every POST above, by status; its buckets are cumulative.
    posts = "exchange_http_request_duration_seconds_count"
    posts_ok = value(after, posts, method="POST", status="200")
    assert posts_ok == 8  # 2 × (code, register, login) and the two orders that were taken
    assert value(after, posts, method="POST", status="400") == 2  # too poor, bad amount
    assert value(after, posts, method="POST", status="401") == 1  # the wrong password
    assert (
        value(
            after,
            "exchange_http_request_duration_seconds_bucket",
            method="POST",
            status="200",
            le="+Inf",
        )
        == posts_ok
    )
    assert value(after, "exchange_engine_queue_depth") == 0
    assert value(after, "exchange_engine_reloads_total") == 0
    assert value(after, "exchange_ws_slow_clients_dropped_total") == 0
    assert value(after, "exchange_database_errors_total") == 0
    assert value(after, "exchange_withdrawals_pending", coin="BTC") == 0
    # Balances: what was credited sits with the users, the deposits account holds minus it.
    assert value(after, "exchange_asset_scale", asset="BTC") == 8
    for asset, credited in (("BTC", 10**8), ("USDT", 30_000 * 10**6), ("ETH", 0)):
        users = value(after, "exchange_balance_units", asset=asset, holder="users")
        fees = value(after, "exchange_balance_units", asset=asset, holder="fees")
        assert users + fees == credited  # the trade's fees moved to the fee account
        assert value(after, "exchange_balance_units", asset=asset, holder="deposits") == -credited
        assert (fees > 0) == (asset != "ETH")
    assert value(after, "exchange_balance_units", asset="BTC", part="frozen") == 2 * 10**7
    assert conservation(after) == {"BTC": 0, "ETH": 0, "USDT": 0}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_metrics_are_off_with_an_empty_address(db_url: str, tmp_path: Path) -> None:
    metrics_port = free_port()
    env = exchange_env(db_url, EXCHANGE_METRICS_ADDRESS="")
    with running_server(free_port(), env, tmp_path / "server.log") as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")


def test_metrics_count_every_worker_once(db_url: str, tmp_path: Path) -> None:
    metrics_port = free_port()
    env = exchange_env(db_url, EXCHANGE_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}")
    with running_server(
        free_port(), env, tmp_path / "server.log", args=("--workers", "2")
    ) as server:
        assert server.process is not None
        pids = wait_for_workers(server.process.pid)
        # DELETE of an unknown path: no other request of the run has that method and status.
        missing = {"method": "DELETE", "status": "404"}
        assert value(scrape(metrics_port), HTTP_COUNT, **missing) == 0
        sent = 40
        for _ in range(sent):  # a new connection each: the kernel spreads them
            gone = httpx.delete(f"{server.url}/api/v3/nothing", headers=FRESH)
            assert gone.status_code == 404
        counts = wait_until(
            metrics_port,
            lambda s: value(s, HTTP_COUNT, **missing) >= sent,
            "every DELETE folded in",
        )
        assert value(counts, HTTP_COUNT, **missing) == sent  # each process counted once
        # Requests of another kind, folded in after those: the count did not move on.
        for _ in range(10):
            httpx.put(f"{server.url}/api/v3/nothing", headers=FRESH)
        later = wait_for(metrics_port, HTTP_COUNT, 10, method="PUT", status="404")
        assert value(later, HTTP_COUNT, **missing) == sent
        assert value(later, "exchange_engine_ready") == 1  # the writer's own state is there too

        async def connections() -> None:
            sockets = [
                await websockets.connect(f"ws://127.0.0.1:{server.port}/ws/btcusdt@trade")
                for _ in range(6)
            ]
            try:
                await asyncio.to_thread(
                    wait_for, metrics_port, "exchange_ws_connections", 6, dialect="binance"
                )
                holders = [owner_of(server.port, ws.local_address[1], pids) for ws in sockets]
                assert set(holders) <= pids
                # kill -9 of a worker: its connections stop counting, its requests do not.
                victim = max(pids, key=holders.count)
                os.kill(victim, signal.SIGKILL)
                assert server.process is not None
                await asyncio.to_thread(wait_for_workers, server.process.pid)
                assert not alive(victim)
                left = await asyncio.to_thread(
                    wait_for,
                    metrics_port,
                    "exchange_ws_connections",
                    6 - holders.count(victim),
                    dialect="binance",
                )
                assert value(left, HTTP_COUNT, **missing) == sent  # the dead worker's too
            finally:
                for ws in sockets:
                    await ws.close()

        asyncio.run(connections())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_gateways_of_another_host_serve_their_own_metrics(db_url: str, tmp_path: Path) -> None:
    """``exchange gateway`` alone, and ``--workers 2`` (its parent adds both up), each on
    its own metrics port: their requests counted once, how many follow the writer now."""
    with nats_server(tmp_path) as nats:
        accounts = nats.accounts
        assert accounts is not None
        writer = Writer(
            exchange_env(db_url, EXCHANGE_NATS_URL=accounts.writer_url), tmp_path / "writer.log"
        )
        writer.start()
        lone, pair = free_port(), free_port()

        def gateway_env(metrics_port: int) -> dict[str, str]:
            return exchange_env(
                db_url,
                EXCHANGE_NATS_URL=accounts.gateway_url,
                EXCHANGE_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
            )

        try:
            with (
                running_server(free_port(), gateway_env(lone), tmp_path / "a.log", "gateway") as a,
                running_server(
                    free_port(),
                    gateway_env(pair),
                    tmp_path / "b.log",
                    "gateway",
                    ("--workers", "2"),
                ) as b,
            ):
                for server, port, processes in ((a, lone, 1), (b, pair, 2)):
                    wait_for(port, "exchange_gateways_in_step", processes)
                    missing = {"method": "DELETE", "status": "404"}
                    for _ in range(30):
                        gone = httpx.delete(f"{server.url}/api/v3/nothing", headers=FRESH)
                        assert gone.status_code == 404
                    counts = wait_for(port, HTTP_COUNT, 30, **missing)
                    assert value(counts, "exchange_gateway_resyncs_total") >= processes
                    assert value(counts, "exchange_batches_total") == 0  # the writer's alone
                writer.stop()  # the writer gone: no gateway follows it any more
                for port in (lone, pair):
                    wait_for(port, "exchange_gateways_in_step", 0)
        finally:
            writer.stop()
