"""Request signatures as Binance defines them, for the two kinds of API key.

* **HMAC-SHA256** (Binance's default): the signature is the lowercase hex HMAC of
  the exact payload (query string, then body) with the key's secret.
* **Ed25519**: the user keeps the private key and registers the public one (PEM);
  the signature is the base64 Ed25519 signature of the same payload.

Both compare in constant time; anything malformed is simply "not valid".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

__all__ = ["ed25519_public_pem", "ed25519_valid", "hmac_signature", "hmac_valid"]


def hmac_signature(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).hexdigest()


def hmac_valid(secret: str, payload: bytes, signature: str) -> bool:
    if not signature.isascii():  # compare_digest refuses non-ASCII text (it is not valid)
        return False
    return hmac.compare_digest(hmac_signature(secret, payload), signature.strip().lower())


def ed25519_public_pem(text: str) -> str:
    """The canonical PEM of an Ed25519 public key; ValueError if it is not one."""
    try:
        key = ECC.import_key(text.strip())
    except (ValueError, IndexError, TypeError) as error:
        raise ValueError("not a PEM public key") from error
    if key.curve != "Ed25519" or key.has_private():
        raise ValueError("not an Ed25519 public key (never send the private key)")
    pem: str = key.export_key(format="PEM")
    return pem


def ed25519_valid(public_pem: str, payload: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        eddsa.new(ECC.import_key(public_pem), "rfc8032").verify(payload, raw)
    except (ValueError, binascii.Error):
        return False
    return True
