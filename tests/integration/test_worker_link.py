"""The gateway ↔ writer link over NATS under stress: a writer reload, NATS stopped and
started again, malformed messages, a gateway that tries what only the writer may.

Runs with the client talking to a gateway app (``through_worker=True``: a worker of
``--workers``) on both databases, whatever ``EXCHANGE_TEST_THROUGH_WORKER`` says,
against the private ``nats-server`` the test starts (``app.state.nats``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.aio.client import Client

from exchange.app import create_app
from exchange.domain.commands import Credit, PlaceOrder
from exchange.domain.errors import ExchangeError
from exchange.engine.bus import Subjects
from exchange.engine.wire import decode_command, encode_command
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
SUBJECTS = Subjects()


@pytest.fixture
async def linked(
    database_url: str, mail: tuple[Mailbox, int]
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with running_app(make_settings(database_url, mail[1]), through_worker=True) as pair:
        yield pair


@asynccontextmanager
async def as_gateway(app: Any) -> AsyncIterator[Client]:
    """A NATS connection with the gateway account, as any gateway has."""
    connection = await nats.connect(app.state.nats.accounts.gateway_url)
    try:
        yield connection
    finally:
        await connection.close()


async def ask(connection: Client, subject: str, body: dict[str, Any] | None = None) -> Any:
    reply = await connection.request(subject, orjson.dumps(body or {}), timeout=10)
    return orjson.loads(reply.data)


async def nats_down(app: Any) -> None:
    await asyncio.to_thread(app.state.nats.stop)


async def nats_up(app: Any) -> None:
    app.state.nats.start()  # not in a worker thread: the server dies with its thread


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


async def test_nats_stopped_refuses_then_replays_what_was_missed(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, database_url: str
) -> None:
    app, client = linked
    engine = app.runtime.services.engine
    gateway = app.state.worker.runtime.services.engine
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    buyer = await new_trader(app, client, mailbox, "b@example.com", USDT="500000")
    await place(client, seller, "sell", "20000")
    resyncs = gateway.resyncs

    await nats_down(app)
    await until(lambda: not gateway.connected, what="the gateway to notice")
    answer = await client.post(
        "/api/buy", data={"pair": PAIR, "amount": "0.01", "price": "20000"}, headers=buyer
    )
    assert_envelope(answer, 503, "overloaded")  # refused: nothing happened
    # Batches committed while the gateway cannot see them (the writer buffers them).
    user = await app.runtime.services.accounts.user_id("b@example.com")
    for _ in range(3):
        await engine.submit(PlaceOrder(user, PAIR, "buy", 1_000_000, 2_000_000))
    await nats_up(app)

    async def replayed() -> bool:
        deals = await client.get("/api/get_deal_record", params={"pair": PAIR})
        writer_deals = app.runtime.services.market.deal_records(PAIR, 60)
        return gateway.connected and assert_envelope(deals, 200) == writer_deals

    await until(replayed, seconds=20)
    assert gateway.resyncs == resyncs + 1  # one replay, from the last batch applied
    view = await depth(client)
    assert {"bids": view["bids"], "asks": view["asks"]} == writer_depth(app)
    coins = assert_envelope(await client.post("/api/get_user_coin", headers=buyer), 200)
    assert coins["BTC"]["available"] != "0.00000000"
    placed = await client.post(
        "/api/buy", data={"pair": PAIR, "amount": "0.01", "price": "19000"}, headers=buyer
    )
    assert_envelope(placed, 200)
    check_books_and_ledger(app)
    check_database_ledger(database_url)


@pytest.mark.parametrize("lost", ["_live", "_events"])
async def test_batches_reach_a_gateway_by_either_subscription_alone(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, lost: str
) -> None:
    """Batches come live (core NATS, the fast way) and from the stream (every one, in
    order): with either gone, answers still wait for their batch and depth is whole."""
    app, client = linked
    gateway = app.state.worker.runtime.services.engine
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    await place(client, seller, "sell", "21000")
    subscription = getattr(gateway, lost)
    assert subscription is not None
    await subscription.unsubscribe()
    setattr(gateway, lost, None)
    resyncs = gateway.resyncs
    for price in ("21001", "21002", "21003"):
        await place(client, seller, "sell", price)  # answered: its batch is applied here
        assert (await depth(client))["asks"] == writer_depth(app)["asks"]
    assert len(writer_depth(app)["asks"]) == 4
    assert gateway.resyncs == resyncs  # neither path needed a snapshot


async def test_a_gateway_behind_the_retained_window_takes_a_new_snapshot(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    """Batches it missed are gone from the stream (retention): a replay cannot be trusted,
    so the gateway starts again from a snapshot instead of showing a book with a hole."""
    app, client = linked
    engine = app.runtime.services.engine
    gateway = app.state.worker.runtime.services.engine
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    await place(client, seller, "sell", "21000")
    assert gateway._events is not None and gateway._live is not None
    for subscription in (gateway._events, gateway._live):  # it stops reading for a while
        await subscription.unsubscribe()
    gateway._events = gateway._live = None
    user = await app.runtime.services.accounts.user_id("s@example.com")
    for price in (2_100_100, 2_100_200, 2_100_300):
        await engine.submit(PlaceOrder(user, PAIR, "sell", 10**6, price))
    writer_js = app.state.hub.nc.jetstream()
    await writer_js.purge_stream(SUBJECTS.stream)  # what retention does to old batches
    await engine.submit(PlaceOrder(user, PAIR, "sell", 10**6, 2_100_400))
    resyncs = gateway.resyncs
    gateway._schedule_resync(fresh=False)  # as after a reconnection: replay from its last

    async def mended() -> bool:
        return gateway.connected and (await depth(client))["asks"] == writer_depth(app)["asks"]

    await until(mended, what="the gateway's book to be whole again")
    assert gateway.resyncs >= resyncs + 2  # the replay found the hole, then a snapshot
    assert len(writer_depth(app)["asks"]) == 5


async def test_malformed_messages_and_forged_batches_are_refused_without_harm(
    linked: tuple[Any, httpx.AsyncClient],
) -> None:
    """Only order, cancel and withdrawal commands cross; a gateway cannot publish batches."""
    app, client = linked
    with pytest.raises(ValueError):
        encode_command(Credit(1, "BTC", 10**8, 0))
    with pytest.raises(ValueError):
        decode_command({"t": "cmd", "k": "Credit", "c": {"user_id": 1}})
    async with as_gateway(app) as connection:
        hello = await ask(connection, SUBJECTS.snapshot)
        assert hello["t"] == "hello" and set(hello["books"]) == set(app.runtime.services.markets)
        # A deposit smuggled in as a command: refused with the envelope's code.
        credit = {"user_id": 1, "asset": "BTC", "amount": 10**8, "ref": 0}
        answer = await ask(
            connection, SUBJECTS.command("PlaceOrder"), {"t": "cmd", "k": "Credit", "c": credit}
        )
        assert answer["t"] == "err" and answer["e"][0] == "internal_error"
        reply = await connection.request(SUBJECTS.command("PlaceOrder"), b"[1,2]", timeout=10)
        assert orjson.loads(reply.data)["t"] == "err"
        # A cancel sent on the order subject: refused too.
        cancel = {"t": "cmd", "k": "CancelOrder", "c": {"user_id": 1, "order_id": 1}}
        answer = await ask(connection, SUBJECTS.command("PlaceOrder"), cancel)
        assert answer["t"] == "err"
        # A forged batch: the server refuses the gateway account's publish.
        js = connection.jetstream()
        before = (await js.stream_info(SUBJECTS.stream)).state.messages
        forged = {"t": "events", "epoch": app.state.hub.epoch, "seq": 10**6}
        await connection.publish(SUBJECTS.events, orjson.dumps(forged))
        await connection.flush()
        assert (await js.stream_info(SUBJECTS.stream)).state.messages == before
    assert app.runtime.services.engine.core.ledger.balance(1, "BTC") == (0, 0)
    # The real gateway's link is untouched.
    assert app.state.worker.runtime.services.engine.connected
    assert_envelope(await client.get("/api/get_depth", params={"pair": PAIR}), 200)


async def test_logout_while_nats_is_away_reaches_the_other_gateways(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox, database_url: str, mail: Any
) -> None:
    """A revocation made while the link is down is sent when it is back."""
    app, first = linked
    cut_off = app.state.worker.runtime.services.engine
    other = create_app(
        make_settings(database_url, mail[1]), gateway_url=app.state.nats.accounts.gateway_url
    )
    transport = httpx.ASGITransport(app=other, client=("127.0.0.1", 50001))
    async with (
        other.runtime.running(),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8088") as second,
    ):
        who = await new_trader(app, first, mailbox, "u@example.com", USDT="1")
        for client in (first, second):  # both gateways cache the session
            assert_envelope(await client.post("/api/get_user_coin", headers=who), 200)

        await nats_down(app)
        await until(lambda: not cut_off.connected, what="the gateway to notice")
        assert_envelope(await first.post("/api/logout", headers=who), 200)
        assert cut_off._unsent_revokes  # held, not lost
        await nats_up(app)
        await until(lambda: cut_off.connected and not cut_off._unsent_revokes, seconds=20)

        async def refused_everywhere() -> bool:
            answers = [await c.post("/api/get_user_coin", headers=who) for c in (first, second)]
            return all(answer.status_code == 401 for answer in answers)

        await until(refused_everywhere, seconds=4)  # sooner than the 5 s session cache


async def test_snapshot_and_balances_wait_for_the_batch_in_flight(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    """A batch whose commit is in flight (here: about to fail) is never shown to a gateway."""
    app, client = linked
    engine = app.runtime.services.engine
    await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    user = await app.runtime.services.accounts.user_id("s@example.com")
    gate, committing = threading.Event(), threading.Event()
    real_commit = engine.journal.commit

    def failing_commit(batch: Any) -> None:
        committing.set()
        gate.wait(10)
        raise OSError("the disk is gone")

    async with as_gateway(app) as connection:
        engine.journal.commit = failing_commit
        order = asyncio.ensure_future(
            engine.submit(PlaceOrder(user, PAIR, "sell", 10**8, 2_100_000))
        )
        await until(committing.is_set, what="the batch applied in memory, its commit blocked")
        balances = asyncio.ensure_future(ask(connection, SUBJECTS.balances, {"u": user}))
        snapshot = asyncio.ensure_future(ask(connection, SUBJECTS.snapshot))
        await until(lambda: len(engine._on_idle) == 2, what="both requests parked")
        assert not balances.done() and not snapshot.done()
        engine.journal.commit = real_commit
        gate.set()
        with pytest.raises(ExchangeError):
            await order  # refused: the commit failed
        refused = await balances  # the balance read waited on the batch that failed: 503
        assert refused["t"] == "err" and refused["e"][0] == "overloaded"
        hello = await snapshot  # then, after the reload, the snapshot
        assert hello["t"] == "hello" and hello["books"][PAIR][1] == []
        answer = await ask(connection, SUBJECTS.balances, {"u": user})
        assert answer["t"] == "ok" and answer["v"]["BTC"][1] == 0  # [available, frozen]
    view = await depth(client)
    assert view["asks"] == []


async def test_a_newcomer_does_not_stop_whole_books_reaching_the_others(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    app, client = linked
    engine = app.runtime.services.engine
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    for price in ("21000", "21001", "21002"):
        await place(client, seller, "sell", price)
    app.state.worker.runtime.services.engine.books[PAIR].asks.clear()  # spoil the replica
    await engine._reload()
    async with as_gateway(app) as connection:  # another gateway takes its snapshot
        assert (await ask(connection, SUBJECTS.snapshot))["t"] == "hello"
        await place(client, seller, "sell", "21003")
    view = await depth(client)
    assert [level[0] for level in view["asks"]] == ["21000.00", "21001.00", "21002.00", "21003.00"]


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
    gateway = app.state.worker.runtime.services.engine
    gateway._schedule_resync(fresh=True)  # as after a gap: a snapshot, market data again

    async def synced() -> bool:
        return gateway.connected and len(worker_market.deal_records(PAIR, 50)) == 2

    await until(synced)
    store.recent_trades = real
    worker_ids = [row["id"] for row in worker_market.deal_records(PAIR, 50)]
    writer_ids = [row["id"] for row in app.runtime.services.market.deal_records(PAIR, 50)]
    assert worker_ids == writer_ids and len(set(worker_ids)) == 2


async def test_a_resync_during_a_reload_starts_one_clean_reload(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    """The reload of a stale link is stopped: had it finished late, its older data would win."""
    app, client = linked
    gateway = app.state.worker.runtime.services.engine
    worker_market = app.state.worker.runtime.services.market
    store = worker_market._store
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="5")
    buyer = await new_trader(app, client, mailbox, "b@example.com", USDT="500000")
    await place(client, seller, "sell", "20000")
    real = store.recent_trades
    calls: list[int] = []
    first_woke = asyncio.Event()

    async def slow_first(symbol: str, limit: int, through: int) -> Any:
        found = await real(symbol, limit, through)
        if symbol == PAIR:
            calls.append(len(calls))
            if len(calls) == 1:
                try:
                    await asyncio.sleep(1.0)  # loaded, not yet swapped in
                finally:
                    first_woke.set()
        return found

    store.recent_trades = slow_first
    gateway._schedule_resync(fresh=True)
    await until(lambda: len(calls) == 1)
    # While the first reload sleeps: a trade (held by the gateway), then another resync.
    user = await app.runtime.services.accounts.user_id("b@example.com")
    await app.runtime.services.engine.submit(PlaceOrder(user, PAIR, "buy", 1_000_000, 2_000_000))
    gateway._schedule_resync(fresh=True)
    await until(lambda: len(calls) >= 2 and gateway.connected)
    await first_woke.wait()  # cancelled, not finished late
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
    until the database is back; a new gateway's snapshot waits for the reload."""
    app, client = linked
    engine = app.runtime.services.engine
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
        async with as_gateway(app) as connection:
            order = asyncio.ensure_future(
                engine.submit(PlaceOrder(user, PAIR, "sell", 10**8, 2_100_000))
            )
            await until(committing.is_set, what="the batch's commit to block")
            hello = asyncio.ensure_future(ask(connection, SUBJECTS.snapshot))
            remote = asyncio.ensure_future(ask(connection, SUBJECTS.balances, {"u": user}))
            local = asyncio.ensure_future(engine.read_balances(user))
            # All wait for the batch: the snapshot, the gateway's balance read and this one.
            await until(lambda: len(engine._on_idle) == 3, what="snapshot and both reads parked")
            engine.journal.commit = real_commit
            commit_gate.set()
            with pytest.raises(ExchangeError):
                await order
            answer = await asyncio.wait_for(remote, 2)
            assert answer["t"] == "err" and answer["e"][0] == "overloaded"
            with pytest.raises(ExchangeError, match="overloaded"):
                await asyncio.wait_for(local, 2)
            assert not hello.done()  # no snapshot before the reload
            load_gate.set()
            snapshot = await asyncio.wait_for(hello, 10)
            assert snapshot["t"] == "hello" and snapshot["books"][PAIR][1] == []
    finally:
        commit_gate.set()
        load_gate.set()
        engine.journal.commit, engine._load = real_commit, real_load


