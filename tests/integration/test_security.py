"""The security review's smaller holes, each as it was seen, on SQLite and PostgreSQL.

Registration limits and its cost, the real client address behind a proxy, the
served host names, the redirect after login, codes that a database copy does
not give away, private database files, a stale cookie beside a valid token,
and the headers of API answers and pages.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, select, text

from exchange.adapters.db.database import reading, sqlite_path
from exchange.adapters.db.tables import verification_codes
from exchange.adapters.secret_key import key_file
from exchange.services.accounts import code_hmac
from support import BASE_URL, Mailbox, assert_envelope, login, make_settings, register, running_app

EMAIL = "alice@example.com"


def front(app: Any) -> Any:
    """The app the clients talk to: the worker's when the suite runs through one."""
    return getattr(app.state, "worker", app)


@asynccontextmanager
async def client_at(app: Any, address: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose connections come from ``address`` (the socket peer)."""
    transport = httpx.ASGITransport(app=front(app), client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, **options) as client:
        yield client


# -- registration -----------------------------------------------------------------


async def test_registration_is_rate_limited_per_client_address(
    database_url: str, mail: tuple[Mailbox, int]
) -> None:
    settings = make_settings(database_url, mail[1], rate_limits="on", rate_limit_register="3/60")
    async with running_app(settings) as (app, _client):
        attempt = {"user": EMAIL, "pass": "correct-horse-42", "valid_code": "000000"}
        async with client_at(app, "198.51.100.20") as client:
            for _ in range(3):
                answer = await client.post("/api/regeist_user", data=attempt)
                assert_envelope(answer, 400, "invalid_code")
            limited = await client.post("/api/regeist_user", data=attempt)
            assert_envelope(limited, 429, "rate_limited")
            assert int(limited.headers["retry-after"]) >= 1
        async with client_at(app, "198.51.100.21") as other:  # another address is not limited
            assert_envelope(
                await other.post("/api/regeist_user", data=attempt), 400, "invalid_code"
            )


async def test_registration_without_a_code_takes_no_write_lock(
    sqlite_url: str, mail: tuple[Mailbox, int]
) -> None:
    """It used to take SQLite's write lock on every call, code or not."""
    settings = make_settings(sqlite_url, mail[1])
    async with running_app(settings) as (_app, client):
        holder = create_engine(f"sqlite:///{sqlite_path(sqlite_url)}", isolation_level=None)
        with holder.connect() as conn:
            conn.execute(text("BEGIN IMMEDIATE"))  # someone else holds the write lock
            try:
                answer = await client.post(
                    "/api/regeist_user",
                    data={
                        "user": "nocode@example.com",
                        "pass": "correct-horse-42",
                        "valid_code": "1",
                    },
                    timeout=5,
                )
            finally:
                conn.execute(text("ROLLBACK"))
        holder.dispose()
        assert_envelope(answer, 400, "invalid_code")


async def test_random_addresses_leave_no_state_behind(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = app_client
    accounts = front(app).runtime.services.accounts
    for n in range(300):
        data = {"user": f"r{n}@example.com", "pass": "correct-horse-42", "valid_code": "123456"}
        assert_envelope(await client.post("/api/regeist_user", data=data), 400, "invalid_code")
        assert_envelope(
            await client.post("/api/login", data={"user": f"r{n}@example.com", "pass": "x" * 9}),
            401,
            "invalid_credentials",
        )
    assert len(accounts._locks) == 0


# -- behind a reverse proxy ----------------------------------------------------------


async def test_forwarded_addresses_count_only_from_trusted_proxies(
    database_url: str, mail: tuple[Mailbox, int]
) -> None:
    settings = make_settings(
        database_url,
        mail[1],
        rate_limits="on",
        rate_limit_exists="2/60",
        trusted_proxies="127.0.0.1, 10.0.0.0/8",
    )
    ask = {"user": EMAIL}
    async with running_app(settings) as (app, _client):
        async with client_at(app, "127.0.0.1") as proxy:
            first = {"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https"}
            for _ in range(2):
                assert (
                    await proxy.post("/api/check_exist_name", data=ask, headers=first)
                ).status_code == 200
            assert_envelope(
                await proxy.post("/api/check_exist_name", data=ask, headers=first),
                429,
                "rate_limited",
            )
            # Another user behind the same proxy has a bucket of its own.
            second = {"X-Forwarded-For": "203.0.113.6"}
            assert (
                await proxy.post("/api/check_exist_name", data=ask, headers=second)
            ).status_code == 200
            # A client cannot pick its address by prepending one: the right-most untrusted counts.
            spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}
            assert_envelope(
                await proxy.post("/api/check_exist_name", data=ask, headers=spoofed),
                429,
                "rate_limited",
            )
        async with client_at(app, "10.1.2.3") as inner:  # a trusted network
            third = {"X-Forwarded-For": "203.0.113.7"}
            for _ in range(2):
                assert (
                    await inner.post("/api/check_exist_name", data=ask, headers=third)
                ).status_code == 200
        async with client_at(app, "192.0.2.50") as untrusted:  # its header is ignored
            for n in range(2):
                header = {"X-Forwarded-For": f"203.0.113.{100 + n}"}
                assert (
                    await untrusted.post("/api/check_exist_name", data=ask, headers=header)
                ).status_code == 200
            header = {"X-Forwarded-For": "203.0.113.200"}
            assert_envelope(
                await untrusted.post("/api/check_exist_name", data=ask, headers=header),
                429,
                "rate_limited",
            )


async def test_without_trusted_proxies_forwarded_headers_are_ignored(
    sqlite_url: str, mail: tuple[Mailbox, int]
) -> None:
    settings = make_settings(sqlite_url, mail[1], rate_limits="on", rate_limit_exists="2/60")
    async with running_app(settings) as (app, _client), client_at(app, "127.0.0.1") as client:
        for n in range(2):
            header = {"X-Forwarded-For": f"203.0.113.{n}"}
            assert (
                await client.post("/api/check_exist_name", data={"user": EMAIL}, headers=header)
            ).status_code == 200
        limited = await client.post(
            "/api/check_exist_name", data={"user": EMAIL}, headers={"X-Forwarded-For": "1.2.3.4"}
        )
        assert_envelope(limited, 429, "rate_limited")


# -- served host names ------------------------------------------------------------


async def test_only_served_host_names_are_answered(
    sqlite_url: str, mail: tuple[Mailbox, int]
) -> None:
    settings = make_settings(sqlite_url, mail[1], allowed_hosts="exchange.example")
    async with running_app(settings) as (app, _client), client_at(app, "127.0.0.1") as client:
        for host in ("127.0.0.1:8088", "localhost", "[::1]:8088", "EXCHANGE.example:443"):
            answer = await client.get("/api/get_rank", headers={"Host": host})
            assert answer.status_code == 200, host
        rebound = await client.get("/api/get_rank", headers={"Host": "evil.example"})
        assert_envelope(rebound, 400, "invalid_argument")
        assert "evil.example" in rebound.json()["description"]
        page = await client.get("/", headers={"Host": "evil.example:8088"})
        assert page.status_code == 400 and "text/html" in page.headers["content-type"]
        assert (await client.get("/", headers={"Host": "exchange.example"})).status_code == 200
    anywhere = make_settings(sqlite_url, mail[1], allowed_hosts="*")
    async with running_app(anywhere) as (app, _client), client_at(app, "127.0.0.1") as client:
        answer = await client.get("/api/get_rank", headers={"Host": "any.example"})
        assert answer.status_code == 200


# -- login redirect, codes, files, credentials, headers ---------------------------


async def test_login_page_never_sends_the_user_to_another_origin(
    client: httpx.AsyncClient,
) -> None:
    for target, kept in (
        ("/%09/evil.example", "/account"),  # the review's case
        ("//evil.example", "/account"),
        ("https://evil.example/x", "/account"),
        ("/trade/BTC_USDT", "/trade/BTC_USDT"),
    ):
        page = await client.get("/login", params={"next": target.replace("%09", "\t")})
        assert page.status_code == 200
        found = re.search(r'data-next="([^"]*)"', page.text)
        assert found is not None and found.group(1) == kept, (target, found)


async def test_a_database_copy_does_not_give_codes_away(
    database_url: str, mail: tuple[Mailbox, int]
) -> None:
    mailbox, port = mail
    settings = make_settings(database_url, port)
    async with running_app(settings) as (app, client):
        assert_envelope(await client.post("/api/make_valid_code", data={"user": EMAIL}), 200)
        code = mailbox.code_for(EMAIL)
        engine = reading(app.runtime.services.engine.journal.engine)  # never the write lock
        with engine.connect() as conn:
            row = conn.execute(select(verification_codes)).one()
        # What a copy of the database holds is not the old salted SHA-256 of the code ...
        assert row.code_hash != hashlib.sha256(f"{row.salt}:{EMAIL}:{code}".encode()).hexdigest()
        # ... but an HMAC with a key that lives outside the database.
        path = key_file(database_url, settings.secret_key_file)
        key = bytes.fromhex(path.read_text().strip())
        assert row.code_hash == code_hmac(key, row.salt, EMAIL, code)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert key.hex() not in (await _database_text(engine))
        await register_with(client, code)


async def _database_text(engine: Any) -> str:
    with engine.connect() as conn:
        rows = conn.execute(select(verification_codes)).all()
    return repr(rows)


async def register_with(client: httpx.AsyncClient, code: str) -> None:
    answer = await client.post(
        "/api/regeist_user", data={"user": EMAIL, "pass": "correct-horse-42", "valid_code": code}
    )
    assert_envelope(answer, 200)


async def test_the_sqlite_files_and_the_key_are_private(
    tmp_path: Path, mail: tuple[Mailbox, int]
) -> None:
    previous = os.umask(0o022)  # a usual umask: files would be world-readable
    try:
        url = f"sqlite:///{tmp_path / 'private.db'}"
        settings = make_settings(url, mail[1], secret_key_file="")  # the default place
        async with running_app(settings) as (_app, client):
            await client.post("/api/check_exist_name", data={"user": EMAIL})
            names = ("private.db", "private.db-wal", "private.db-shm", "private.db.secret-key")
            for name in names:
                mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
                assert mode & 0o077 == 0, (name, oct(mode))
    finally:
        os.umask(previous)


async def test_a_stale_cookie_does_not_hide_a_valid_bearer_token(
    client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    await register(client, mailbox, EMAIL)
    stale = await login(client, EMAIL)
    fresh = await login(client, EMAIL)  # the first session is gone now
    client.cookies.clear()
    client.cookies.set("session", stale)
    answer = await client.post("/api/get_user_coin", headers={"Authorization": f"Bearer {fresh}"})
    assert assert_envelope(answer, 200)["BTC"]["available"] == "0.00000000"
    assert_envelope(await client.post("/api/get_user_coin"), 401, "not_logged_in")
    # The parameter comes last and is found too.
    answer = await client.post("/api/get_user_coin", data={"session": fresh})
    assert_envelope(answer, 200)


async def test_api_answers_are_never_cached_and_pages_connect_only_home(
    client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    await register(client, mailbox, EMAIL)
    logged_in = await client.post("/api/login", data={"user": EMAIL, "pass": "correct-horse-42"})
    answers = [
        logged_in,
        await client.get("/api/get_rank"),
        await client.get("/router", params={"router": "get_depth", "pair": "nope"}),
        await client.get("/api/no_such_method"),
        await client.get("/api/"),
    ]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.url
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url
    page = await client.get("/trade/BTC_USDT")
    csp = page.headers["content-security-policy"]
    connect = re.search(r"connect-src ([^;]*)", csp)
    assert connect is not None
    sources = connect.group(1).split()
    assert sources == ["'self'", "ws://127.0.0.1:8088", "wss://127.0.0.1:8088"], sources


async def test_unknown_sessions_are_limited_per_address(
    sqlite_url: str, mail: tuple[Mailbox, int]
) -> None:
    """A guesser with fresh random tokens costs a lookup each: at most the budget."""
    settings = make_settings(sqlite_url, mail[1], rate_limits="on", rate_limit_auth_failures="3/60")
    async with running_app(settings) as (app, _client):
        sessions = front(app).runtime.services.sessions
        lookups: list[str] = []
        real_load = sessions._load

        async def counted(key: str, now: int) -> Any:
            lookups.append(key)
            return await real_load(key, now)

        sessions._load = counted
        async with client_at(app, "198.51.100.30") as guesser:
            for n in range(3):
                bogus = {"Authorization": f"Bearer guess-{n}"}
                answer = await guesser.post("/api/get_user_coin", headers=bogus)
                assert_envelope(answer, 401, "not_logged_in")
            for n in range(3, 20):
                bogus = {"Authorization": f"Bearer guess-{n}"}
                limited = await guesser.post("/api/get_user_coin", headers=bogus)
                assert_envelope(limited, 429, "rate_limited")
                assert int(limited.headers["retry-after"]) >= 1
        assert len(lookups) == 3
        async with client_at(app, "198.51.100.31") as other:  # another address is not held
            answer = await other.post("/api/get_user_coin", headers={"Authorization": "Bearer x"})
            assert_envelope(answer, 401, "not_logged_in")
