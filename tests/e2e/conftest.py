from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import postgres_database


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium, one per browser test module."""
    from browser_support import chromium

    with chromium() as found:
        yield found


@pytest.fixture
def page(browser: Any, exchange: Any) -> Iterator[Any]:
    """A fresh page on the module's ``exchange`` (its own fixture); fails on page errors."""
    from browser_support import browser_page

    with browser_page(browser, exchange) as opened:
        yield opened


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database for a real server process: a SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'exchange.db'}"
    else:
        with postgres_database() as url:
            yield url
