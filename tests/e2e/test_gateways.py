"""A writer and two gateways as separate processes, linked only by a NATS server.

The shape of several hosts on one: ``exchange serve --role writer`` (engine,
journal, the database) and two ``exchange gateway --nats URL`` processes on
ports of their own, each knowing nothing but the database URL and the NATS
server (here started by the test, with the writer's and the gateways' accounts,
as an operator would run one). On SQLite and PostgreSQL:

1. users on different gateways trade with each other; both show the trade;
2. NATS stopped and started again: the gateways answer 503 meanwhile and come
   back by themselves, nothing acknowledged is lost;
3. kill -9 of a gateway: a new one shows the same book and trades;
4. kill -9 of the writer under load through both gateways: they answer 503, a
   new writer starts, they follow it by themselves; every acknowledged order is
   in the database and the money adds up.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import nats
import nkeys
import pytest
from load_support import (
    Acks,
    check_acknowledged,
    check_money,
    check_outcomes,
    start_users,
    trade,
)

from exchange.adapters.nats_server import PrivateNats
from exchange.bench.server import BIN, Server, exchange_env, free_port, running_server
from exchange.engine.bus import Subjects
from support import smtp_server, until

PAIR = "BTC/USDT"


@contextmanager
def nats_server(directory: Path, host: str = "127.0.0.1") -> Iterator[PrivateNats]:
    """A NATS server with the writer's and the gateways' accounts, listening on ``host``."""
    subjects = Subjects()
    server = PrivateNats(
        directory / "jetstream", prefix=subjects.prefix, stream=subjects.stream, host=host
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Writer:
    """``exchange serve --role writer``: no HTTP; ready once a gateway can follow it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "exchange"), "serve", "--role", "writer"],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        deadline = time.monotonic() + 30
        while "writer pid" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(20)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def order(base: str, token: str, side: str, price: str, amount: str = "0.1") -> httpx.Response:
    return httpx.post(
        f"{base}/api/{side}",
        data={"pair": PAIR, "amount": amount, "price": price},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def market(base: str) -> tuple[object, object]:
    """(depth, recent trades) as a gateway shows them (without the depth's own clock)."""
    depth = httpx.get(f"{base}/api/get_depth", params={"pair": PAIR, "limit": "100"}).json()
    deals = httpx.get(f"{base}/api/get_deal_record", params={"pair": PAIR}).json()
    levels = {side: depth["data"][side] for side in ("bids", "asks")}
    return levels, deals["data"]


async def eventually(condition: object, seconds: float, what: str) -> None:  # float-ok: seconds
    await until(lambda: asyncio.to_thread(condition), seconds, what)  # type: ignore[arg-type]


async def _writer_killed_under_load(
    gateways: list[Server], tokens: list[str], writer: Writer
) -> tuple[Acks, float]:
    """Traders on both gateways; the writer killed after 150 orders, started again."""
    load = Acks()
    stop = asyncio.Event()
    moments: list[float] = []

    async def operator() -> None:
        try:
            await until(lambda: len(load.orders) >= 150, 60, "150 orders")
            await asyncio.sleep(random.uniform(0.0, 0.2))
            moments.append(time.monotonic())
            writer.kill()
        finally:
            stop.set()

    await asyncio.gather(
        operator(),
        *(trade(gateways[i % 2].url, token, i, load, stop) for i, token in enumerate(tokens)),
    )
    return load, moments[0]


def test_gateways_on_their_own_follow_the_writer_through_nats(db_url: str, tmp_path: Path) -> None:
    with smtp_server() as (mailbox, smtp_port), nats_server(tmp_path) as nats:
        accounts = nats.accounts
        assert accounts is not None
        writer_env = exchange_env(db_url, smtp_port, EXCHANGE_NATS_URL=accounts.writer_url)
        gateway_env = exchange_env(db_url, smtp_port, EXCHANGE_NATS_URL=accounts.gateway_url)
        writer = Writer(writer_env, tmp_path / "writer.log")
        writer.start()
        ports = [free_port(), free_port()]
        try:
            with (
                running_server(ports[0], gateway_env, tmp_path / "a.log", "gateway") as a,
                running_server(ports[1], gateway_env, tmp_path / "b.log", "gateway") as b,
            ):
                # 1. A seller on one gateway, a buyer on the other: they trade.
                tokens = start_users(a, mailbox, db_url, 4)  # registered through gateway A
                seller, buyer = tokens[0], tokens[1]
                sold = order(a.url, seller, "sell", "20000")
                assert sold.json()["data"]["status"] == "open", sold.text
                bought = order(b.url, buyer, "buy", "20000", "0.05")
                assert bought.json()["data"]["status"] == "filled", bought.text
                asyncio.run(
                    eventually(lambda: market(a.url) == market(b.url), 10, "the same market")
                )
                depth, deals = market(b.url)  # the answering gateway, at once
                assert deals and deals[0]["amount"] == "0.05000000"
                assert depth["asks"] == [["20000.00", "0.05000000"]]

                # 2. NATS away: 503s, then both gateways come back by themselves.
                nats.stop()
                asyncio.run(eventually(lambda: not ready(a.url) and not ready(b.url), 20, "503s"))
                refused = order(b.url, buyer, "buy", "19000", "0.01")
                assert refused.status_code == 503, refused.text
                nats.start()
                asyncio.run(eventually(lambda: ready(a.url) and ready(b.url), 30, "both back"))
                again = order(a.url, seller, "sell", "21000", "0.01")
                assert again.json()["data"]["status"] == "open", again.text
                asyncio.run(eventually(lambda: market(a.url) == market(b.url), 10, "in step again"))

                # 3. kill -9 of a gateway: a new one shows the same.
                assert a.process is not None
                a.kill()
                a.start("gateway")
                assert market(a.url) == market(b.url)

                # 4. kill -9 of the writer under load through both gateways.
                load, killed = asyncio.run(_writer_killed_under_load([a, b], tokens, writer))
                asyncio.run(eventually(lambda: not ready(a.url), 20, "the gateways to notice"))
                writer.start()
                asyncio.run(eventually(lambda: ready(a.url) and ready(b.url), 30, "following"))
                failures = check_outcomes(load, failure_allowed=lambda o: o.started >= killed - 1)
                print(f"{len(load.orders)} orders acknowledged; {len(failures)} failures")
                placed = order(b.url, buyer, "buy", "1000", "0.01")
                assert placed.json()["data"]["status"] == "open", placed.text
                asyncio.run(eventually(lambda: market(a.url) == market(b.url), 10, "one market"))
        finally:
            writer.stop()
    check_acknowledged(db_url, load)
    check_money(db_url)


def _nkey_user(path: Path) -> str:
    """A new NKey user: its seed written to ``path`` (0600), its public key returned."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed)
    path.chmod(0o600)
    return str(nkeys.from_seed(bytearray(seed)).public_key.decode())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_writer_and_gateway_authenticate_with_nkeys(db_url: str, tmp_path: Path) -> None:
    """A NATS server of one's own that knows NKeys only: the writer and a gateway prove
    who they are with their seed files (EXCHANGE_NATS_NKEY_SEED); an unknown seed is
    refused with a clear error and no secret in the log; the gateway's key keeps the
    gateway's permissions (it cannot publish a batch)."""
    writer_key = _nkey_user(tmp_path / "writer.nk")
    gateway_key = _nkey_user(tmp_path / "gateway.nk")
    stranger_key = _nkey_user(tmp_path / "stranger.nk")
    subjects = Subjects()
    server = PrivateNats(
        tmp_path / "jetstream",
        prefix=subjects.prefix,
        stream=subjects.stream,
        nkeys=(writer_key, gateway_key),
    )
    accounts = server.start()
    assert "@" not in accounts.gateway_url  # no password in the URL: the seed proves it
    try:
        with smtp_server() as (mailbox, smtp_port):
            url = {"EXCHANGE_NATS_URL": accounts.writer_url}

            def env(seed: str) -> dict[str, str]:
                return exchange_env(
                    db_url, smtp_port, **url, EXCHANGE_NATS_NKEY_SEED=str(tmp_path / seed)
                )

            writer = Writer(env("writer.nk"), tmp_path / "writer.log")
            writer.start()
            try:
                with running_server(
                    free_port(), env("gateway.nk"), tmp_path / "g.log", "gateway"
                ) as g:
                    seller, buyer = start_users(g, mailbox, db_url, 2)
                    assert order(g.url, seller, "sell", "20000").json()["data"]["status"] == "open"
                    bought = order(g.url, buyer, "buy", "20000", "0.05")
                    assert bought.json()["data"]["status"] == "filled", bought.text
                    asyncio.run(_gateway_key_cannot_publish_batches(accounts.gateway_url, tmp_path))
                log = tmp_path / "stranger.log"
                stranger = Server(free_port(), env("stranger.nk"), log)
                with pytest.raises(RuntimeError, match="server exited"):
                    stranger.start("gateway")
                said = log.read_text()
                assert "cannot reach NATS" in said and "authorization violation" in said.lower()
                assert (tmp_path / "stranger.nk").read_text() not in said
                assert stranger_key not in said
                # The seed itself pasted where its file's name belongs: refused, not shown.
                seed = (tmp_path / "gateway.nk").read_text()
                pasted = exchange_env(db_url, smtp_port, **url, EXCHANGE_NATS_NKEY_SEED=seed)
                log = tmp_path / "pasted.log"
                with pytest.raises(RuntimeError, match="server exited"):
                    Server(free_port(), pasted, log).start("gateway")
                said = log.read_text()
                assert "must name a readable file" in said and seed not in said
            finally:
                writer.stop()
    finally:
        server.stop()


async def _gateway_key_cannot_publish_batches(url: str, folder: Path) -> None:
    connection = await nats.connect(url, nkeys_seed=str(folder / "gateway.nk"))
    try:
        js = connection.jetstream()
        before = (await js.stream_info(Subjects().stream)).state.messages
        await connection.publish(Subjects().events, b'{"t":"events"}')
        await connection.flush()
        assert (await js.stream_info(Subjects().stream)).state.messages == before
    finally:
        await connection.close()
