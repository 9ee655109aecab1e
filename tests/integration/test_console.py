"""The operator console at ``/admin``: password + TOTP login, sessions, CSRF, the actions.

Through the real app (on SQLite and PostgreSQL, and — ``make test``'s second run —
through an HTTP worker): an operator made the way ``exchange admin
create-operator`` makes one logs in, enrols a TOTP app from the page, and reviews
withdrawals, credits, halts and freezes with forms; each action is the admin
command the CLI runs, and the audit log names the operator.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pyotp
import pytest
from sqlalchemy import select

from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.tables import admin_audit, withdrawals
from exchange.clock import ManualClock
from exchange.services.operators import LOCK_MS
from support import (
    BASE_URL,
    Mailbox,
    assert_envelope,
    check_database_ledger,
    make_settings,
    new_trader,
    running_app,
)

Pair = tuple[Any, httpx.AsyncClient]
EMAIL = "ops@example.com"
PASSWORD = "ledger-keeper-77"
ADDRESS = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
ORIGIN = {"Origin": BASE_URL}
ACTOR = f"{EMAIL} (console)"


@pytest.fixture
async def app_client(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> AsyncIterator[Pair]:
    settings = make_settings(database_url, mail[1], withdraw_address_cooldown=0)
    async with running_app(settings, clock) as (app, client):
        await app.runtime.operators.create(EMAIL, PASSWORD)
        yield app, client


def code_at(secret: str, clock: ManualClock) -> str:
    return pyotp.TOTP(secret).at(clock.now // 1000)


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert found, page.text
    return found.group(1)


async def log_in(client: httpx.AsyncClient, code: str = "") -> httpx.Response:
    return await client.post(
        "/admin/login", data={"email": EMAIL, "password": PASSWORD, "code": code}, headers=ORIGIN
    )


async def enrol(client: httpx.AsyncClient, clock: ManualClock) -> str:
    """Log in for the first time and confirm the TOTP app; the secret."""
    assert (await log_in(client)).headers["location"] == "/admin/enroll"
    page = await client.get("/admin/enroll")
    secret = re.search(r'id="secret">([A-Z2-7 ]+)<', page.text)
    assert secret, page.text
    plain = secret.group(1).replace(" ", "")
    confirmed = await client.post(
        "/admin/enroll",
        data={"csrf": csrf_of(page), "code": code_at(plain, clock)},
        headers=ORIGIN,
    )
    assert confirmed.status_code == 303, confirmed.text
    return plain


async def post_form(
    client: httpx.AsyncClient, page_path: str, path: str, **fields: str
) -> httpx.Response:
    """Submit a console form the way the browser does: its page's CSRF field, this origin."""
    page = await client.get(page_path)
    assert page.status_code == 200, page.text
    return await client.post(path, data={"csrf": csrf_of(page), **fields}, headers=ORIGIN)


