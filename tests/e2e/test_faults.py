"""Fault tests against the real server process (issue 8, item 4).

* kill -9 during a mixed load (orders, IOC orders, cancels, withdrawals) on SQLite
  and PostgreSQL: what was acknowledged is there, nothing else is half-applied,
  the restarted server carries on from exactly that state;
* PostgreSQL unreachable for a while (a TCP proxy between the server and the
  database is cut, then restored; the machine's cluster is never touched):
  503 ``overloaded`` fast, never 500, never a hang; recovery without a restart;
* SQLite on a full disk (a tiny tmpfs filled to the last byte): 503, no
  corruption, recovery when space returns; on a read-only file system the server
  refuses to start and leaves the data intact. (A file system cannot be made
  read-only under a running server: the kernel refuses the remount while files
  are open for writing, and root ignores permissions; the full disk is the
  mid-run equivalent.)
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from load_support import (
    CREDITS,
    PAIR,
    SCALE,
    Acks,
    check_acknowledged,
    check_money,
    check_outcomes,
    client_loop,
    credit,
    set_addresses,
    start_users,
)
from sqlalchemy import select

from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.tables import balances, orders, users
from exchange.bench.server import Server, exchange_env, running_server
from exchange.engine.writer_lock import ADVISORY_KEY, WriterLock
from support import (
    PG_ADMIN,
    audit_orders_and_withdrawals,
    check_database_ledger,
    free_port,
    independent_balances,
    postgres_database,
    smtp_server,
)

# -- the world: a server with funded users (the load and its checks: load_support.py) ----


# -- checks on the database after the fact -------------------------------------------------


def stored_balances(url: str) -> dict[tuple[int, str], tuple[int, int]]:
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            return {
                (r.user_id, r.asset): (r.available, r.frozen)
                for r in conn.execute(select(balances))
            }
    finally:
        engine.dispose()


def timeline(acks: Acks, origin: float) -> str:
    """Answers per half second since ``origin``: for the failure messages."""
    slots: dict[int, dict[str, int]] = {}
    for o in acks.outcomes:
        key = str(o.status) if o.status is not None else "none"
        slot = slots.setdefault(int((o.started - origin) * 2), {})
        slot[key] = slot.get(key, 0) + 1
    return "; ".join(f"{k / 2:+.1f}s {v}" for k, v in sorted(slots.items()))


# -- 1. kill -9 during a mixed load ------------------------------------------------------


async def load_until_killed(base: str, tokens: list[str], pid: int) -> Acks:
    """Mixed commands from several clients; kill -9 once every kind was acknowledged."""
    acks = Acks()
    stop = asyncio.Event()

    async def killer() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            len(acks.orders) >= 150 and len(acks.withdrawals) >= 15 and len(acks.cancels) >= 10
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(random.uniform(0.1, 0.4))  # land anywhere in a batch
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        stop.set()

    clients = (
        client_loop(base, token, i, acks, stop, withdraw=True, timeout=10, stop_on_error=True)
        for i, token in enumerate(tokens)
    )
    await asyncio.gather(killer(), *clients)
    return acks


def test_kill_9_during_mixed_load(db_url: str, tmp_path: Path) -> None:
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(db_url, smtp_port, EXCHANGE_WITHDRAW_ADDRESS_COOLDOWN="0")
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            tokens = start_users(server, mailbox, env["EXCHANGE_DATABASE_URL"], 4)
            set_addresses(server.url, tokens)
            assert server.process is not None
            acks = asyncio.run(load_until_killed(server.url, tokens, server.process.pid))
            assert server.process.wait(timeout=10) == -signal.SIGKILL
        assert len(acks.orders) >= 150, "the load did not run"
        assert len(acks.withdrawals) >= 15 and len(acks.cancels) >= 10
        assert any(a["trades"] for a in acks.orders.values()), "nothing traded"
        # The requests cut by the kill got no answer; they are the unacknowledged ones.
        assert any(o.status is None for o in acks.outcomes)
        answered = Acks(outcomes=[o for o in acks.outcomes if o.status is not None])
        check_outcomes(answered)  # every answer expected: no failure allowed

        check_acknowledged(db_url, acks)
        check_money(db_url)
        stored = stored_balances(db_url)

        # The restarted server rebuilds the same balances and books and keeps working.
        ids = user_ids(db_url)
        open_rows = open_orders(db_url)
        with (
            running_server(free_port(), env, tmp_path / "server.log") as server,
            httpx.Client(base_url=server.url, timeout=10) as client,
        ):
            auth = [{"Authorization": f"Bearer {token}"} for token in tokens]
            for i, headers in enumerate(auth):
                coins = client.post("/api/get_user_coin", headers=headers).json()["data"]
                user = ids[f"trader{i}@example.com"]
                for asset in SCALE:
                    available, frozen = stored.get((user, asset), (0, 0))
                    assert coins[asset] == {
                        "available": units(available, asset),
                        "frozen": units(frozen, asset),
                    }
            depth = client.get("/api/get_depth", params={"pair": PAIR, "limit": 500}).json()
            expected: dict[tuple[str, str], int] = {}
            for row in open_rows:
                key = (
                    "bids" if row.side == "buy" else "asks",
                    f"{row.price // 100}.{row.price % 100:02d}",
                )
                expected[key] = expected.get(key, 0) + row.amount - row.filled
            got = {
                (side, price): int(Decimal(amount) * 10**8)
                for side in ("bids", "asks")
                for price, amount in depth["data"][side]
            }
            assert got == expected
            # An acknowledged order still open can be canceled; new commands work.
            if open_rows:
                victim = open_rows[0]
                owner = next(
                    i for i in range(len(tokens)) if ids[f"trader{i}@example.com"] == victim.user_id
                )
                answer = client.post(
                    "/api/cancel_order", data={"order_id": str(victim.id)}, headers=auth[owner]
                ).json()
                assert answer["status"] and answer["data"]["status"] == "canceled", answer
            answer = client.post(
                "/api/buy", data={"pair": PAIR, "amount": "0.01", "price": "1000"}, headers=auth[0]
            ).json()
            assert answer["status"], answer
            answer = client.post(
                "/api/withdraw", data={"coin": "USDT", "amount": "12"}, headers=auth[0]
            ).json()
            assert answer["status"] and answer["data"]["status"] == "pending", answer
            listed = client.post("/api/get_withdrawals", data={"limit": 500}, headers=auth[0])
            assert answer["data"]["withdrawal_id"] in {
                w["withdrawal_id"] for w in listed.json()["data"]
            }
        check_money(db_url)


def units(value: int, asset: str) -> str:
    scale = SCALE[asset]
    whole, frac = divmod(value, 10**scale)
    return f"{whole}.{frac:0{scale}d}"


def user_ids(url: str) -> dict[str, int]:
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            return {r.email: r.id for r in conn.execute(select(users.c.email, users.c.id))}
    finally:
        engine.dispose()


def open_orders(url: str) -> list[Any]:
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    select(orders).where(orders.c.status.in_(("open", "partially_filled")))
                )
            )
    finally:
        engine.dispose()


# -- 2. PostgreSQL unreachable for a while ------------------------------------------------


class TcpProxy:
    """A TCP relay 127.0.0.1:port → 127.0.0.1:upstream, run by its own event loop thread.

    ``cut()`` is a network outage as the server sees it: every relayed connection
    is aborted and the port refuses new ones; ``restore()`` listens again.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def restore(self) -> None:
        async def listen() -> None:
            self._server = await asyncio.start_server(
                self._relay, "127.0.0.1", self.port, reuse_address=True
            )

        self._call(listen())

    def cut(self) -> None:
        async def cut() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()

        self._call(cut())

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()
                self._open.discard(sink)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def proxied(url: str, port: int) -> str:
    return url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")


