"""API keys in the method table: create, list and delete them (a logged-in user only).

The keys sign requests of the Binance-compatible API; the rules (kinds,
permissions, addresses, how secrets are kept) are ``services.api_keys``'.
"""

from __future__ import annotations

from typing import Any

from exchange.api import schemas
from exchange.api.context import Call, Method, choice, optional_text, required_integer, text
from exchange.services.api_keys import KINDS, PERMISSIONS, ApiKey

LABEL = text("label", "what the key is for, e.g. freqtrade", max_length=64)
PERMISSION = choice(
    "permissions",
    "read, or trade (read and orders; never withdrawals)",
    PERMISSIONS,
    default="read",
)
KIND = choice("kind", "hmac (the server makes the secret) or ed25519", KINDS, default="hmac")
PUBLIC_KEY = optional_text(
    "public_key",
    "an Ed25519 key's public half, PEM (the private key stays with you)",
    max_length=1024,
)
IPS = optional_text(
    "ips",
    "addresses or networks the key may be used from, comma-separated; empty = any",
    max_length=2048,
)
KEY_ID = required_integer("id", "the key's id (from get_api_keys)", low=1, high=2**63 - 1)


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "api_key": key.key,
        "label": key.label,
        "kind": key.kind,
        "permissions": list(key.permissions),
        "ips": list(key.ips),
        "created": key.created,
    }


async def create_api_key(call: Call) -> object:
    created = await call.services.api_keys.create(
        call.user_id,
        LABEL.of(call),
        PERMISSION.of(call),
        KIND.of(call),
        public_key=PUBLIC_KEY.of(call),
        ips=IPS.of(call),
    )
    return {**key_view(created.key), "secret": created.secret}


async def get_api_keys(call: Call) -> object:
    return [key_view(key) for key in await call.services.api_keys.keys(call.user_id)]


async def delete_api_key(call: Call) -> object:
    return key_view(await call.services.api_keys.delete(call.user_id, KEY_ID.of(call)))


METHODS = (
    Method(
        "create_api_key",
        "POST",
        create_api_key,
        "Create an API key for signed requests; an HMAC key's secret is shown only here.",
        schemas.ApiKeyCreated,
        (LABEL, PERMISSION, KIND, PUBLIC_KEY, IPS),
        auth=True,
        limit="orders",
    ),
    Method(
        "get_api_keys",
        "POST",
        get_api_keys,
        "Your API keys (never their secrets).",
        list[schemas.ApiKeyInfo],
        auth=True,
    ),
    Method(
        "delete_api_key",
        "POST",
        delete_api_key,
        "Delete one of your API keys; requests signed with it are refused from then on.",
        schemas.ApiKeyInfo,
        (KEY_ID,),
        auth=True,
        limit="orders",
    ),
)
