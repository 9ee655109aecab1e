"""The wallet (SPEC §7) through HTTP and the admin service, on SQLite and PostgreSQL.

Every money step is followed by the conservation checks: the engine's ledger sums
to zero per asset (deposit, fee and withdrawal accounts included) with its
invariants intact, and in the database every stored balance equals the sum of
its ledger entries.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.engine import Engine as SyncEngine

from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.tables import admin_audit, ledger_entries
from exchange.admin import Admin
from exchange.api import schemas
from exchange.clock import ManualClock
from exchange.config import Settings
from exchange.domain.commands import Credit
from exchange.domain.errors import ExchangeError
from exchange.domain.ledger import (
    DEPOSIT_ACCOUNT,
    FEE_ACCOUNT,
    SYSTEM_ACCOUNTS,
    WITHDRAWAL_ACCOUNT,
)
from exchange.domain.markets import default_assets
from exchange.domain.money import parse_decimal, to_units
from exchange.services.wallet import WithdrawRule, withdraw_rules
from support import (
    Mailbox,
    assert_envelope,
    check_books_and_ledger,
    check_database_ledger,
    login,
    make_settings,
    register,
    running_app,
)

Pair = tuple[Any, httpx.AsyncClient]
Headers = dict[str, str]

HOUR_MS = 3_600_000
# Published vectors: BIP-173 (bech32 v0 P2WPKH), the genesis P2PKH, EIP-55.
BTC_BECH32 = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
BTC_P2PKH = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
ETH_EIP55 = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
ETH_OTHER = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"

# The manual clock jumps over address cooldowns; sessions must outlive the jumps.
LONG_SESSIONS = {"session_idle": 7 * 86_400, "session_lifetime": 7 * 86_400}
WALLET_METHODS = ("get_withdraw_address", "set_withdraw_address", "withdraw", "get_withdrawals")


# -- fixtures and helpers -------------------------------------------------------


@pytest.fixture
def cooldown() -> int:
    """Seconds; a test overrides this fixture through parametrize to try others."""
    return 3600


@pytest.fixture
async def wallet_app(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock, cooldown: int
) -> AsyncIterator[Pair]:
    settings = make_settings(
        database_url, mail[1], withdraw_address_cooldown=cooldown, **LONG_SESSIONS
    )
    async with running_app(settings, clock) as pair:
        yield pair


@pytest.fixture
def sync_db(database_url: str) -> Iterator[SyncEngine]:
    engine = make_sync_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def admin(wallet_app: Pair, sync_db: SyncEngine, database_url: str) -> Admin:
    """The operator service the CLI uses; the running app's engine applies its commands."""
    return Admin(sync_db, database_url, wallet_app[0].runtime.services.markets)


async def new_user(client: httpx.AsyncClient, mailbox: Mailbox, email: str) -> Headers:
    """Register and log in; the Bearer header lets one client act as several users."""
    await register(client, mailbox, email)
    token = await login(client, email)
    client.cookies.clear()
    return {"Authorization": f"Bearer {token}"}


async def fund(app: Any, email: str, asset: str, amount: str) -> None:
    """A deposit straight through the engine (tests that are not about the admin path)."""
    services = app.runtime.services
    user_id = await services.accounts.user_id(email)
    units = to_units(parse_decimal(amount), services.engine.assets[asset].scale, asset)
    await services.engine.submit(Credit(user_id, asset, units, 0))


async def call(
    client: httpx.AsyncClient, method: str, headers: Headers, **params: str
) -> httpx.Response:
    return await client.post(f"/api/{method}", data=params, headers=headers)


async def ok(client: httpx.AsyncClient, method: str, headers: Headers, **params: str) -> Any:
    return assert_envelope(await call(client, method, headers, **params), 200)


async def coin_balance(client: httpx.AsyncClient, headers: Headers, coin: str) -> tuple[str, str]:
    data = await ok(client, "get_user_coin", headers)
    return data[coin]["available"], data[coin]["frozen"]