def audit_rows(database_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    db = make_sync_engine(database_url)
    try:
        with db.connect() as conn:
            rows = conn.execute(select(admin_audit).order_by(admin_audit.c.id)).all()
    finally:
        db.dispose()
    return [(row.actor, row.action, json.loads(row.details)) for row in rows]


async def test_login_takes_the_password_then_a_totp_app_enrolled_once(
    app_client: Pair, clock: ManualClock, database_url: str
) -> None:
    _app, client = app_client
    assert (await client.get("/admin/withdrawals")).headers["location"] == "/admin/login"
    login_page = await client.get("/admin/login")
    assert login_page.status_code == 200
    assert "default-src 'self'" in login_page.headers["content-security-policy"]
    assert login_page.headers["cache-control"] == "no-store"

    wrong = await client.post(
        "/admin/login", data={"email": EMAIL, "password": "not-it-at-all"}, headers=ORIGIN
    )
    assert wrong.status_code == 400
    assert "wrong e-mail address, password or code" in wrong.text
    assert "set-cookie" not in wrong.headers

    first = await log_in(client)
    assert first.status_code == 303 and first.headers["location"] == "/admin/enroll"
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("exchange_operator=")
    for attribute in ("Path=/admin", "HttpOnly", "SameSite=Strict"):
        assert attribute in cookie
    # Half logged in: only the enrolment page.
    assert (await client.get("/admin/withdrawals")).headers["location"] == "/admin/enroll"
    page = await client.get("/admin/enroll")
    assert 'src="data:image/svg+xml' in page.text  # the QR code, drawn by the server
    secret = re.search(r'id="secret">([A-Z2-7 ]+)<', page.text)
    assert secret
    plain = secret.group(1).replace(" ", "")
    bad = await client.post(
        "/admin/enroll", data={"csrf": csrf_of(page), "code": "000000"}, headers=ORIGIN
    )
    assert bad.status_code == 400 and "not the app's current code" in html.unescape(bad.text)
    code = code_at(plain, clock)
    done = await client.post(
        "/admin/enroll", data={"csrf": csrf_of(page), "code": code}, headers=ORIGIN
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/admin/withdrawals")
    welcome = await client.get(done.headers["location"])
    assert "Two-factor login is set up" in html.unescape(welcome.text)
    # The secret is never shown again.
    assert (await client.get("/admin/enroll")).headers["location"] == "/admin/withdrawals"

    out = await client.post("/admin/logout", data={"csrf": csrf_of(welcome)}, headers=ORIGIN)
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert (await client.get("/admin/withdrawals")).headers["location"] == "/admin/login"
    assert (await log_in(client)).status_code == 400  # the code is needed now
    assert (await log_in(client, code)).status_code == 400  # and never twice
    clock.advance(30_000)
    again = await log_in(client, code_at(plain, clock))
    assert again.status_code == 303 and again.headers["location"] == "/admin/withdrawals"
    assert (await client.get("/admin/withdrawals")).status_code == 200

    logins = [
        (actor, d["outcome"])
        for actor, action, d in audit_rows(database_url)
        if action == "console_login"
    ]
    assert (ACTOR, "done") in logins and ("console", "refused") in logins


async def test_five_wrong_attempts_lock_the_operator_for_a_while(
    app_client: Pair, clock: ManualClock
) -> None:
    _app, client = app_client
    for _ in range(5):
        wrong = await client.post(
            "/admin/login", data={"email": EMAIL, "password": "guess-guess-1"}, headers=ORIGIN
        )
        assert wrong.status_code == 400
    locked = await log_in(client)
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    clock.advance(LOCK_MS)
    assert (await log_in(client)).headers["location"] == "/admin/enroll"


async def test_sessions_end_when_idle_and_after_their_lifetime(
    app_client: Pair, clock: ManualClock
) -> None:
    app, client = app_client
    settings = app.runtime.settings
    secret = await enrol(client, clock)
    assert (await client.get("/admin/markets")).status_code == 200
    clock.advance(settings.operator_session_idle * 1000)
    assert (await client.get("/admin/markets")).headers["location"] == "/admin/login"

    clock.advance(30_000)
    assert (await log_in(client, code_at(secret, clock))).status_code == 303
    # Kept busy, a session still ends when its lifetime is over.
    started, step = clock.now, settings.operator_session_idle * 1000 - 1000
    while clock.now - started < settings.operator_session_lifetime * 1000:
        assert (await client.get("/admin/markets")).status_code == 200
        clock.advance(step)
    assert (await client.get("/admin/markets")).headers["location"] == "/admin/login"


async def test_every_post_needs_this_origin_and_the_sessions_form_token(
    app_client: Pair, clock: ManualClock, database_url: str
) -> None:
    _app, client = app_client
    await enrol(client, clock)
    page = await client.get("/admin/markets")
    token = csrf_of(page)
    missing = await client.post("/admin/markets/halt", data={"pair": "BTC/USDT"}, headers=ORIGIN)
    assert missing.status_code == 403 and "Nothing was changed" in missing.text
    forged = await client.post(
        "/admin/markets/halt", data={"pair": "BTC/USDT", "csrf": "0" * 64}, headers=ORIGIN
    )
    assert forged.status_code == 403
    elsewhere = await client.post(
        "/admin/markets/halt",
        data={"pair": "BTC/USDT", "csrf": token},
        headers={"Origin": "https://evil.example"},
    )
    assert elsewhere.status_code == 403
    cross_login = await client.post(
        "/admin/login",
        data={"email": EMAIL, "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_login.status_code == 403
    assert not [row for row in audit_rows(database_url) if row[1] == "halt"]
    assert "badge halted" not in (await client.get("/admin/markets")).text


async def test_an_operator_reviews_credits_halts_and_freezes_and_the_audit_names_them(
    app_client: Pair, clock: ManualClock, mailbox: Mailbox, database_url: str
) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "t@example.com", BTC="1", USDT="1000")
    assert_envelope(
        await client.post(
            "/api/set_withdraw_address", data={"coin": "BTC", "address": ADDRESS}, headers=user
        ),
        200,
    )
    ids = []
    for _ in range(2):
        made = assert_envelope(
            await client.post("/api/withdraw", data={"coin": "BTC", "amount": "0.1"}, headers=user),
            200,
        )
        ids.append(int(made["withdrawal_id"]))
    await enrol(client, clock)
    listed = await client.get("/admin/withdrawals")
    for withdrawal_id in ids:
        assert f'id="withdrawal-{withdrawal_id}"' in listed.text

    sent = await post_form(
        client, "/admin/withdrawals", f"/admin/withdrawals/{ids[0]}/approve", txid="0xfeed"
    )
    assert sent.status_code == 303
    shown = html.unescape((await client.get(sent.headers["location"])).text)
    assert f"Withdrawal {ids[0]} marked sent" in shown
    refused = await post_form(
        client, "/admin/withdrawals", f"/admin/withdrawals/{ids[1]}/reject", reason="bad address"
    )
    assert refused.status_code == 303
    twice = await post_form(
        client, "/admin/withdrawals", f"/admin/withdrawals/{ids[0]}/approve", txid="0xbeef"
    )
    assert twice.status_code == 409 and "is sent, not pending" in html.unescape(twice.text)
    db = make_sync_engine(database_url)
    try:
        with db.connect() as conn:
            states = dict(conn.execute(select(withdrawals.c.id, withdrawals.c.status)).all())
    finally:
        db.dispose()
    assert states == {ids[0]: "sent", ids[1]: "rejected"}

    credited = await post_form(
        client,
        "/admin/deposits",
        "/admin/deposits",
        email="t@example.com",
        coin="USDT",
        amount="250.5",
        note="tx 0xabc",
    )
    assert credited.status_code == 303
    coins = assert_envelope(await client.post("/api/get_user_coin", headers=user), 200)
    assert coins["USDT"]["available"].startswith("1250.5")
    too_much = await post_form(
        client,
        "/admin/deposits",
        "/admin/deposits",
        email="nobody@example.com",
        coin="USDT",
        amount="1",
        note="",
    )
    assert too_much.status_code == 400 and "no user" in html.unescape(too_much.text)

    halted = await post_form(
        client, "/admin/markets", "/admin/markets/halt", pair="BTC/USDT", action="halt", note="fork"
    )
    assert halted.status_code == 303
    order = {"pair": "BTC/USDT", "amount": "0.01", "price": "20000"}
    assert_envelope(await client.post("/api/buy", data=order, headers=user), 400, "market_halted")
    page = await client.get("/admin/markets")
    assert re.search(r'id="market-BTC_USDT">.*?badge halted', page.text, re.S)
    resumed = await post_form(
        client, "/admin/markets", "/admin/markets/halt", pair="BTC/USDT", action="resume"
    )
    assert resumed.status_code == 303
    assert_envelope(await client.post("/api/buy", data=order, headers=user), 200)

    found = await client.get("/admin/users", params={"q": "t@example"})
    assert "t@example.com" in found.text and "Cancel all open orders" in found.text
    frozen = await post_form(
        client,
        "/admin/users?q=t@example",
        "/admin/users/freeze",
        email="t@example.com",
        action="freeze",
        note="review",
    )
    assert frozen.status_code == 303
    assert 'badge halted">frozen' in (await client.get(frozen.headers["location"])).text
    assert_envelope(await client.post("/api/buy", data=order, headers=user), 403, "account_frozen")
    canceled = await post_form(
        client, "/admin/users?q=t@example", "/admin/users/cancel-orders", email="t@example.com"
    )
    assert canceled.status_code == 303
    assert "No open order." in (await client.get("/admin/users?q=t@example")).text

    done = {
        (action, d["outcome"]) for actor, action, d in audit_rows(database_url) if actor == ACTOR
    }
    for action in ("approve", "reject", "credit", "halt", "resume", "freeze", "cancel_orders"):
        assert (action, "done") in done, (action, done)
    assert ("approve", "refused") in done and ("credit", "refused") in done
    log = await client.get("/admin/audit", params={"q": "approve"})
    assert "0xfeed" in log.text and ACTOR in log.text
    check_database_ledger(database_url)
