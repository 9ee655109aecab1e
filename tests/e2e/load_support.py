"""The order load of the fault tests and the worker tests, and the checks after it.

Clients place limit and IOC orders around 20,000 on BTC/USDT, cancel their own
open orders and (optionally) withdraw; every answer is recorded. Afterwards the
database must hold every acknowledged order, cancel and withdrawal, and money
must be conserved.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import httpx
from sqlalchemy import select

from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.tables import orders, trades, withdrawals
from exchange.admin import Admin
from exchange.bench.server import Server
from exchange.config import Settings
from exchange.runtime import configured_markets
from support import (
    Mailbox,
    audit_orders_and_withdrawals,
    check_database_ledger,
    independent_balances,
    register_over_http,
    until,
)

T = TypeVar("T")
PAIR = "BTC/USDT"
FUNDS = (("BTC", "10"), ("USDT", "1000000"))
CREDITS = {"BTC": 10 * 10**8, "USDT": 1_000_000 * 10**6}
SCALE = {"BTC": 8, "USDT": 6}
BTC_ADDRESS = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
USDT_ADDRESS = "0x" + "5a" * 20


@dataclass
class Outcome:
    """One request of the load: what was asked, what came back, how long it took."""

    action: str
    started: float
    elapsed: float
    status: int | None  # None: no HTTP answer (connection refused/reset, timeout)
    body: Any = None
    error: str = ""


@dataclass
class Acks:
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    cancels: dict[int, dict[str, Any]] = field(default_factory=dict)
    withdrawals: dict[int, dict[str, Any]] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)

    def orders_since(self, moment: float) -> int:
        """Orders acknowledged among the requests started at or after ``moment``."""
        return sum(
            1
            for o in self.outcomes
            if o.started >= moment and o.status == 200 and o.action in ("buy", "sell")
        )


def credit(url: str, *jobs: tuple[str, str, str]) -> None:
    """Credit (email, coin, amount) as the admin CLI does: through the server's inbox.

    In this process and in parallel: one CLI process per credit costs seconds each.
    """
    db = make_sync_engine(url)
    tool = Admin(db, url, configured_markets(Settings(database_url=url)))
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(lambda job: tool.credit(job[0], job[1], job[2], "test load"), jobs))
    finally:
        db.dispose()


def start_users(server: Server, mailbox: Mailbox, url: str, n: int) -> list[str]:
    """``n`` registered traders funded with FUNDS; their session tokens."""
    emails = [f"trader{i}@example.com" for i in range(n)]
    tokens = [register_over_http(server.url, mailbox, email) for email in emails]
    credit(url, *((email, coin, amount) for email in emails for coin, amount in FUNDS))
    return tokens


def set_addresses(base: str, tokens: list[str]) -> None:
    """Every trader's withdrawal addresses (usable at once with a cooldown of 0)."""
    for token in tokens:
        headers = {"Authorization": f"Bearer {token}"}
        for coin, address in (("BTC", BTC_ADDRESS), ("USDT", USDT_ADDRESS)):
            answer = httpx.post(
                f"{base}/api/set_withdraw_address",
                data={"coin": coin, "address": address},
                headers=headers,
            )
            assert answer.json()["status"], answer.text


async def client_loop(
    base: str,
    token: str,
    seed: int,
    acks: Acks,
    stop: asyncio.Event,
    *,
    withdraw: bool,
    timeout: float,
    stop_on_error: bool,
    cancel_share: float = 0.15,
    fresh_connections: bool = False,
) -> None:
    """One client: limit and IOC orders, cancels of its own, withdrawals if asked.

    ``fresh_connections``: every request on a new connection (with several HTTP
    workers, the next request may land on another one).
    """
    rng = random.Random(seed)
    mine: list[int] = []
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits()
    if fresh_connections:
        headers["Connection"] = "close"
        limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=timeout, limits=limits
    ) as client:
        while not stop.is_set():
            roll = rng.random()
            if mine and roll < cancel_share:
                action = "cancel_order"
                params = {"order_id": str(mine.pop(rng.randrange(len(mine))))}
            elif withdraw and roll < cancel_share + 0.12:
                action = "withdraw"
                if rng.random() < 0.5:
                    params = {"coin": "USDT", "amount": str(rng.randint(10, 30))}
                else:
                    params = {"coin": "BTC", "amount": f"0.00{rng.randint(1, 3)}"}
            else:
                action = rng.choice(("buy", "sell"))
                params = {
                    "pair": PAIR,
                    "amount": f"0.00{rng.randint(1, 9)}",
                    "price": str(20000 + rng.randint(-20, 20)),
                }
                if rng.random() < 0.15:
                    params["time_in_force"] = "IOC"
            started = time.monotonic()
            try:
                answer = await client.post(f"/api/{action}", data=params)
                body = answer.json()
            except (httpx.HTTPError, ValueError) as error:
                elapsed = time.monotonic() - started
                acks.outcomes.append(Outcome(action, started, elapsed, None, error=repr(error)))
                if stop_on_error:
                    return  # the server is gone
                await asyncio.sleep(0.01)  # not a busy loop while nothing answers
                continue
            elapsed = time.monotonic() - started
            acks.outcomes.append(Outcome(action, started, elapsed, answer.status_code, body))
            if answer.status_code != 200 or not body.get("status"):
                continue
            data = body["data"]
            if action == "withdraw":
                acks.withdrawals[data["withdrawal_id"]] = data
            elif action == "cancel_order":
                acks.cancels[data["order_id"]] = data
            else:
                acks.orders[data["order_id"]] = data
                if data["status"] in ("open", "partially_filled"):
                    mine.append(data["order_id"])


