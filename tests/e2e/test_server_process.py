"""The real ``exchange serve`` process: registration, admin CLI while it runs, kill -9."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.tables import orders, trades
from exchange.bench.server import admin, exchange_env, running_server
from support import (
    check_database_ledger,
    free_port,
    independent_balances,
    register_over_http,
    smtp_server,
)


def test_serve_registers_and_admin_credits_while_running(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(url, smtp_port)
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            token = register_over_http(server.url, mailbox, "alice@example.com")
            auth = {"Authorization": f"Bearer {token}"}
            coins = httpx.post(f"{server.url}/api/get_user_coin", headers=auth).json()
            assert coins["data"]["USDT"] == {"available": "0.000000", "frozen": "0.000000"}

            done = admin(env, "credit", "alice@example.com", "usdt", "1250.5", "--note", "wire 42")
            assert done.returncode == 0, done.stderr
            coins = httpx.post(f"{server.url}/api/get_user_coin", headers=auth).json()
            assert coins["data"]["USDT"] == {"available": "1250.500000", "frozen": "0.000000"}

            for args, reason in [
                (("credit", "nobody@example.com", "BTC", "1"), "no user"),
                (("credit", "alice@example.com", "DOGE", "1"), "not an asset"),
                (("credit", "alice@example.com", "BTC", "abc"), "abc"),
                (("credit", "alice@example.com", "BTC", "0"), "greater than 0"),
                (("credit", "--", "alice@example.com", "BTC", "-1"), "negative"),
                (("credit", "alice@example.com", "BTC", "0.000000001"), "decimals"),
            ]:
                failed = admin(env, *args)
                assert failed.returncode != 0
                assert reason in failed.stderr and len(failed.stderr.strip().splitlines()) == 1

            # A second writer on the same database refuses to start.
            second = running_server(free_port(), env, tmp_path / "second.log")
            with pytest.raises(RuntimeError, match="server exited"):
                second.__enter__()
            assert "another exchange process" in (tmp_path / "second.log").read_text()
        # With the server stopped the CLI applies the credit itself.
        done = admin(env, "credit", "alice@example.com", "BTC", "0.5")
        assert done.returncode == 0, done.stderr
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            coins = httpx.post(f"{server.url}/api/get_user_coin", headers=auth).json()
            assert coins["data"]["BTC"]["available"] == "0.50000000"
            assert coins["data"]["USDT"]["available"] == "1250.500000"
    check_database_ledger(url)


async def _trade_until_killed(
    base: str, tokens: list[str], pid: int, seconds: float
) -> dict[int, dict[str, Any]]:
    """Several clients place and cancel orders; kill -9 the server mid-stream."""
    acknowledged: dict[int, dict[str, Any]] = {}
    stop = asyncio.Event()

    async def trader(token: str, seed: int) -> None:
        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {token}"}
        mine: list[int] = []
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client:
            while not stop.is_set():
                try:
                    if mine and rng.random() < 0.15:
                        answer = await client.post(
                            "/api/cancel_order",
                            data={"order_id": str(mine.pop(rng.randrange(len(mine))))},
                        )
                    else:
                        side = rng.choice(("buy", "sell"))
                        price = 20000 + rng.randint(-20, 20)
                        amount = f"0.00{rng.randint(1, 9)}"
                        params = {"pair": "BTC/USDT", "amount": amount, "price": str(price)}
                        if rng.random() < 0.1:
                            params["time_in_force"] = "IOC"
                        answer = await client.post(f"/api/{side}", data=params)
                except httpx.HTTPError:
                    return  # the server is gone
                body = answer.json()
                if body["status"]:
                    order = body["data"]
                    acknowledged[order["order_id"]] = order
                    if order["status"] in ("open", "partially_filled"):
                        mine.append(order["order_id"])

    async def killer() -> None:
        await asyncio.sleep(seconds)
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        stop.set()

    await asyncio.gather(killer(), *(trader(token, i) for i, token in enumerate(tokens)))
    return acknowledged


def test_kill_9_loses_nothing_acknowledged(db_url: str, tmp_path: Path) -> None:
    emails = [f"trader{i}@example.com" for i in range(4)]
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(db_url, smtp_port)
        port = free_port()
        with running_server(port, env, tmp_path / "server.log") as server:
            tokens = [register_over_http(server.url, mailbox, email) for email in emails]
            for email in emails:
                for coin, amount in (("BTC", "10"), ("USDT", "1000000")):
                    done = admin(env, "credit", email, coin, amount)
                    assert done.returncode == 0, done.stderr
            assert server.process is not None
            acknowledged = asyncio.run(
                _trade_until_killed(server.url, tokens, server.process.pid, seconds=2.0)
            )
            assert server.process.wait(timeout=10) == -signal.SIGKILL
        assert len(acknowledged) > 50, "the load did not run"

        engine = make_sync_engine(db_url)
        try:
            with engine.connect() as conn:
                stored = {r.id: r for r in conn.execute(select(orders))}
                trade_ids = {r.id for r in conn.execute(select(trades.c.id))}
        finally:
            engine.dispose()
        for order_id, answer in acknowledged.items():
            row = stored[order_id]  # every acknowledged order is there
            if answer["status"] in ("filled", "canceled", "rejected"):
                assert row.status == answer["status"]
            assert row.filled >= int(Decimal(answer["filled"]) * 10**8)  # never less filled
            for trade in answer["trades"]:
                assert trade["trade_id"] in trade_ids
        check_database_ledger(db_url)
        independent_balances(db_url)

        # The restarted server rebuilds the same books and keeps trading.
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            depth = httpx.get(
                f"{server.url}/api/get_depth", params={"pair": "BTC/USDT", "limit": 500}
            ).json()
            expected: dict[tuple[str, str], int] = {}
            for row in stored.values():
                if row.status in ("open", "partially_filled"):
                    side = "bids" if row.side == "buy" else "asks"
                    key = (side, f"{row.price // 100}.{row.price % 100:02d}")
                    expected[key] = expected.get(key, 0) + row.amount - row.filled
            if depth.get("status"):
                got = {
                    (side, price): int(Decimal(amount) * 10**8)
                    for side in ("bids", "asks")
                    for price, amount in depth["data"][side]
                }
                assert got == expected
            auth = {"Authorization": f"Bearer {tokens[0]}"}
            answer = httpx.post(
                f"{server.url}/api/buy",
                data={"pair": "BTC/USDT", "amount": "0.01", "price": "1000"},
                headers=auth,
            )
            assert answer.json()["status"], answer.text
        check_database_ledger(db_url)
