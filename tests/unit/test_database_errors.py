"""Which database errors mean "the database is unavailable" (503, reload) and which are a
row's fault (that command alone fails): the engine's choice between the two paths."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from psycopg import errors
from sqlalchemy import exc as sa_exc

from exchange.adapters.db.errors import database_unavailable

UNAVAILABLE = [
    OSError("the disk is gone"),
    sqlite3.OperationalError("database is locked"),
    sqlite3.OperationalError("database or disk is full"),
    sqlite3.OperationalError("no such table: orders"),
    sqlite3.DatabaseError("database disk image is malformed"),
    psycopg.OperationalError("connection lost"),  # raised by the client, no SQLSTATE
    errors.AdminShutdown("terminating connection"),
    errors.DiskFull("could not extend file"),
    errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
    errors.UndefinedTable("relation does not exist"),
    errors.InsufficientPrivilege("permission denied"),
    errors.SerializationFailure("could not serialize"),
    errors.InternalError_("an internal error"),
    sa_exc.TimeoutError("QueuePool limit reached"),
]
ROW_FAULTS = [
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ValueError("a value no driver takes"),
    sqlite3.IntegrityError("UNIQUE constraint failed"),
    sqlite3.IntegrityError("this row is poisoned"),  # RAISE(ABORT) in a trigger
    sqlite3.ProgrammingError("Error binding parameter 1"),
    errors.UniqueViolation("duplicate key"),
    errors.StringDataRightTruncation("value too long for type character varying(36)"),
    errors.NumericValueOutOfRange("bigint out of range"),
    errors.CharacterNotInRepertoire("invalid byte sequence for encoding"),
    errors.ProgramLimitExceeded("index row size exceeds maximum"),
    errors.RaiseException("this row is poisoned"),
]


@pytest.mark.parametrize("error", UNAVAILABLE, ids=lambda e: type(e).__name__)
def test_the_database_cannot_be_used_now(error: BaseException) -> None:
    assert database_unavailable(error)
    wrapped = sa_exc.DBAPIError.instance("INSERT", None, error, Exception)
    if isinstance(error, (sqlite3.Error, psycopg.Error)):
        assert database_unavailable(wrapped)  # as SQLAlchemy hands it to the services


@pytest.mark.parametrize("error", ROW_FAULTS, ids=lambda e: type(e).__name__)
def test_a_row_the_database_refuses(error: BaseException) -> None:
    assert not database_unavailable(error)
    if isinstance(error, (sqlite3.Error, psycopg.Error)):
        wrapped = sa_exc.DBAPIError.instance("INSERT", None, error, Exception)
        assert not database_unavailable(wrapped)
