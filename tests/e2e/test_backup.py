"""``exchange backup`` under load, ``exchange restore`` into a fresh database (SQLite, PostgreSQL).

Four traders place, fill and cancel orders and withdraw while ``exchange
backup FILE`` runs; the orders acknowledged before the backup began are noted.
The backup is restored into a new, empty database and a server is started
on it: every one of those orders is there (in a state at least as advanced
as its answer said), the restored books pass the audit and conservation, and
the server trades. A restore refuses while that server runs, refuses to
overwrite an exchange without ``--replace``, refuses the other database's
kind of backup; a backup refuses an existing file, and without ``pg_dump``
says what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import httpx
from load_support import (
    Acks,
    check_acknowledged,
    check_money,
    check_outcomes,
    set_addresses,
    start_users,
    while_loaded,
)

from exchange.bench.server import BIN, exchange_env, free_port, running_server
from support import postgres_database, smtp_server


def exchange(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "exchange"), *args], env=env, capture_output=True, text=True, timeout=300
    )


def login(base: str, email: str) -> str:
    answer = httpx.post(f"{base}/api/login", data={"user": email, "pass": "correct-horse-42"})
    token: str = answer.json()["data"]["session"]
    return token


def test_backup_under_load_restores_every_acknowledged_order(db_url: str, tmp_path: Path) -> None:
    file = tmp_path / "exchange.backup"
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(db_url, smtp_port, EXCHANGE_WITHDRAW_ADDRESS_COOLDOWN="0")
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            tokens = start_users(server, mailbox, db_url, 4)
            set_addresses(server.url, tokens)
            acks = Acks()

            def backup_now() -> tuple[subprocess.CompletedProcess[str], Acks]:
                before = Acks(  # what was acknowledged before the backup began
                    orders=dict(acks.orders),
                    cancels=dict(acks.cancels),
                    withdrawals=dict(acks.withdrawals),
                )
                return exchange(env, "backup", str(file)), before

            done, before = asyncio.run(
                while_loaded(server.url, tokens, acks, backup_now, first=150)
            )
            check_outcomes(acks)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "backed up the" in done.stdout
            assert file.stat().st_mode & 0o777 == 0o600
            assert before.orders and before.withdrawals
            again = exchange(env, "backup", str(file))
            assert again.returncode == 1 and "exists already" in again.stderr
            if not db_url.startswith("sqlite"):
                no_tools = exchange({**env, "PATH": str(BIN)}, "backup", str(tmp_path / "b2"))
                assert no_tools.returncode == 1
                assert "pg_dump is not installed" in no_tools.stderr
                assert "postgresql-client" in no_tools.stderr

    with contextlib.ExitStack() as stack:  # a new, empty database of the same kind
        if db_url.startswith("sqlite"):
            restored_url = f"sqlite:///{tmp_path / 'restored.db'}"
        else:
            restored_url = stack.enter_context(postgres_database())
        target = {**env, "EXCHANGE_DATABASE_URL": restored_url}
        put = exchange(target, "restore", str(file))
        assert put.returncode == 0, put.stdout + put.stderr
        check_acknowledged(restored_url, before)
        check_money(restored_url)
        assert exchange(target, "audit").returncode == 0
        with running_server(free_port(), target, tmp_path / "restored.log") as server:
            refused = exchange(target, "restore", "--replace", str(file))
            assert refused.returncode == 1 and "a server is running" in refused.stderr
            token = login(server.url, "trader0@example.com")
            sold = httpx.post(
                f"{server.url}/api/sell",
                data={"pair": "BTC/USDT", "amount": "0.01", "price": "90000"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert sold.json()["status"], sold.text
        replace = exchange(target, "restore", str(file))
        assert replace.returncode == 1 and "--replace" in replace.stderr
        assert exchange(target, "restore", "--replace", str(file)).returncode == 0
        check_acknowledged(restored_url, before)
    other = {**env, "EXCHANGE_DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}"}
    if db_url.startswith("sqlite"):
        other = {**env, "EXCHANGE_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/none"}
    wrong = exchange(other, "restore", str(file))
    assert wrong.returncode == 1 and "backup, and EXCHANGE_DATABASE_URL is a" in wrong.stderr
