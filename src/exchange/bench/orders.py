"""Durable order placement over HTTP against a real ``exchange serve`` process.

Each acknowledged order was committed to the database before its answer (group
commit), so orders/s here is the durable rate. Users are seeded directly in the
database (registration by e-mail is not what is measured), then log in and are
funded through the ordinary API and admin paths.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
from argon2 import PasswordHasher
from sqlalchemy import insert

from exchange.adapters.db.database import make_sync_engine, migrate
from exchange.adapters.db.tables import users
from exchange.admin import Admin
from exchange.bench.load import LoadResult, post, run_load
from exchange.bench.server import exchange_env, free_port, running_server
from exchange.clock import now_ms
from exchange.config import Settings
from exchange.domain.markets import default_assets, default_markets

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "bench-password-1"
USERS = 64


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'bench.db'}"
        return
    name = f"exchange_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed_users(url: str, count: int) -> list[str]:
    migrate(url)
    hashed = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1).hash(PASSWORD)
    emails = [f"bench{i}@example.com" for i in range(count)]
    engine = make_sync_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(users),
            [{"email": e, "password_hash": hashed, "created": now_ms()} for e in emails],
        )
    engine.dispose()
    return emails


def fund(url: str, emails: list[str]) -> None:
    engine = make_sync_engine(url)
    tool = Admin(engine, url, default_markets(default_assets()))
    for email in emails:
        tool.credit(email, "BTC", "100000", "bench")
        tool.credit(email, "USDT", "10000000000", "bench")
    engine.dispose()


def order_requests(tokens: list[str], seed: int = 7) -> Any:
    """Limit orders around 20000 on BTC/USDT; about half cross the spread."""
    rng = random.Random(seed)

    def make(connection: int, n: int) -> bytes:
        side = "buy" if (connection + n) % 2 else "sell"
        offset = rng.randint(-25, 25)
        body = urlencode(
            {"pair": "BTC/USDT", "amount": f"0.00{rng.randint(1, 9)}", "price": str(20000 + offset)}
        ).encode()
        token = tokens[connection % len(tokens)]
        return post(f"/api/{side}", body, {"Authorization": f"Bearer {token}"})

    return make


LUA = Path(__file__).with_name("orders.lua")


def wrk_load(url: str, tokens: list[str], seconds: float, connections: int) -> LoadResult:
    """Drive the server with wrk (C, little CPU) and orders.lua; figures from its report."""
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(LUA), url],
        env={**os.environ, "TOKENS": ",".join(tokens)},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    found = re.search(
        r"RESULT requests=(\d+) seconds=([\d.]+) p50=([\d.]+) p99=([\d.]+) "
        r"non2xx=(\d+) errors=(\d+)",
        done.stdout,
    )
    if found is None:
        raise RuntimeError(f"unexpected wrk output: {done.stdout[-500:]} {done.stderr[-500:]}")
    requests, elapsed, p50, p99, non2xx, errors = found.groups()
    result = LoadResult(
        ok=int(requests) - int(non2xx),
        refused=int(non2xx),
        errors=int(errors),
        seconds=float(elapsed),
    )
    result.reported_ms = {0.50: float(p50), 0.99: float(p99)}
    return result


def measure(
    kind: str,
    seconds: float,
    connections: int,
    rate: float | None = None,
    workers: int = 1,
) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
        emails = seed_users(url, USERS)
        port = free_port()
        env = exchange_env(url, EXCHANGE_LOG_LEVEL="error")
        Settings()  # fail early on a broken .env
        args = ("--workers", str(workers)) if workers > 1 else ()
        with running_server(port, env, Path(tmp) / "server.log", args=args) as server:
            fund(url, emails)
            tokens = []
            with httpx.Client(base_url=server.url) as client:
                for email in emails:
                    answer = client.post("/api/login", data={"user": email, "pass": PASSWORD})
                    tokens.append(answer.json()["data"]["session"])
                    client.cookies.clear()  # a login deletes the session it carries
            if rate is None and shutil.which("wrk"):
                return wrk_load(server.url, tokens, seconds, connections)
            return asyncio.run(
                run_load(
                    port,
                    order_requests(tokens),
                    connections=connections,
                    seconds=seconds,
                    rate=rate,
                )
            )