async def ready_address(
    client: httpx.AsyncClient, clock: ManualClock, headers: Headers, coin: str, address: str
) -> None:
    """Set an address and let its cooldown pass."""
    saved = await ok(client, "set_withdraw_address", headers, coin=coin, address=address)
    clock.now = max(clock.now, saved["usable_from"])


async def check_all(app: Any, db: SyncEngine) -> dict[tuple[int, str], tuple[int, int]]:
    check_books_and_ledger(app)
    return await asyncio.to_thread(check_database_ledger, db)


def entries_of(db: SyncEngine, withdrawal_id: int) -> list[tuple[int, str, int, int, str]]:
    with db.connect() as conn:
        rows = conn.execute(
            select(ledger_entries)
            .where(
                ledger_entries.c.ref == withdrawal_id,
                ledger_entries.c.reason.like("withdrawal%"),
            )
            .order_by(ledger_entries.c.id)
        )
        return [(r.user_id, r.asset, r.d_available, r.d_frozen, r.reason) for r in rows]


def audit_rows(db: SyncEngine) -> list[tuple[str, dict[str, Any]]]:
    with db.connect() as conn:
        rows = conn.execute(select(admin_audit).order_by(admin_audit.c.id))
        out = []
        for r in rows:
            assert r.actor and "@" in r.actor and r.time > 0  # who and when
            out.append((str(r.action), json.loads(r.details)))
        return out


def exact_shape(data: dict[str, Any], model: type[BaseModel]) -> None:
    """The answer is exactly what /openapi.json documents (keys and patterns)."""
    assert set(data) == set(model.model_fields), (sorted(data), sorted(model.model_fields))
    model.model_validate(data)


# -- the lifecycle ----------------------------------------------------------------


