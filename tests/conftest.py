"""Fixtures: every integration test runs on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from exchange.clock import ManualClock
from support import (
    THROUGH_WORKER,
    Mailbox,
    make_settings,
    postgres_database,
    running_app,
    smtp_server,
)

#: The second pass of the integration suite (``EXCHANGE_TEST_THROUGH_WORKER=1``) is about
#: the HTTP worker and its link to the writer, which do not change with the database: it
#: runs on SQLite only, the first pass on both (where ``test_worker_link.py`` already puts
#: a worker in front on each; tests that ask for PostgreSQL by name run on it in both).
DATABASES = ["sqlite"] if THROUGH_WORKER else ["sqlite", "postgres"]


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'exchange.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'exchange.db'}"


@pytest.fixture
def mail() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def mailbox(mail: tuple[Mailbox, int]) -> Mailbox:
    return mail[0]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def app_client(
    database_url: str, mail: tuple[Mailbox, int], clock: ManualClock
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    settings = make_settings(database_url, mail[1])
    async with running_app(settings, clock) as pair:
        yield pair


@pytest.fixture
async def client(app_client: tuple[Any, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_client[1]


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("EXCHANGE_RATE_LIMITS", "off")
