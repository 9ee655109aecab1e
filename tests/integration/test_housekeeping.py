"""Nothing grows without bound: pruned tables, a window for idempotency keys (both databases)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from exchange.adapters.db.database import reading
from exchange.adapters.db.tables import login_failures, sessions, verification_codes
from exchange.clock import ManualClock
from support import (
    Mailbox,
    assert_envelope,
    login,
    make_settings,
    new_trader,
    register,
    running_app,
    until,
)

MINUTE = 60_000
HOUR = 60 * MINUTE


def count(app: Any, table: Any) -> int:
    # A read: no write lock, which the app's own awaited transactions may hold (on this thread).
    with reading(app.runtime.services.engine.journal.engine).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


async def test_housekeeping_deletes_what_no_rule_needs(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    mailbox, port = mail
    settings = make_settings(database_url, port, session_idle=30 * 60, session_lifetime=12 * 3600)
    async with running_app(settings, clock) as (app, client):
        await register(client, mailbox, "old@example.com")
        await login(client, "old@example.com")
        client.cookies.clear()  # a login would end the session its cookie carries
        for _ in range(3):
            await client.post("/api/login", data={"user": "old@example.com", "pass": "wrong-one-9"})
        await client.post("/api/make_valid_code", data={"user": "pending@example.com"})
        assert count(app, sessions) == 1 and count(app, login_failures) == 3
        assert count(app, verification_codes) == 2  # one used, one pending
        housekeeping = app.runtime.housekeeping
        assert await housekeeping.run_once() == {"login_failures": 0, "codes": 0, "sessions": 0}

        clock.advance(2 * HOUR)  # past the lockout window, the codes' expiry + 1 h, idle
        await register(client, mailbox, "new@example.com")
        fresh = await login(client, "new@example.com")
        client.cookies.clear()
        await client.post("/api/login", data={"user": "new@example.com", "pass": "wrong-one-9"})
        deleted = await housekeeping.run_once()
        assert deleted == {"login_failures": 3, "codes": 2, "sessions": 1}
        assert count(app, sessions) == 1 and count(app, login_failures) == 1
        assert count(app, verification_codes) == 1  # the new user's code, still recent
        answer = await client.post(
            "/api/get_user_coin", headers={"Authorization": f"Bearer {fresh}"}
        )
        assert_envelope(answer, 200)  # a live session is never deleted


async def test_housekeeping_runs_by_itself(
    sqlite_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    settings = make_settings(sqlite_url, mail[1], prune_interval=1)
    async with running_app(settings, clock) as (app, client):
        await client.post("/api/login", data={"user": "x@example.com", "pass": "wrong-one-9"})
        assert count(app, login_failures) == 1
        clock.advance(HOUR)
        await until(lambda: count(app, login_failures) == 0, 20, "the periodic pruning")


async def test_a_client_order_id_names_its_order_for_the_window_only(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    mailbox, port = mail
    settings = make_settings(
        database_url, port, client_order_id_ttl=600, session_idle=86_400, session_lifetime=86_400
    )
    order = {"pair": "BTC/USDT", "amount": "0.001", "price": "20000", "client_order_id": "again"}
    async with running_app(settings, clock) as (app, client):
        user = await new_trader(app, client, mailbox, "k@example.com", USDT="1000")
        first = assert_envelope(await client.post("/api/buy", data=order, headers=user), 200)
        clock.advance(9 * MINUTE)
        retry = assert_envelope(await client.post("/api/buy", data=order, headers=user), 200)
        assert retry["order_id"] == first["order_id"]
    async with running_app(settings, clock) as (app, client):  # within the window: loaded
        retry = assert_envelope(await client.post("/api/buy", data=order, headers=user), 200)
        assert retry["order_id"] == first["order_id"]
        clock.advance(13 * MINUTE)  # past 600 s and its last slice (150 s)
        later = assert_envelope(await client.post("/api/buy", data=order, headers=user), 200)
        assert later["order_id"] != first["order_id"]  # a new order now
        clock.advance(30 * MINUTE)
    async with running_app(settings, clock) as (app, client):  # nothing old is loaded
        assert len(app.runtime.services.engine.core._client_ids) == 0
        orders = assert_envelope(await client.post("/api/get_orders", headers=user), 200)
        assert sorted(o["order_id"] for o in orders) == sorted(
            {first["order_id"], later["order_id"]}
        )