async def test_lifecycle_credit_address_cooldown_withdraw_approve(
    wallet_app: Pair, mailbox: Mailbox, clock: ManualClock, admin: Admin, sync_db: SyncEngine
) -> None:
    app, client = wallet_app
    alice = await new_user(client, mailbox, "alice@example.com")
    user_id = await app.runtime.services.accounts.user_id("alice@example.com")

    credited = await asyncio.to_thread(admin.credit, "Alice@Example.com", "btc", "1.5", "wire 42")
    assert credited == {"user_id": user_id, "asset": "BTC", "amount": 150_000_000}
    assert await coin_balance(client, alice, "BTC") == ("1.50000000", "0.00000000")
    await check_all(app, sync_db)

    unset = await ok(client, "get_withdraw_address", alice, coin="btc")
    assert unset == {"coin": "BTC", "address": None, "usable_from": None}
    exact_shape(unset, schemas.WithdrawAddress)
    assert_envelope(
        await call(client, "withdraw", alice, coin="BTC", amount="0.5"), 400, "address_not_set"
    )

    # Bech32 is case-insensitive as a whole: stored in its canonical lower case.
    saved = await ok(client, "set_withdraw_address", alice, coin="Btc", address=BTC_BECH32.upper())
    assert saved == {"coin": "BTC", "address": BTC_BECH32, "usable_from": clock.now + HOUR_MS}
    exact_shape(saved, schemas.WithdrawAddressSet)
    assert await ok(client, "get_withdraw_address", alice, coin="BTC") == saved

    refused = await call(client, "withdraw", alice, coin="BTC", amount="0.5")
    assert_envelope(refused, 400, "address_cooldown")
    clock.advance(HOUR_MS - 1)
    assert_envelope(
        await call(client, "withdraw", alice, coin="BTC", amount="0.5"), 400, "address_cooldown"
    )
    # Saving the same address again (any spelling) does not restart the cooldown.
    again = await ok(client, "set_withdraw_address", alice, coin="BTC", address=BTC_BECH32)
    assert again == saved
    assert await coin_balance(client, alice, "BTC") == ("1.50000000", "0.00000000")
    clock.advance(1)

    pending = await ok(client, "withdraw", alice, coin="btc", amount="0.5")
    exact_shape(pending, schemas.Withdrawal)
    assert pending == {
        "withdrawal_id": pending["withdrawal_id"],
        "coin": "BTC",
        "amount": "0.50000000",
        "fee": "0.00050000",
        "address": BTC_BECH32,
        "status": "pending",
        "txid": None,
        "reason": None,
        "created": clock.now,
        "updated": clock.now,
    }
    wid = pending["withdrawal_id"]
    assert await coin_balance(client, alice, "BTC") == ("1.00000000", "0.50000000")
    assert await ok(client, "get_withdrawals", alice) == [pending]
    await check_all(app, sync_db)
    assert await asyncio.to_thread(entries_of, sync_db, wid) == [
        (user_id, "BTC", -50_000_000, 50_000_000, "withdrawal")
    ]
    listed = await asyncio.to_thread(admin.withdrawals, "pending")
    assert [(w["id"], w["email"], w["amount"]) for w in listed] == [
        (wid, "alice@example.com", 50_000_000)
    ]

    clock.advance(60_000)
    sent = await asyncio.to_thread(admin.approve, wid, "f4184fc596403b9d638783cf57adfe4c75c605f6")
    assert sent["status"] == "sent"
    assert await coin_balance(client, alice, "BTC") == ("1.00000000", "0.00000000")
    engine = app.runtime.services.engine
    system = {account: engine.balances(account) for account in SYSTEM_ACCOUNTS}
    assert system[WITHDRAWAL_ACCOUNT]["BTC"] == (49_950_000, 0)  # amount - fee left
    assert system[FEE_ACCOUNT]["BTC"] == (50_000, 0)  # the fee stayed
    assert system[DEPOSIT_ACCOUNT]["BTC"] == (-150_000_000, 0)
    stored = await check_all(app, sync_db)
    assert stored[(WITHDRAWAL_ACCOUNT, "BTC")] == (49_950_000, 0)
    assert stored[(FEE_ACCOUNT, "BTC")] == (50_000, 0)
    assert stored[(user_id, "BTC")] == (100_000_000, 0)
    assert await asyncio.to_thread(entries_of, sync_db, wid) == [
        (user_id, "BTC", -50_000_000, 50_000_000, "withdrawal"),
        (user_id, "BTC", 0, -49_950_000, "withdrawal"),
        (WITHDRAWAL_ACCOUNT, "BTC", 49_950_000, 0, "withdrawal"),
        (user_id, "BTC", 0, -50_000, "withdrawal_fee"),
        (FEE_ACCOUNT, "BTC", 50_000, 0, "withdrawal_fee"),
    ]
    [history] = await ok(client, "get_withdrawals", alice, coin="BTC")
    assert history == {
        **pending,
        "status": "sent",
        "txid": "f4184fc596403b9d638783cf57adfe4c75c605f6",
        "updated": clock.now,
    }

    # Each transition happens once.
    with pytest.raises(ExchangeError, match="is sent, not pending"):
        await asyncio.to_thread(admin.approve, wid, "another")
    with pytest.raises(ExchangeError, match="is sent, not pending"):
        await asyncio.to_thread(admin.reject, wid, "too late")
    assert await coin_balance(client, alice, "BTC") == ("1.00000000", "0.00000000")
    await check_all(app, sync_db)

    # Who did what, when, and how it ended.
    log = await asyncio.to_thread(audit_rows, sync_db)
    assert [(action, d["outcome"]) for action, d in log] == [
        ("credit", "requested"),
        ("credit", "done"),
        ("approve", "requested"),
        ("approve", "done"),
        ("approve", "refused"),
        ("reject", "refused"),
    ]
    assert log[0][1]["note"] == "wire 42" and log[0][1]["amount"] == 150_000_000
    assert log[3][1]["withdrawal_id"] == wid and log[3][1]["result"]["status"] == "sent"
    assert log[4][1]["error"].startswith("wrong_state: ")

    # A changed address starts a new cooldown.
    changed = await ok(client, "set_withdraw_address", alice, coin="BTC", address=BTC_P2PKH)
    assert changed["usable_from"] == clock.now + HOUR_MS
    assert_envelope(
        await call(client, "withdraw", alice, coin="BTC", amount="0.5"), 400, "address_cooldown"
    )


