"""Durable order placement over HTTP against a real ``exchange serve`` process.

Each acknowledged order was committed to the database before its answer (group
commit), so orders/s here is the durable rate. Users are seeded directly in the
database (registration by e-mail is not what is measured), then log in and are
funded through the ordinary API and admin paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from exchange.adapters.signatures import hmac_signature
from exchange.admin import Admin
from exchange.bench.load import LoadResult, post, run_load
from exchange.bench.server import (
    Server,
    children,
    cpu_seconds,
    exchange_env,
    free_port,
    running_server,
)
from exchange.clock import now_ms
from exchange.config import Settings
from exchange.domain.markets import default_assets, default_markets

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "bench-password-1"
USERS = 64  # at most: one per connection, at least 8
FUNDS = (("BTC", "100000"), ("USDT", "10000000000"))


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
    """Credit every user through the operator's path (``exchange admin credit``), eight
    at a time: each credit waits for the engine's next inbox poll, so one after another
    would cost a poll each (half a minute for 64 users) where eight share one."""
    engine = make_sync_engine(url)
    tool = Admin(engine, url, default_markets(default_assets()))
    with ThreadPoolExecutor(8) as pool:  # within the engine pool's 15 connections
        done = [
            pool.submit(tool.credit, email, coin, amount, "bench")
            for email in emails
            for coin, amount in FUNDS
        ]
        for credit in done:
            credit.result()  # a credit that failed fails the benchmark
    engine.dispose()


def _python_children(pid: int) -> list[int]:
    """The server's child processes that run Python (its gateways; not nats-server)."""
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):  # a child that ended meanwhile
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"python" in command and b"resource_tracker" not in command:
                found.append(child)
    return found


