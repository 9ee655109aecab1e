"""``exchange audit`` against a real server's database (SQLite, PostgreSQL).

1. While four traders place, fill and cancel orders and ask for withdrawals,
   the audit runs (read-only, one snapshot) and finds the books right: exit 0.
2. After the server stops, one row is corrupted at a time — in a copy of the
   SQLite file, in the (throwaway) PostgreSQL test database itself — and the
   audit names it: a balance one unit off (and the asset that no longer sums
   to zero), an order's fill, a trade's fee entry, a frozen amount that no
   order or withdrawal holds. Exit 1, one line per difference.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

from load_support import Acks, check_outcomes, set_addresses, start_users, while_loaded
from sqlalchemy import select, text, update

from exchange.adapters.db.database import make_sync_engine, sqlite_path
from exchange.adapters.db.tables import balances, ledger_entries, orders
from exchange.bench.server import BIN, exchange_env, free_port, running_server
from support import smtp_server


def run_audit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "exchange"), "audit"], env=env, capture_output=True, text=True, timeout=120
    )


def corrupt(url: str, statement: object) -> None:
    engine = make_sync_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(statement)  # type: ignore[call-overload]
    finally:
        engine.dispose()


def one(url: str, query: object) -> object:
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(query).first()  # type: ignore[call-overload]
    finally:
        engine.dispose()


def test_audit_of_a_running_exchange_and_of_corrupted_rows(db_url: str, tmp_path: Path) -> None:
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(db_url, smtp_port, EXCHANGE_WITHDRAW_ADDRESS_COOLDOWN="0")
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            tokens = start_users(server, mailbox, db_url, 4)
            set_addresses(server.url, tokens)
            acks = Acks()

            during = asyncio.run(while_loaded(server.url, tokens, acks, lambda: run_audit(env)))
            check_outcomes(acks)
            assert during.returncode == 0, during.stdout + during.stderr
            assert "the books balance" in during.stdout
            assert acks.withdrawals, "the load asked for no withdrawal"
    # The server stopped. The audit of what it left is clean, too.
    after = run_audit(env)
    assert after.returncode == 0, after.stdout + after.stderr

    url = db_url
    path = sqlite_path(db_url)
    if path is not None:  # corrupt a copy (SQLite's online backup), not the original
        copy = tmp_path / "copy.db"
        with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        url = f"sqlite:///{copy}"
        env = {**env, "EXCHANGE_DATABASE_URL": url}

    user_btc = (balances.c.user_id > 0) & (balances.c.asset == "BTC")
    row = one(url, select(balances.c.user_id).where(user_btc).limit(1))
    assert row is not None
    user = row[0]  # type: ignore[index]
    mine = (balances.c.user_id == user) & (balances.c.asset == "BTC")
    corrupt(url, update(balances).where(mine).values(available=balances.c.available + 1))
    found = run_audit(env)
    assert found.returncode == 1, found.stdout + found.stderr
    lines = found.stdout.splitlines()
    assert any(
        line.startswith(f"balance of user {user} in BTC: stored available") for line in lines
    ), lines
    assert "asset BTC: the balances of all accounts sum to 1, not 0" in lines
    assert f"{len(lines)} differences found" in found.stderr
    corrupt(url, update(balances).where(mine).values(available=balances.c.available - 1))
    assert run_audit(env).returncode == 0

    filled = one(url, select(orders.c.id).where(orders.c.status == "filled").limit(1))
    assert filled is not None
    order_id = filled[0]  # type: ignore[index]
    corrupt(url, update(orders).where(orders.c.id == order_id).values(filled=orders.c.filled - 1))
    lines = run_audit(env).stdout.splitlines()
    assert any(line.startswith(f"order {order_id}: filled ") for line in lines), lines
    assert any(line.startswith(f"order {order_id}: status filled") for line in lines), lines
    corrupt(url, update(orders).where(orders.c.id == order_id).values(filled=orders.c.filled + 1))

    fee = one(
        url,
        select(ledger_entries.c.id, ledger_entries.c.ref)
        .where(ledger_entries.c.reason == "fee", ledger_entries.c.d_available > 0)
        .limit(1),
    )
    assert fee is not None
    entry_id, trade_id = fee  # type: ignore[misc]
    corrupt(
        url,
        update(ledger_entries)
        .where(ledger_entries.c.id == entry_id)
        .values(d_available=ledger_entries.c.d_available + 1),
    )
    lines = run_audit(env).stdout.splitlines()
    assert any(
        line.startswith(f"trade {trade_id}: fee ") and "the fee account received" in line
        for line in lines
    ), lines
    corrupt(
        url,
        update(ledger_entries)
        .where(ledger_entries.c.id == entry_id)
        .values(d_available=ledger_entries.c.d_available - 1),
    )

    # A frozen unit that no open order or pending withdrawal holds (entries changed alike,
    # so only the hold check can see it).
    corrupt(url, update(balances).where(mine).values(frozen=balances.c.frozen + 5))
    corrupt(
        url,
        text(
            "INSERT INTO ledger_entries (user_id, asset, d_available, d_frozen, reason, ref, time)"
            " VALUES (:user, 'BTC', 0, 5, 'deposit', 0, 0)"
        ).bindparams(user=user),
    )
    corrupt(
        url,
        update(balances)
        .where(balances.c.user_id == -1)
        .where(balances.c.asset == "BTC")
        .values(available=balances.c.available - 5),
    )
    corrupt(
        url,
        text(
            "INSERT INTO ledger_entries (user_id, asset, d_available, d_frozen, reason, ref, time)"
            " VALUES (-1, 'BTC', -5, 0, 'deposit', 0, 0)"
        ),
    )
    found = run_audit(env)
    lines = found.stdout.splitlines()
    assert found.returncode == 1
    assert any(
        line.startswith(f"balance of user {user} in BTC: frozen ")
        and "open orders and pending withdrawals hold" in line
        for line in lines
    ), lines
    assert len(lines) == 1, lines  # nothing else is wrong: balances = entries, sums are 0