async def test_reject_returns_the_funds_and_cannot_be_approved(
    wallet_app: Pair, mailbox: Mailbox, clock: ManualClock, admin: Admin, sync_db: SyncEngine
) -> None:
    app, client = wallet_app
    bob = await new_user(client, mailbox, "bob@example.com")
    await asyncio.to_thread(admin.credit, "bob@example.com", "USDT", "250.5", "")
    await ready_address(client, clock, bob, "USDT", ETH_EIP55.lower())

    # No amount: the whole available balance.
    pending = await ok(client, "withdraw", bob, coin="usdt")
    assert (pending["amount"], pending["fee"], pending["address"]) == (
        "250.500000",
        "1.000000",
        ETH_EIP55,  # stored in its EIP-55 form
    )
    assert await coin_balance(client, bob, "USDT") == ("0.000000", "250.500000")
    await check_all(app, sync_db)

    rejected = await asyncio.to_thread(admin.reject, pending["withdrawal_id"], "address on a list")
    assert rejected["status"] == "rejected"
    assert await coin_balance(client, bob, "USDT") == ("250.500000", "0.000000")
    engine = app.runtime.services.engine
    system = {account: engine.balances(account) for account in SYSTEM_ACCOUNTS}
    assert system[WITHDRAWAL_ACCOUNT]["USDT"] == (0, 0)
    assert system[FEE_ACCOUNT]["USDT"] == (0, 0)
    [row] = await ok(client, "get_withdrawals", bob)
    assert (row["status"], row["reason"], row["txid"]) == ("rejected", "address on a list", None)
    wid = pending["withdrawal_id"]
    user_id = await app.runtime.services.accounts.user_id("bob@example.com")
    assert await asyncio.to_thread(entries_of, sync_db, wid) == [
        (user_id, "USDT", -250_500_000, 250_500_000, "withdrawal"),
        (user_id, "USDT", 250_500_000, -250_500_000, "withdrawal_rejected"),
    ]
    with pytest.raises(ExchangeError, match="is rejected, not pending"):
        await asyncio.to_thread(admin.approve, wid, "0xabc")
    with pytest.raises(ExchangeError, match="is rejected, not pending"):
        await asyncio.to_thread(admin.reject, wid, "twice")
    with pytest.raises(ExchangeError, match="no withdrawal 999"):
        await asyncio.to_thread(admin.approve, 999, "0xabc")
    assert await coin_balance(client, bob, "USDT") == ("250.500000", "0.000000")
    await check_all(app, sync_db)

    # The funds are usable again: a second withdrawal of the minimum.
    second = await ok(client, "withdraw", bob, coin="USDT", amount="10")
    assert (second["amount"], second["fee"]) == ("10.000000", "1.000000")
    history = await ok(client, "get_withdrawals", bob)
    assert [w["withdrawal_id"] for w in history] == [second["withdrawal_id"], wid]  # newest first
    await check_all(app, sync_db)


async def test_the_engine_refuses_a_second_transition_even_past_the_admin_check(
    wallet_app: Pair, mailbox: Mailbox, clock: ManualClock, admin: Admin, sync_db: SyncEngine
) -> None:
    """Two operators racing: both pass the status pre-check, the engine settles once."""
    app, client = wallet_app
    carol = await new_user(client, mailbox, "carol@example.com")
    await fund(app, "carol@example.com", "ETH", "1")
    await ready_address(client, clock, carol, "ETH", ETH_OTHER)
    wid = (await ok(client, "withdraw", carol, coin="ETH", amount="0.5"))["withdrawal_id"]
    approve = {"withdrawal_id": wid, "txid": "0x01"}
    reject = {"withdrawal_id": wid, "reason": "race"}
    outcomes = await asyncio.gather(
        asyncio.to_thread(admin.run, "approve", approve),
        asyncio.to_thread(admin.run, "reject", reject),
        asyncio.to_thread(admin.run, "approve", approve),
        return_exceptions=True,
    )
    done = [o for o in outcomes if isinstance(o, dict)]
    failed = [o for o in outcomes if isinstance(o, ExchangeError)]
    assert len(done) == 1 and len(failed) == 2, outcomes
    assert all("not pending" in str(error) for error in failed)
    available, frozen = await coin_balance(client, carol, "ETH")
    assert frozen == "0.00000000"
    assert available == ("0.50000000" if done[0]["status"] == "sent" else "1.00000000")
    await check_all(app, sync_db)


