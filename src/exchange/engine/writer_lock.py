"""One writer per database: the server (or an offline admin command) holds this lock.

Two engines on one database would each believe their in-memory balances, so the
second must never start. The lock dies with its process (kernel file lock,
PostgreSQL session advisory lock), so a kill -9 never leaves it stuck.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import psycopg

from exchange.adapters.db.database import is_sqlite, sqlite_path

ADVISORY_KEY = 0x45584348  # "EXCH"


class WriterLock:
    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._fd: int | None = None
        self._conn: Any = None

    def acquire(self) -> bool:
        """True when this process is now the writer; never blocks."""
        if is_sqlite(self._url):
            path = sqlite_path(self._url)
            if path is None:
                return True
            lock_path = Path(f"{path}.writer.lock")
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True
        from sqlalchemy.engine import make_url

        url = make_url(self._url).set(drivername="postgresql")
        conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()
        if not got or not got[0]:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
