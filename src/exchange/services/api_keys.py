"""API keys: how a program (a ccxt script, a trading bot) acts for a user without a session.

A logged-in user creates a key with a label, its permissions (``read``; ``trade``
adds placing and cancelling orders; withdrawals are never possible with a key)
and, optionally, the addresses it may be used from. Two kinds, as Binance has:

* **HMAC-SHA256**: the server makes the key and its secret. The secret is shown
  once, in the answer that creates it, and stored only sealed with the server
  key (``adapters/secret_box.py``): the database alone does not give it away.
* **Ed25519**: the user makes the key pair and gives the public key (PEM); the
  server stores only that, and never sees the private key.

``authenticate`` checks one signed request (``adapters/signatures.py``) for the
Binance-compatible API, which words its refusals in Binance's codes (the codes
``invalid_api_key`` and ``invalid_signature`` never reach the seed's API): the key
is live, the client's address is allowed, the key has the permission, and the
signature is valid over the exact payload. Live keys are remembered for a few
seconds, so signed requests do not each cost a database read; a key deleted in
this process stops working at once, in another process within ``CACHE_SECONDS``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import string
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.tables import api_keys, controls
from exchange.adapters.secret_box import SecretBox
from exchange.adapters.signatures import ed25519_public_pem, ed25519_valid, hmac_valid
from exchange.clock import Clock
from exchange.domain.errors import ExchangeError
from exchange.domain.matching import FREEZE, frozen_account

__all__ = ["KINDS", "PERMISSIONS", "ApiKey", "ApiKeys", "CreatedKey"]

log = logging.getLogger("exchange.api_keys")

READ, TRADE = "read", "trade"
PERMISSIONS = (READ, TRADE)
HMAC, ED25519 = "hmac", "ed25519"
KINDS = (HMAC, ED25519)
MAX_KEYS = 30  # live keys per user
MAX_IPS = 30
CACHE_SECONDS = 5
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as its owner sees it (never its secret)."""

    id: int
    user_id: int
    key: str
    label: str
    kind: str
    permissions: tuple[str, ...]
    ips: tuple[str, ...]
    created: int

    def allows(self, permission: str) -> bool:
        return permission in self.permissions


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    secret: str | None  # an HMAC key's secret: in this answer only; None for Ed25519


