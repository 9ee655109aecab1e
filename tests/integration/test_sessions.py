"""The session cache: a new session needs no read, cached sessions are not all
checked again at the same instant, and a session in use is checked behind its
requests, not in front of them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.database import make_async_engine, migrate
from exchange.adapters.db.tables import sessions, users
from exchange.clock import ManualClock
from exchange.services import sessions as sessions_module
from exchange.services.sessions import CACHE_SECONDS, Sessions

USERS = 40


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    migrate(database_url)
    engine = make_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(
            insert(users),
            [
                {"email": f"s{i}@example.com", "password_hash": "x", "created": 0}
                for i in range(USERS)
            ],
        )
    yield engine
    await engine.dispose()


async def _user_ids(db: AsyncEngine) -> list[int]:
    async with db.connect() as conn:
        return list((await conn.execute(users.select().with_only_columns(users.c.id))).scalars())


async def test_a_new_session_is_known_without_reading_it_back(
    db: AsyncEngine, clock: ManualClock
) -> None:
    """Its row is deleted behind the store's back: the first request still finds it
    (from the cache ``create`` filled), until the cache's check reads the row again."""
    store = Sessions(db, clock, lifetime=3600, idle=1800)
    user = (await _user_ids(db))[0]
    token = await store.create(user)
    async with db.begin() as conn:
        await conn.execute(delete(sessions))
    assert await store.resolve(token) == user
    clock.advance(CACHE_SECONDS * 1000 + 1)
    assert await store.resolve(token) is None


async def test_sessions_cached_together_are_checked_again_at_different_times(
    db: AsyncEngine, clock: ManualClock
) -> None:
    """Forty logins in the same millisecond: three quarters of CACHE_SECONDS later
    some are due for their check and some are not (each is due between half of it
    and all of it; all forty on one side: 2⁻³⁹). None outlives CACHE_SECONDS."""
    store = Sessions(db, clock, lifetime=3600, idle=1800)
    tokens = [await store.create(user) for user in await _user_ids(db)]
    async with db.begin() as conn:
        await conn.execute(delete(sessions))
    clock.advance(CACHE_SECONDS * 750)
    known = [await store.resolve(token) is not None for token in tokens]
    assert 0 < sum(known) < len(tokens)
    clock.advance(CACHE_SECONDS * 250 + 1)
    assert [await store.resolve(token) for token in tokens] == [None] * len(tokens)


async def test_a_session_in_use_is_checked_behind_its_request(
    db: AsyncEngine, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its row deleted behind the store's back, the session is due for its check at
    four fifths of CACHE_SECONDS: that request is answered from the cache (it does not
    wait for the read) and the read goes on behind it; once it has found the row gone,
    the session is refused, before CACHE_SECONDS have passed."""
    monkeypatch.setattr(sessions_module._spread, "randrange", lambda stop: 0)  # no spread
    store = Sessions(db, clock, lifetime=3600, idle=1800)
    user = (await _user_ids(db))[0]
    token = await store.create(user)
    async with db.begin() as conn:
        await conn.execute(delete(sessions))
    clock.advance(CACHE_SECONDS * 800)
    assert await store.resolve(token) == user
    await store.refreshed()
    assert await store.resolve(token) is None
