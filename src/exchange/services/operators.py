"""Operator accounts of the console (``/admin``): a password, a TOTP code, short sessions.

Operators are not users: their own table, their own cookie, created only from
the server's shell (``exchange admin create-operator``). Logging in takes the
password (argon2id, as for users) and a six-digit TOTP code (RFC 6238, ``pyotp``);
an operator who has no confirmed TOTP secret yet gets a new one at login, shown
once as a QR code, and a session that can do nothing but confirm it. After five
wrong attempts in a row the account is locked for 15 minutes — counted in the
database, so every worker agrees. A code's time step is remembered and never
accepted again (a code seen over a shoulder is spent). Sessions are random
tokens stored as SHA-256 hashes, idle after 15 minutes and over after 8 hours
(configurable), read from the database on every request: the console is
low-traffic, and no worker can keep a session alive that another ended.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import pyotp
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.tables import operator_sessions, operators
from exchange.adapters.passwords import PasswordHashing, check_password_rules
from exchange.adapters.secret_box import SecretBox
from exchange.clock import Clock
from exchange.domain.errors import ExchangeError
from exchange.services.accounts import retry_seconds
from exchange.services.emails import normalize_email
from exchange.services.sessions import token_hash

FAILURE_LIMIT = 5
LOCK_MS = 15 * 60 * 1000
#: Codes of the step before and after the current one are accepted (clock drift).
DRIFT_STEPS = 1
ENROLL = "enroll"
FULL = "full"


@dataclass(frozen=True, slots=True)
class Operator:
    """The operator behind a console session."""

    id: int
    email: str
    #: ``enroll``: the password was right but TOTP is not set up yet; ``full``: both.
    stage: str


def _wrong() -> ExchangeError:
    return ExchangeError("invalid_credentials", "wrong e-mail address, password or code")


class Operators:
    def __init__(
        self,
        db: AsyncEngine,
        hashing: PasswordHashing,
        box: SecretBox,
        clock: Clock,
        *,
        server_key: bytes,
        lifetime: int,
        idle: int,
        issuer: str = "Exchange console",
    ) -> None:
        self._db = db
        self._reads = reading(db)
        self._hashing = hashing
        self._box = box
        self._clock = clock
        self._csrf_key = hmac.new(server_key, b"exchange: operator CSRF, v1", "sha256").digest()
        self._lifetime_ms = lifetime * 1000
        self._idle_ms = idle * 1000
        self.issuer = issuer

    # -- accounts (from the server's shell) -----------------------------------

    async def create(self, email: str, password: str, *, reset: bool = False) -> int:
        """A new operator, or (``reset``) a new password for one: TOTP set up anew, sessions
        ended. The operator enrols a TOTP app at the next login."""
        address = normalize_email(email)
        check_password_rules(password, address)
        hashed = await self._hashing.hash(password)
        fresh = {
            "password_hash": hashed,
            "totp_secret": None,
            "totp_confirmed": False,
            "totp_last_step": 0,
            "failures": 0,
            "locked_until": 0,
        }
        async with self._db.begin() as conn:
            row = (
                await conn.execute(select(operators.c.id).where(operators.c.email == address))
            ).first()
            if row is not None:
                if not reset:
                    raise ExchangeError(
                        "operator_exists",
                        f"operator {address} exists; --reset gives it a new password and TOTP",
                    )
                await conn.execute(update(operators).where(operators.c.id == row.id).values(fresh))
                await conn.execute(
                    delete(operator_sessions).where(operator_sessions.c.operator_id == row.id)
                )
                return int(row.id)
            if reset:
                raise ExchangeError("unknown_operator", f"there is no operator {address}")
            made = await conn.execute(
                insert(operators).values(email=address, created=self._clock(), **fresh)
            )
            key = made.inserted_primary_key
            assert key is not None
            return int(key[0])

    # -- logging in ------------------------------------------------------------

    async def login(self, email: str, password: str, code: str) -> tuple[str, Operator]:
        """A new session token for the right password and code; ``invalid_credentials``
        (no hint which was wrong) or ``too_many_attempts`` otherwise."""
        address = email.strip().lower()
        now = self._clock()
        async with self._reads.connect() as conn:
            found = await conn.execute(select(operators).where(operators.c.email == address))
            row = found.first()
        if row is not None and row.locked_until > now:
            raise ExchangeError(
                "too_many_attempts",
                "too many wrong attempts; this operator is locked for a while",
                retry_after=retry_seconds(row.locked_until - now),
            )
        right = await self._hashing.verify(row.password_hash if row else None, password)
        if row is None or not right:
            await self._failed(row.id if row is not None else None, now)
            raise _wrong()
        stage = FULL
        values: dict[str, object] = {"failures": 0, "last_login": now}
        if row.totp_confirmed:
            step = self._matching_step(self._box.open(row.totp_secret), code, now)
            if step is None or not await self._spend(row.id, step):
                await self._failed(row.id, now)
                raise _wrong()
        else:
            # Not set up yet: a new secret at each such login (one shown before and not
            # confirmed may have been seen by someone else).
            stage = ENROLL
            values["totp_secret"] = self._box.seal(pyotp.random_base32())
        token = secrets.token_urlsafe(32)
        async with self._db.begin() as conn:
            await conn.execute(update(operators).where(operators.c.id == row.id).values(values))
            await conn.execute(
                delete(operator_sessions).where(
                    (operator_sessions.c.created <= now - self._lifetime_ms)
                    | (operator_sessions.c.last_seen <= now - self._idle_ms)
                )
            )
            await conn.execute(
                insert(operator_sessions).values(
                    token_hash=token_hash(token),
                    operator_id=row.id,
                    stage=stage,
                    created=now,
                    last_seen=now,
                )
            )
        return token, Operator(int(row.id), str(row.email), stage)

    async def _failed(self, operator_id: int | None, now: int) -> None:
        """Count a wrong attempt; the fifth in a row locks the operator out."""
        if operator_id is None:
            return
        async with self._db.begin() as conn:
            failures = (
                await conn.execute(
                    update(operators)
                    .where(operators.c.id == operator_id)
                    .values(failures=operators.c.failures + 1)
                    .returning(operators.c.failures)
                )
            ).scalar_one()
            if failures >= FAILURE_LIMIT:
                await conn.execute(
                    update(operators)
                    .where(operators.c.id == operator_id)
                    .values(failures=0, locked_until=now + LOCK_MS)
                )

    def _matching_step(self, secret: str, code: str, now: int) -> int | None:
        """The time step whose code ``code`` is (within the drift), or None."""
        code = code.strip().replace(" ", "")
        if len(code) != 6 or not code.isdigit():
            return None
        totp = pyotp.TOTP(secret)
        current = now // 1000 // totp.interval
        for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
            if hmac.compare_digest(totp.generate_otp(step), code):
                return step
        return None

    async def _spend(self, operator_id: int, step: int) -> bool:
        """Remember ``step`` as used; False if it (or a later one) was used already."""
        async with self._db.begin() as conn:
            spent = await conn.execute(
                update(operators)
                .where(operators.c.id == operator_id, operators.c.totp_last_step < step)
                .values(totp_last_step=step)
            )
        return bool(spent.rowcount)

    # -- enrolling a TOTP app --------------------------------------------------

    async def enrolment_uri(self, operator: Operator) -> str:
        """The ``otpauth://`` URI of the operator's unconfirmed secret (for the QR code)."""
        if operator.stage != ENROLL:
            raise ExchangeError("wrong_state", "TOTP is set up already")
        async with self._reads.connect() as conn:
            sealed = (
                await conn.execute(
                    select(operators.c.totp_secret).where(operators.c.id == operator.id)
                )
            ).scalar_one()
        secret = self._box.open(sealed)
        return pyotp.TOTP(secret).provisioning_uri(name=operator.email, issuer_name=self.issuer)

    async def confirm(self, token: str, operator: Operator, code: str) -> Operator:
        """The first code from the new TOTP app: the secret is confirmed, the session full."""
        if operator.stage != ENROLL:
            raise ExchangeError("wrong_state", "TOTP is set up already")
        now = self._clock()
        async with self._reads.connect() as conn:
            sealed = (
                await conn.execute(
                    select(operators.c.totp_secret).where(operators.c.id == operator.id)
                )
            ).scalar_one()
        step = self._matching_step(self._box.open(sealed), code, now)
        if step is None:
            await self._failed(operator.id, now)
            raise ExchangeError("invalid_code", "that is not the app's current code; try again")
        async with self._db.begin() as conn:
            await conn.execute(
                update(operators)
                .where(operators.c.id == operator.id)
                .values(totp_confirmed=True, totp_last_step=step, failures=0)
            )
            await conn.execute(
                update(operator_sessions)
                .where(operator_sessions.c.token_hash == token_hash(token))
                .values(stage=FULL)
            )
        return Operator(operator.id, operator.email, FULL)

    # -- sessions --------------------------------------------------------------

    async def resolve(self, token: str | None) -> Operator | None:
        """The operator of a live session, or None; extends its idle window."""
        if not token or len(token) > 128:
            return None
        key = token_hash(token)
        now = self._clock()
        async with self._reads.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        operator_sessions.c.stage,
                        operator_sessions.c.created,
                        operator_sessions.c.last_seen,
                        operators.c.id,
                        operators.c.email,
                    )
                    .join(operators, operators.c.id == operator_sessions.c.operator_id)
                    .where(operator_sessions.c.token_hash == key)
                )
            ).first()
        if row is None:
            return None
        if now - row.created >= self._lifetime_ms or now - row.last_seen >= self._idle_ms:
            await self.logout(token)
            return None
        async with self._db.begin() as conn:
            await conn.execute(
                update(operator_sessions)
                .where(operator_sessions.c.token_hash == key)
                .values(last_seen=now)
            )
        return Operator(int(row.id), str(row.email), str(row.stage))

    async def logout(self, token: str) -> None:
        async with self._db.begin() as conn:
            await conn.execute(
                delete(operator_sessions).where(operator_sessions.c.token_hash == token_hash(token))
            )

    def csrf_token(self, token: str) -> str:
        """The hidden form field every console POST carries: bound to the session, so a
        page of another site cannot know it."""
        return hmac.new(self._csrf_key, token_hash(token).encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, token: str, sent: str) -> bool:
        return hmac.compare_digest(self.csrf_token(token), sent)
