"""Account flows through the HTTP API, on SQLite and PostgreSQL, codes by real SMTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData, select

from exchange.adapters.db.database import make_sync_engine
from exchange.clock import ManualClock
from support import assert_envelope, login, make_settings, register, running_app

EMAIL = "alice@example.com"
PASSWORD = "correct-horse-42"


async def test_register_login_balances_logout(client: httpx.AsyncClient, mailbox: Any) -> None:
    exists = await client.post("/router?router=check_exist_name", data={"user": EMAIL})
    assert exists.status_code == 200
    assert exists.json() == {"status": False, "data": {"exists": False}, "description": ""}
    sent = await client.post("/router?router=make_valid_code", data={"user": EMAIL})
    assert assert_envelope(sent, 200) == {"sent": True, "expires_in": 600}
    code = mailbox.code_for(EMAIL)
    assert code not in sent.text
    answer = await client.post(
        "/router?router=regeist_user", data={"user": EMAIL, "pass": PASSWORD, "valid_code": code}
    )
    assert assert_envelope(answer, 200) == {"user": EMAIL}
    exists = await client.post("/api/check_exist_name", data={"user": "ALICE@example.com"})
    assert exists.status_code == 200 and exists.json()["status"] is True
    assert exists.json()["data"] == {"exists": True}

    answer = await client.post("/router?router=login", data={"user": EMAIL, "pass": PASSWORD})
    data = assert_envelope(answer, 200)
    assert data["user"] == EMAIL and len(data["session"]) >= 22
    cookie = answer.headers["set-cookie"]
    assert f"session={data['session']}" in cookie
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert "Path=/" in cookie

    balances = assert_envelope(await client.post("/router?router=get_user_coin"), 200)
    assert balances == {
        "BTC": {"available": "0.00000000", "frozen": "0.00000000"},
        "ETH": {"available": "0.00000000", "frozen": "0.00000000"},
        "USDT": {"available": "0.000000", "frozen": "0.000000"},
    }
    assert assert_envelope(await client.post("/router?router=logout"), 200) is None
    assert_envelope(await client.post("/router?router=get_user_coin"), 401, "not_logged_in")
    # The old token itself is dead, not only the cookie.
    answer = await client.post(
        "/api/get_user_coin", headers={"Authorization": f"Bearer {data['session']}"}
    )
    assert_envelope(answer, 401, "not_logged_in")


async def test_parameters_in_query_form_multipart_and_json(
    client: httpx.AsyncClient, mailbox: Any
) -> None:
    assert_envelope(await client.post("/api/make_valid_code", json={"user": EMAIL}), 200)
    code = mailbox.code_for(EMAIL)
    answer = await client.post(
        "/api/regeist_user",
        files={"user": (None, EMAIL), "pass": (None, PASSWORD), "valid_code": (None, code)},
    )
    assert_envelope(answer, 200)
    answer = await client.post("/api/login", params={"user": EMAIL, "pass": PASSWORD})
    token = assert_envelope(answer, 200)["session"]
    client.cookies.clear()
    bearer = await client.post("/api/get_user_coin", headers={"Authorization": f"Bearer {token}"})
    assert_envelope(bearer, 200)
    as_param = await client.post("/api/get_user_coin", data={"session": token})
    assert_envelope(as_param, 200)
    assert_envelope(await client.post("/api/get_user_coin"), 401, "not_logged_in")


async def test_wrong_expired_and_reused_codes(
    client: httpx.AsyncClient, mailbox: Any, clock: ManualClock
) -> None:
    assert_envelope(await client.post("/api/make_valid_code", data={"user": EMAIL}), 200)
    code = mailbox.code_for(EMAIL)
    wrong = "000000" if code != "000000" else "111111"
    answer = await client.post(
        "/api/regeist_user", data={"user": EMAIL, "pass": PASSWORD, "valid_code": wrong}
    )
    assert_envelope(answer, 400, "invalid_code")
    clock.advance(10 * 60 * 1000 + 1)
    answer = await client.post(
        "/api/regeist_user", data={"user": EMAIL, "pass": PASSWORD, "valid_code": code}
    )
    assert_envelope(answer, 400, "code_expired")
    # A fresh code works once; a second use of it is refused.
    assert_envelope(await client.post("/api/make_valid_code", data={"user": EMAIL}), 200)
    code = mailbox.code_for(EMAIL)
    ok = await client.post(
        "/api/regeist_user", data={"user": EMAIL, "pass": PASSWORD, "valid_code": code}
    )
    assert_envelope(ok, 200)
    again = await client.post(
        "/api/regeist_user", data={"user": EMAIL, "pass": PASSWORD, "valid_code": code}
    )
    assert_envelope(again, 409, "user_exists")
    assert_envelope(
        await client.post("/api/make_valid_code", data={"user": EMAIL}), 409, "user_exists"
    )


async def test_used_code_cannot_register_again_after_account_removal(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Any
) -> None:
    app, client = app_client
    await register(client, mailbox, EMAIL)
    code = mailbox.code_for(EMAIL)
    from exchange.adapters.db.database import make_async_engine
    from exchange.adapters.db.tables import users

    db = make_async_engine(app.runtime.services.settings.database_url)
    try:
        async with db.begin() as conn:
            await conn.execute(users.delete())
    finally:
        await db.dispose()
    answer = await client.post(
        "/api/regeist_user", data={"user": EMAIL, "pass": PASSWORD, "valid_code": code}
    )
    assert_envelope(answer, 400, "invalid_code")
    assert "already used" in answer.json()["description"]


async def test_sixth_try_is_refused_even_with_the_right_code(
    client: httpx.AsyncClient, mailbox: Any
) -> None:
    assert_envelope(await client.post("/api/make_valid_code", data={"user": EMAIL}), 200)
    code = mailbox.code_for(EMAIL)
    wrong = "000000" if code != "000000" else "111111"
    for tries_left in (4, 3, 2, 1, 0):
        answer = await client.post(
            "/api/regeist_user", data={"user": EMAIL, "pass": PASSWORD, "valid_code": wrong}
        )
        assert_envelope(answer, 400, "invalid_code")
        assert f"{tries_left} tries left" in answer.json()["description"]
    answer = await client.post(
        "/api/regeist_user", data={"user": EMAIL, "pass": PASSWORD, "valid_code": code}
    )
    assert_envelope(answer, 429, "too_many_attempts")
    assert int(answer.headers["retry-after"]) >= 1


async def test_resend_cooldown(client: httpx.AsyncClient, mailbox: Any, clock: ManualClock) -> None:
    assert_envelope(await client.post("/api/make_valid_code", data={"user": EMAIL}), 200)
    clock.advance(30_000)
    answer = await client.post("/api/make_valid_code", data={"user": EMAIL})
    assert_envelope(answer, 429, "rate_limited")
    assert answer.headers["retry-after"] == "30"
    assert len(mailbox.messages) == 1
    clock.advance(30_001)
    assert_envelope(await client.post("/api/make_valid_code", data={"user": EMAIL}), 200)
    assert len(mailbox.messages) == 2


@pytest.mark.parametrize(
    "password",
    ["short1!", "x" * 129, "alice@example.com", "ALICE@EXAMPLE.COM", "password1", "iloveyou"],
)
async def test_weak_passwords(client: httpx.AsyncClient, mailbox: Any, password: str) -> None:
    assert_envelope(await client.post("/api/make_valid_code", data={"user": EMAIL}), 200)
    code = mailbox.code_for(EMAIL)
    answer = await client.post(
        "/api/regeist_user", data={"user": EMAIL, "pass": password, "valid_code": code}
    )
    assert_envelope(answer, 400, "weak_password")
    # A weak password does not burn one of the code's tries: the code still works.
    answer = await client.post(
        "/api/regeist_user", data={"user": EMAIL, "pass": PASSWORD, "valid_code": code}
    )
    assert_envelope(answer, 200)


async def test_128_character_password_is_kept_whole(
    client: httpx.AsyncClient, mailbox: Any
) -> None:
    password = "Ab3$" * 32
    await register(client, mailbox, EMAIL, password)
    assert_envelope(await client.post("/api/login", data={"user": EMAIL, "pass": password}), 200)
    truncated = password[:-1] + "x"
    answer = await client.post("/api/login", data={"user": EMAIL, "pass": truncated})
    assert_envelope(answer, 401, "invalid_credentials")


@pytest.mark.parametrize(
    "user", ["not-an-email", "a@", "@example.com", "a b@example.com", "x" * 250 + "@ex.com"]
)
async def test_invalid_email(client: httpx.AsyncClient, user: str) -> None:
    for method in ("make_valid_code", "check_exist_name", "login"):
        data = {"user": user, "pass": PASSWORD}
        assert_envelope(await client.post(f"/api/{method}", data=data), 400, "invalid_email")


async def test_unknown_user_and_wrong_password_answer_the_same(
    client: httpx.AsyncClient, mailbox: Any
) -> None:
    await register(client, mailbox, EMAIL)
    wrong = await client.post("/api/login", data={"user": EMAIL, "pass": "wrong-password-1"})
    unknown = await client.post("/api/login", data={"user": "bob@example.com", "pass": PASSWORD})
    assert_envelope(wrong, 401, "invalid_credentials")
    assert (wrong.status_code, wrong.json()) == (unknown.status_code, unknown.json())


async def test_lockout_after_five_failures(
    client: httpx.AsyncClient, mailbox: Any, clock: ManualClock
) -> None:
    await register(client, mailbox, EMAIL)
    for _ in range(5):
        answer = await client.post("/api/login", data={"user": EMAIL, "pass": "wrong-password-1"})
        assert_envelope(answer, 401, "invalid_credentials")
        clock.advance(1000)
    answer = await client.post("/api/login", data={"user": EMAIL, "pass": PASSWORD})
    assert_envelope(answer, 429, "too_many_attempts")
    assert 1 <= int(answer.headers["retry-after"]) <= 15 * 60
    clock.advance(15 * 60 * 1000)
    assert_envelope(await client.post("/api/login", data={"user": EMAIL, "pass": PASSWORD}), 200)


async def test_sessions_new_token_each_login_and_old_one_deleted(
    client: httpx.AsyncClient, mailbox: Any
) -> None:
    await register(client, mailbox, EMAIL)
    first = await login(client, EMAIL)
    second = await login(client, EMAIL)  # carries the first as its cookie
    assert first != second
    old = await client.post("/api/get_user_coin", headers={"Authorization": f"Bearer {first}"})
    client.cookies.clear()
    assert_envelope(old, 200)  # the cookie (second) wins over the header
    answer = await client.post("/api/get_user_coin", headers={"Authorization": f"Bearer {first}"})
    assert_envelope(answer, 401, "not_logged_in")
    answer = await client.post("/api/get_user_coin", headers={"Authorization": f"Bearer {second}"})
    assert_envelope(answer, 200)


async def test_idle_and_absolute_session_lifetime(
    client: httpx.AsyncClient, mailbox: Any, clock: ManualClock
) -> None:
    await register(client, mailbox, EMAIL)
    await login(client, EMAIL)
    clock.advance(29 * 60 * 1000)
    assert_envelope(await client.post("/api/get_user_coin"), 200)
    clock.advance(31 * 60 * 1000)
    assert_envelope(await client.post("/api/get_user_coin"), 401, "not_logged_in")
    await login(client, EMAIL)
    steps = 0
    while steps < 100:  # active every 15 minutes, never idle
        clock.advance(15 * 60 * 1000)
        steps += 1
        answer = await client.post("/api/get_user_coin")
        if answer.status_code == 401:
            break
    assert_envelope(answer, 401, "not_logged_in")
    assert steps == 12 * 4  # refused exactly at the 12 h absolute lifetime


async def test_cross_origin_cookie_post_is_refused(client: httpx.AsyncClient, mailbox: Any) -> None:
    await register(client, mailbox, EMAIL)
    await login(client, EMAIL)
    evil = {"Origin": "http://evil.example"}
    assert_envelope(await client.post("/api/get_user_coin", headers=evil), 403, "forbidden")
    answer = await client.post("/api/login", data={"user": EMAIL, "pass": PASSWORD}, headers=evil)
    assert_envelope(answer, 403, "forbidden")
    same = {"Origin": "http://127.0.0.1:8088"}
    assert_envelope(await client.post("/api/get_user_coin", headers=same), 200)


async def test_protocol_errors(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.post("/api/login", data={"user": EMAIL}), 400, "missing_argument")
    assert_envelope(await client.post("/api/login", data={}), 400, "missing_argument")
    answer = await client.get("/api/login")
    assert_envelope(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == "POST"
    assert_envelope(await client.get("/router?router=buy"), 405, "method_not_allowed")
    assert_envelope(await client.delete("/api/check_exist_name"), 405, "method_not_allowed")
    assert_envelope(await client.post("/api/no_such_method"), 404, "unknown_method")
    assert_envelope(await client.post("/router?router=no_such"), 404, "unknown_method")
    assert_envelope(await client.post("/router"), 400, "missing_argument")
    assert_envelope(await client.get("/api/"), 404, "unknown_method")
    assert_envelope(await client.get("/api/a/b"), 404, "unknown_method")
    malformed = await client.post(
        "/api/login", content=b'{"user": ', headers={"content-type": "application/json"}
    )
    assert_envelope(malformed, 400, "invalid_argument")
    not_object = await client.post(
        "/api/login", content=b"[1, 2]", headers={"content-type": "application/json"}
    )
    assert_envelope(not_object, 400, "invalid_argument")
    nan = await client.post(
        "/api/login", content=b'{"user": NaN}', headers={"content-type": "application/json"}
    )
    assert_envelope(nan, 400, "invalid_argument")
    bad_utf8 = await client.post(
        "/api/login",
        content=b"user=\xff\xfe",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_envelope(bad_utf8, 400, "invalid_argument")
    big = await client.post("/api/login", content=b"u" * (64 * 1024 + 1))
    assert_envelope(big, 413, "invalid_argument")

    async def parts() -> Any:
        yield b"u" * 40_000
        yield b"u" * 40_000

    chunked = await client.post("/api/login", content=parts())
    assert_envelope(chunked, 413, "invalid_argument")
    odd_type = await client.post(
        "/api/login", content=b"<x/>", headers={"content-type": "application/xml"}
    )
    assert_envelope(odd_type, 400, "invalid_argument")
    wrong_type = await client.post("/api/login", json={"user": ["a"], "pass": "x"})
    assert_envelope(wrong_type, 400, "invalid_argument")


async def test_internal_errors_are_an_envelope_without_details(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    _app, client = app_client

    async def broken(_call: Any) -> object:
        raise RuntimeError("SELECT secret FROM /etc/passwd")

    from dataclasses import replace

    from exchange.api.methods import METHODS

    original = METHODS["check_exist_name"]
    METHODS["check_exist_name"] = replace(original, handler=broken)
    try:
        answer = await client.post("/api/check_exist_name", data={"user": EMAIL})
    finally:
        METHODS["check_exist_name"] = original
    assert_envelope(answer, 500, "internal_error")
    assert "SELECT" not in answer.text and "passwd" not in answer.text


async def test_database_holds_no_plaintext_secrets(
    app_client: tuple[Any, httpx.AsyncClient], mailbox: Any, database_url: str
) -> None:
    _app, client = app_client
    await register(client, mailbox, EMAIL)
    code = mailbox.code_for(EMAIL)
    token = await login(client, EMAIL)
    engine = make_sync_engine(database_url)
    found: list[str] = []
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(select(table)):
                    found.extend(str(value) for value in row)
    finally:
        engine.dispose()
    dump = "\n".join(found)
    assert EMAIL in dump  # the dump really holds the data
    assert PASSWORD not in dump and token not in dump
    assert not any(value == code for value in found)
    assert "$argon2id$" in dump and "m=19456,t=2,p=1" in dump


async def test_sessions_survive_a_restart(sqlite_url: str, mail: Any) -> None:
    mailbox, port = mail
    settings = make_settings(sqlite_url, port)
    async with running_app(settings) as (_app, client):
        await register(client, mailbox, EMAIL)
        token = await login(client, EMAIL)
    async with running_app(settings) as (_app, client):
        answer = await client.post(
            "/api/get_user_coin", headers={"Authorization": f"Bearer {token}"}
        )
        assert_envelope(answer, 200)


async def test_openapi_documents_every_method(client: httpx.AsyncClient) -> None:
    from exchange.api.methods import METHODS

    document = (await client.get("/openapi.json")).json()
    for name, method in METHODS.items():
        operation = document["paths"][f"/api/{name}"][method.verb.lower()]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert set(ok["required"]) == {"status", "data", "description"}
        documented = {p["name"] for p in operation.get("parameters", [])}
        if "requestBody" in operation:
            form = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]
            documented |= set(form["schema"]["properties"])
        assert documented == {p.name for p in method.params}, name
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    checks = ready.json()["checks"]
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    # The writer checks its engine; a worker (EXCHANGE_TEST_THROUGH_WORKER) its link to it.
    assert checks in ({"database": True, "engine": True}, {"database": True, "writer_link": True})


async def test_rate_limits_answer_429_with_retry_after(sqlite_url: str, mail: Any) -> None:
    settings = make_settings(sqlite_url, mail[1], rate_limits="on", rate_limit_exists="3/60")
    async with running_app(settings) as (_app, client):
        for _ in range(3):
            assert (
                await client.post("/api/check_exist_name", data={"user": EMAIL})
            ).status_code == 200
        answer = await client.post("/api/check_exist_name", data={"user": EMAIL})
        assert_envelope(answer, 429, "rate_limited")
        assert int(answer.headers["retry-after"]) >= 1


async def test_login_rate_limits_per_address_and_per_email(sqlite_url: str, mail: Any) -> None:
    settings = make_settings(
        sqlite_url, mail[1], rate_limits="on", rate_limit_login="4/60", rate_limit_login_user="2/60"
    )
    async with running_app(settings) as (_app, client):
        data = {"user": EMAIL, "pass": "wrong-password-1"}
        for _ in range(2):
            assert_envelope(await client.post("/api/login", data=data), 401, "invalid_credentials")
        limited = await client.post("/api/login", data=data)
        assert_envelope(limited, 429, "rate_limited")  # this e-mail address, from anywhere
        assert int(limited.headers["retry-after"]) >= 1
        other = {"user": "bob@example.com", "pass": "wrong-password-1"}
        assert_envelope(await client.post("/api/login", data=other), 401, "invalid_credentials")
        # The fifth login from this client address within the minute is refused.
        assert_envelope(await client.post("/api/login", data=other), 429, "rate_limited")


async def test_code_requests_are_rate_limited_per_client_address(
    sqlite_url: str, mail: Any
) -> None:
    mailbox, port = mail
    settings = make_settings(sqlite_url, port, rate_limits="on", rate_limit_code="2/60")
    async with running_app(settings) as (_app, client):
        for n in range(2):
            answer = await client.post("/api/make_valid_code", data={"user": f"u{n}@example.com"})
            assert_envelope(answer, 200)
        answer = await client.post("/api/make_valid_code", data={"user": "u9@example.com"})
        assert_envelope(answer, 429, "rate_limited")
        assert int(answer.headers["retry-after"]) >= 1
        assert [to for to, _subject, _body in mailbox.messages] == [
            "u0@example.com",
            "u1@example.com",
        ]


async def test_guess_limits_hold_across_worker_processes(
    app_client: Any, mailbox: Any, database_url: str, mail: Any
) -> None:
    """Each worker process has its own Accounts (and per-process locks): parallel guesses
    through three of them still get exactly 5 code tries and 5 password checks per window."""
    import asyncio

    from exchange.adapters.db.database import make_async_engine
    from exchange.adapters.mailer import make_mailer
    from exchange.adapters.passwords import PasswordHashing
    from exchange.domain.errors import ExchangeError
    from exchange.services.accounts import Accounts

    _app, client = app_client
    settings = make_settings(database_url, mail[1])
    engines = [make_async_engine(database_url) for _ in range(3)]
    workers = [
        Accounts(db, make_mailer(settings), PasswordHashing(), ManualClock(), secret=b"k" * 32)
        for db in engines
    ]
    try:

        async def sent(worker: Accounts) -> str:
            try:
                await worker.send_code("carol@example.com")
            except ExchangeError as refusal:
                return refusal.code
            return "sent"

        # The same address asked through three processes at once: one code, no 500.
        answers = await asyncio.gather(*(sent(worker) for worker in workers for _ in range(2)))
        assert sorted(answers) == ["rate_limited"] * 5 + ["sent"], answers

        await workers[0].send_code(EMAIL)
        code = mailbox.code_for(EMAIL)
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"

        async def outcome(call: Any) -> str:
            try:
                await call
            except ExchangeError as refusal:
                return refusal.code
            return "ok"

        guesses = [
            outcome(worker.register(EMAIL, PASSWORD, wrong)) for worker in workers for _ in range(4)
        ]
        codes = await asyncio.gather(*guesses)
        assert sorted(codes) == ["invalid_code"] * 5 + ["too_many_attempts"] * 7, codes
        assert await outcome(workers[1].register(EMAIL, PASSWORD, code)) == "too_many_attempts"

        await register(client, mailbox, "bob@example.com")
        tries = [
            outcome(worker.login("bob@example.com", "wrong-password-1"))
            for worker in workers
            for _ in range(4)
        ]
        codes = await asyncio.gather(*tries)
        # Every try counts itself before it looks, so racing tries may lock each other
        # out early; never are more than 5 passwords checked.
        checked = codes.count("invalid_credentials")
        assert checked <= 5 and codes.count("too_many_attempts") == 12 - checked, codes
        for _ in range(5 - checked):
            assert await outcome(workers[0].login("bob@example.com", "wrong-2")) == (
                "invalid_credentials"
            )
        assert await outcome(workers[1].login("bob@example.com", "wrong-3")) == (
            "too_many_attempts"
        )
        assert await outcome(workers[2].login("bob@example.com", PASSWORD)) == "too_many_attempts"
    finally:
        for db in engines:
            await db.dispose()