async def load_through_fault(
    base: str,
    tokens: list[str],
    break_it: Callable[[], object],
    repair_it: Callable[[], object],
    *,
    hold: float = 0.0,
    refusals: int = 0,
) -> tuple[Acks, float, float]:
    """Orders and cancels from several clients while the database breaks, then heals.

    The fault lasts ``hold`` seconds and until ``refusals`` requests were answered
    503 (at most 30 s); the load goes on until 50 orders were acknowledged after
    the repair (at most 30 s). Returns the answers and when it broke and healed.
    """
    acks = Acks()
    stop = asyncio.Event()
    times: list[float] = []
    depth_answers: list[int] = []

    def refused_since(moment: float) -> int:
        return sum(1 for o in acks.outcomes if o.started >= moment and o.status == 503)

    async def operator() -> None:
        deadline = time.monotonic() + 30
        while len(acks.orders) < 50 and time.monotonic() < deadline:  # the load is under way
            await asyncio.sleep(0.05)
        times.append(time.monotonic())
        await asyncio.to_thread(break_it)
        await asyncio.sleep(hold)
        deadline = time.monotonic() + 30
        while refused_since(times[0]) < refusals and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.to_thread(repair_it)
        times.append(time.monotonic())
        deadline = time.monotonic() + 30
        while acks.orders_since(times[1]) < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()

    async def market_watcher() -> None:
        """Public market data is served from memory: it never needs the database."""
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            while not stop.is_set():
                answer = await client.get("/api/get_depth", params={"pair": PAIR})
                depth_answers.append(answer.status_code)
                await asyncio.sleep(0.05)

    clients = (
        client_loop(base, token, i, acks, stop, withdraw=False, timeout=30, stop_on_error=False)
        for i, token in enumerate(tokens)
    )
    await asyncio.gather(operator(), market_watcher(), *clients)
    assert depth_answers and set(depth_answers) == {200}, depth_answers
    return acks, times[0], times[1]


