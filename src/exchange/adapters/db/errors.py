"""Telling a database that cannot be used now from rows it refuses.

The writer answers the first with 503 and a reload, the second by finding the
one command whose rows are refused (docs/architecture.md, "the writer"); the
API and the pages answer the first with 503 ``overloaded``.
"""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy import exc as sa_exc

__all__ = ["ROW_SQLSTATE_CLASSES", "database_unavailable"]

#: SQLSTATE classes that are about the rows being written, not about the database:
#: data exceptions (22: too long, out of range, bad encoding), integrity constraints
#: (23), program limits such as an index row too large (54), and an exception raised
#: by a trigger or function (P0). Every other class (connection, resources, read-only
#: transaction after a failover, missing table, privileges, internal) means the
#: database cannot take any batch now.
ROW_SQLSTATE_CLASSES = frozenset(("22", "23", "54", "P0"))
#: sqlite3's errors that are a row's fault: constraints, and values it cannot bind.
_SQLITE_ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
)


def database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be used now (down, unreachable, full, locked).

    Such a failure is the 503 ``overloaded`` of SPEC §2 (try again), not a 500: the
    request changed nothing, and the pools reconnect once the database is back.
    Anything else (a constraint, a value the database refuses, text it cannot
    encode) is about the rows being written, not about the database.
    """
    if isinstance(error, OSError):  # the file system or the network under the database
        return True
    if isinstance(error, sa_exc.TimeoutError):  # no connection free in the pool
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if isinstance(error.orig, BaseException):
            error = error.orig
    if isinstance(error, psycopg.Error):
        state = error.sqlstate
        if state is None:  # raised by the client: only a lost connection is the database's
            return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))
        return state[:2] not in ROW_SQLSTATE_CLASSES
    if isinstance(error, sqlite3.Error):
        return not isinstance(error, _SQLITE_ROW_ERRORS)
    return isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError))
