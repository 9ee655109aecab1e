"""One writer per database: the server (or an offline admin command) holds this lock.

Two engines on one database would each believe their in-memory balances, so the
second must never start. The lock dies with its process (kernel file lock,
PostgreSQL session advisory lock), so a kill -9 never leaves it stuck.

A PostgreSQL session lock also dies with its *connection*: after a network cut or
a database restart the server no longer holds it, and an admin command would
then believe no server runs and apply its command itself, behind the server's
back. So the engine checks ``held()`` now and then and takes the lock again with
``ensure()`` (reloading its state) before it writes anything more.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from exchange.adapters.db.database import POSTGRES_CONNECT_ARGS, is_sqlite, sqlite_path

ADVISORY_KEY = 0x45584348  # "EXCH"
CONNECT_TIMEOUT_S = 5


class WriterLock:
    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._fd: int | None = None
        self._conn: Any = None
        self._held = False
        self._guard = threading.Lock()  # the engine checks from worker threads

    def acquire(self) -> bool:
        """True when this process is now the writer; never blocks."""
        with self._guard:
            return self._acquire()

    def held(self) -> bool:
        """Whether this process still holds the lock (False once its connection died)."""
        with self._guard:
            return self._still_held()

    def ensure(self) -> bool:
        """Hold the lock, taking it again if it was lost; False if another process has it."""
        with self._guard:
            return self._still_held() or self._acquire()

    def _still_held(self) -> bool:
        if is_sqlite(self._url):
            return self._held  # a file lock lasts as long as this process
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            self._drop_connection()
            return False

    def _acquire(self) -> bool:
        if is_sqlite(self._url):
            path = sqlite_path(self._url)
            if path is None:
                self._held = True
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
            self._held = True
            return True
        from sqlalchemy.engine import make_url

        url = make_url(self._url).set(drivername="postgresql")
        options = {**POSTGRES_CONNECT_ARGS, "connect_timeout": CONNECT_TIMEOUT_S}
        conninfo = make_conninfo(url.render_as_string(hide_password=False), **options)
        conn = psycopg.connect(conninfo, autocommit=True)
        # The server side too: a lock holder whose network vanished is dropped (and its
        # lock freed for the next writer) in ~25 s, not after the kernel's two hours.
        conn.execute("SET tcp_keepalives_idle = 10")
        conn.execute("SET tcp_keepalives_interval = 5")
        conn.execute("SET tcp_keepalives_count = 3")
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()
        if not got or not got[0]:
            conn.close()
            return False
        self._conn = conn
        return True

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def release(self) -> None:
        with self._guard:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
            self._drop_connection()
            self._held = False
