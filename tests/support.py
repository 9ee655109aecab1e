"""Shared test helpers: a real SMTP server, fresh databases, a running app, audits."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
import psycopg
from aiosmtpd.controller import Controller

from exchange.adapters.nats_server import PrivateNats
from exchange.app import create_app
from exchange.bench.server import free_port, scratch_key_file
from exchange.clock import Clock, now_ms
from exchange.config import Settings
from exchange.engine.bus import Subjects
from exchange.engine.bus_writer import WriterBus

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
BASE_URL = "http://127.0.0.1:8088"


@dataclass
class Mailbox:
    """Messages received by the in-process aiosmtpd server."""

    messages: list[tuple[str, str, str]] = field(default_factory=list)  # to, subject, body

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content)
        body = message.get_payload(decode=True)
        text = body.decode() if isinstance(body, bytes) else str(message.get_payload())
        for rcpt in envelope.rcpt_tos:
            self.messages.append((rcpt, str(message["Subject"]), text))
        return "250 OK"

    def code_for(self, email: str) -> str:
        for to, _subject, body in reversed(self.messages):
            if to == email:
                found = re.search(r"\b(\d{6})\b", body)
                assert found, body
                return found.group(1)
        raise AssertionError(f"no mail to {email}: {self.messages}")


@contextmanager
def smtp_server(host: str = "127.0.0.1") -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname=host, port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"ex_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(database_url: str, smtp_port: int | None = None, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_key_file": scratch_key_file(database_url),
        "smtp_host": "127.0.0.1" if smtp_port else "",
        "smtp_port": smtp_port or 25,
        "sqlite_synchronous": "NORMAL",
        "rate_limits": "off",
        "metrics_address": "",  # on only where a test scrapes it (a listener per app is slow)
    }
    values.update(extra)
    return Settings(**values)


#: ``EXCHANGE_TEST_THROUGH_WORKER=1`` (``make test`` sets it for a second run of the
#: integration suite on SQLite) puts an HTTP worker between the tests and the writer.
THROUGH_WORKER = os.environ.get("EXCHANGE_TEST_THROUGH_WORKER") == "1"


@asynccontextmanager
async def running_app(
    settings: Settings, clock: Clock = now_ms, *, through_worker: bool | None = None
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app and a client of it; ``through_worker``: the client talks to a worker app.

    A worker is what ``exchange serve --workers N`` runs in each HTTP process: the
    same methods with the engine behind NATS (a private ``nats-server`` of this
    test, as ``--workers`` starts one). The first element is always the writer's
    app, so tests can still read the engine's books and ledger; ``app.state.hub``
    is its ``WriterBus``, ``app.state.nats`` the server, ``app.state.worker`` the
    worker's app.
    """
    app = create_app(settings, clock=clock)
    async with app.runtime.running():
        if not (THROUGH_WORKER if through_worker is None else through_worker):
            async with _client(app) as client:
                yield app, client
            return
        directory = tempfile.mkdtemp(prefix="xw-")
        subjects = Subjects(settings.nats_prefix)
        nats = PrivateNats(
            Path(directory) / "jetstream", prefix=subjects.prefix, stream=subjects.stream
        )
        accounts = nats.start()  # in this thread: its child dies with the thread that made it
        app.state.nats = nats
        hub = WriterBus(app.runtime.services.engine, accounts.writer_url, subjects)
        await hub.start()
        app.state.hub = hub
        try:
            worker = create_app(settings, clock=clock, gateway_url=accounts.gateway_url)
            app.state.worker = worker
            async with worker.runtime.running(), _client(worker) as client:
                yield app, client
        finally:
            await hub.stop()
            await asyncio.to_thread(nats.stop)
            shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def served(settings: Settings, clock: Clock = now_ms) -> AsyncIterator[tuple[Any, str]]:
    """The app behind a real uvicorn server on a free port (the protocol ``serve`` uses).

    Yields the app and ``host:port``.
    """
    import uvicorn

    from exchange.server import server_config

    app = create_app(settings, clock=clock)
    port = free_port()
    config = server_config(app, settings, host="127.0.0.1", port=port)
    config.log_level = "warning"
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), 10, "the server to start")
    assert server.started, "the server did not start"
    try:
        yield app, f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@asynccontextmanager
