"""``exchange backup FILE`` and ``exchange restore FILE``: a consistent copy, taken live.

* **SQLite**: the online backup API (``sqlite3.Connection.backup``) copies the
  database in one step from one read snapshot. In WAL mode that reader
  neither waits for the server's writes nor holds them up, so a backup taken
  under load is exactly the state after some committed batch. The copy is
  written beside FILE, checked (``PRAGMA integrity_check``), made private
  (0600) and only then renamed to FILE.
* **PostgreSQL**: ``pg_dump --format=custom``, which reads one snapshot too;
  restored with ``pg_restore``. When the client tools are not installed the
  command says which package to install. A password travels in the
  environment (``PGPASSWORD``), never on a command line.

A restore takes the writer lock of the target database first, so it refuses
while a server (or an offline admin command) uses that database, and no
server can start in the middle of it. It refuses a target that already holds
an exchange unless ``--replace`` is given, and a backup of the other kind of
database.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url

from exchange.adapters.db.database import create_private, is_sqlite, make_sync_engine, sqlite_path
from exchange.adapters.db.tables import users
from exchange.engine.writer_lock import WriterLock

__all__ = ["BackupError", "Copied", "backup", "restore"]

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_DUMP_MAGIC = b"PGDMP"
TOOLS_HINT = "install PostgreSQL's client tools of the server's version (Debian: postgresql-client)"


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why, in one sentence."""


@dataclass(frozen=True)
class Copied:
    path: Path
    size: int
    kind: str  # "sqlite" or "postgresql"


def backup(database_url: str, target: Path) -> Copied:
    """A consistent copy of the database at ``target`` (which must not exist yet)."""
    if target.exists():
        raise BackupError(f"{target} exists already; choose a new file name")
    if not target.parent.is_dir():
        raise BackupError(f"there is no folder {target.parent}")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        if is_sqlite(database_url):
            _sqlite_backup(database_url, partial)
            kind = "sqlite"
        else:
            _pg_dump(database_url, partial)
            kind = "postgresql"
        os.chmod(partial, 0o600)
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    return Copied(target, target.stat().st_size, kind)


def _sqlite_backup(database_url: str, partial: Path) -> None:
    source_path = sqlite_path(database_url)
    if source_path is None or not source_path.exists():
        raise BackupError(f"there is no database at {source_path}")
    create_private(partial)
    # Only read from (a read-only open of a WAL database needs its -shm file to exist).
    source = sqlite3.connect(source_path, timeout=30)
    copy = sqlite3.connect(partial)
    try:
        source.backup(copy)  # all pages in one step: one snapshot
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        found = copy.execute("PRAGMA integrity_check").fetchone()
        if not found or found[0] != "ok":
            raise BackupError(f"the copy failed its integrity check ({found})")
    finally:
        copy.close()
        source.close()


def _libpq(database_url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and an environment that carries it."""
    url = make_url(database_url).set(drivername="postgresql")
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
        url = url.set(password=None)
    return url.render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not installed: {TOOLS_HINT}")
    return found


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BackupError(f"{Path(command[0]).name} failed: {last}")


def _pg_dump(database_url: str, partial: Path) -> None:
    url, env = _libpq(database_url)
    _run([_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={partial}", url], env)


def _kind_of(source: Path) -> str:
    with source.open("rb") as handle:
        head = handle.read(16)
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PG_DUMP_MAGIC):
        return "postgresql"
    raise BackupError(f"{source} is not a backup made by exchange backup")


def _holds_an_exchange(database_url: str) -> bool:
    path = sqlite_path(database_url)
    if path is not None and not path.exists():
        return False
    engine = make_sync_engine(database_url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(users.name):
                return False
            return conn.execute(select(users.c.id).limit(1)).first() is not None
    finally:
        engine.dispose()


def restore(database_url: str, source: Path, *, replace: bool = False) -> Copied:
    """Put the backup ``source`` into the configured database; refuses one in use."""
    if not source.is_file():
        raise BackupError(f"there is no file {source}")
    kind = _kind_of(source)
    target_kind = "sqlite" if is_sqlite(database_url) else "postgresql"
    if kind != target_kind:
        raise BackupError(
            f"{source} is a {kind} backup, and EXCHANGE_DATABASE_URL is a {target_kind} database"
        )
    lock = WriterLock(database_url)
    if not lock.acquire():
        raise BackupError("a server is running on this database; stop it before restoring")
    try:
        if _holds_an_exchange(database_url) and not replace:
            raise BackupError(
                "the database already holds an exchange; add --replace to overwrite it"
            )
        if kind == "sqlite":
            _sqlite_restore(database_url, source)
        else:
            url, env = _libpq(database_url)
            command = [_tool("pg_restore"), "--no-owner", "--single-transaction", f"--dbname={url}"]
            if replace:
                command += ["--clean", "--if-exists"]
            _run([*command, str(source)], env)
    finally:
        lock.release()
    return Copied(source, source.stat().st_size, kind)


def _sqlite_restore(database_url: str, source: Path) -> None:
    target = sqlite_path(database_url)
    if target is None:
        raise BackupError("an in-memory database cannot be restored into")
    create_private(target)
    backup_file = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    live = sqlite3.connect(target, timeout=30)
    try:
        backup_file.backup(live)  # replaces every page of the target, in one transaction
        live.execute("PRAGMA journal_mode=WAL")
    finally:
        live.close()
        backup_file.close()
