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
from support import Mailbox, make_settings, postgres_database, running_app, smtp_server


@pytest.fixture(params=["sqlite", "postgres"])
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