async def _client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


async def register(
    client: httpx.AsyncClient, mailbox: Mailbox, email: str, password: str = "correct-horse-42"
) -> None:
    answer = await client.post("/api/make_valid_code", data={"user": email})
    assert answer.json()["status"], answer.text
    code = mailbox.code_for(email)
    answer = await client.post(
        "/api/regeist_user", data={"user": email, "pass": password, "valid_code": code}
    )
    assert answer.json()["status"], answer.text


async def login(client: httpx.AsyncClient, email: str, password: str = "correct-horse-42") -> str:
    answer = await client.post("/api/login", data={"user": email, "pass": password})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["data"]["session"]
    return token


def assert_envelope(answer: httpx.Response, status: int, code: str | None = None) -> Any:
    """The three-key envelope, the HTTP status and (on error) the description's code."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert set(body) == {"status", "data", "description"}, body
    if code is None:
        assert body["status"] is True and body["description"] == "", body
    else:
        assert body["status"] is False and body["data"] is None, body
        assert body["description"].startswith(code + ": "), body
        assert len(body["description"]) > len(code) + 3
    return body["data"]


async def until(
    condition: Callable[[], bool | Awaitable[bool]], seconds: float = 10.0, what: str = ""
) -> None:
    """Wait for an event (polled every 20 ms); fail after ``seconds`` if it never comes."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'the condition'}")
        await asyncio.sleep(0.02)


async def new_trader(
    app: Any, client: httpx.AsyncClient, mailbox: Mailbox, email: str, **funds: str
) -> dict[str, str]:
    """Register, log in and fund a user; returns the Bearer header of its session."""
    from exchange.domain.commands import Credit
    from exchange.domain.money import parse_decimal, to_units

    await register(client, mailbox, email)
    token = await login(client, email)
    client.cookies.clear()
    services = app.runtime.services
    user_id = await services.accounts.user_id(email)
    for asset, amount in funds.items():
        scale = services.engine.assets[asset].scale
        await services.engine.submit(
            Credit(user_id, asset, to_units(parse_decimal(amount), scale, asset), 0)
        )
    return {"Authorization": f"Bearer {token}"}


def check_books_and_ledger(app: Any) -> None:
    """The engine's invariants: conservation per asset, frozen == open orders, sane books."""
    core = app.runtime.services.engine.core
    core.check_invariants()
    totals = core.ledger.totals()
    assert totals and all(total == 0 for total in totals.values()), totals


def check_database_ledger(database: str | Any) -> dict[tuple[int, str], tuple[int, int]]:
    """balances == the sum of ledger entries per account, and every asset sums to zero.

    ``database`` is a URL or an open SQLAlchemy engine (left open).
    """
    from sqlalchemy import func, select

    from exchange.adapters.db.database import make_sync_engine, reading
    from exchange.adapters.db.tables import balances, ledger_entries

    engine = make_sync_engine(database) if isinstance(database, str) else database
    try:
        with reading(engine).connect() as conn:  # no write lock: the app may be running
            stored = {
                (r.user_id, r.asset): (r.available, r.frozen)
                for r in conn.execute(select(balances))
            }
            summed = {
                (r.user_id, r.asset): (int(r.a), int(r.f))
                for r in conn.execute(
                    select(
                        ledger_entries.c.user_id,
                        ledger_entries.c.asset,
                        func.sum(ledger_entries.c.d_available).label("a"),
                        func.sum(ledger_entries.c.d_frozen).label("f"),
                    ).group_by(ledger_entries.c.user_id, ledger_entries.c.asset)
                )
            }
    finally:
        if isinstance(database, str):
            engine.dispose()
    assert stored == summed
    per_asset: dict[str, int] = {}
    for (_user, asset), (available, frozen) in stored.items():
        assert frozen >= 0
        per_asset[asset] = per_asset.get(asset, 0) + available + frozen
    assert all(total == 0 for total in per_asset.values()), per_asset
    return stored


