"""Trading through the HTTP API on SQLite and PostgreSQL: orders, trades, fees, ledger."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import httpx
import psycopg
import pytest

from exchange.domain.ledger import FEE_ACCOUNT
from support import (
    assert_envelope,
    check_books_and_ledger,
    check_database_ledger,
    make_settings,
    new_trader,
    postgres_database,
    running_app,
    until,
    writer_held,
)

Pair = tuple[Any, httpx.AsyncClient]


async def balances(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = assert_envelope(
        await client.post("/api/get_user_coin", headers=headers), 200
    )
    return data


async def test_two_users_trade_with_exact_fees(
    app_client: Pair, mailbox: Any, database_url: str
) -> None:
    app, client = app_client
    seller = await new_trader(app, client, mailbox, "seller@example.com", BTC="1")
    buyer = await new_trader(app, client, mailbox, "buyer@example.com", USDT="30000")
    sell = await client.post(
        "/api/sell", data={"pair": "BTC/USDT", "amount": "0.5", "price": "20000"}, headers=seller
    )
    order = assert_envelope(sell, 200)
    assert order["status"] == "open" and order["price"] == "20000.00" and order["trades"] == []
    assert (await balances(client, seller))["BTC"] == {
        "available": "0.50000000",
        "frozen": "0.50000000",
    }

    buy = await client.post(
        "/router?router=buy",
        data={"pair": "btc_usdt", "amount": "0.5", "price": "21000"},
        headers=buyer,
    )
    order = assert_envelope(buy, 200)
    assert order["status"] == "filled" and order["filled"] == "0.50000000"
    assert order["average_price"] == "20000.00"  # the maker's price
    [trade] = order["trades"]
    assert trade["price"] == "20000.00" and trade["amount"] == "0.50000000"
    assert trade["role"] == "taker" and trade["fee"] == "0.00100000" and trade["fee_coin"] == "BTC"

    # Seller: base down by the amount, quote up by price x amount minus 0.2 %.
    assert await balances(client, seller) == {
        "BTC": {"available": "0.50000000", "frozen": "0.00000000"},
        "ETH": {"available": "0.00000000", "frozen": "0.00000000"},
        "USDT": {"available": "9980.000000", "frozen": "0.000000"},
    }
    # Buyer: quote down by price x amount (the 21000 limit's surplus returned), base up minus fee.
    assert await balances(client, buyer) == {
        "BTC": {"available": "0.49900000", "frozen": "0.00000000"},
        "ETH": {"available": "0.00000000", "frozen": "0.00000000"},
        "USDT": {"available": "20000.000000", "frozen": "0.000000"},
    }
    ledger = app.runtime.services.engine.core.ledger
    assert ledger.balance(FEE_ACCOUNT, "BTC") == (100_000, 0)  # 0.001 BTC
    assert ledger.balance(FEE_ACCOUNT, "USDT") == (20_000_000, 0)  # 20 USDT

    mine = assert_envelope(await client.post("/api/get_my_trades", headers=seller), 200)
    assert [(t["side"], t["role"], t["fee"], t["fee_coin"]) for t in mine] == [
        ("sell", "maker", "20.000000", "USDT")
    ]
    orders = assert_envelope(
        await client.post("/api/get_orders", data={"status": "all"}, headers=seller), 200
    )
    assert [o["status"] for o in orders] == ["filled"]
    assert assert_envelope(await client.post("/api/get_orders", headers=seller), 200) == []
    check_books_and_ledger(app)
    check_database_ledger(database_url)


async def test_partial_fills_and_price_time_priority(app_client: Pair, mailbox: Any) -> None:
    app, client = app_client
    a = await new_trader(app, client, mailbox, "a@example.com", ETH="10")
    b = await new_trader(app, client, mailbox, "b@example.com", ETH="10")
    c = await new_trader(app, client, mailbox, "c@example.com", USDT="100000")
    first = assert_envelope(
        await client.post(
            "/api/sell", data={"pair": "ETH-USDT", "amount": "1", "price": "3000"}, headers=a
        ),
        200,
    )
    second = assert_envelope(
        await client.post(
            "/api/sell", data={"pair": "ETH/USDT", "amount": "1", "price": "3000"}, headers=b
        ),
        200,
    )
    cheaper = assert_envelope(
        await client.post(
            "/api/sell", data={"pair": "eth_usdt", "amount": "0.5", "price": "2999.99"}, headers=b
        ),
        200,
    )
    taken = assert_envelope(
        await client.post(
            "/api/buy", data={"pair": "ETH/USDT", "amount": "1.2", "price": "3000"}, headers=c
        ),
        200,
    )
    assert [(t["price"], t["amount"]) for t in taken["trades"]] == [
        ("2999.99", "0.50000000"),
        ("3000.00", "0.70000000"),
    ]
    orders = {
        o["order_id"]: o
        for o in assert_envelope(
            await client.post("/api/get_orders", data={"status": "all"}, headers=a), 200
        )
    }
    assert orders[first["order_id"]]["status"] == "partially_filled"
    assert orders[first["order_id"]]["filled"] == "0.70000000"
    b_orders = {
        o["order_id"]: o["status"]
        for o in assert_envelope(
            await client.post("/api/get_orders", data={"status": "all"}, headers=b), 200
        )
    }
    assert b_orders == {second["order_id"]: "open", cheaper["order_id"]: "filled"}
    check_books_and_ledger(app)


async def test_json_number_and_string_mean_the_same_exact_decimal(
    app_client: Pair, mailbox: Any
) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "j@example.com", ETH="1")
    as_number = await client.post(
        "/api/sell", json={"pair": "ETH/BTC", "amount": 0.1, "price": 0.050001}, headers=user
    )
    as_text = await client.post(
        "/api/sell", json={"pair": "ETH/BTC", "amount": "0.1", "price": "0.050001"}, headers=user
    )
    one, two = assert_envelope(as_number, 200), assert_envelope(as_text, 200)
    assert (
        (one["amount"], one["price"]) == (two["amount"], two["price"]) == ("0.10000000", "0.050001")
    )
    assert (await balances(client, user))["ETH"] == {
        "available": "0.80000000",
        "frozen": "0.20000000",
    }


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("amount", "1e400", "invalid_argument"),
        ("amount", "NaN", "invalid_argument"),
        ("amount", "Infinity", "invalid_argument"),
        ("amount", "-1", "invalid_argument"),
        ("amount", "0", "invalid_argument"),
        ("amount", "abc", "invalid_argument"),
        ("amount", "0.000001", "invalid_argument"),  # finer than the 0.00001 step
        ("amount", "", "missing_argument"),
        ("price", "20000.001", "invalid_argument"),  # finer than the 0.01 tick
        ("price", "0", "invalid_argument"),
        ("price", "-5", "invalid_argument"),
        ("price", "1e400", "invalid_argument"),
        ("price", "10000000000000", "invalid_argument"),  # 10**15 cents: past BIGINT safety
        ("amount", "10000000", "invalid_argument"),  # 10**15 satoshi
        ("price", "", "missing_argument"),
        ("type", "stop", "invalid_argument"),
        ("time_in_force", "GTX", "invalid_argument"),
        ("post_only", "maybe", "invalid_argument"),
        ("client_order_id", "x" * 37, "invalid_argument"),
    ],
)
async def test_bad_order_input(
    app_client: Pair, mailbox: Any, field: str, value: str, code: str
) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "v@example.com", USDT="100000", BTC="1")
    before = await balances(client, user)
    params = {"pair": "BTC/USDT", "amount": "0.01", "price": "20000", field: value}
    for side in ("buy", "sell"):
        assert_envelope(await client.post(f"/api/{side}", data=params, headers=user), 400, code)
    assert await balances(client, user) == before
    assert assert_envelope(await client.post("/api/get_orders", headers=user), 200) == []


async def test_refusals(app_client: Pair, mailbox: Any) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "r@example.com", USDT="100")
    order = {"pair": "BTC/USDT", "amount": "0.01", "price": "20000"}
    answer = await client.post("/api/buy", data=order, headers=user)
    assert_envelope(answer, 400, "insufficient_balance")
    assert "USDT" in answer.json()["description"]
    assert_envelope(
        await client.post("/api/buy", data={**order, "pair": "DOGE/USDT"}, headers=user),
        404,
        "unknown_pair",
    )
    assert_envelope(
        await client.post(
            "/api/buy", data={**order, "price": "100", "amount": "0.01"}, headers=user
        ),
        400,
        "below_minimum",
    )
    assert_envelope(await client.post("/api/buy", data=order), 401, "not_logged_in")
    assert_envelope(
        await client.post("/api/cancel_order", data={"order_id": "1"}), 401, "not_logged_in"
    )
    assert_envelope(await client.post("/api/cancel_order", headers=user), 400, "missing_argument")
    assert_envelope(
        await client.post("/api/cancel_order", data={"order_id": "x"}, headers=user),
        400,
        "invalid_argument",
    )
    assert_envelope(
        await client.post("/api/cancel_order", data={"order_id": "999"}, headers=user),
        404,
        "order_not_found",
    )
    assert_envelope(await client.get("/api/buy"), 405, "method_not_allowed")
    # Beyond what a 64-bit integer holds (a worker could not even send it): 400, not 500.
    for huge in ({"amount": "1e20"}, {"price": "1e25"}, {"amount": "10000000"}):
        answer = await client.post("/api/buy", data={**order, **huge}, headers=user)
        assert_envelope(answer, 400, "invalid_argument")
        assert "larger than this exchange accepts" in answer.json()["description"]
    blank = await client.post("/api/get_orders", data={"pair": "  "}, headers=user)
    assert_envelope(blank, 200)  # a blank optional pair means every market, as before
    assert (await balances(client, user))["USDT"] == {
        "available": "100.000000",
        "frozen": "0.000000",
    }


async def test_cancel_unfreezes_and_is_private(app_client: Pair, mailbox: Any) -> None:
    app, client = app_client
    owner = await new_trader(app, client, mailbox, "o@example.com", USDT="1000")
    other = await new_trader(app, client, mailbox, "x@example.com", USDT="1000")
    order = assert_envelope(
        await client.post(
            "/api/buy", data={"pair": "BTC/USDT", "amount": "0.01", "price": "20000"}, headers=owner
        ),
        200,
    )
    assert (await balances(client, owner))["USDT"] == {
        "available": "800.000000",
        "frozen": "200.000000",
    }
    oid = {"order_id": str(order["order_id"])}
    assert_envelope(
        await client.post("/api/cancel_order", data=oid, headers=other), 404, "order_not_found"
    )
    canceled = assert_envelope(await client.post("/api/cancel_order", data=oid, headers=owner), 200)
    assert canceled["status"] == "canceled" and canceled["order_id"] == order["order_id"]
    assert (await balances(client, owner))["USDT"] == {
        "available": "1000.000000",
        "frozen": "0.000000",
    }
    assert_envelope(
        await client.post("/api/cancel_order", data=oid, headers=owner), 404, "order_not_found"
    )
    check_books_and_ledger(app)


async def test_client_order_id_is_idempotent(app_client: Pair, mailbox: Any) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "i@example.com", USDT="1000")
    params = {"pair": "BTC/USDT", "amount": "0.01", "price": "20000", "client_order_id": "my-1"}
    first = assert_envelope(await client.post("/api/buy", data=params, headers=user), 200)
    again = assert_envelope(await client.post("/api/buy", data=params, headers=user), 200)
    assert again["order_id"] == first["order_id"] and again["price"] == "20000.00"
    assert again["client_order_id"] == "my-1"
    # The same id for another order is the client's mistake, not a retry: refused.
    other = await client.post("/api/buy", data={**params, "price": "25000"}, headers=user)
    assert_envelope(other, 400, "invalid_argument")
    assert "price" in other.json()["description"]
    assert (await balances(client, user))["USDT"]["frozen"] == "200.000000"
    assert len(assert_envelope(await client.post("/api/get_orders", headers=user), 200)) == 1
    # Still the same order after it was canceled.
    await client.post("/api/cancel_order", data={"order_id": str(first["order_id"])}, headers=user)
    closed = assert_envelope(await client.post("/api/buy", data=params, headers=user), 200)
    assert closed["order_id"] == first["order_id"] and closed["status"] == "canceled"


async def test_client_order_id_reused_across_markets(
    database_url: str, mail: tuple[Any, int], clock: Any
) -> None:
    """The seen defect: a reuse on another market answered the first order in the new
    market's format. Now a repeat gets the first order at its own market's scales and
    a different order with the same id is refused, before and after a restart (when
    the order is only in the database)."""
    mailbox, port = mail
    settings = make_settings(database_url, port)
    ask = {"pair": "ETH/BTC", "amount": "0.5", "price": "0.012345", "client_order_id": "dup-x"}
    other = {"pair": "BTC/USDT", "amount": "0.5", "price": "123.45", "client_order_id": "dup-x"}
    async with running_app(settings, clock) as (app, client):
        user = await new_trader(app, client, mailbox, "x@example.com", BTC="1")
        first = assert_envelope(await client.post("/api/buy", data=ask, headers=user), 200)
        assert (first["pair"], first["price"]) == ("ETH/BTC", "0.012345")
        oid = {"order_id": str(first["order_id"])}
        assert_envelope(await client.post("/api/cancel_order", data=oid, headers=user), 200)
        await _reuse_checks(client, user, ask, other, first["order_id"])
    async with running_app(settings, clock) as (app, client):  # the order is in the database only
        assert app.runtime.services.engine.core.order(first["order_id"]) is None
        await _reuse_checks(client, user, ask, other, first["order_id"])
        check_books_and_ledger(app)


async def _reuse_checks(
    client: httpx.AsyncClient,
    user: dict[str, str],
    ask: dict[str, str],
    other: dict[str, str],
    order_id: int,
) -> None:
    refused = await client.post("/api/sell", data=other, headers=user)
    assert_envelope(refused, 400, "invalid_argument")
    assert "pair" in refused.json()["description"]
    repeat = assert_envelope(await client.post("/api/buy", data=ask, headers=user), 200)
    assert repeat["order_id"] == order_id
    assert (repeat["pair"], repeat["side"], repeat["price"]) == ("ETH/BTC", "buy", "0.012345")
    assert repeat["status"] == "canceled"


async def test_order_types_through_http(app_client: Pair, mailbox: Any) -> None:
    app, client = app_client
    maker = await new_trader(app, client, mailbox, "m@example.com", BTC="1")
    taker = await new_trader(app, client, mailbox, "t@example.com", USDT="100000")
    await client.post(
        "/api/sell", data={"pair": "BTC/USDT", "amount": "0.1", "price": "20000"}, headers=maker
    )
    post_only = assert_envelope(
        await client.post(
            "/api/buy",
            data={"pair": "BTC/USDT", "amount": "0.1", "price": "20000", "post_only": "true"},
            headers=taker,
        ),
        200,
    )
    assert post_only["status"] == "rejected" and post_only["trades"] == []
    fok = assert_envelope(
        await client.post(
            "/api/buy",
            data={"pair": "BTC/USDT", "amount": "0.2", "price": "20000", "time_in_force": "FOK"},
            headers=taker,
        ),
        200,
    )
    assert fok["status"] == "canceled" and fok["trades"] == []
    ioc = assert_envelope(
        await client.post(
            "/api/buy",
            data={"pair": "BTC/USDT", "amount": "0.05", "price": "20000", "time_in_force": "IOC"},
            headers=taker,
        ),
        200,
    )
    assert ioc["status"] == "filled"
    market = assert_envelope(
        await client.post(
            "/api/buy", data={"pair": "BTC/USDT", "amount": "0.08", "type": "market"}, headers=taker
        ),
        200,
    )
    assert market["type"] == "market" and market["filled"] == "0.05000000"
    assert market["status"] == "canceled"  # the rest of a market order does not rest
    assert (await balances(client, taker))["USDT"]["frozen"] == "0.000000"
    check_books_and_ledger(app)


async def test_concurrent_buys_never_overspend(
    app_client: Pair, mailbox: Any, database_url: str
) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "c@example.com", USDT="1000")  # 100 x 10 USDT
    params = {"pair": "BTC/USDT", "amount": "0.001", "price": "10000"}
    answers = await asyncio.gather(
        *(client.post("/api/buy", data=params, headers=user) for _ in range(200))
    )
    accepted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(accepted) == 100
    for answer in refused:
        assert_envelope(answer, 400, "insufficient_balance")
    assert (await balances(client, user))["USDT"] == {
        "available": "0.000000",
        "frozen": "1000.000000",
    }
    assert len({a.json()["data"]["order_id"] for a in accepted}) == 100
    check_books_and_ledger(app)
    check_database_ledger(database_url)


async def test_books_and_balances_survive_a_restart(database_url: str, mail: Any) -> None:
    mailbox, port = mail
    settings = make_settings(database_url, port)
    async with running_app(settings) as (app, client):
        a = await new_trader(app, client, mailbox, "a@example.com", BTC="2", USDT="50000")
        b = await new_trader(app, client, mailbox, "b@example.com", BTC="2", USDT="50000")
        for i in range(10):
            await client.post(
                "/api/sell",
                data={"pair": "BTC/USDT", "amount": "0.01", "price": str(20000 + i)},
                headers=a,
            )
            await client.post(
                "/api/buy",
                data={"pair": "BTC/USDT", "amount": "0.015", "price": str(20003 - i)},
                headers=b,
            )
        core = app.runtime.services.engine.core
        before = (
            sorted(core.ledger.accounts()),
            core.depth("BTC/USDT", 100),
            [(o.id, o.filled, o.frozen, o.status) for o in core.open_orders()],
            core.next_order_id,
            core.next_trade_id,
        )
    async with running_app(settings) as (app, client):
        core = app.runtime.services.engine.core
        after = (
            sorted(core.ledger.accounts()),
            core.depth("BTC/USDT", 100),
            [(o.id, o.filled, o.frozen, o.status) for o in core.open_orders()],
            core.next_order_id,
            core.next_trade_id,
        )
        assert after == before
        check_books_and_ledger(app)
    check_database_ledger(database_url)


async def test_the_books_loaded_at_start_are_outside_the_collectors_scans(
    database_url: str, mail: Any
) -> None:
    """A full collection visits every tracked object: the resting orders a writer loads
    at its start are frozen out of it while it serves (docs/performance.md), and given
    back to the collector when it stops."""
    mailbox, port = mail
    settings = make_settings(database_url, port)
    async with running_app(settings) as (app, client):
        seller = await new_trader(app, client, mailbox, "s@example.com", BTC="1")
        for i in range(3):
            answer = await client.post(
                "/api/sell",
                data={"pair": "BTC/USDT", "amount": "0.01", "price": str(30000 + i)},
                headers=seller,
            )
            assert answer.json()["status"] is True
    async with running_app(settings) as (app, client):
        loaded = app.runtime.services.engine.core.open_orders()
        assert len(loaded) == 3
        tracked = {id(thing) for thing in gc.get_objects()}
        assert not any(id(order) in tracked for order in loaded)
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    tracked = {id(thing) for thing in gc.get_objects()}  # scanned again once stopped
    assert all(id(order) in tracked for order in loaded)


async def test_full_queue_answers_503_and_loses_nothing_accepted(
    sqlite_url: str, mail: Any
) -> None:
    mailbox, port = mail
    settings = make_settings(sqlite_url, port, queue_size=4)
    async with running_app(settings) as (app, client):
        user = await new_trader(app, client, mailbox, "q@example.com", USDT="100000")
        params = {"pair": "BTC/USDT", "amount": "0.001", "price": "10000"}
        # The writer's commit is held: its batch and a queue of 4 wait, the rest is refused.
        with writer_held(app.runtime.services.engine) as gate:
            sent = [
                asyncio.ensure_future(client.post("/api/buy", data=params, headers=user))
                for _ in range(60)
            ]
            await until(lambda: sum(s.done() for s in sent) >= 60 - 2 * 4, 20, "the refusals")
            gate.set()
            answers = await asyncio.gather(*sent)
        accepted = [a.json()["data"]["order_id"] for a in answers if a.status_code == 200]
        overloaded = [a for a in answers if a.status_code == 503]
        assert accepted and overloaded and len(accepted) + len(overloaded) == 60
        for answer in overloaded:
            assert_envelope(answer, 503, "overloaded")
        stored = assert_envelope(
            await client.post("/api/get_orders", data={"limit": "500"}, headers=user), 200
        )
        assert sorted(o["order_id"] for o in stored) == sorted(accepted)
        frozen = f"{len(accepted) * 10}.000000"
        assert (await balances(client, user))["USDT"]["frozen"] == frozen
        check_books_and_ledger(app)
    check_database_ledger(sqlite_url)


async def test_order_rate_limit_is_per_user_with_retry_after(sqlite_url: str, mail: Any) -> None:
    mailbox, port = mail
    settings = make_settings(sqlite_url, port, rate_limits="on", rate_limit_orders="5/60")
    async with running_app(settings) as (app, client):
        busy = await new_trader(app, client, mailbox, "busy@example.com", USDT="10000")
        other = await new_trader(app, client, mailbox, "calm@example.com", USDT="10000")
        params = {"pair": "BTC/USDT", "amount": "0.001", "price": "10000"}
        for _ in range(5):
            assert_envelope(await client.post("/api/buy", data=params, headers=busy), 200)
        limited = await client.post("/api/buy", data=params, headers=busy)
        assert_envelope(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        # Refused before the engine: nothing was frozen for it.
        assert (await balances(client, busy))["USDT"]["frozen"] == "50.000000"
        # Another user is not affected by the first one's limit.
        assert_envelope(await client.post("/api/buy", data=params, headers=other), 200)


async def test_an_order_after_the_journals_connection_was_ended_is_accepted(
    mail: Any,
) -> None:
    """The journal keeps its connection between batches; one the server has ended
    meanwhile (a restart, an operator, an idle timeout) is replaced before the next
    batch fails on it, as the pool's pre-ping did when it took one per batch."""
    mailbox, port = mail
    with postgres_database() as url:
        async with running_app(make_settings(url, port)) as (app, client):
            buyer = await new_trader(app, client, mailbox, "b@example.com", USDT="1000")
            order = {"pair": "BTC/USDT", "amount": "0.001", "price": "10000"}
            first = assert_envelope(await client.post("/api/buy", data=order, headers=buyer), 200)
            with psycopg.connect(url, autocommit=True) as admin:
                ended = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')"
                ).fetchall()
            assert ended, "no connection of the exchange was ended"
            second = assert_envelope(await client.post("/api/buy", data=order, headers=buyer), 200)
            assert second["order_id"] > first["order_id"]
            assert (await balances(client, buyer))["USDT"]["frozen"] == "20.000000"
            check_books_and_ledger(app)
        check_database_ledger(url)
