"""What the ccxt tests share: a real server with two funded traders and ccxt's settings.

ccxt is configured only as a user would (the README's "Connect your tools"):
its ``urls.api`` point at this server, spot markets only, no currency or margin
lookups.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import httpx

from exchange.bench.server import Server, admin, exchange_env, running_server
from support import free_port, register_over_http, smtp_server

PASSWORD = "correct-horse-42"


def options(url: str) -> dict[str, Any]:
    api = f"{url}/api/v3"
    return {
        "urls": {"api": {"public": api, "private": api, "sapi": api}},
        "options": {
            "fetchMarkets": {"types": ["spot"]},
            "fetchCurrencies": False,
            "fetchMargins": False,
        },
    }


@dataclass
class Trader:
    email: str
    token: str
    key: str
    secret: str

    def client(self, url: str, **extra: Any) -> ccxt.binance:
        return ccxt.binance({"apiKey": self.key, "secret": self.secret, **options(url), **extra})


def create_key(url: str, token: str, **fields: str) -> dict[str, Any]:
    answer = httpx.post(
        f"{url}/api/create_api_key",
        headers={"Authorization": f"Bearer {token}"},
        data={"label": "ccxt", "permissions": "trade", **fields},
    )
    assert answer.json()["status"], answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


@dataclass
class Exchange:
    server: Server
    env: dict[str, str]
    alice: Trader
    bob: Trader

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def started(db_url: str, tmp_path: Path, *args: str) -> Iterator[Exchange]:
    """A server with alice (10,000 USDT) and bob (2 BTC, 10 ETH), each with a trade key."""
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(db_url, smtp_port)
        with running_server(free_port(), env, tmp_path / "server.log", args=args) as server:
            traders = []
            for name in ("alice", "bob"):
                email = f"{name}@example.com"
                token = register_over_http(server.url, mailbox, email, PASSWORD)
                key = create_key(server.url, token)
                traders.append(Trader(email, token, key["api_key"], key["secret"]))
            for email, asset, amount in (
                ("alice@example.com", "USDT", "10000"),
                ("bob@example.com", "BTC", "2"),
                ("bob@example.com", "ETH", "10"),
            ):
                done = admin(env, "credit", email, asset, amount)
                assert done.returncode == 0, done.stderr
            yield Exchange(server, env, traders[0], traders[1])


def balances(client: ccxt.binance) -> dict[str, tuple[Decimal, Decimal]]:
    """asset -> (free, locked), exact, from the strings of ``GET /api/v3/account``."""
    rows = client.fetch_balance()["info"]["balances"]
    return {row["asset"]: (Decimal(row["free"]), Decimal(row["locked"])) for row in rows}