# -- concurrency and frozen funds -------------------------------------------------


async def test_fifty_concurrent_withdrawals_with_funds_for_one(
    wallet_app: Pair, mailbox: Mailbox, clock: ManualClock, sync_db: SyncEngine
) -> None:
    app, client = wallet_app
    dave = await new_user(client, mailbox, "dave@example.com")
    await fund(app, "dave@example.com", "BTC", "0.01")
    await ready_address(client, clock, dave, "BTC", BTC_P2PKH)
    answers = await asyncio.gather(
        *(call(client, "withdraw", dave, coin="BTC", amount="0.006") for _ in range(50))
    )
    accepted = [a for a in answers if a.status_code == 200]
    assert len(accepted) == 1
    for answer in answers:
        if answer is not accepted[0]:
            assert_envelope(answer, 400, "insufficient_balance")
    assert await coin_balance(client, dave, "BTC") == ("0.00400000", "0.00600000")
    history = await ok(client, "get_withdrawals", dave)
    assert [w["withdrawal_id"] for w in history] == [accepted[0].json()["data"]["withdrawal_id"]]
    await check_all(app, sync_db)

    # "Everything" raced 20 times: one takes the rest, the others find nothing left.
    answers = await asyncio.gather(*(call(client, "withdraw", dave, coin="BTC") for _ in range(20)))
    accepted = [a for a in answers if a.status_code == 200]
    assert len(accepted) == 1 and accepted[0].json()["data"]["amount"] == "0.00400000"
    for answer in answers:
        if answer is not accepted[0]:
            assert_envelope(answer, 400, "below_minimum")
    assert await coin_balance(client, dave, "BTC") == ("0.00000000", "0.01000000")
    await check_all(app, sync_db)


async def test_withdraw_uses_only_what_open_orders_leave_available(
    wallet_app: Pair, mailbox: Mailbox, clock: ManualClock, sync_db: SyncEngine
) -> None:
    app, client = wallet_app
    erin = await new_user(client, mailbox, "erin@example.com")
    await fund(app, "erin@example.com", "USDT", "1000")
    await ready_address(client, clock, erin, "USDT", ETH_EIP55)
    order = await ok(
        client, "buy", erin, pair="BTC/USDT", amount="0.01", price="60000"
    )  # freezes 600 USDT
    assert await coin_balance(client, erin, "USDT") == ("400.000000", "600.000000")
    assert_envelope(
        await call(client, "withdraw", erin, coin="USDT", amount="400.000001"),
        400,
        "insufficient_balance",
    )
    everything = await ok(client, "withdraw", erin, coin="USDT")
    assert everything["amount"] == "400.000000"
    assert await coin_balance(client, erin, "USDT") == ("0.000000", "1000.000000")
    assert_envelope(
        await call(client, "withdraw", erin, coin="USDT", amount="10"), 400, "insufficient_balance"
    )
    await check_all(app, sync_db)
    await ok(client, "cancel_order", erin, order_id=str(order["order_id"]))
    assert await coin_balance(client, erin, "USDT") == ("600.000000", "400.000000")
    await check_all(app, sync_db)


# -- access -----------------------------------------------------------------------


