"""Secrets the server must read back (an API key's HMAC secret), encrypted at rest.

An HMAC-SHA256 API key is verified by recomputing the signature, so the server
has to hold the secret itself; a hash would not do. It is stored encrypted with
AES-256-GCM under a key derived from the server's secret key
(``adapters/secret_key.py``), which lives outside the database: a copy of the
database alone gives no secret away, and a tampered ciphertext fails to open.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from Crypto.Cipher import AES

__all__ = ["SecretBox"]

_PURPOSE = b"exchange: API key secrets, v1"
_NONCE = 12
_TAG = 16


class SecretBox:
    def __init__(self, server_key: bytes) -> None:
        self._key = hmac.new(server_key, _PURPOSE, hashlib.sha256).digest()

    def seal(self, secret: str) -> str:
        """Hex of nonce + ciphertext + tag (a new nonce each time)."""
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=secrets.token_bytes(_NONCE))
        body, tag = cipher.encrypt_and_digest(secret.encode("utf-8"))
        return (cipher.nonce + body + tag).hex()

    def open(self, sealed: str) -> str:
        """The secret; ValueError if ``sealed`` was not made with this server's key."""
        raw = bytes.fromhex(sealed)
        nonce, body, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        return cipher.decrypt_and_verify(body, tag).decode("utf-8")
