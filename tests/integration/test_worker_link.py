"""The worker ↔ writer link under stress: a writer reload, a dropped connection, frames.

Runs with the client talking to a worker app (``through_worker=True``) on both
databases, whatever ``EXCHANGE_TEST_THROUGH_WORKER`` says.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from exchange.app import create_app
from exchange.domain.commands import Credit, PlaceOrder
from exchange.domain.errors import ExchangeError
from exchange.engine.wire import decode_command, encode_command, frame, read_frame
from support import (
    Mailbox,
    assert_envelope,
    check_books_and_ledger,
    check_database_ledger,
    make_settings,
    new_trader,
    running_app,
    until,
)

PAIR = "BTC/USDT"


@pytest.fixture
async def linked(
    database_url: str, mail: tuple[Mailbox, int]
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with running_app(make_settings(database_url, mail[1]), through_worker=True) as pair:
        yield pair


async def depth(client: httpx.AsyncClient) -> Any:
    answer = await client.get("/api/get_depth", params={"pair": PAIR, "limit": "500"})
    return assert_envelope(answer, 200)


def writer_depth(app: Any) -> dict[str, list[list[str]]]:
    market = app.runtime.services.markets[PAIR]
    bids, asks = app.runtime.services.engine.depth(PAIR, 500)
    return {
        "bids": [[market.format_price(p), market.format_amount(a)] for p, a in bids],
        "asks": [[market.format_price(p), market.format_amount(a)] for p, a in asks],
    }


async def place(client: httpx.AsyncClient, who: dict[str, str], side: str, price: str) -> Any:
    answer = await client.post(
        f"/api/{side}", data={"pair": PAIR, "amount": "0.01", "price": price}, headers=who
    )
    return assert_envelope(answer, 200)


async def test_worker_depth_is_the_writers_after_every_answer(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    app, client = linked
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    buyer = await new_trader(app, client, mailbox, "b@example.com", USDT="500000")
    for step in range(30):
        await place(client, seller, "sell", str(20_000 + step % 7))
        if step % 3 == 0:
            await place(client, buyer, "buy", str(20_003 + step % 5))
        view = await depth(client)  # the same worker, right after the answer
        assert {"bids": view["bids"], "asks": view["asks"]} == writer_depth(app)
    check_books_and_ledger(app)


async def test_worker_follows_a_writer_reload(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    """A reload (after a failed commit or a lost lock) replaces the books wholesale."""
    app, client = linked
    engine = app.runtime.services.engine
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    for price in ("21000", "21001", "21002"):
        await place(client, seller, "sell", price)
    # Spoil the worker's replica: only a whole-book frame after the reload mends it.
    app.state.worker.runtime.services.engine.books[PAIR].asks.clear()
    await engine._reload()  # what the writer does after a failed commit
    await place(client, seller, "sell", "21003")
    view = await depth(client)
    assert [level[0] for level in view["asks"]] == ["21000.00", "21001.00", "21002.00", "21003.00"]
    assert {"bids": view["bids"], "asks": view["asks"]} == writer_depth(app)


async def test_dropped_link_refuses_then_resyncs_market_data(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, database_url: str
) -> None:
    app, client = linked
    engine = app.runtime.services.engine
    hub = app.state.hub
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    buyer = await new_trader(app, client, mailbox, "b@example.com", USDT="500000")
    await place(client, seller, "sell", "20000")

    for peer in list(hub._peers):  # the writer drops the worker (as it drops a slow one)
        peer.close()
    answer = await client.post(
        "/api/buy", data={"pair": PAIR, "amount": "0.01", "price": "20000"}, headers=buyer
    )
    if answer.status_code == 503:  # not reconnected yet: refused, nothing happened
        assert_envelope(answer, 503, "overloaded")
    else:  # already back: an ordinary fill
        assert assert_envelope(answer, 200)["status"] == "filled"
    # Batches the worker cannot have seen: committed while it may be away.
    user = await app.runtime.services.accounts.user_id("b@example.com")
    for _ in range(3):
        await engine.submit(PlaceOrder(user, PAIR, "buy", 1_000_000, 2_000_000))

    async def reconnected() -> bool:
        deals = await client.get("/api/get_deal_record", params={"pair": PAIR})
        writer_deals = app.runtime.services.market.deal_records(PAIR, 60)
        return bool(hub.workers) and assert_envelope(deals, 200) == writer_deals

    await until(reconnected)
    view = await depth(client)
    assert {"bids": view["bids"], "asks": view["asks"]} == writer_depth(app)
    coins = assert_envelope(await client.post("/api/get_user_coin", headers=buyer), 200)
    assert coins["BTC"]["available"] != "0.00000000"
    check_books_and_ledger(app)
    check_database_ledger(database_url)


async def test_malformed_frames_are_refused_without_harm(
    linked: tuple[Any, httpx.AsyncClient],
) -> None:
    """Only order, cancel and withdrawal commands cross; anything else ends that link."""
    app, client = linked
    hub = app.state.hub
    with pytest.raises(ValueError):
        encode_command(1, Credit(1, "BTC", 10**8, 0))
    with pytest.raises(ValueError):
        decode_command({"t": "cmd", "id": 1, "k": "Credit", "c": {"user_id": 1}})
    reader, writer = await asyncio.open_unix_connection(hub.path)
    hello = await read_frame(reader)
    assert hello["t"] == "hello" and set(hello["books"]) == set(app.runtime.services.markets)
    # A deposit smuggled in as a command frame: refused with the envelope's code.
    credit = {"user_id": 1, "asset": "BTC", "amount": 10**8, "ref": 0}
    writer.write(frame({"t": "cmd", "id": 7, "k": "Credit", "c": credit}))
    answer = await read_frame(reader)
    assert answer["t"] == "err" and answer["id"] == 7 and answer["e"][0] == "internal_error"
    writer.write(b"\x00\x00\x00\x05[1,2]")  # not an object: the writer ends this link
    await writer.drain()
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        while True:
            assert (await read_frame(reader))["t"] in ("events", "revoke")
    writer.close()
    assert app.runtime.services.engine.core.ledger.balance(1, "BTC") == (0, 0)
    # The real worker's link is untouched.
    assert_envelope(await client.get("/api/get_depth", params={"pair": PAIR}), 200)


async def test_logout_while_cut_off_reaches_the_other_workers(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, database_url: str, mail: Any
) -> None:
    """A revocation made while a worker's link is down is sent when the link is back."""
    app, first = linked
    hub = app.state.hub
    cut_off = app.state.worker.runtime.services.engine
    other = create_app(make_settings(database_url, mail[1]), writer_socket=hub.path)
    transport = httpx.ASGITransport(app=other, client=("127.0.0.1", 50001))
    async with (
        other.runtime.running(),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8088") as second,
    ):
        who = await new_trader(app, first, mailbox, "u@example.com", USDT="1")
        for client in (first, second):  # both workers cache the session
            assert_envelope(await client.post("/api/get_user_coin", headers=who), 200)

        real_path, cut_off.path = cut_off.path, "/nonexistent/writer.sock"
        assert cut_off._writer is not None
        cut_off._writer.close()  # this worker's link only
        await until(lambda: not cut_off.connected and hub.workers == 1)
        assert_envelope(await first.post("/api/logout", headers=who), 200)
        assert cut_off._unsent_revokes  # held, not lost
        # Cut off, the other worker cannot know yet: its cache still says yes.
        assert_envelope(await second.post("/api/get_user_coin", headers=who), 200)

        cut_off.path = real_path
        await until(lambda: hub.workers == 2 and not cut_off._unsent_revokes)

        async def refused_everywhere() -> bool:
            answers = [await c.post("/api/get_user_coin", headers=who) for c in (first, second)]
            return all(answer.status_code == 401 for answer in answers)

        await until(refused_everywhere, seconds=2)