def assert_server_holds_lock(url: str) -> None:
    probe = WriterLock(url)
    try:
        assert not probe.acquire(), "the server lost the writer lock for good"
    finally:
        probe.release()


def terminate_lock_holder(url: str) -> None:
    """End the database session that holds the writer lock (not the cluster)."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_database d "
            "ON d.oid = l.database WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.objid = %s AND d.datname = %s",
            (ADVISORY_KEY, name),
        ).fetchone()
    assert row is not None and row[0], "no session held the writer lock"


@pytest.mark.postgres
def test_postgres_unreachable_then_back(tmp_path: Path) -> None:
    outage = 6.0  # longer than the session cache (5 s): logins are checked in the database
    with (
        postgres_database() as direct_url,
        TcpProxy(5432) as proxy,
        smtp_server() as (mailbox, smtp_port),
    ):
        url = proxied(direct_url, proxy.port)
        env = exchange_env(url, smtp_port)
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            assert server.process is not None
            pid = server.process.pid
            tokens = start_users(server, mailbox, env["EXCHANGE_DATABASE_URL"], 3)
            acks, cut, restored = asyncio.run(
                load_through_fault(server.url, tokens, proxy.cut, proxy.restore, hold=outage)
            )
            assert server.process.poll() is None and server.process.pid == pid  # no restart

            refused = check_outcomes(acks, failure_allowed=lambda o: o.status == 503)
            during = [o for o in acks.outcomes if cut <= o.started < restored]
            assert len(during) >= 20, "the clients were not asking during the outage"
            story = f"cut at 0, restored at {restored - cut:.1f}: " + timeline(acks, cut)
            assert len(refused) >= 10, story
            assert all(cut - 0.5 <= o.started < restored + 10 for o in refused), story
            # Refused at once, not parked until the database comes back.
            slowest = max(o.elapsed for o in acks.outcomes)
            assert slowest < outage - 1, slowest
            assert acks.orders_since(restored) >= 50, "orders are not accepted again"

            # The server is the writer again: no other process can take the lock, and an
            # operator's credit goes through it (not around it).
            assert_server_holds_lock(direct_url)
            # Only the lock's connection dies (the pools are fine): the server notices
            # within its check period and takes the lock again.
            terminate_lock_holder(direct_url)
            time.sleep(3)
            assert_server_holds_lock(direct_url)
            credit(url, ("trader0@example.com", "ETH", "1"))
            coins = httpx.post(
                f"{server.url}/api/get_user_coin",
                headers={"Authorization": f"Bearer {tokens[0]}"},
            ).json()["data"]
            assert coins["ETH"] == {"available": "1.00000000", "frozen": "0.00000000"}
        check_acknowledged(direct_url, acks)
        check_database_ledger(direct_url)
        audit_orders_and_withdrawals(direct_url)
        independent_balances(direct_url, CREDITS)  # BTC and USDT: ETH was credited once


def test_readyz_says_when_the_database_is_away(tmp_path: Path) -> None:
    """``/readyz`` is 503 naming the database while it is unreachable; ``/healthz`` stays 200."""

    def readiness(url: str) -> tuple[int, dict[str, Any]]:
        answer = httpx.get(f"{url}/readyz", timeout=10)
        return answer.status_code, answer.json()

    def wait_for(url: str, status: int) -> dict[str, Any]:
        deadline = time.monotonic() + 30  # a guard against a hang, not a measured time
        while True:
            code, body = readiness(url)
            if code == status or time.monotonic() > deadline:
                assert code == status, body
                return body
            time.sleep(0.2)

    with postgres_database() as direct_url, TcpProxy(5432) as proxy:
        env = exchange_env(proxied(direct_url, proxy.port))
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            assert readiness(server.url) == (
                200,
                {"status": "ready", "checks": {"database": True, "engine": True}},
            )
            proxy.cut()
            away = wait_for(server.url, 503)
            assert away == {"status": "not_ready", "checks": {"database": False, "engine": True}}
            assert httpx.get(f"{server.url}/healthz").status_code == 200
            proxy.restore()
            assert wait_for(server.url, 200)["status"] == "ready"


# -- 3. SQLite on a full disk ---------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a real file system that runs out of space (mounting needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> None:
    """Write a file until the file system has not one byte left."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    break
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0


