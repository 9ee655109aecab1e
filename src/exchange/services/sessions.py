"""Login sessions: random tokens, stored only as SHA-256 hashes.

A token has 256 bits from the OS CSPRNG, so a fast hash is enough (nothing to
brute force) and lookups stay cheap. Sessions live in the database and survive a
restart; a small in-process cache keeps the database off the hot path of every
authenticated request, re-validated at least every ``CACHE_SECONDS``.

A session in use is read again ahead of that, in the background (``_refresh``):
the request that finds it due goes on with the cached entry, still younger than
``CACHE_SECONDS``, so an ended session is still refused within ``CACHE_SECONDS``
as before, and no request of a busy session waits for its session's read. Only
an entry older than that (a session idle that long) is read before the request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.tables import sessions
from exchange.clock import Clock

CACHE_SECONDS = 5
TOUCH_SECONDS = 60  # last_seen is written at most once a minute per session
#: A token that names no session is remembered this long: a client repeating a bogus
#: token (or a guesser's socket) costs one database lookup, not one per message.
UNKNOWN_SECONDS = 30
MAX_REMEMBERED = 100_000

log = logging.getLogger("exchange.sessions")
#: The spread of the checks: timing, not a secret. An instance of its own, not the
#: module's shared state, which a caller (hypothesis, a seeded test) may own.
_spread = random.Random()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(slots=True)
class _Cached:
    user_id: int
    created: int
    last_seen: int
    checked: int


class Sessions:
    def __init__(self, db: AsyncEngine, clock: Clock, *, lifetime: int, idle: int) -> None:
        self._db = db
        self._reads = reading(db)  # reads take no write lock on SQLite
        self._clock = clock
        self._lifetime_ms = lifetime * 1000
        self._idle_ms = idle * 1000
        self._cache: dict[str, _Cached] = {}
        #: Called with the hash of every ended session: with several workers, each
        #: caches sessions, and all of them must forget one at once, not in 5 s.
        self.on_end: Callable[[str], None] | None = None
        self._revoked: set[str] = set()
        #: hash -> when it was found to name no session (ms). Tokens are random and
        #: made only by ``create``, so an unknown one never becomes a live session.
        self._unknown: dict[str, int] = {}
        #: Background reads in flight, by hash: one per session, referenced until done.
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    def forget(self, key: str) -> None:
        """Drop a cached session (another worker ended it), and never cache it again.

        Remembered because a lookup may be in flight: it read the row before the
        other worker deleted it, and would otherwise cache it after this call.
        """
        self._cache.pop(key, None)
        if len(self._revoked) > 100_000:
            self._revoked.clear()
        self._revoked.add(key)

    def forget_all(self) -> None:
        self._cache.clear()

    async def create(self, user_id: int) -> str:
        """A new session, cached at once: its first request needs no database read.

        Without it, the first request of every new session read its row back; many
        logins at once (a bot fleet starting, the benchmark's clients) made as many
        reads at once on the pool, and the first orders waited up to 50 ms for them.
        """
        token = secrets.token_urlsafe(32)
        key = token_hash(token)
        now = self._clock()
        async with self._db.begin() as conn:
            await conn.execute(
                insert(sessions).values(token_hash=key, user_id=user_id, created=now, last_seen=now)
            )
        self._remember(key, _Cached(user_id, now, now, now))
        return token

    async def delete(self, token: str) -> None:
        await self.delete_hash(token_hash(token))

    async def resolve(self, token: str | None) -> int | None:
        """The user id of a live session, or None; extends the idle window."""
        if not token or len(token) > 128:
            return None
        key = token_hash(token)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is None or now - cached.checked > CACHE_SECONDS * 1000:
            unknown = self._unknown.get(key)
            if unknown is not None and now - unknown < UNKNOWN_SECONDS * 1000:
                return None
            cached = await self._load(key, now)
            if cached is None:
                self._not_found(key, now)
                return None
        if now - cached.created >= self._lifetime_ms or now - cached.last_seen >= self._idle_ms:
            await self.delete_hash(key)
            return None
        if now - cached.last_seen > TOUCH_SECONDS * 1000:
            cached.last_seen = now
            async with self._db.begin() as conn:
                await conn.execute(
                    update(sessions).where(sessions.c.token_hash == key).values(last_seen=now)
                )
        if now - cached.checked > CACHE_SECONDS * 750 and key not in self._refreshing:
            # After the touch above: the read then finds the last_seen just written.
            task = asyncio.get_running_loop().create_task(self._refresh(key, now))
            self._refreshing[key] = task
            # Not a ``finally`` in the task: one cancelled before its first step never runs.
            task.add_done_callback(lambda _: self._refreshing.pop(key, None))
        return cached.user_id

    async def prune(self) -> int:
        """Delete sessions past their absolute or idle lifetime; the number deleted.

        ``last_seen`` is written at most once a minute, so the idle test allows that
        minute: no live session is ever deleted.
        """
        now = self._clock()
        idle_before = now - self._idle_ms - TOUCH_SECONDS * 1000
        async with self._db.begin() as conn:
            gone = await conn.execute(
                delete(sessions).where(
                    (sessions.c.created <= now - self._lifetime_ms)
                    | (sessions.c.last_seen < idle_before)
                )
            )
        return int(gone.rowcount)

    async def delete_hash(self, key: str) -> None:
        self._cache.pop(key, None)
        async with self._db.begin() as conn:
            await conn.execute(delete(sessions).where(sessions.c.token_hash == key))
        self.forget(key)  # a lookup in flight here must not cache it again
        if self.on_end is not None:
            self.on_end(key)

    def _not_found(self, key: str, now: int) -> None:
        self._cache.pop(key, None)
        if len(self._unknown) >= MAX_REMEMBERED:
            self._unknown.clear()
        self._unknown[key] = now

    async def _refresh(self, key: str, now: int) -> None:
        """Read a cached session in use again while its requests go on.

        A failed read leaves the entry as it was: once it is ``CACHE_SECONDS`` old,
        the next request reads it itself and gets the error then.
        """
        try:
            if await self._load(key, now) is None:
                self._not_found(key, now)
        except Exception:  # nobody waits for this read to answer
            log.warning("a session's background read failed", exc_info=True)

    async def refreshed(self) -> None:
        """Wait for the background reads in flight (before the database is closed)."""
        while self._refreshing:
            await asyncio.gather(*list(self._refreshing.values()), return_exceptions=True)

    async def _load(self, key: str, now: int) -> _Cached | None:
        async with self._reads.connect() as conn:
            row = (
                await conn.execute(
                    select(sessions.c.user_id, sessions.c.created, sessions.c.last_seen).where(
                        sessions.c.token_hash == key
                    )
                )
            ).first()
        if row is None or key in self._revoked:
            return None
        entry = _Cached(row.user_id, row.created, row.last_seen, now)
        self._remember(key, entry)
        return entry

    def _remember(self, key: str, entry: _Cached) -> None:
        """Cache ``entry``, due for its next check between half of CACHE_SECONDS and
        all of it: sessions cached together (many logins at once, every first request
        after a restart) would otherwise all be read again in the same instant, each
        request waiting behind the others' reads on the pool."""
        entry.checked -= _spread.randrange(CACHE_SECONDS * 500)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = entry
