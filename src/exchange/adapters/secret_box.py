"""Secrets the server must read back (an API key's HMAC secret, an operator's TOTP
secret), encrypted at rest.

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

__all__ = ["API_KEY_SECRETS", "OPERATOR_TOTP_SECRETS", "SecretBox"]

#: Each kind of secret has its own key (derived with its purpose): a ciphertext of one
#: kind never opens as another.
API_KEY_SECRETS = b"exchange: API key secrets, v1"
OPERATOR_TOTP_SECRETS = b"exchange: operator TOTP secrets, v1"
_NONCE = 12
_TAG = 16


class SecretBox:
    def __init__(self, server_key: bytes, purpose: bytes = API_KEY_SECRETS) -> None:
        self._key = hmac.new(server_key, purpose, hashlib.sha256).digest()

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
