"""Operator commands (credit, withdrawal review) from the ``exchange admin`` CLI.

Balances belong to the engine, the single writer. An operator command is
written to the ``engine_inbox`` table together with an audit row; the running
server's engine picks it up and marks it done in the same transaction as its
ledger entries (exactly once). When no server runs, the CLI takes the writer
lock and runs the engine itself for just that command.

The ``admin_audit`` table says who did what and when, and how it ended: a
``requested`` row is written in the same transaction as the inbox command (so no
command can run unaudited), then a ``done``/``failed``/``timeout`` row with the
engine's answer; an attempt refused before it reaches the engine (unknown user,
bad amount, a withdrawal that is no longer pending) is recorded as ``refused``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine as SyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.tables import (
    admin_audit,
    balances,
    controls,
    engine_inbox,
    orders,
    users,
    withdrawals,
)
from exchange.clock import now_ms
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Market, assets_of
from exchange.domain.money import units_of
from exchange.engine.engine import Engine
from exchange.engine.writer_lock import WriterLock

WAIT_SECONDS = 30.0  # float-ok: seconds
#: Extra wait once the engine has claimed the command: it is being applied.
CLAIMED_GRACE_SECONDS = 60.0  # float-ok: seconds
#: Money columns are BIGINT: a credit beyond this could never be committed.
MAX_UNITS = 2**63 - 1
#: The ``withdrawals.txid`` column's width; longer would fail the engine's commit.
MAX_TXID = 128
#: The ``admin_audit.actor`` column's width.
MAX_ACTOR = 128
WITHDRAWAL_STATUSES = ("pending", "sent", "rejected")


def actor() -> str:
    try:
        name = getpass.getuser()
    except Exception:
        name = "unknown"
    return f"{name}@{socket.gethostname()}"


class Admin:
    """The operator's commands, for the CLI and the console alike (one way to do each).

    ``actor`` is the name the audit log gives for who did it: the shell's user and
    host by default, ``<e-mail> (console)`` for an operator of the console
    (``acting_as``).
    """

    def __init__(
        self,
        db: SyncEngine,
        database_url: str,
        markets: dict[str, Market],
        actor_name: str | None = None,
        *,
        offline: bool = True,
    ) -> None:
        """``offline``: with no server running, apply a command here under the writer lock
        (the CLI). The console runs inside a server (or a gateway): it never takes the
        lock, which a writer starting meanwhile would then find held."""
        self._db = db
        self._reads = reading(db)  # reads take no write lock on SQLite
        self._url = database_url
        self._markets = markets
        self.assets = assets_of(markets.values())
        self.actor_name = (actor_name or actor())[:MAX_ACTOR]
        self.offline = offline

    def acting_as(self, name: str) -> Admin:
        """The same commands, audited under ``name``."""
        return Admin(self._db, self._url, self._markets, name, offline=self.offline)

    @property
    def markets(self) -> dict[str, Market]:
        return self._markets

    def user_id(self, email: str) -> int:
        with self._reads.connect() as conn:
            row = conn.execute(
                select(users.c.id).where(users.c.email == email.strip().lower())
            ).first()
        if row is None:
            raise ExchangeError("unknown_user", f"no user {email!r}")
        return int(row.id)

    def coin(self, text: str) -> str:
        code = text.strip().upper()
        if code not in self.assets:
            raise ExchangeError("unknown_coin", f"{text!r} is not an asset here")
        return code

    # -- the audit log --------------------------------------------------------

    def audit(self, action: str, details: dict[str, Any]) -> None:
        """Append one audit row (who, when, what) in its own transaction."""
        with self._db.begin() as conn:
            conn.execute(
                insert(admin_audit).values(
                    actor=self.actor_name,
                    action=action,
                    details=json.dumps(details),
                    time=now_ms(),
                )
            )

    def audit_log(
        self, limit: int = 50, before: int | None = None, search: str = ""
    ) -> list[dict[str, Any]]:
        """The newest audit rows (older than id ``before``), optionally only those whose
        actor or action contains ``search``; details decoded."""
        query = select(admin_audit).order_by(admin_audit.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(admin_audit.c.id < before)
        if search.strip():
            needle = search.strip()
            query = query.where(
                admin_audit.c.actor.contains(needle, autoescape=True)
                | admin_audit.c.action.contains(needle, autoescape=True)
            )
        with self._reads.connect() as conn:
            rows = conn.execute(query).all()
        return [{**row._mapping, "details": json.loads(row.details)} for row in rows]

    @contextmanager
    def _refusals_audited(self, action: str, details: dict[str, Any]) -> Iterator[None]:
        try:
            yield
        except ExchangeError as error:
            self.audit(action, {**details, "outcome": "refused", "error": error.description})
            raise

    # -- commands -------------------------------------------------------------

    def credit(self, email: str, coin: str, amount: str, note: str) -> dict[str, Any]:
        asked = {"email": email, "coin": coin, "amount": amount, "note": note}
        with self._refusals_audited("credit", asked):
            user_id = self.user_id(email)
            code = self.coin(coin)
            units = units_of(amount, self.assets[code].scale, "amount")
            if units <= 0:
                raise ExchangeError("invalid_argument", "amount must be greater than 0")
            if units > MAX_UNITS:
                raise ExchangeError("invalid_argument", f"amount {amount} is too large")
        payload = {"user_id": user_id, "email": email, "asset": code, "amount": units, "note": note}
        return self.run("credit", payload)

    def market(self, symbol: str) -> Market:
        return self._markets[symbol]

    def pair(self, text: str) -> str:
        """``BTC/USDT``, ``btc_usdt``, ``BTC-USDT`` or ``BTCUSDT``: the market's symbol."""
        wanted = text.strip().upper().replace("_", "/").replace("-", "/")
        for symbol in self._markets:
            if wanted in (symbol, symbol.replace("/", "")):
                return symbol
        raise ExchangeError("unknown_pair", f"{text!r} is not a market here")

    # -- market and account controls (applied by the engine, like the others) --

    def halt(self, pair: str, note: str = "", *, active: bool = True) -> dict[str, Any]:
        """Halt (or, ``active`` False, resume) a market: new orders refused, cancels work."""
        action = "halt" if active else "resume"
        with self._refusals_audited(action, {"pair": pair, "note": note}):
            symbol = self.pair(pair)
        return self.run(
            "control", {"kind": "halt", "key": symbol, "active": active, "note": note}, action
        )

    def freeze(self, email: str, note: str = "", *, active: bool = True) -> dict[str, Any]:
        """Freeze (or unfreeze) an account: no trading, withdrawing or new API keys."""
        action = "freeze" if active else "unfreeze"
        with self._refusals_audited(action, {"email": email, "note": note}):
            user_id = self.user_id(email)
        payload = {"kind": "freeze", "key": str(user_id), "active": active, "email": email}
        return self.run("control", {**payload, "note": note}, action)

    def cancel_orders(self, email: str, pair: str | None, note: str = "") -> dict[str, Any]:
        """Cancel every open order of a user (on one market, or on all)."""
        with self._refusals_audited("cancel_orders", {"email": email, "pair": pair}):
            user_id = self.user_id(email)
            symbol = None if pair is None else self.pair(pair)
        payload = {"user_id": user_id, "email": email, "market": symbol, "note": note}
        return self.run("cancel_orders", payload)

    def users(self, search: str, limit: int = 20) -> list[dict[str, Any]]:
        """Users whose e-mail contains ``search``: balances, open orders, last login, frozen."""
        needle = search.strip().lower()
        with self._reads.connect() as conn:
            found = conn.execute(
                select(users.c.id, users.c.email, users.c.created, users.c.last_login)
                .where(users.c.email.contains(needle, autoescape=True))
                .order_by(users.c.email)
                .limit(limit)
            ).all()
            ids = [row.id for row in found]
            held = conn.execute(select(balances).where(balances.c.user_id.in_(ids))).all()
            live = conn.execute(
                select(orders)
                .where(orders.c.user_id.in_(ids), orders.c.status.in_(("open", "partially_filled")))
                .order_by(orders.c.id)
            ).all()
        frozen = {int(key) for key in self.controls_active("freeze")}
        result = []
        for row in found:
            result.append(
                {
                    "id": row.id,
                    "email": row.email,
                    "created": row.created,
                    "last_login": row.last_login,
                    "frozen": row.id in frozen,
                    "balances": {
                        b.asset: (b.available, b.frozen) for b in held if b.user_id == row.id
                    },
                    "open_orders": [dict(o._mapping) for o in live if o.user_id == row.id],
                }
            )
        return result

    def controls_active(self, kind: str) -> set[str]:
        """The keys of the controls in force: halted market symbols (``halt``) or frozen user
        ids (``freeze``), as the engine wrote them — in step on every worker."""
        with self._reads.connect() as conn:
            rows = conn.execute(
                select(controls.c.key).where(controls.c.kind == kind, controls.c.active.is_(True))
            )
            return {str(row.key) for row in rows}

    def withdrawal_status(self, withdrawal_id: int) -> str:
        with self._reads.connect() as conn:
            row = conn.execute(
                select(withdrawals.c.status).where(withdrawals.c.id == withdrawal_id)
            ).first()
        if row is None:
            raise ExchangeError("withdrawal_not_found", f"no withdrawal {withdrawal_id}")
        return str(row.status)

    def approve(self, withdrawal_id: int, txid: str) -> dict[str, Any]:
        asked = {"withdrawal_id": withdrawal_id, "txid": txid}
        with self._refusals_audited("approve", asked):
            status = self.withdrawal_status(withdrawal_id)
            if status != "pending":
                raise ExchangeError(
                    "wrong_state", f"withdrawal {withdrawal_id} is {status}, not pending"
                )
            if not txid.strip():
                raise ExchangeError("invalid_argument", "--txid is required")
            if len(txid.strip()) > MAX_TXID:
                raise ExchangeError("invalid_argument", f"--txid is longer than {MAX_TXID}")
        return self.run("approve", {"withdrawal_id": withdrawal_id, "txid": txid.strip()})

    def reject(self, withdrawal_id: int, reason: str) -> dict[str, Any]:
        asked = {"withdrawal_id": withdrawal_id, "reason": reason}
        with self._refusals_audited("reject", asked):
            status = self.withdrawal_status(withdrawal_id)
            if status != "pending":
                raise ExchangeError(
                    "wrong_state", f"withdrawal {withdrawal_id} is {status}, not pending"
                )
            if not reason.strip():
                raise ExchangeError("invalid_argument", "--reason is required")
        return self.run("reject", {"withdrawal_id": withdrawal_id, "reason": reason.strip()})

    def withdrawals(
        self, status: str | None, *, limit: int | None = None, newest_first: bool = False
    ) -> list[dict[str, Any]]:
        """Withdrawals (of one status), oldest first — or the ``limit`` newest."""
        if status and status not in WITHDRAWAL_STATUSES:
            raise ExchangeError(
                "invalid_argument",
                f"--status must be one of {', '.join(WITHDRAWAL_STATUSES)}, not {status!r}",
            )
        query = select(withdrawals, users.c.email).join(users, users.c.id == withdrawals.c.user_id)
        if status:
            query = query.where(withdrawals.c.status == status)
        order = withdrawals.c.id.desc() if newest_first else withdrawals.c.id
        query = query.order_by(order).limit(limit)
        with self._reads.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def run(self, kind: str, payload: dict[str, Any], action: str | None = None) -> dict[str, Any]:
        """Queue the command with its audit row, have it applied, return its result.

        ``action`` names it in the audit log when the inbox kind is more general
        (``halt`` and ``resume`` are both a ``control``)."""
        action = action or kind
        now = now_ms()
        with self._db.begin() as conn:
            key = conn.execute(
                insert(engine_inbox).values(
                    kind=kind, payload=json.dumps(payload), status="pending", created=now
                )
            ).inserted_primary_key
            assert key is not None
            inbox_id = int(key[0])
            conn.execute(
                insert(admin_audit).values(
                    actor=self.actor_name,
                    action=action,
                    details=json.dumps({"inbox_id": inbox_id, **payload, "outcome": "requested"}),
                    time=now,
                )
            )
        outcome = {"inbox_id": inbox_id, **payload}
        try:
            result = self._wait(inbox_id)
        except ExchangeError as error:
            failed = "timeout" if error.code == "timeout" else "failed"
            self.audit(action, {**outcome, "outcome": failed, "error": error.description})
            raise
        self.audit(action, {**outcome, "outcome": "done", "result": result})
        return result

    def _apply_if_no_writer(self) -> None:
        """No server holds the writer lock: be the engine for the queued commands."""
        lock = WriterLock(self._url)
        if lock.acquire():
            try:
                asyncio.run(self._apply_offline())
            finally:
                lock.release()

    async def _apply_offline(self) -> None:
        engine = Engine(self._markets, self._db, now_ms)
        await engine.start(poll_inbox=False)
        try:
            await engine.run_inbox()
        finally:
            await engine.stop()

    def _wait(self, inbox_id: int) -> dict[str, Any]:
        """The command's result, applied by the server's engine or by this process.

        The writer lock is retried while waiting: when another offline admin
        command held it a moment ago (and read the inbox before this command was
        queued), this one would otherwise wait the full timeout for nobody.
        """
        deadline = time.monotonic() + WAIT_SECONDS
        next_try = time.monotonic()
        while True:
            if time.monotonic() >= next_try:
                if self.offline:
                    self._apply_if_no_writer()
                next_try = time.monotonic() + 1.0  # float-ok: seconds
            with self._reads.connect() as conn:
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
                if time.monotonic() > deadline + CLAIMED_GRACE_SECONDS:
                    raise ExchangeError(
                        "timeout",
                        f"the server took command {inbox_id} but has not finished it; "
                        "see `exchange admin withdrawals` and the audit log before retrying",
                    )
            time.sleep(0.1)  # float-ok: seconds