@dataclass(slots=True)
class _Live:
    key: ApiKey
    secret: str  # an HMAC secret, or an Ed25519 public key's PEM
    until: int  # ms: read again from the database after this
    #: ``key.ips`` parsed once, not at every signed request.
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def admits(self, client: str) -> bool:
        """Whether a request from ``client`` (an address) may use this key."""
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _random_text(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _invalid(message: str) -> ExchangeError:
    return ExchangeError("invalid_argument", message)


def parse_ips(text: str | None) -> tuple[str, ...]:
    """``"203.0.113.7, 2001:db8::/48"`` -> canonical networks; empty = any address."""
    if text is None or not text.strip():
        return ()
    found: list[str] = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        try:
            network = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise _invalid(f"{part[:45]!r} is not an IP address or network") from None
        if str(network) not in found:
            found.append(str(network))
    if len(found) > MAX_IPS:
        raise _invalid(f"at most {MAX_IPS} addresses or networks per key")
    return tuple(found)


class ApiKeys:
    def __init__(self, db: AsyncEngine, clock: Clock, box: SecretBox, *, server_key: bytes) -> None:
        self._db = db
        self._reads = reading(db)
        self._clock = clock
        self._box = box
        self._live: dict[str, _Live] = {}
        #: Listen keys are MACs of the API key under this key: no table, and the same
        #: in every process of the server.
        self._listen = hmac.new(server_key, b"exchange listen keys", hashlib.sha256).digest()

    async def create(
        self,
        user_id: int,
        label: str,
        permission: str,
        kind: str,
        *,
        public_key: str | None = None,
        ips: str | None = None,
    ) -> CreatedKey:
        """A new key; ``permission`` is ``read`` or ``trade`` (which includes read)."""
        label = label.strip()
        if not label:
            raise ExchangeError("missing_argument", "parameter 'label' is required")
        permissions = (READ, TRADE) if permission == TRADE else (READ,)
        allowed = parse_ips(ips)
        secret: str | None = None
        if kind == ED25519:
            if not public_key:
                raise ExchangeError(
                    "missing_argument", "parameter 'public_key' is required for Ed25519 keys"
                )
            try:
                stored = ed25519_public_pem(public_key)
            except ValueError as error:
                raise _invalid(f"public_key: {error}") from None
        else:
            if public_key:
                raise _invalid("public_key is only for Ed25519 keys")
            secret = _random_text(64)
            stored = self._box.seal(secret)
        now = self._clock()
        key = _random_text(64)
        async with self._db.begin() as conn:
            frozen = await conn.execute(
                select(controls.c.active).where(
                    controls.c.kind == FREEZE, controls.c.key == str(user_id)
                )
            )
            if frozen.scalar():  # the engine writes the row: the same answer in every process
                raise frozen_account()
            live = await conn.execute(
                select(func.count())
                .select_from(api_keys)
                .where(api_keys.c.user_id == user_id, api_keys.c.revoked.is_(None))
            )
            if int(live.scalar_one()) >= MAX_KEYS:
                raise _invalid(f"at most {MAX_KEYS} API keys; delete one first")
            result = await conn.execute(
                insert(api_keys).values(
                    user_id=user_id,
                    key=key,
                    label=label,
                    kind=kind,
                    secret=stored,
                    permissions=",".join(permissions),
                    ips=",".join(allowed),
                    created=now,
                    revoked=None,
                )
            )
            inserted = result.inserted_primary_key
            assert inserted is not None
            key_id = int(inserted[0])
        record = ApiKey(key_id, user_id, key, label, kind, permissions, allowed, now)
        return CreatedKey(record, secret)

    async def keys(self, user_id: int) -> list[ApiKey]:
        """The user's live keys, oldest first."""
        query = (
            select(api_keys)
            .where(api_keys.c.user_id == user_id, api_keys.c.revoked.is_(None))
            .order_by(api_keys.c.id)
        )
        async with self._reads.connect() as conn:
            return [_key_of(row) for row in await conn.execute(query)]

    async def delete(self, user_id: int, key_id: int) -> ApiKey:
        """Revoke one of the user's keys (another user's key is not found)."""
        async with self._db.begin() as conn:
            row = (
                await conn.execute(
                    select(api_keys).where(
                        api_keys.c.id == key_id,
                        api_keys.c.user_id == user_id,
                        api_keys.c.revoked.is_(None),
                    )
                )
            ).first()
            if row is None:
                raise _invalid(f"you have no API key {key_id}")
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked=self._clock())
            )
        self._live.pop(row.key, None)
        return _key_of(row)

    async def identify(self, key: str, client: str) -> ApiKey:
        """A live key that may be used from ``client`` (no signature: Binance's USER_STREAM)."""
        return (await self._admitted(key, client)).key

    async def _admitted(self, key: str, client: str) -> _Live:
        live = await self._lookup(key)
        if live is None:
            raise ExchangeError("invalid_api_key", "this API key does not exist or was deleted")
        if not live.admits(client):
            raise ExchangeError("forbidden", "this API key may not be used from your address")
        return live

    def listen_key(self, key: ApiKey) -> str:
        """The key's user data stream name: 60 characters, like Binance's listen keys.

        Derived, not stored: the key's id and a MAC of the key under the server key,
        so any process of the server can tell which key a listen key stands for.
        """
        mac = hmac.new(self._listen, f"{key.id}:{key.key}".encode(), hashlib.sha256).hexdigest()
        return f"{key.id:012d}{mac[:48]}"

    async def by_listen_key(self, listen_key: str, client: str) -> ApiKey | None:
        """The live key behind a listen key (None: not one of ours, or the key is gone)."""
        if len(listen_key) != 60 or not listen_key[:12].isdigit() or not listen_key.isascii():
            return None
        query = select(api_keys.c.key).where(
            api_keys.c.id == int(listen_key[:12]), api_keys.c.revoked.is_(None)
        )
        async with self._reads.connect() as conn:
            key = (await conn.execute(query)).scalar_one_or_none()
        if key is None:
            return None
        try:
            record = await self.identify(str(key), client)
        except ExchangeError:
            return None
        if not hmac.compare_digest(self.listen_key(record), listen_key):
            return None
        return record

    async def authenticate(
        self, key: str, payload: bytes, signature: str, client: str, permission: str
    ) -> ApiKey:
        """The key that signed ``payload``, if it may do ``permission`` from ``client``."""
        live = await self._admitted(key, client)
        record = live.key
        if not record.allows(permission):
            raise ExchangeError("forbidden", f"this API key has no {permission} permission")
        if record.kind == ED25519:
            valid = ed25519_valid(live.secret, payload, signature)
        else:
            valid = hmac_valid(live.secret, payload, signature)
        if not valid:
            raise ExchangeError("invalid_signature", "the signature of this request is not valid")
        return record

    async def _lookup(self, key: str) -> _Live | None:
        now = self._clock()
        live = self._live.get(key)
        if live is not None and now < live.until:
            return live
        self._live.pop(key, None)
        if len(key) != 64 or not key.isascii() or not key.isalnum():
            return None  # never a key this server made: no database read
        query = select(api_keys).where(api_keys.c.key == key, api_keys.c.revoked.is_(None))
        async with self._reads.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        try:
            secret = row.secret if row.kind == ED25519 else self._box.open(row.secret)
        except ValueError:  # sealed under another server key: the key cannot be checked
            log.warning("API key %d cannot be opened with this server key", row.id)
            return None
        if len(self._live) >= 10_000:
            self._live.clear()
        record = _key_of(row)
        networks = tuple(ipaddress.ip_network(allowed) for allowed in record.ips)
        live = _Live(record, secret, now + CACHE_SECONDS * 1000, networks)
        self._live[key] = live
        return live


def _key_of(row: object) -> ApiKey:
    mapping = row._mapping  # type: ignore[attr-defined]
    return ApiKey(
        id=int(mapping["id"]),
        user_id=int(mapping["user_id"]),
        key=str(mapping["key"]),
        label=str(mapping["label"]),
        kind=str(mapping["kind"]),
        permissions=tuple(p for p in str(mapping["permissions"]).split(",") if p),
        ips=tuple(ip for ip in str(mapping["ips"]).split(",") if ip),
        created=int(mapping["created"]),
    )
