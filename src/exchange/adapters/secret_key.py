"""The server's secret key: what makes a stolen copy of the database not enough.

Verification codes are stored as an HMAC keyed with it: a code has only a
million values, so a plain hash (even salted) is reversed from a read-only
database copy in about a second, while an HMAC without the key is not. (API
secrets, which the server must be able to read back, will be encrypted with it.)

The key is ``EXCHANGE_SECRET_KEY`` when set — required when several hosts share
one database, since they must agree. Otherwise a random key is generated at the
first start into ``EXCHANGE_SECRET_KEY_FILE`` (default: beside a SQLite
database, or ``exchange-secret.key`` in the working directory for PostgreSQL),
created with mode 0600, and read at every start. Keep it with backups of the
database, but not inside them: a restored database without its key loses only
the codes in flight (they expire in 10 minutes anyway).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

from exchange.adapters.db.database import sqlite_path

__all__ = ["key_file", "load_secret_key"]

log = logging.getLogger("exchange.secret")

KEY_BYTES = 32


def key_file(database_url: str, configured: str = "") -> Path:
    """Where the generated key lives for this database."""
    if configured:
        return Path(configured)
    database = sqlite_path(database_url)
    if database is not None:
        return database.with_name(database.name + ".secret-key")
    return Path("exchange-secret.key")


def load_secret_key(database_url: str, secret: str = "", configured_file: str = "") -> bytes:
    """The HMAC key: the configured secret, else the key file's (made on first use)."""
    if secret:
        if len(secret) < 32:
            log.warning("EXCHANGE_SECRET_KEY is shorter than 32 characters: use a longer one")
        return secret.encode("utf-8")
    path = key_file(database_url, configured_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    log.warning(
        "generated the server's secret key in %s (mode 0600); keep it with the database, "
        "or set EXCHANGE_SECRET_KEY",
        path,
    )
    return _read(path)


def _read(path: Path) -> bytes:
    for _ in range(50):  # another process may be writing it this instant
        text = path.read_text().strip()
        if text:
            if path.stat().st_mode & 0o077:
                log.warning("the secret key file %s is readable by others: chmod 600 it", path)
            try:
                return bytes.fromhex(text)
            except ValueError:  # an operator's own key, not hex: its bytes
                return text.encode("utf-8")
        time.sleep(0.01)
    raise RuntimeError(f"the secret key file {path} is empty")