async def test_a_new_snapshot_under_load_publishes_each_trade_once(
    linked: tuple[Any, httpx.AsyncClient], mailbox: Mailbox
) -> None:
    """Fresh snapshots taken while batches keep coming: what the gateway tells its
    listeners (market data, the WebSocket fan-out) holds each trade exactly once, and
    its books are the writer's after each."""
    app, client = linked
    engine = app.runtime.services.engine
    gateway = app.state.worker.runtime.services.engine
    await new_trader(app, client, mailbox, "s@example.com", BTC="50")
    await new_trader(app, client, mailbox, "b@example.com", USDT="5000000")
    seller = await app.runtime.services.accounts.user_id("s@example.com")
    buyer = await app.runtime.services.accounts.user_id("b@example.com")
    told: list[int] = []
    gateway.subscribe(lambda outbox, _now: told.extend(t.id for t in outbox.trades))
    backwards: list[tuple[int, int]] = []  # (batch applied here, the snapshot's batch)
    greet = gateway._hello

    def hello(message: dict[str, Any]) -> None:
        if message.get("epoch") == gateway.epoch and int(message["seq"]) < gateway.seq:
            backwards.append((gateway.seq, int(message["seq"])))
        greet(message)

    gateway._hello = hello
    price = 2_000_000
    for _round in range(8):
        resync = gateway._schedule_resync(fresh=True)
        while not resync.done():  # one batch after another while the snapshot comes
            price += 1
            await engine.submit(PlaceOrder(seller, PAIR, "sell", 10**6, price))
            await engine.submit(PlaceOrder(buyer, PAIR, "buy", 10**6, price))
        await until(lambda: gateway.connected and gateway.seq == engine.batches, seconds=20)
        assert (await depth(client))["asks"] == writer_depth(app)["asks"]
    # A batch applied here while the snapshot was on its way would be rolled back by it.
    assert backwards == []
    # Trades the snapshots covered reach market data by its reload, not by the listeners.
    assert len(told) == len(set(told)), "a trade was told twice"
