"""Operator commands (credit, withdrawal review) from the ``exchange admin`` CLI.

Balances belong to the engine, the single writer. An operator command is
written to the ``engine_inbox`` table together with an audit row; the running
server's engine picks it up and marks it done in the same transaction as its
ledger entries (exactly once). When no server runs, the CLI takes the writer
lock and runs the engine itself for just that command.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import time
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine as SyncEngine

from exchange.adapters.db.tables import admin_audit, engine_inbox, users, withdrawals
from exchange.clock import now_ms
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Market
from exchange.domain.money import parse_decimal, to_units
from exchange.engine.engine import Engine
from exchange.engine.writer_lock import WriterLock

WAIT_SECONDS = 30.0


def actor() -> str:
    try:
        name = getpass.getuser()
    except Exception:
        name = "unknown"
    return f"{name}@{socket.gethostname()}"


class Admin:
    def __init__(self, db: SyncEngine, database_url: str, markets: dict[str, Market]) -> None:
        self._db = db
        self._url = database_url
        self._markets = markets
        self._assets = {
            asset.code: asset
            for market in markets.values()
            for asset in (market.base, market.quote)
        }

    def user_id(self, email: str) -> int:
        with self._db.connect() as conn:
            row = conn.execute(
                select(users.c.id).where(users.c.email == email.strip().lower())
            ).first()
        if row is None:
            raise ExchangeError("unknown_user", f"no user {email!r}")
        return int(row.id)

    def coin(self, text: str) -> str:
        code = text.strip().upper()
        if code not in self._assets:
            raise ExchangeError("unknown_coin", f"{text!r} is not an asset here")
        return code

    def credit(self, email: str, coin: str, amount: str, note: str) -> dict[str, Any]:
        user_id = self.user_id(email)
        code = self.coin(coin)
        units = to_units(parse_decimal(amount), self._assets[code].scale, "amount")
        if units <= 0:
            raise ExchangeError("invalid_argument", "amount must be greater than 0")
        payload = {"user_id": user_id, "email": email, "asset": code, "amount": units, "note": note}
        return self.run("credit", payload)

    def withdrawal_status(self, withdrawal_id: int) -> str:
        with self._db.connect() as conn:
            row = conn.execute(
                select(withdrawals.c.status).where(withdrawals.c.id == withdrawal_id)
            ).first()
        if row is None:
            raise ExchangeError("withdrawal_not_found", f"no withdrawal {withdrawal_id}")
        return str(row.status)

    def approve(self, withdrawal_id: int, txid: str) -> dict[str, Any]:
        status = self.withdrawal_status(withdrawal_id)
        if status != "pending":
            raise ExchangeError("wrong_state", f"withdrawal {withdrawal_id} is {status}, not pending")
        if not txid.strip():
            raise ExchangeError("invalid_argument", "--txid is required")
        return self.run("approve", {"withdrawal_id": withdrawal_id, "txid": txid.strip()})

    def reject(self, withdrawal_id: int, reason: str) -> dict[str, Any]:
        status = self.withdrawal_status(withdrawal_id)
        if status != "pending":
            raise ExchangeError("wrong_state", f"withdrawal {withdrawal_id} is {status}, not pending")
        if not reason.strip():
            raise ExchangeError("invalid_argument", "--reason is required")
        return self.run("reject", {"withdrawal_id": withdrawal_id, "reason": reason.strip()})

    def withdrawals(self, status: str | None) -> list[dict[str, Any]]:
        query = select(withdrawals, users.c.email).join(users, users.c.id == withdrawals.c.user_id)
        if status:
            query = query.where(withdrawals.c.status == status)
        with self._db.connect() as conn:
            rows = conn.execute(query.order_by(withdrawals.c.id))
            return [dict(row._mapping) for row in rows]

    def run(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Queue the command with its audit row, have it applied, return its result."""
        now = now_ms()
        with self._db.begin() as conn:
            inbox_id = conn.execute(
                insert(engine_inbox).values(
                    kind=kind, payload=json.dumps(payload), status="pending", created=now
                )
            ).inserted_primary_key[0]
            conn.execute(
                insert(admin_audit).values(
                    actor=actor(),
                    action=kind,
                    details=json.dumps({"inbox_id": inbox_id, **payload}),
                    time=now,
                )
            )
        lock = WriterLock(self._url)
        if lock.acquire():
            try:
                asyncio.run(self._apply_offline())
            finally:
                lock.release()
        return self._wait(int(inbox_id))

    async def _apply_offline(self) -> None:
        engine = Engine(self._markets, self._db, now_ms)
        await engine.start(poll_inbox=False)
        try:
            await engine.run_inbox()
        finally:
            await engine.stop()

    def _wait(self, inbox_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            with self._db.connect() as conn:
                row = conn.execute(
                    select(engine_inbox.c.status, engine_inbox.c.result).where(
                        engine_inbox.c.id == inbox_id
                    )
                ).one()
            if row.status == "done":
                result: dict[str, Any] = json.loads(row.result)
                return result
            if row.status == "failed":
                code, _, message = str(row.result).partition(": ")
                raise ExchangeError(code or "failed", message or str(row.result))
            if time.monotonic() > deadline:
                with self._db.begin() as conn:
                    gone = conn.execute(
                        update(engine_inbox)
                        .where(engine_inbox.c.id == inbox_id, engine_inbox.c.status == "pending")
                        .values(status="canceled", done=now_ms())
                    ).rowcount
                if gone:
                    raise ExchangeError(
                        "timeout", "the server did not apply the command in 30 s; nothing changed"
                    )
                continue
            time.sleep(0.1)
