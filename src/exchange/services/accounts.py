"""Registration by e-mail code and login with lockout (SPEC §4).

Security rules here (code tries, resend cooldown, lockout) are always on; the
configurable per-address rate limits live in the API layer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.tables import login_failures, users, verification_codes
from exchange.adapters.mailer import Mailer
from exchange.adapters.passwords import PasswordHashing, check_password_rules
from exchange.clock import Clock
from exchange.domain.errors import ExchangeError
from exchange.metrics import CODES_SENT, LOGINS
from exchange.services.emails import normalize_email
from exchange.services.keyed_locks import KeyedLocks

CODE_TTL_MS = 10 * 60 * 1000
CODE_RESEND_MS = 60 * 1000
CODE_MAX_TRIES = 5
LOCKOUT_WINDOW_MS = 15 * 60 * 1000
LOCKOUT_FAILURES = 5
#: A spent or expired code's row is deleted this long after its expiry.
CODE_KEPT_AFTER_MS = 60 * 60 * 1000


def code_hmac(key: bytes, salt: str, email: str, code: str) -> str:
    """What is stored of a code: an HMAC with the server's key (a database copy is not enough)."""
    return hmac.new(key, f"{salt}:{email}:{code}".encode(), hashlib.sha256).hexdigest()


def retry_seconds(ms: int) -> int:
    """A wait in milliseconds as whole seconds for ``Retry-After`` (rounded up, at least 1)."""
    return max(1, -(-ms // 1000))


class Accounts:
    def __init__(
        self,
        db: AsyncEngine,
        mailer: Mailer,
        hashing: PasswordHashing,
        clock: Clock,
        *,
        secret: bytes,
    ) -> None:
        self._db = db
        self._reads = reading(db)  # reads take no write lock on SQLite
        self._mailer = mailer
        self._hashing = hashing
        self._clock = clock
        self._secret = secret
        # Serialises attempts per address inside this process so parallel guesses
        # cannot all slip past the try counter before it is written.
        self._locks = KeyedLocks()

    async def user_id(self, email: str) -> int | None:
        async with self._reads.connect() as conn:
            row = (await conn.execute(select(users.c.id).where(users.c.email == email))).first()
        return None if row is None else int(row.id)

    async def exists(self, user: str) -> bool:
        return await self.user_id(normalize_email(user)) is not None

    async def send_code(self, user: str) -> None:
        email = normalize_email(user)
        async with self._locks.hold(email):
            if await self.user_id(email) is not None:
                raise ExchangeError("user_exists", "this e-mail address is already registered")
            now = self._clock()
            code = f"{secrets.randbelow(1_000_000):06d}"
            salt = secrets.token_hex(16)
            try:
                async with self._db.begin() as conn:
                    row = (
                        await conn.execute(
                            select(verification_codes.c.created).where(
                                verification_codes.c.email == email
                            )
                        )
                    ).first()
                    if row is not None and now - row.created < CODE_RESEND_MS:
                        wait = retry_seconds(row.created + CODE_RESEND_MS - now)
                        raise ExchangeError(
                            "rate_limited",
                            f"a code was sent less than a minute ago; ask again in {wait} s",
                            retry_after=wait,
                        )
                    # Only a code past its cooldown is replaced; had another process
                    # stored one meanwhile, the insert below conflicts with it.
                    await conn.execute(
                        delete(verification_codes).where(
                            verification_codes.c.email == email,
                            verification_codes.c.created <= now - CODE_RESEND_MS,
                        )
                    )
                    await conn.execute(
                        insert(verification_codes).values(
                            email=email,
                            code_hash=code_hmac(self._secret, salt, email, code),
                            salt=salt,
                            created=now,
                            expires=now + CODE_TTL_MS,
                            attempts=0,
                            used=False,
                        )
                    )
            except IntegrityError:  # another process stored a code for it this instant
                raise ExchangeError(
                    "rate_limited",
                    "a code was just sent to this address; ask again in 60 s",
                    retry_after=60,
                ) from None
            try:
                await self._mailer.send(
                    email,
                    "Your verification code",
                    f"Your verification code is {code}.\n\n"
                    "It is valid for 10 minutes and can be used once.\n"
                    "If you did not ask for it, ignore this message.\n",
                )
            except Exception:
                async with self._db.begin() as conn:  # this code only, not a newer one
                    await conn.execute(
                        delete(verification_codes).where(
                            verification_codes.c.email == email,
                            verification_codes.c.code_hash
                            == code_hmac(self._secret, salt, email, code),
                        )
                    )
                raise ExchangeError(
                    "internal_error", "the e-mail could not be sent; try again later"
                ) from None
            CODES_SENT.inc()

    async def register(self, user: str, password: str, code: str) -> str:
        email = normalize_email(user)
        check_password_rules(password, email)
        async with self._locks.hold(email):
            if await self.user_id(email) is not None:
                raise ExchangeError("user_exists", "this e-mail address is already registered")
            code_hash = await self._check_code(email, code.strip())
            password_hash = await self._hashing.hash(password)
            try:
                async with self._db.begin() as conn:
                    used = await conn.execute(
                        update(verification_codes)
                        .where(
                            verification_codes.c.email == email,
                            verification_codes.c.code_hash == code_hash,
                            verification_codes.c.used.is_(False),
                        )
                        .values(used=True)
                    )
                    if used.rowcount != 1:
                        raise ExchangeError("invalid_code", "this code was already used")
                    await conn.execute(
                        insert(users).values(
                            email=email, password_hash=password_hash, created=self._clock()
                        )
                    )
            except IntegrityError:
                raise ExchangeError(
                    "user_exists", "this e-mail address is already registered"
                ) from None
        return email

    async def ensure_user(self, user: str, password: str) -> int:
        """Create an account without an e-mail code (demo and operator accounts only).

        The password rules still apply; an existing account is left as it is.
        """
        email = normalize_email(user)
        check_password_rules(password, email)
        existing = await self.user_id(email)
        if existing is not None:
            return existing
        password_hash = await self._hashing.hash(password)
        try:
            async with self._db.begin() as conn:
                await conn.execute(
                    insert(users).values(
                        email=email, password_hash=password_hash, created=self._clock()
                    )
                )
        except IntegrityError:
            pass
        found = await self.user_id(email)
        assert found is not None
        return found

    async def _check_code(self, email: str, code: str) -> str:
        """The code's hash if ``code`` is right; every wrong try is counted, even in parallel.

        A try is reserved (the counter raised, only while below the limit) in the
        same transaction that compares: the row stays locked until the commit, so
        parallel guesses from several worker processes can never exceed the limit.
        """
        now = self._clock()
        async with self._reads.connect() as conn:  # no write (no write lock) without a code
            sent = (
                await conn.execute(
                    select(verification_codes.c.email).where(verification_codes.c.email == email)
                )
            ).first()
        if sent is None:
            raise ExchangeError("invalid_code", "no code was sent to this address; ask for one")
        async with self._db.begin() as conn:
            reserved = await conn.execute(
                update(verification_codes)
                .where(
                    verification_codes.c.email == email,
                    verification_codes.c.attempts < CODE_MAX_TRIES,
                )
                .values(attempts=verification_codes.c.attempts + 1)
            )
            row = (
                await conn.execute(
                    select(verification_codes).where(verification_codes.c.email == email)
                )
            ).first()
            if row is None:
                raise ExchangeError("invalid_code", "no code was sent to this address; ask for one")
            if reserved.rowcount != 1:
                raise ExchangeError(
                    "too_many_attempts",
                    "this code was entered wrongly 5 times and no longer works; ask for a new one",
                    retry_after=retry_seconds(max(row.created + CODE_RESEND_MS - now, 1)),
                )
            if row.used:
                raise ExchangeError("invalid_code", "this code was already used; ask for a new one")
            if now >= row.expires:
                raise ExchangeError("code_expired", "this code has expired; ask for a new one")
            expected = code_hmac(self._secret, row.salt, email, code)
            if hmac.compare_digest(expected, row.code_hash):
                return expected
            # The failed try must be committed before refusing: raising inside this
            # block would roll the counter back and allow unlimited guesses.
        left = CODE_MAX_TRIES - row.attempts  # the row was read after the reservation
        raise ExchangeError("invalid_code", f"wrong code; {left} tries left")

    async def login(self, user: str, password: str) -> tuple[int, str]:
        """Check the credentials; the same answer whether the user exists or not."""
        try:
            found = await self._login(normalize_email(user), password)
        except ExchangeError as refusal:
            LOGINS.labels(refusal.code).inc()
            raise
        LOGINS.labels("ok").inc()
        return found

    async def _login(self, email: str, password: str) -> tuple[int, str]:
        async with self._locks.hold(email):
            now = self._clock()
            since = now - LOCKOUT_WINDOW_MS
            # Count this try as a failure BEFORE looking: of parallel tries (several
            # worker processes), each sees every try committed before its own count,
            # so no more than LOCKOUT_FAILURES passwords are ever checked per window.
            async with self._db.begin() as conn:
                attempt = (
                    await conn.execute(
                        insert(login_failures)
                        .values(email=email, time=now)
                        .returning(login_failures.c.id)
                    )
                ).scalar_one()
            async with self._reads.connect() as conn:
                times = (
                    (
                        await conn.execute(
                            select(login_failures.c.time)
                            .where(login_failures.c.email == email, login_failures.c.time > since)
                            .order_by(login_failures.c.time.desc())
                            .limit(LOCKOUT_FAILURES + 1)
                        )
                    )
                    .scalars()
                    .all()
                )
                row = (
                    await conn.execute(
                        select(users.c.id, users.c.password_hash).where(users.c.email == email)
                    )
                ).first()
            if len(times) > LOCKOUT_FAILURES:  # this try is one of them
                async with self._db.begin() as conn:  # a refused try is not a failure
                    await conn.execute(delete(login_failures).where(login_failures.c.id == attempt))
                wait = retry_seconds(times[-1] + LOCKOUT_WINDOW_MS - now)
                raise ExchangeError(
                    "too_many_attempts",
                    f"too many failed logins; try again in {wait} s",
                    retry_after=wait,
                )
            stored = None if row is None else str(row.password_hash)
            if not await self._hashing.verify(stored, password) or row is None:
                raise ExchangeError("invalid_credentials", "wrong e-mail address or password")
            async with self._db.begin() as conn:
                await conn.execute(delete(login_failures).where(login_failures.c.email == email))
                await conn.execute(update(users).where(users.c.id == row.id).values(last_login=now))
            return int(row.id), email

    async def prune(self) -> dict[str, int]:
        """Delete what no rule needs any more (``Housekeeping`` calls this periodically).

        Login failures count only within the lockout window. A code row is kept
        for an hour past its expiry (a late try still hears "expired", not "no
        code"), and a used one as long: after that it only takes room.
        """
        now = self._clock()
        async with self._db.begin() as conn:
            failures = await conn.execute(
                delete(login_failures).where(login_failures.c.time < now - LOCKOUT_WINDOW_MS)
            )
            codes = await conn.execute(
                delete(verification_codes).where(
                    verification_codes.c.expires < now - CODE_KEPT_AFTER_MS
                )
            )
        return {"login_failures": failures.rowcount, "codes": codes.rowcount}