def register_over_http(
    base: str, mailbox: Mailbox, email: str, password: str = "correct-horse-42"
) -> str:
    """Register and log in through a real server (``/router``); returns the session token."""
    with httpx.Client(base_url=base) as client:
        assert client.post("/router?router=make_valid_code", data={"user": email}).json()["status"]
        code = mailbox.code_for(email)
        answer = client.post(
            "/router?router=regeist_user",
            data={"user": email, "pass": password, "valid_code": code},
        )
        assert answer.json()["status"], answer.text
        answer = client.post("/router?router=login", data={"user": email, "pass": password})
        token: str = answer.json()["data"]["session"]
        return token


def independent_balances(url: str, credits: dict[str, int] | None = None) -> None:
    """Recompute every user's money from its credits, the trades and the withdrawals tables.

    ``credits``: what every user was credited, per asset in minor units (default
    10 BTC and 1,000,000 USDT). Pending withdrawals stay in the user's frozen
    balance; sent ones have left it. Frozen = open orders' frozen + pending holds.
    """
    from sqlalchemy import select

    from exchange.adapters.db.database import make_sync_engine, reading
    from exchange.adapters.db.tables import balances, orders, trades, users, withdrawals

    credits = credits if credits is not None else {"BTC": 10 * 10**8, "USDT": 1_000_000 * 10**6}
    engine = make_sync_engine(url)
    try:
        with reading(engine).connect() as conn:  # no write lock: the app may be running
            stored = {
                (r.user_id, r.asset): (r.available, r.frozen)
                for r in conn.execute(select(balances))
            }
            user_ids = [r.id for r in conn.execute(select(users.c.id))]
            all_trades = list(conn.execute(select(trades)))
            open_orders = list(
                conn.execute(
                    select(orders).where(orders.c.status.in_(("open", "partially_filled")))
                )
            )
            all_withdrawals = list(conn.execute(select(withdrawals)))
    finally:
        engine.dispose()
    for user in user_ids:
        total = dict(credits)
        frozen: dict[str, int] = {}
        for t in all_trades:
            base, quote = t.market.split("/")
            buyer = t.taker_user_id if t.taker_side == "buy" else t.maker_user_id
            seller = t.maker_user_id if t.taker_side == "buy" else t.taker_user_id
            buyer_fee = t.taker_fee if t.taker_side == "buy" else t.maker_fee
            seller_fee = t.maker_fee if t.taker_side == "buy" else t.taker_fee
            if buyer == user:
                total[base] = total.get(base, 0) + t.amount - buyer_fee
                total[quote] = total.get(quote, 0) - t.quote
            if seller == user:
                total[base] = total.get(base, 0) - t.amount
                total[quote] = total.get(quote, 0) + t.quote - seller_fee
        for o in open_orders:
            if o.user_id == user:
                base, quote = o.market.split("/")
                asset = quote if o.side == "buy" else base
                frozen[asset] = frozen.get(asset, 0) + o.frozen
        for w in all_withdrawals:
            if w.user_id == user and w.status == "pending":
                frozen[w.coin] = frozen.get(w.coin, 0) + w.amount
            elif w.user_id == user and w.status == "sent":
                total[w.coin] = total.get(w.coin, 0) - w.amount
        for asset in set(total) | set(frozen):
            available, held = stored.get((user, asset), (0, 0))
            assert available + held == total.get(asset, 0), (user, asset)
            assert held == frozen.get(asset, 0), (user, asset)


def audit_orders_and_withdrawals(url: str) -> None:
    """No half-applied command, and everything adds up: ``exchange audit``'s checks.

    Per order, its frozen amount, fill and status against its entries and trades;
    per trade, its orders, zero-sum entries and fees; per pending withdrawal, its
    hold; every entry points at an existing row (``exchange.audit``).
    """
    from exchange.adapters.db.database import make_sync_engine
    from exchange.audit import audit

    engine = make_sync_engine(url)
    try:
        differences = audit(engine)
    finally:
        engine.dispose()
    assert differences == [], differences


@contextmanager
def writer_held(engine: Any) -> Iterator[threading.Event]:
    """The writer's next commit waits for the event: what comes meanwhile queues up."""
    gate = threading.Event()
    real = engine.journal.commit

    def held(batch: Any) -> None:
        gate.wait(20)
        real(batch)

    engine.journal.commit = held
    try:
        yield gate
    finally:
        gate.set()
        engine.journal.commit = real
