"""``exchange admin …`` as a real subprocess on a SQLite file (SPEC §7, §9).

Two modes are exercised: with a server running (the CLI queues its command in
``engine_inbox`` and the server's engine applies it) and without one (the CLI
takes the writer lock and is the engine for that one command). Every refusal
exits non-zero with one line on stderr; every step keeps the books balanced.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
from sqlalchemy import select

from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.tables import admin_audit
from exchange.clock import ManualClock
from exchange.domain.ledger import DEPOSIT_ACCOUNT, FEE_ACCOUNT, WITHDRAWAL_ACCOUNT
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

EXCHANGE = Path(sys.executable).with_name("exchange")
EMAIL = "cli@example.com"
ADDRESS = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"


async def cli(url: str, cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run the installed ``exchange`` script; the event loop keeps serving meanwhile."""
    env = {
        **os.environ,
        "EXCHANGE_DATABASE_URL": url,
        "EXCHANGE_SQLITE_SYNCHRONOUS": "NORMAL",
        "EXCHANGE_LOG_LEVEL": "warning",
    }
    process = await asyncio.create_subprocess_exec(
        str(EXCHANGE),
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def succeeds(url: str, cwd: Path, *args: str) -> str:
    code, out, err = await cli(url, cwd, *args)
    assert code == 0, (args, code, out, err)
    return out


async def refused(url: str, cwd: Path, *args: str, says: str) -> None:
    """Non-zero exit, nothing on stdout, exactly one line on stderr naming the reason."""
    code, out, err = await cli(url, cwd, *args)
    assert code != 0, (args, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert says in lines[0], (says, lines[0])


def database_books(url: str) -> dict[tuple[int, str], tuple[int, int]]:
    """Stored balances (checked against the ledger), plus the audit log's counts."""
    stored = check_database_ledger(url)
    db = make_sync_engine(url)
    try:
        with db.connect() as conn:
            audit = [
                (r.action, json.loads(r.details)["outcome"])
                for r in conn.execute(select(admin_audit).order_by(admin_audit.c.id))
            ]
    finally:
        db.dispose()
    stored[(0, "audit")] = (len(audit), sum(outcome == "refused" for _a, outcome in audit))
    return stored


async def btc(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[str, str]:
    data = assert_envelope(await client.post("/api/get_user_coin", headers=headers), 200)
    return data["BTC"]["available"], data["BTC"]["frozen"]


async def test_admin_cli_with_and_without_a_running_server(
    tmp_path: Path, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    assert EXCHANGE.exists(), EXCHANGE
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    settings = make_settings(url, mail[1], withdraw_address_cooldown=0)

    # -- a server runs: the CLI's commands go through the inbox to its engine ------
    async with running_app(settings, clock) as (app, client):
        await register(client, mail[0], EMAIL)
        user = {"Authorization": f"Bearer {await login(client, EMAIL)}"}
        client.cookies.clear()
        out = await succeeds(url, tmp_path, "admin", "credit", EMAIL, "btc", "1.25", "--note", "w")
        assert out.strip() == f"credited 1.25 BTC to {EMAIL}"
        assert await btc(client, user) == ("1.25000000", "0.00000000")
        check_books_and_ledger(app)

        await client.post(
            "/api/set_withdraw_address", data={"coin": "BTC", "address": ADDRESS}, headers=user
        )
        ids = []
        for amount in ("0.5", "0.25"):
            answer = await client.post(
                "/api/withdraw", data={"coin": "BTC", "amount": amount}, headers=user
            )
            ids.append(assert_envelope(answer, 200)["withdrawal_id"])
        first, second = ids
        listed = await succeeds(url, tmp_path, "admin", "withdrawals", "--status", "pending")
        rows = [line.split("\t") for line in listed.strip().splitlines()]
        assert [(int(r[0]), r[1], r[2], r[4]) for r in rows] == [
            (first, "pending", EMAIL, "0.50000000"),
            (second, "pending", EMAIL, "0.25000000"),
        ]

        out = await succeeds(url, tmp_path, "admin", "approve", str(first), "--txid", "tx-1")
        assert out.strip() == f"withdrawal {first} sent"
        assert await btc(client, user) == ("0.50000000", "0.25000000")
        check_books_and_ledger(app)
        await refused(
            url,
            tmp_path,
            "admin",
            "approve",
            str(first),
            "--txid",
            "tx-2",
            says="is sent, not pending",
        )

    # -- no server: the CLI takes the writer lock and applies the command itself ---
    out = await succeeds(url, tmp_path, "admin", "reject", str(second), "--reason", "not today")
    assert out.strip() == f"withdrawal {second} rejected"
    for args, says in [
        (("approve", str(second), "--txid", "tx-3"), "is rejected, not pending"),
        (("reject", str(second), "--reason", "again"), "is rejected, not pending"),
        (("reject", str(first), "--reason", "too late"), "is sent, not pending"),
        (("approve", "999", "--txid", "tx-4"), "no withdrawal 999"),
        (("credit", "nobody@example.com", "BTC", "1"), "no user"),
        (("credit", EMAIL, "DOGE", "1"), "not an asset"),
        (("credit", EMAIL, "BTC", "abc"), "not a valid number"),
        (("credit", EMAIL, "BTC", "0"), "greater than 0"),
        (("credit", EMAIL, "BTC", "0.000000001"), "more than 8 decimals"),
        (("credit", EMAIL, "BTC", "1e12"), "too large"),
        (("withdrawals", "--status", "pendng"), "--status must be one of"),
    ]:
        await refused(url, tmp_path, "admin", *args, says=says)
    await succeeds(url, tmp_path, "admin", "credit", EMAIL, "BTC", "0.5")
    everything = await succeeds(url, tmp_path, "admin", "withdrawals")
    rows = [line.split("\t") for line in everything.strip().splitlines()]
    assert [(int(r[0]), r[1], r[-1]) for r in rows] == [
        (first, "sent", "tx-1"),
        (second, "rejected", "not today"),
    ]

    books = await asyncio.to_thread(database_books, url)
    assert books[(WITHDRAWAL_ACCOUNT, "BTC")] == (49_950_000, 0)
    assert books[(FEE_ACCOUNT, "BTC")] == (50_000, 0)
    assert books[(DEPOSIT_ACCOUNT, "BTC")] == (-175_000_000, 0)
    # Credit x2, approve, reject (requested + outcome each) and 11 refusals (listing is
    # a read, not audited).
    assert books[(0, "audit")] == (8 + 11, 11)

    # -- the server restarts on what the offline commands committed ----------------
    async with running_app(settings, clock) as (app, client):
        assert await btc(client, user) == ("1.25000000", "0.00000000")
        check_books_and_ledger(app)
        history = assert_envelope(await client.post("/api/get_withdrawals", headers=user), 200)
        assert [(w["withdrawal_id"], w["status"]) for w in history] == [
            (second, "rejected"),
            (first, "sent"),
        ]


async def test_admin_cli_halts_freezes_cancels_and_finds_users(
    tmp_path: Path, mail: tuple[Mailbox, int], clock: ManualClock
) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    settings = make_settings(url, mail[1])
    async with running_app(settings, clock) as (app, client):
        await register(client, mail[0], EMAIL)
        user = {"Authorization": f"Bearer {await login(client, EMAIL)}"}
        client.cookies.clear()
        await succeeds(url, tmp_path, "admin", "credit", EMAIL, "USDT", "1000")

        async def buy(pair: str = "BTC/USDT") -> httpx.Response:
            return await client.post(
                "/api/buy", data={"pair": pair, "amount": "0.01", "price": "1000"}, headers=user
            )

        out = await succeeds(url, tmp_path, "admin", "halt", "btc_usdt", "--note", "upgrade")
        assert out.strip() == "market BTC/USDT halted: new orders are refused, cancels work"
        assert_envelope(await buy(), 400, "market_halted")
        out = await succeeds(url, tmp_path, "admin", "halt", "BTCUSDT")
        assert "was already halted" in out
        out = await succeeds(url, tmp_path, "admin", "resume", "BTC/USDT")
        assert out.strip() == "market BTC/USDT trades again"
        first = assert_envelope(await buy(), 200)["order_id"]
        second = assert_envelope(await buy("ETH/USDT"), 200)["order_id"]

        out = await succeeds(url, tmp_path, "admin", "freeze", EMAIL, "--note", "review")
        assert out.strip() == f"{EMAIL} frozen"
        assert_envelope(await buy(), 403, "account_frozen")
        found = await succeeds(url, tmp_path, "admin", "users", "cli@")
        lines = found.splitlines()
        assert lines[0].split("\t")[1] == f"{EMAIL}  FROZEN" and "last login 20" in lines[0]
        assert any(line.split("\t")[1:3] == ["USDT", "available 980.000000"] for line in lines)
        assert sum(line.startswith("\torder ") for line in lines) == 2

        out = await succeeds(url, tmp_path, "admin", "cancel-orders", EMAIL, "BTC/USDT")
        assert out.strip() == f"canceled 1 open orders of {EMAIL} on BTC/USDT: {first}"
        out = await succeeds(url, tmp_path, "admin", "cancel-orders", EMAIL)
        assert out.strip() == f"canceled 1 open orders of {EMAIL}: {second}"
        out = await succeeds(url, tmp_path, "admin", "unfreeze", EMAIL)
        assert out.strip() == f"{EMAIL} unfrozen"
        assert_envelope(await buy(), 200)
        await refused(url, tmp_path, "admin", "halt", "DOGE/USDT", says="not a market here")
        await refused(url, tmp_path, "admin", "freeze", "nobody@example.com", says="no user")
        nobody = await succeeds(url, tmp_path, "admin", "users", "zzz")
        assert nobody.strip() == "no user's e-mail contains 'zzz'"
        check_books_and_ledger(app)
    audit = await asyncio.to_thread(database_books, url)
    # credit, halt x2, resume, freeze, cancel-orders x2, unfreeze: requested + done each;
    # two refusals.
    assert audit[(0, "audit")] == (8 * 2 + 2, 2)


def test_create_operator_refuses_weak_passwords_and_twins_and_resets(tmp_path: Path) -> None:
    """``exchange admin create-operator``: the password from stdin, checked like a user's;
    ``--reset`` gives a new one, drops TOTP (set up again at the next login) and sessions."""
    from exchange.adapters.db.tables import operator_sessions, operators
    from exchange.bench.server import admin, exchange_env

    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    env = exchange_env(url)
    weak = admin(env, "create-operator", "ops@example.com", "--password-stdin", stdin="password\n")
    assert weak.returncode == 1 and weak.stderr.splitlines()[-1].startswith("error: "), weak
    assert "common" in weak.stderr
    made = admin(
        env, "create-operator", "Ops@Example.com", "--password-stdin", stdin="ledger-keeper-77\n"
    )
    assert made.returncode == 0, made.stderr
    twin = admin(
        env, "create-operator", "ops@example.com", "--password-stdin", stdin="ledger-keeper-78\n"
    )
    assert twin.returncode == 1 and "--reset" in twin.stderr
    db = make_sync_engine(url)
    try:
        with db.begin() as conn:
            conn.execute(operators.update().values(totp_confirmed=True, totp_secret="sealed"))
            conn.execute(
                operator_sessions.insert().values(
                    token_hash="0" * 64, operator_id=1, stage="full", created=1, last_seen=1
                )
            )
        reset = admin(
            env,
            "create-operator",
            "ops@example.com",
            "--reset",
            "--password-stdin",
            stdin="ledger-keeper-79\n",
        )
        assert reset.returncode == 0, reset.stderr
        with db.connect() as conn:
            row = conn.execute(select(operators)).one()
            assert row.email == "ops@example.com"
            assert row.totp_confirmed is False and row.totp_secret is None
            assert conn.execute(select(operator_sessions)).all() == []
            actions = [
                (a.action, json.loads(a.details)["outcome"])
                for a in conn.execute(select(admin_audit).order_by(admin_audit.c.id))
            ]
    finally:
        db.dispose()
    assert actions == [
        ("create_operator", "refused"),
        ("create_operator", "done"),
        ("create_operator", "refused"),
        ("reset_operator", "done"),
    ]
    nobody = admin(
        env,
        "create-operator",
        "x@example.com",
        "--reset",
        "--password-stdin",
        stdin="ledger-keeper-80\n",
    )
    assert nobody.returncode == 1 and "no operator" in nobody.stderr