async def test_every_wallet_method_needs_a_session(wallet_app: Pair) -> None:
    _app, client = wallet_app
    params = {"coin": "BTC", "address": BTC_P2PKH, "amount": "0.01"}
    for method in WALLET_METHODS:
        assert_envelope(await client.post(f"/api/{method}", data=params), 401, "not_logged_in")
        answer = await client.post(f"/router?router={method}", data=params)
        assert_envelope(answer, 401, "not_logged_in")
        bad = {"Authorization": "Bearer not-a-session"}
        assert_envelope(
            await client.post(f"/api/{method}", data=params, headers=bad), 401, "not_logged_in"
        )
        assert_envelope(await client.get(f"/api/{method}"), 405, "method_not_allowed")


async def test_another_users_withdrawals_and_addresses_are_never_visible(
    wallet_app: Pair, mailbox: Mailbox, clock: ManualClock
) -> None:
    app, client = wallet_app
    alice = await new_user(client, mailbox, "alice@example.com")
    bob = await new_user(client, mailbox, "bob@example.com")
    for email in ("alice@example.com", "bob@example.com"):
        await fund(app, email, "ETH", "1")
        await fund(app, email, "BTC", "1")
    await ready_address(client, clock, alice, "ETH", ETH_EIP55)
    await ready_address(client, clock, alice, "BTC", BTC_BECH32)
    await ready_address(client, clock, bob, "ETH", ETH_OTHER)
    a_eth = await ok(client, "withdraw", alice, coin="ETH", amount="0.1")
    b_eth = await ok(client, "withdraw", bob, coin="ETH", amount="0.2")
    a_btc = await ok(client, "withdraw", alice, coin="BTC", amount="0.01")

    assert await ok(client, "get_withdrawals", alice) == [a_btc, a_eth]
    assert await ok(client, "get_withdrawals", alice, coin="eth") == [a_eth]
    assert await ok(client, "get_withdrawals", alice, coin="USDT") == []
    assert await ok(client, "get_withdrawals", bob) == [b_eth]
    assert await ok(client, "get_withdrawals", bob, coin="BTC") == []
    assert await ok(client, "get_withdrawals", alice, limit="1") == [a_btc]
    assert (await ok(client, "get_withdraw_address", bob, coin="BTC"))["address"] is None
    assert (await ok(client, "get_withdraw_address", bob, coin="ETH"))["address"] == ETH_OTHER
    # Bob setting his BTC address never touches Alice's.
    await ok(client, "set_withdraw_address", bob, coin="BTC", address=BTC_P2PKH)
    assert (await ok(client, "get_withdraw_address", alice, coin="BTC"))["address"] == BTC_BECH32


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coin", "address"),
    [
        # BIP-173's valid testnet P2WSH vector: right checksum, wrong network.
        ("BTC", "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7"),
        ("BTC", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5"),  # bad bech32 checksum
        ("BTC", "bc1QW508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),  # mixed case
        ("BTC", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb"),  # bad base58check checksum
        ("BTC", "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"),  # testnet P2PKH
        ("BTC", " " + BTC_P2PKH),  # whitespace is not silently trimmed
        ("BTC", ETH_EIP55),
        ("ETH", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"),  # EIP-55 checksum broken
        ("ETH", "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beae"),  # 39 hex digits
        ("ETH", "5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"),  # no 0x
        ("USDT", "0xZZaeb6053f3e94c9b9a09f33669435e7ef1beaed"),
        ("USDT", BTC_P2PKH),
        ("USDT", "0x" + "a" * 200),  # overlong: still invalid_address, not a 500
    ],
)
async def test_invalid_addresses_are_refused(
    wallet_app: Pair, mailbox: Mailbox, coin: str, address: str
) -> None:
    _app, client = wallet_app
    user = await new_user(client, mailbox, "val@example.com")
    answer = await call(client, "set_withdraw_address", user, coin=coin, address=address)
    assert_envelope(answer, 400, "invalid_address")
    assert await ok(client, "get_withdraw_address", user, coin=coin) == {
        "coin": coin,
        "address": None,
        "usable_from": None,
    }


async def test_coins_and_arguments(wallet_app: Pair, mailbox: Mailbox) -> None:
    _app, client = wallet_app
    user = await new_user(client, mailbox, "args@example.com")
    for method in WALLET_METHODS:
        answer = await call(client, method, user, coin="DOGE", address=BTC_P2PKH, amount="1")
        assert_envelope(answer, 404, "unknown_coin")
    for method in ("get_withdraw_address", "set_withdraw_address", "withdraw"):
        assert_envelope(await call(client, method, user), 400, "missing_argument")
    assert_envelope(
        await call(client, "set_withdraw_address", user, coin="ETH"), 400, "missing_argument"
    )
    # JSON bodies and the seed's /router work the same way.
    answer = await client.post(
        "/router?router=set_withdraw_address",
        json={"coin": "eth", "address": ETH_EIP55},
        headers=user,
    )
    assert assert_envelope(answer, 200)["address"] == ETH_EIP55


@pytest.mark.parametrize("cooldown", [0])
@pytest.mark.parametrize(
    ("coin", "amount", "code"),
    [
        ("BTC", "0", "invalid_argument"),
        ("BTC", "-0.01", "invalid_argument"),
        ("BTC", "NaN", "invalid_argument"),
        ("BTC", "Infinity", "invalid_argument"),
        ("BTC", "1e", "invalid_argument"),
        ("BTC", "0.000000001", "invalid_argument"),  # 9 decimals, BTC has 8
        ("USDT", "10.0000001", "invalid_argument"),  # 7 decimals, USDT has 6
        ("BTC", "abc", "invalid_argument"),
        ("BTC", "0.00099999", "below_minimum"),
        ("ETH", "0.0099", "below_minimum"),
        ("USDT", "9.999999", "below_minimum"),
        ("BTC", "2.5", "insufficient_balance"),
    ],
)
async def test_bad_amounts_change_nothing(
    wallet_app: Pair, mailbox: Mailbox, coin: str, amount: str, code: str
) -> None:
    app, client = wallet_app
    user = await new_user(client, mailbox, "amt@example.com")
    await fund(app, "amt@example.com", coin, "2")
    address = BTC_P2PKH if coin == "BTC" else ETH_EIP55
    await ok(client, "set_withdraw_address", user, coin=coin, address=address)
    assert_envelope(await call(client, "withdraw", user, coin=coin, amount=amount), 400, code)
    available, frozen = await coin_balance(client, user, coin)
    assert parse_decimal(available) == 2 and parse_decimal(frozen) == 0
    assert await ok(client, "get_withdrawals", user) == []
    check_books_and_ledger(app)


@pytest.mark.parametrize("cooldown", [0])
async def test_minimums_exact_amounts_and_json_numbers(
    wallet_app: Pair, mailbox: Mailbox, clock: ManualClock, sync_db: SyncEngine
) -> None:
    """Cooldown 0: a new address is usable at once. Minimums are inclusive."""
    app, client = wallet_app
    user = await new_user(client, mailbox, "min@example.com")
    for coin in ("BTC", "ETH", "USDT"):
        await fund(app, "min@example.com", coin, "100")
    saved = await ok(client, "set_withdraw_address", user, coin="BTC", address=BTC_P2PKH)
    assert saved["usable_from"] == clock.now
    await ok(client, "set_withdraw_address", user, coin="ETH", address=ETH_EIP55)
    await ok(client, "set_withdraw_address", user, coin="USDT", address=ETH_EIP55)
    expected = {
        "BTC": ("0.00100000", "0.00050000"),
        "ETH": ("0.01000000", "0.00500000"),
        "USDT": ("10.000000", "1.000000"),
    }
    for coin, (minimum, fee) in expected.items():
        made = await ok(client, "withdraw", user, coin=coin, amount=minimum)
        assert (made["amount"], made["fee"]) == (minimum, fee)
    # A JSON number is parsed as an exact decimal, never through a float.
    answer = await client.post(
        "/api/withdraw",
        content=b'{"coin": "eth", "amount": 0.1}',
        headers={**user, "Content-Type": "application/json"},
    )
    assert assert_envelope(answer, 200)["amount"] == "0.10000000"
    assert await coin_balance(client, user, "ETH") == ("99.89000000", "0.11000000")
    await check_all(app, sync_db)


async def test_fees_and_minimums_are_configurable(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    settings = make_settings(
        database_url,
        mail[1],
        withdraw_address_cooldown=0,
        withdraw_fee_usdt="2.5",
        withdraw_min_usdt="20",
    )
    async with running_app(settings, clock) as (app, client):
        user = await new_user(client, mail[0], "cfg@example.com")
        await fund(app, "cfg@example.com", "USDT", "100")
        await ok(client, "set_withdraw_address", user, coin="USDT", address=ETH_EIP55)
        assert_envelope(
            await call(client, "withdraw", user, coin="USDT", amount="19.999999"),
            400,
            "below_minimum",
        )
        made = await ok(client, "withdraw", user, coin="USDT", amount="20")
        assert (made["amount"], made["fee"]) == ("20.000000", "2.500000")


def test_withdraw_rules_are_exact_and_refuse_misconfiguration() -> None:
    assets = default_assets()
    rules = withdraw_rules(Settings(), assets)
    assert rules == {
        "BTC": WithdrawRule(fee=50_000, minimum=100_000),
        "ETH": WithdrawRule(fee=500_000, minimum=1_000_000),
        "USDT": WithdrawRule(fee=1_000_000, minimum=10_000_000),
    }
    with pytest.raises(ValueError, match="EXCHANGE_WITHDRAW_FEE_BTC"):
        withdraw_rules(Settings(withdraw_fee_btc="0.000000001"), assets)
    with pytest.raises(ValueError, match="must be greater than"):
        withdraw_rules(Settings(withdraw_fee_eth="0.01", withdraw_min_eth="0.01"), assets)
    with pytest.raises(ValueError, match="EXCHANGE_WITHDRAW_MIN_USDT"):
        withdraw_rules(Settings(withdraw_min_usdt="ten"), assets)


# -- durability and documentation -------------------------------------------------


async def test_a_pending_withdrawal_survives_a_restart(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    settings = make_settings(database_url, mail[1], withdraw_address_cooldown=0)
    async with running_app(settings, clock) as (app, client):
        user = await new_user(client, mail[0], "dur@example.com")
        await fund(app, "dur@example.com", "BTC", "1")
        await ok(client, "set_withdraw_address", user, coin="BTC", address=BTC_P2PKH)
        first = await ok(client, "withdraw", user, coin="BTC", amount="0.3")
    db = make_sync_engine(database_url)
    try:
        async with running_app(settings, clock) as (app, client):
            assert await coin_balance(client, user, "BTC") == ("0.70000000", "0.30000000")
            check_books_and_ledger(app)  # the hold was rebuilt as a withdrawal hold, not an order's
            second = await ok(client, "withdraw", user, coin="BTC", amount="0.2")
            assert second["withdrawal_id"] == first["withdrawal_id"] + 1
            operator = Admin(db, database_url, app.runtime.services.markets)
            await asyncio.to_thread(operator.approve, first["withdrawal_id"], "tx-1")
            assert await coin_balance(client, user, "BTC") == ("0.50000000", "0.20000000")
            await check_all(app, db)
    finally:
        db.dispose()


async def test_openapi_documents_the_wallet(wallet_app: Pair) -> None:
    _app, client = wallet_app
    document = (await client.get("/openapi.json")).json()
    components = document["components"]["schemas"]
    for method in WALLET_METHODS:
        operation = document["paths"][f"/api/{method}"]["post"]
        assert operation["security"] and operation["tags"] == ["wallet"]
    data = document["paths"]["/api/get_withdrawals"]["post"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]["properties"]["data"]
    assert data == {"type": "array", "items": {"$ref": "#/components/schemas/Withdrawal"}}
    assert set(components["Withdrawal"]["properties"]) == {
        "withdrawal_id",
        "coin",
        "amount",
        "fee",
        "address",
        "status",
        "txid",
        "reason",
        "created",
        "updated",
    }
    body = document["paths"]["/api/withdraw"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["required"] == ["coin"]