def test_sqlite_disk_full_then_space_again(small_disk: Path, tmp_path: Path) -> None:
    path = small_disk / "exchange.db"
    url = f"sqlite:///{path}"
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(url, smtp_port)
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            assert server.process is not None
            pid = server.process.pid
            tokens = start_users(server, mailbox, env["EXCHANGE_DATABASE_URL"], 3)
            acks, full, freed = asyncio.run(
                load_through_fault(
                    server.url,
                    tokens,
                    lambda: fill(small_disk),
                    (small_disk / "filler").unlink,
                    hold=2.0,
                    refusals=20,
                )
            )
            assert server.process.poll() is None and server.process.pid == pid  # no restart
            story = f"full at 0, freed at {freed - full:.1f}: " + timeline(acks, full)
            refused = check_outcomes(acks, failure_allowed=lambda o: o.status == 503)
            assert len(refused) >= 20, story
            assert all(full - 0.5 <= o.started < freed + 10 for o in refused), story
            assert max(o.elapsed for o in acks.outcomes) < 10, story
            assert acks.orders_since(freed) >= 50, "orders are not accepted again: " + story
        integrity_ok(path)
        check_acknowledged(url, acks)
        check_money(url)
        before = stored_balances(url)

        # A database that cannot be written at all (read-only file system; remounting
        # needs the files closed, so between runs): the server refuses to start, and
        # starts on the same data once the file system is writable again.
        remount(small_disk, "ro")
        try:
            refused_start = Server(free_port(), env, tmp_path / "readonly.log")
            with pytest.raises(RuntimeError, match="server exited"):
                refused_start.start()
            assert "unable to open database file" in (tmp_path / "readonly.log").read_text()
        finally:
            remount(small_disk, "rw")
        integrity_ok(path)
        assert stored_balances(url) == before
        with running_server(free_port(), env, tmp_path / "server.log") as server:
            answer = httpx.post(
                f"{server.url}/api/sell",
                data={"pair": PAIR, "amount": "0.001", "price": "30000"},
                headers={"Authorization": f"Bearer {tokens[0]}"},
            ).json()
            assert answer["status"], answer
        check_money(url)


def remount(disk: Path, mode: str) -> None:
    done = subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(disk)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def integrity_ok(path: Path) -> None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