@contextmanager
def sampled(server: Server, into: Path | None, seconds: float) -> Iterator[None]:
    """py-spy on the server and each of its Python children while the block runs, into
    one file of collapsed stacks whose first frame names the process (``writer``, or
    ``gateway``); None: nothing."""
    if into is None or server.process is None:
        yield
        return
    binary = Path(sys.executable).with_name("py-spy")
    if not binary.exists():
        raise RuntimeError("py-spy is not installed here: make .venv/.dev-installed")
    writer = server.process.pid
    spies = []
    for pid in (writer, *_python_children(writer)):
        output = into.with_name(f"{into.name}.{pid}")
        command = [
            str(binary),
            "record",
            "--pid",
            str(pid),
            "--nonblocking",  # sampling never pauses the server: its pace stays its own
            "--gil",  # what the interpreter spends: the thread holding the GIL
            "--format",
            "raw",
            "--rate",
            "250",
            "--duration",
            str(max(1, round(seconds))),
            "--output",
            str(output),
        ]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        spies.append(("writer" if pid == writer else "gateway", pid, output, spy))
    try:
        yield
    finally:
        failed = []
        with into.open("w") as merged:
            for role, pid, output, spy in spies:
                try:
                    _out, said = spy.communicate(timeout=seconds + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _out, said = spy.communicate()
                if not output.exists():  # ptrace refused, say: py-spy says why
                    failed.append(f"{role} {pid}: {said.decode(errors='replace').strip()}")
                    continue
                for line in output.read_text().splitlines():
                    merged.write(f"process {role} {pid};{line}\n")
                output.unlink()
        if failed:
            raise RuntimeError("py-spy could not sample " + "; ".join(failed))


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
BINANCE_LUA = Path(__file__).with_name("orders_binance.lua")
SIGNED = 50_000  # signed requests made beforehand (wrk sends them in turn)


def api_keys(url: str, tokens: list[str]) -> list[tuple[str, str]]:
    """A trade key per user: (key, secret)."""
    found = []
    with httpx.Client(base_url=url) as client:
        for token in tokens:
            answer = client.post(
                "/api/create_api_key",
                headers={"Authorization": f"Bearer {token}"},
                data={"label": "bench", "permissions": "trade"},
            )
            data = answer.json()["data"]
            found.append((data["api_key"], data["secret"]))
    return found


def signed_orders(
    keys: list[tuple[str, str]], count: int, seed: int = 7
) -> list[tuple[str, bytes]]:
    """Binance ``POST /api/v3/order`` bodies like ``order_requests``', signed now.

    Valid for ``recvWindow`` (60 s) from now: enough for a run of the benchmark.
    """
    rng = random.Random(seed)
    now = now_ms()
    out = []
    for n in range(count):
        key, secret = keys[n % len(keys)]
        query = urlencode(
            {
                "symbol": "BTCUSDT",
                "side": "BUY" if n % 2 else "SELL",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "quantity": f"0.00{rng.randint(1, 9)}",
                "price": str(20000 + rng.randint(-25, 25)),
                "newOrderRespType": "FULL",
                "recvWindow": "60000",
                "timestamp": str(now),
            }
        ).encode()
        out.append((key, query + b"&signature=" + hmac_signature(secret, query).encode()))
    return out


def signed_requests(signed: list[tuple[str, bytes]]) -> Any:
    def make(connection: int, n: int) -> bytes:
        key, body = signed[(connection * 7919 + n) % len(signed)]
        return post("/api/v3/order", body, {"X-MBX-APIKEY": key})

    return make


def wrk_load(
    url: str, tokens: list[str], seconds: float, connections: int, signed: Path | None = None
) -> LoadResult:
    """Drive the server with wrk (C, little CPU) and a Lua script; figures from its report."""
    script = LUA if signed is None else BINANCE_LUA
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), url],
        env={**os.environ, "TOKENS": ",".join(tokens), "REQUESTS": str(signed or "")},
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
    api: str = "seed",
    profile: Path | None = None,
    http: str = "uvicorn",
) -> LoadResult:
    """``api``: ``seed`` (``/api/buy``, ``/api/sell`` with a session) or ``binance``
    (signed ``POST /api/v3/order``, the HMAC made beforehand, as a bot would).

    ``profile``: py-spy samples the server's processes during the load, into this
    file (collapsed stacks, ``bench/profile.py`` reads them).

    ``http``: the HTTP server (``HTTP_SERVERS``); granian only for ``bench servers``."""
    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
        emails = seed_users(url, min(USERS, max(8, connections)))  # a login each costs argon2
        port = free_port()
        env = exchange_env(url, EXCHANGE_LOG_LEVEL="error")
        Settings()  # fail early on a broken .env
        args = ("--workers", str(workers)) if workers > 1 else ()
        log = Path(tmp) / "server.log"
        with running_server(port, env, log, args=args, http=http) as server:
            fund(url, emails)
            tokens = []
            with httpx.Client(base_url=server.url) as client:
                for email in emails:
                    answer = client.post("/api/login", data={"user": email, "pass": PASSWORD})
                    tokens.append(answer.json()["data"]["session"])
                    client.cookies.clear()  # a login deletes the session it carries
            signed: list[tuple[str, bytes]] = []
            requests_file: Path | None = None
            if api == "binance":
                signed = signed_orders(api_keys(server.url, tokens), SIGNED)
                requests_file = Path(tmp) / "signed.txt"
                requests_file.write_bytes(
                    b"".join(key.encode() + b" " + body + b"\n" for key, body in signed)
                )
            assert server.process is not None
            spent = cpu_seconds(server.process.pid)
            with sampled(server, profile, seconds):
                if rate is None and shutil.which("wrk"):
                    result = wrk_load(server.url, tokens, seconds, connections, requests_file)
                else:
                    result = asyncio.run(
                        run_load(
                            port,
                            order_requests(tokens) if api == "seed" else signed_requests(signed),
                            connections=connections,
                            seconds=seconds,
                            rate=rate,
                            accepted=b'{"status":true' if api == "seed" else b'{"symbol"',
                        )
                    )
            result.server_cpu_seconds = cpu_seconds(server.process.pid) - spent
            return result
