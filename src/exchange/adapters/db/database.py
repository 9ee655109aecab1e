"""Database connection: URL normalisation, SQLite pragmas, migrations on start.

Operators write plain URLs (``sqlite:///x.db``, ``postgresql://u@h/db``); the
project picks the drivers itself (aiosqlite / psycopg 3) so nobody has to know
SQLAlchemy's ``dialect+driver`` syntax.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, overload

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("exchange.db")


def _driver_url(url: str, *, asynchronous: bool) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        driver = "aiosqlite" if asynchronous else "pysqlite"
    elif backend == "postgresql":
        driver = "psycopg"
    else:
        raise ValueError(f"unsupported database {backend!r}: use sqlite:// or postgresql://")
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for in-memory)."""
    database = make_url(url).database
    if not is_sqlite(url) or not database or database == ":memory:":
        return None
    return Path(database)


def _sqlite_pragmas(synchronous: str) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # aiosqlite wraps sqlite3; both expose cursor()/execute().
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


#: libpq connection options: give up connecting after 5 s, and let the kernel notice a
#: silently dropped connection (no RST, e.g. a dead network path) within ~25 s instead of
#: the system default of hours, so the engine answers 503 and reconnects.
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def make_async_engine(url: str, *, synchronous: str = "FULL") -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(
            _driver_url(url, asynchronous=True),
            connect_args={"timeout": 10, "isolation_level": None},
            pool_size=8,
            max_overflow=0,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(synchronous))
        _sqlite_begin_immediate(engine.sync_engine)
        return engine
    return create_async_engine(
        _driver_url(url, asynchronous=True),
        pool_size=10,
        max_overflow=5,
        pool_pre_ping=True,
        connect_args=POSTGRES_CONNECT_ARGS,
    )


def make_sync_engine(url: str, *, synchronous: str = "FULL") -> Engine:
    if is_sqlite(url):
        engine = create_engine(
            _driver_url(url, asynchronous=False),
            connect_args={"timeout": 10, "isolation_level": None},
        )
        event.listen(engine, "connect", _sqlite_pragmas(synchronous))
        _sqlite_begin_immediate(engine)
        return engine
    return create_engine(
        _driver_url(url, asynchronous=False),
        pool_pre_ping=True,
        connect_args=POSTGRES_CONNECT_ARGS,
    )


def _sqlite_begin_immediate(engine: Engine) -> None:
    """Take SQLite's write lock at BEGIN, not at the first write — except for reads.

    With the default deferred BEGIN, two transactions that read then write can both
    hold a read snapshot and one fails with "database is locked" mid-way; BEGIN
    IMMEDIATE makes the second wait (busy_timeout) instead, so read-modify-write
    service code is serialised correctly. Connections of ``reading(engine)`` only
    read (a ``connect()`` block never commits): they begin deferred, so in WAL mode
    they never wait for, nor hold up, a writer.
    """

    @event.listens_for(engine, "begin")
    def do_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READS):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


READS = "exchange_reads"


@overload
def reading(engine: AsyncEngine) -> AsyncEngine: ...
@overload
def reading(engine: Engine) -> Engine: ...
def reading(engine: AsyncEngine | Engine) -> AsyncEngine | Engine:
    """The same engine and pool, for ``connect()`` blocks that only read.

    On SQLite such a read takes no write lock; on PostgreSQL nothing changes.
    """
    return engine.execution_options(**{READS: True})


def create_private(path: Path) -> None:
    """Create a new SQLite file readable by its owner only (0600).

    SQLite gives the ``-wal`` and ``-shm`` files the mode of the database file,
    so they are private too. An existing file keeps its mode (an operator's
    choice), with a warning if others can read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("the database %s is readable by other users: chmod 600 it", path)


def migrate(url: str) -> None:
    """Create or upgrade the schema to the newest revision (idempotent)."""
    path = sqlite_path(url)
    if path is not None:
        create_private(path)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", _driver_url(url, asynchronous=False))
    config.attributes["configure_logger"] = False
    engine = make_sync_engine(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


__all__ = [
    "is_sqlite",
    "make_async_engine",
    "make_sync_engine",
    "migrate",
    "reading",
    "sqlite3",
]
