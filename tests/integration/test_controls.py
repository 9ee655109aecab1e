"""Market and account controls: halt/resume, freeze/unfreeze, cancel-orders, users.

Each is the operator service the CLI uses (``exchange.admin.Admin``), applied by
the running app's engine through its inbox, audited, durable (a restarted app
still has it) — on SQLite and PostgreSQL, and (``make test``'s second run)
through an HTTP worker, whose market data learns of a halt from the writer's
batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine as SyncEngine

from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.tables import admin_audit
from exchange.admin import Admin
from exchange.domain.errors import ExchangeError
from support import (
    Mailbox,
    assert_envelope,
    check_database_ledger,
    make_settings,
    new_trader,
    running_app,
    until,
)

Pair = tuple[Any, httpx.AsyncClient]
PAIR = "BTC/USDT"
ADDRESS = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"


@pytest.fixture
async def app_client(database_url: str, mail: tuple[Mailbox, int]) -> AsyncIterator[Pair]:
    settings = make_settings(database_url, mail[1], withdraw_address_cooldown=0)
    async with running_app(settings) as pair:
        yield pair


@pytest.fixture
def operator(app_client: Pair, database_url: str) -> Iterator[Admin]:
    db: SyncEngine = make_sync_engine(database_url)
    yield Admin(db, database_url, app_client[0].runtime.services.markets)
    db.dispose()


async def order(client: httpx.AsyncClient, user: dict[str, str], side: str, price: str) -> Any:
    return await client.post(
        f"/api/{side}", data={"pair": PAIR, "amount": "0.01", "price": price}, headers=user
    )


async def symbol_status(client: httpx.AsyncClient) -> str:
    info = (await client.get("/api/v3/exchangeInfo", params={"symbol": "BTCUSDT"})).json()
    status: str = info["symbols"][0]["status"]
    return status


def audited(database_url: str) -> list[tuple[str, str]]:
    """(action, outcome) of every audit row, oldest first."""
    db = make_sync_engine(database_url)
    try:
        with db.connect() as conn:
            rows = conn.execute(select(admin_audit).order_by(admin_audit.c.id)).all()
    finally:
        db.dispose()
    return [(row.action, json.loads(row.details)["outcome"]) for row in rows]


async def test_a_halted_market_refuses_orders_cancels_work_and_market_data_says_so(
    app_client: Pair, operator: Admin, mailbox: Mailbox, database_url: str
) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "h@example.com", USDT="10000")
    resting = assert_envelope(await order(client, user, "buy", "20000"), 200)
    assert await symbol_status(client) == "TRADING"

    done = await asyncio.to_thread(operator.halt, "btc_usdt", "maintenance")
    assert done == {"kind": "halt", "key": PAIR, "active": True, "changed": True}
    assert_envelope(await order(client, user, "buy", "20000"), 400, "market_halted")
    other = await client.post(
        "/api/buy", data={"pair": "ETH/USDT", "amount": "0.1", "price": "2000"}, headers=user
    )
    assert_envelope(other, 200)  # only the halted market stops
    # Market data says so, in this process and on a worker (from the writer's batch).
    await until(lambda: _halted(client), what="exchangeInfo showing HALT")
    cancelled = await client.post(
        "/api/cancel_order", data={"order_id": str(resting["order_id"])}, headers=user
    )
    assert assert_envelope(cancelled, 200)["status"] == "canceled"
    again = await asyncio.to_thread(operator.halt, "BTCUSDT")
    assert again["changed"] is False

    await asyncio.to_thread(operator.halt, PAIR, active=False)
    assert_envelope(await order(client, user, "buy", "20000"), 200)
    assert await symbol_status(client) == "TRADING"
    assert ("halt", "done") in audited(database_url)
    assert ("resume", "done") in audited(database_url)
    with pytest.raises(ExchangeError) as unknown:
        await asyncio.to_thread(operator.halt, "DOGE/USDT")
    assert unknown.value.code == "unknown_pair"
    assert ("halt", "refused") in audited(database_url)
    check_database_ledger(database_url)


async def _halted(client: httpx.AsyncClient) -> bool:
    return await symbol_status(client) == "HALT"


async def test_a_halt_survives_a_restart_and_speaks_binance(
    database_url: str, mail: tuple[Mailbox, int], mailbox: Mailbox
) -> None:
    settings = make_settings(database_url, mail[1])
    async with running_app(settings) as (app, client):
        user = await new_trader(app, client, mailbox, "r@example.com", USDT="10000")
        made = assert_envelope(
            await client.post(
                "/api/create_api_key", data={"label": "bot", "permissions": "trade"}, headers=user
            ),
            200,
        )
        db = make_sync_engine(database_url)
        try:
            await asyncio.to_thread(Admin(db, database_url, app.runtime.markets).halt, PAIR)
        finally:
            db.dispose()
    async with running_app(settings) as (app, client):
        assert await symbol_status(client) == "HALT"
        assert_envelope(await order(client, user, "buy", "20000"), 400, "market_halted")
        query = (
            f"symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price=20000"
            f"&timestamp={int(time.time() * 1000)}"
        )
        signature = hmac.new(made["secret"].encode(), query.encode(), hashlib.sha256).hexdigest()
        answer = await client.post(
            f"/api/v3/order?{query}&signature={signature}",
            headers={"X-MBX-APIKEY": made["api_key"]},
        )
        assert answer.status_code == 400
        assert answer.json() == {"code": -2010, "msg": "Market is closed."}


async def test_a_frozen_account_can_look_and_cancel_but_not_trade_withdraw_or_make_keys(
    app_client: Pair, operator: Admin, mailbox: Mailbox, database_url: str
) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "f@example.com", USDT="10000", BTC="1")
    other = await new_trader(app, client, mailbox, "o@example.com", USDT="10000")
    resting = assert_envelope(await order(client, user, "buy", "20000"), 200)
    set_address = await client.post(
        "/api/set_withdraw_address", data={"coin": "BTC", "address": ADDRESS}, headers=user
    )
    assert_envelope(set_address, 200)

    done = await asyncio.to_thread(operator.freeze, "F@example.com", "chargeback")
    assert done["changed"] is True
    assert_envelope(await order(client, user, "buy", "20000"), 403, "account_frozen")
    withdrawal = await client.post(
        "/api/withdraw", data={"coin": "BTC", "amount": "0.1"}, headers=user
    )
    assert_envelope(withdrawal, 403, "account_frozen")
    key = await client.post(
        "/api/create_api_key", data={"label": "bot", "permissions": "trade"}, headers=user
    )
    assert_envelope(key, 403, "account_frozen")
    coins = assert_envelope(await client.post("/api/get_user_coin", headers=user), 200)
    assert coins["BTC"]["available"] == "1.00000000"  # balances are still there to see
    assert_envelope(await order(client, other, "buy", "20000"), 200)  # nobody else is frozen
    cancelled = await client.post(
        "/api/cancel_order", data={"order_id": str(resting["order_id"])}, headers=user
    )
    assert assert_envelope(cancelled, 200)["status"] == "canceled"
    [found] = await asyncio.to_thread(operator.users, "f@ex")
    assert found["frozen"] is True and found["last_login"] is not None

    await asyncio.to_thread(operator.freeze, "f@example.com", active=False)
    assert_envelope(await order(client, user, "buy", "20000"), 200)
    assert ("freeze", "done") in audited(database_url)
    assert ("unfreeze", "done") in audited(database_url)
    check_database_ledger(database_url)


async def test_cancel_orders_of_a_user_on_one_market_or_all(
    app_client: Pair, operator: Admin, mailbox: Mailbox, database_url: str
) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "c@example.com", USDT="100000")
    other = await new_trader(app, client, mailbox, "d@example.com", USDT="100000")
    btc = [
        assert_envelope(await order(client, user, "buy", p), 200)["order_id"]
        for p in ("1000", "2000")
    ]
    eth = assert_envelope(
        await client.post(
            "/api/buy", data={"pair": "ETH/USDT", "amount": "1", "price": "100"}, headers=user
        ),
        200,
    )["order_id"]
    theirs = assert_envelope(await order(client, other, "buy", "3000"), 200)["order_id"]

    done = await asyncio.to_thread(operator.cancel_orders, "c@example.com", "BTC/USDT")
    assert sorted(done["order_ids"]) == sorted(btc)
    [found] = await asyncio.to_thread(operator.users, "c@example.com")
    assert [o["id"] for o in found["open_orders"]] == [eth]
    assert found["balances"]["USDT"][1] > 0  # the ETH order still holds its USDT
    done = await asyncio.to_thread(operator.cancel_orders, "c@example.com", None)
    assert done["order_ids"] == [eth]
    [found] = await asyncio.to_thread(operator.users, "c@example.com")
    assert found["open_orders"] == [] and found["balances"]["USDT"] == (100_000 * 10**6, 0)
    [still] = await asyncio.to_thread(operator.users, "d@example.com")
    assert [o["id"] for o in still["open_orders"]] == [theirs]
    assert ("cancel_orders", "done") in audited(database_url)
    check_database_ledger(database_url)