#: Words that must never reach a client: stack traces, SQL, driver names, paths.
LEAKS = (
    "Traceback",
    'File "',
    ".py",
    "psycopg",
    "sqlite",
    "sqlalchemy",
    "SELECT",
    "INSERT",
    "/tmp",
)
#: Refusals any mixed load meets: a cancel of an order that filled first, an order
#: beyond what the client still holds.
EXPECTED_REFUSALS = frozenset({(404, "order_not_found"), (400, "insufficient_balance")})
#: What a 500 says when a worker's link to the writer broke with the command in flight.
UNKNOWN_OUTCOME = "may or may not have been applied"


async def while_loaded(
    base: str,
    tokens: list[str],
    acks: Acks,
    during: Callable[[], Awaitable[T]],
    *,
    first: int = 100,
    then: int = 100,
) -> T:
    """Every trader places, cancels and withdraws on ``base``; once ``first`` orders are
    acknowledged ``during()`` runs (in a thread: the load goes on), then ``then`` more."""
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(
            client_loop(
                base, token, seed, acks, stop, withdraw=True, timeout=10, stop_on_error=True
            )
        )
        for seed, token in enumerate(tokens)
    ]
    try:
        await until(lambda: len(acks.orders) >= first, seconds=60)
        result = await asyncio.to_thread(during)
        taken = len(acks.orders)
        await until(lambda: len(acks.orders) >= taken + then, seconds=60)
        return result
    finally:
        stop.set()
        await asyncio.gather(*clients)


def trade(
    base: str, token: str, seed: int, load: Acks, stop: asyncio.Event
) -> Coroutine[Any, Any, None]:
    """One trader of the kill -9 tests: orders and cancels, each on a new connection."""
    return client_loop(
        base,
        token,
        seed,
        load,
        stop,
        withdraw=False,
        timeout=10,
        stop_on_error=False,
        cancel_share=0.2,
        fresh_connections=True,
    )


def assert_clear_503(outcome: Outcome) -> None:
    """A refusal for an unavailable database: the envelope, 503, a plain sentence."""
    assert outcome.status == 503, outcome
    assert set(outcome.body) == {"status", "data", "description"}, outcome
    assert outcome.body["status"] is False and outcome.body["data"] is None
    description: str = outcome.body["description"]
    assert description.startswith("overloaded: "), outcome
    assert not any(word in description for word in LEAKS), description


def check_outcomes(
    acks: Acks, *, failure_allowed: Callable[[Outcome], bool] = lambda _outcome: False
) -> list[Outcome]:
    """Every answer is the envelope, every refusal an expected one; returns the failures.

    A failure is no answer, a clear 503 ``overloaded``, or a 500 whose outcome is
    unknown; each must be one the caller allows (``failure_allowed``).
    """
    failures = []
    for outcome in acks.outcomes:
        if outcome.status is None:
            failures.append(outcome)
            continue
        body = outcome.body
        assert isinstance(body, dict) and set(body) == {"status", "data", "description"}, outcome
        if outcome.status == 200:
            assert body["status"] is True, outcome
            continue
        code = body["description"].split(":")[0]
        if (outcome.status, code) in EXPECTED_REFUSALS:
            continue
        if (outcome.status, code) == (500, "internal_error"):
            assert UNKNOWN_OUTCOME in body["description"], outcome
        else:
            assert_clear_503(outcome)
        failures.append(outcome)
    for outcome in failures:
        assert failure_allowed(outcome), outcome
    return failures


def check_acknowledged(url: str, acks: Acks) -> None:
    """Everything acknowledged is in the database, in a state at least as advanced."""
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            stored = {r.id: r for r in conn.execute(select(orders))}
            trade_ids = {r.id for r in conn.execute(select(trades.c.id))}
            held = {r.id: r for r in conn.execute(select(withdrawals))}
    finally:
        engine.dispose()
    for order_id, answer in acks.orders.items():
        assert order_id in stored, f"acknowledged order {order_id} is not in the database"
        row = stored[order_id]
        assert row.side == answer["side"] and row.market == answer["pair"], (row, answer)
        if answer["status"] in ("filled", "canceled", "rejected"):
            assert row.status == answer["status"], (row, answer)
        assert row.filled >= int(Decimal(answer["filled"]) * 10**8), (row, answer)
        for trade in answer["trades"]:
            assert trade["trade_id"] in trade_ids, trade
    for order_id in acks.cancels:
        assert stored[order_id].status == "canceled", stored[order_id]
    for withdrawal_id, answer in acks.withdrawals.items():
        row = held[withdrawal_id]
        assert row.status == "pending" and row.coin == answer["coin"], row
        assert row.amount == int(Decimal(answer["amount"]) * 10 ** SCALE[row.coin]), row


def check_money(url: str) -> None:
    """Conservation, the audit of orders and withdrawals, balances recomputed from trades."""
    check_database_ledger(url)
    audit_orders_and_withdrawals(url)
    independent_balances(url, CREDITS)