async def test_snapshot_and_balances_wait_for_the_batch_in_flight(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    """A batch whose commit is in flight (here: about to fail) is never shown to a worker."""
    app, client = linked
    engine, hub = app.runtime.services.engine, app.state.hub
    await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    user = await app.runtime.services.accounts.user_id("s@example.com")
    gate, committing = threading.Event(), threading.Event()
    real_commit = engine.journal.commit

    def failing_commit(batch: Any) -> None:
        committing.set()
        gate.wait(10)
        raise OSError("the disk is gone")

    engine.journal.commit = failing_commit
    order = asyncio.ensure_future(engine.submit(PlaceOrder(user, PAIR, "sell", 10**8, 2_100_000)))
    await until(committing.is_set, what="the batch applied in memory, its commit blocked")
    reader, writer = await asyncio.open_unix_connection(hub.path)
    writer.write(frame({"t": "bal", "id": 1, "u": user}))
    first = asyncio.ensure_future(read_frame(reader))
    with pytest.raises(TimeoutError):  # no snapshot, no balances while the batch is in flight
        await asyncio.wait_for(asyncio.shield(first), 0.3)
    engine.journal.commit = real_commit
    gate.set()
    with pytest.raises(ExchangeError):
        await order  # refused: the commit failed
    refused = await first  # the balance read waited on the batch that failed: 503
    assert refused["t"] == "err" and refused["e"][0] == "overloaded"
    snapshot = await read_frame(reader)  # then, after the reload, the snapshot
    assert snapshot["t"] == "hello" and snapshot["books"][PAIR][1] == []
    writer.write(frame({"t": "bal", "id": 2, "u": user}))
    answer = await read_frame(reader)
    assert answer["t"] == "ok" and answer["v"]["BTC"][1] == 0  # [available, frozen] in units
    writer.close()
    view = await depth(client)
    assert view["asks"] == []


async def test_a_newcomer_does_not_stop_whole_books_reaching_the_others(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    app, client = linked
    engine, hub = app.runtime.services.engine, app.state.hub
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    for price in ("21000", "21001", "21002"):
        await place(client, seller, "sell", price)
    app.state.worker.runtime.services.engine.books[PAIR].asks.clear()  # spoil the replica
    await engine._reload()
    reader, writer = await asyncio.open_unix_connection(hub.path)  # another worker arrives
    assert (await read_frame(reader))["t"] == "hello"
    await place(client, seller, "sell", "21003")
    view = await depth(client)
    assert [level[0] for level in view["asks"]] == ["21000.00", "21001.00", "21002.00", "21003.00"]
    writer.close()


async def test_trades_committed_during_a_load_are_listed_once(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    app, client = linked
    engine = app.runtime.services.engine
    worker_market = app.state.worker.runtime.services.market
    store = worker_market._store
    await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    await new_trader(app, client, mailbox, "b@example.com", USDT="500000")
    seller = await app.runtime.services.accounts.user_id("s@example.com")
    buyer = await app.runtime.services.accounts.user_id("b@example.com")

    async def trade() -> None:
        await engine.submit(PlaceOrder(seller, PAIR, "sell", 10**6, 2_000_000))
        await engine.submit(PlaceOrder(buyer, PAIR, "buy", 10**6, 2_000_000))

    await trade()
    real = store.recent_trades

    async def racing(symbol: str, limit: int, through: int) -> Any:
        if symbol == PAIR:
            await trade()  # commits between the candle replay and this query
        return await real(symbol, limit, through)

    store.recent_trades = racing
    worker_engine = app.state.worker.runtime.services.engine
    assert worker_engine._writer is not None
    worker_engine._writer.close()  # reconnect: the worker loads market data again

    async def synced() -> bool:
        return worker_engine.connected and len(worker_market.deal_records(PAIR, 50)) == 2

    await until(synced)
    store.recent_trades = real
    worker_ids = [row["id"] for row in worker_market.deal_records(PAIR, 50)]
    writer_ids = [row["id"] for row in app.runtime.services.market.deal_records(PAIR, 50)]
    assert worker_ids == writer_ids and len(set(worker_ids)) == 2


async def test_a_link_lost_during_a_reload_starts_one_clean_reload(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    """The reload of a dead link is stopped: had it finished late, its older data would win."""
    app, client = linked
    worker_engine = app.state.worker.runtime.services.engine
    worker_market = app.state.worker.runtime.services.market
    store = worker_market._store
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    buyer = await new_trader(app, client, mailbox, "b@example.com", USDT="500000")
    await place(client, seller, "sell", "20000")
    real = store.recent_trades
    calls: list[int] = []

    async def slow_first(symbol: str, limit: int, through: int) -> Any:
        found = await real(symbol, limit, through)
        if symbol == PAIR:
            calls.append(len(calls))
            if len(calls) == 1:
                await asyncio.sleep(1.0)  # loaded, not yet swapped in
        return found

    store.recent_trades = slow_first
    assert worker_engine._writer is not None
    worker_engine._writer.close()
    await until(lambda: len(calls) == 1)
    # While the first reload sleeps: a trade (held by the worker), then the link drops again.
    user = await app.runtime.services.accounts.user_id("b@example.com")
    await app.runtime.services.engine.submit(PlaceOrder(user, PAIR, "buy", 1_000_000, 2_000_000))
    for peer in list(app.state.hub._peers):
        peer.close()
    await until(lambda: len(calls) >= 2 and worker_engine.connected)
    await asyncio.sleep(1.2)  # past the first reload's wake-up, had it not been stopped
    store.recent_trades = real
    assert worker_market.deal_records(PAIR, 50) == app.runtime.services.market.deal_records(
        PAIR, 50
    )
    assert len(worker_market.deal_records(PAIR, 50)) == 1
    assert_envelope(await client.post("/api/get_user_coin", headers=buyer), 200)


async def test_readers_of_a_failed_batch_get_503_while_the_database_is_away(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    """Balance reads waiting on a batch whose commit fails are refused at once, not parked
    until the database is back; a new worker's snapshot waits for the reload."""
    app, client = linked
    engine, hub = app.runtime.services.engine, app.state.hub
    await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    user = await app.runtime.services.accounts.user_id("s@example.com")
    commit_gate, load_gate, committing = threading.Event(), threading.Event(), threading.Event()
    real_commit, real_load = engine.journal.commit, engine._load

    def failing_commit(batch: Any) -> None:
        committing.set()
        commit_gate.wait(10)
        raise OSError("the disk is gone")

    def blocked_load(client_ids_since: int) -> Any:
        load_gate.wait(10)  # the database is still away
        return real_load(client_ids_since)

    engine.journal.commit = failing_commit
    engine._load = blocked_load
    try:
        order = asyncio.ensure_future(
            engine.submit(PlaceOrder(user, PAIR, "sell", 10**8, 2_100_000))
        )
        await until(committing.is_set, what="the batch's commit to block")
        reader, writer = await asyncio.open_unix_connection(hub.path)
        writer.write(frame({"t": "bal", "id": 1, "u": user}))
        local = asyncio.ensure_future(engine.read_balances(user))
        # All wait for the batch: the new peer's hello, its balance read and this one.
        await until(lambda: len(engine._on_idle) == 3, what="hello and both reads parked")
        engine.journal.commit = real_commit
        commit_gate.set()
        with pytest.raises(ExchangeError):
            await order
        answer = await asyncio.wait_for(read_frame(reader), 2)
        assert answer["t"] == "err" and answer["e"][0] == "overloaded"
        with pytest.raises(ExchangeError, match="overloaded"):
            await asyncio.wait_for(local, 2)
        hello = asyncio.ensure_future(read_frame(reader))
        with pytest.raises(TimeoutError):  # no snapshot before the reload
            await asyncio.wait_for(asyncio.shield(hello), 0.3)
        load_gate.set()
        snapshot = await asyncio.wait_for(hello, 10)
        assert snapshot["t"] == "hello" and snapshot["books"][PAIR][1] == []
        writer.close()
    finally:
        commit_gate.set()
        load_gate.set()
        engine.journal.commit, engine._load = real_commit, real_load
