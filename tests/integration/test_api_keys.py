"""API keys: created, listed and deleted by their owner; secrets kept sealed (both databases).

The keys sign the Binance-compatible API's requests; these tests drive the
service's ``authenticate`` directly, as that API will.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import httpx
import pytest
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from sqlalchemy import select

from exchange.adapters.db.database import make_async_engine, reading
from exchange.adapters.db.tables import api_keys
from exchange.adapters.secret_box import SecretBox
from exchange.clock import ManualClock
from exchange.domain.errors import ExchangeError
from exchange.services.api_keys import CACHE_SECONDS
from support import THROUGH_WORKER, Mailbox, assert_envelope, new_trader

Pair = tuple[Any, httpx.AsyncClient]
PAYLOAD = b"symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=0.001&price=20000&timestamp=1700000000000"


def hmac_sign(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


async def create(client: httpx.AsyncClient, user: dict[str, str], **params: str) -> Any:
    answer = await client.post("/api/create_api_key", data=params, headers=user)
    return assert_envelope(answer, 200)


async def stored_rows(app: Any) -> list[Any]:
    db = make_async_engine(app.runtime.services.settings.database_url)
    try:
        async with reading(db).connect() as conn:
            return list((await conn.execute(select(api_keys))).all())
    finally:
        await db.dispose()


async def test_an_hmac_key_is_shown_once_and_kept_sealed(
    app_client: Pair, mailbox: Mailbox
) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "k@example.com")
    made = await create(client, user, label="bot", permissions="trade")
    secret, key = made["secret"], made["api_key"]
    assert len(secret) == 64 and secret.isalnum() and len(key) == 64 and key.isalnum()
    assert made["kind"] == "hmac" and made["permissions"] == ["read", "trade"]
    listed = assert_envelope(await client.post("/api/get_api_keys", headers=user), 200)
    assert [k["api_key"] for k in listed] == [key] and "secret" not in listed[0]
    # The database holds the secret only sealed with the server key, which is not in it.
    [row] = await stored_rows(app)
    assert secret not in repr(tuple(row)) and row.secret != secret
    with pytest.raises(ValueError):
        SecretBox(b"another server's key").open(row.secret)
    keys = app.runtime.services.api_keys
    found = await keys.authenticate(key, PAYLOAD, hmac_sign(secret, PAYLOAD), "127.0.0.1", "trade")
    assert found.user_id == await app.runtime.services.accounts.user_id("k@example.com")
    with pytest.raises(ExchangeError) as bad:
        await keys.authenticate(
            key, PAYLOAD + b"0", hmac_sign(secret, PAYLOAD), "127.0.0.1", "read"
        )
    assert bad.value.code == "invalid_signature"
    with pytest.raises(ExchangeError) as unknown:
        await keys.authenticate("x" * 64, PAYLOAD, hmac_sign(secret, PAYLOAD), "127.0.0.1", "read")
    assert unknown.value.code == "invalid_api_key"


async def test_an_ed25519_key_keeps_only_the_public_half(
    app_client: Pair, mailbox: Mailbox
) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "e@example.com")
    private = ECC.generate(curve="ed25519")
    public = private.public_key().export_key(format="PEM")
    made = await create(client, user, label="ed", kind="ed25519", public_key=public)
    assert made["secret"] is None and made["kind"] == "ed25519"
    signature = base64.b64encode(eddsa.new(private, "rfc8032").sign(PAYLOAD)).decode()
    keys = app.runtime.services.api_keys
    found = await keys.authenticate(made["api_key"], PAYLOAD, signature, "127.0.0.1", "read")
    assert found.kind == "ed25519"
    with pytest.raises(ExchangeError) as forged:
        await keys.authenticate(made["api_key"], PAYLOAD + b"&x=1", signature, "127.0.0.1", "read")
    assert forged.value.code == "invalid_signature"
    [row] = await stored_rows(app)
    assert "PRIVATE" not in row.secret and row.secret.strip() == public.strip()
    for wrong in (private.export_key(format="PEM"), "not a key"):
        answer = await client.post(
            "/api/create_api_key",
            data={"label": "x", "kind": "ed25519", "public_key": wrong},
            headers=user,
        )
        assert_envelope(answer, 400, "invalid_argument")
    answer = await client.post(
        "/api/create_api_key", data={"label": "x", "kind": "ed25519"}, headers=user
    )
    assert_envelope(answer, 400, "missing_argument")


async def test_permissions_addresses_and_deletion(
    app_client: Pair, mailbox: Mailbox, clock: ManualClock
) -> None:
    app, client = app_client
    owner = await new_trader(app, client, mailbox, "o@example.com")
    other = await new_trader(app, client, mailbox, "x@example.com")
    keys = app.runtime.services.api_keys
    read_only = await create(client, owner, label="read", ips="203.0.113.0/24, 2001:db8::1")
    assert read_only["permissions"] == ["read"]
    assert read_only["ips"] == ["203.0.113.0/24", "2001:db8::1/128"]
    signed = hmac_sign(read_only["secret"], PAYLOAD)
    key = read_only["api_key"]
    assert (await keys.authenticate(key, PAYLOAD, signed, "203.0.113.9", "read")).label == "read"
    assert await keys.authenticate(key, PAYLOAD, signed, "2001:db8::1", "read")
    for client_address, permission in (("198.51.100.1", "read"), ("203.0.113.9", "trade")):
        with pytest.raises(ExchangeError) as refused:
            await keys.authenticate(key, PAYLOAD, signed, client_address, permission)
        assert refused.value.code == "forbidden"
    bad_ips = await client.post(
        "/api/create_api_key", data={"label": "x", "ips": "300.1.2.3"}, headers=owner
    )
    assert_envelope(bad_ips, 400, "invalid_argument")
    # Nobody else sees or deletes the key.
    assert assert_envelope(await client.post("/api/get_api_keys", headers=other), 200) == []
    theirs = await client.post("/api/delete_api_key", data={"id": read_only["id"]}, headers=other)
    assert_envelope(theirs, 400, "invalid_argument")
    mine = await client.post("/api/delete_api_key", data={"id": read_only["id"]}, headers=owner)
    assert assert_envelope(mine, 200)["api_key"] == key
    # At once in the process that deleted it; in another (this test's writer, when the
    # client talks to a worker) once its copy is older than CACHE_SECONDS.
    if THROUGH_WORKER:
        clock.advance(CACHE_SECONDS * 1000)
    with pytest.raises(ExchangeError) as gone:
        await keys.authenticate(key, PAYLOAD, signed, "203.0.113.9", "read")
    assert gone.value.code == "invalid_api_key"
    assert assert_envelope(await client.post("/api/get_api_keys", headers=owner), 200) == []
    assert_envelope(await client.post("/api/get_api_keys"), 401, "not_logged_in")


async def test_keys_per_user_are_bounded(app_client: Pair, mailbox: Mailbox) -> None:
    app, client = app_client
    user = await new_trader(app, client, mailbox, "b@example.com")
    for index in range(30):
        await create(client, user, label=f"k{index}")
    answer = await client.post("/api/create_api_key", data={"label": "one more"}, headers=user)
    assert_envelope(answer, 400, "invalid_argument")
    assert "at most 30" in answer.json()["description"]
