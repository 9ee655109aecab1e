"""``exchange serve --workers 2``: one writer process, two HTTP worker processes.

Real processes on a free port, every request on a fresh TCP connection so that
the kernel spreads them over both workers; which worker answered is read from
``/proc`` (the server end of the connection belongs to one worker's fd table).

1. trading and market data through the workers (SQLite, PostgreSQL): exact
   balances, depth, trades and candles agree on every worker right after the
   order's answer, and there really are two live worker processes;
2. a WebSocket on each worker gets the trade, the depth, the order and the
   balances of an order placed over HTTP (SQLite);
3. logout on one worker: the session is refused at once by every worker (SQLite);
4. kill -9 of one worker under a concurrent order load: the server keeps
   answering, the worker is respawned, every acknowledged order is in the
   database and the money adds up (SQLite, PostgreSQL);
5. kill -9 of the writer (the parent): the workers go away by themselves, the
   port is free for a new server, nothing acknowledged is lost (SQLite).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from load_support import (
    PAIR,
    Acks,
    check_acknowledged,
    check_money,
    check_outcomes,
    credit,
    start_users,
    trade,
)
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection

from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.tables import orders
from exchange.bench.server import Server, admin, exchange_env, free_port, running_server
from support import (
    check_database_ledger,
    register_over_http,
    smtp_server,
    until,
)

WORKERS = ("--workers", "2")
#: Every request of these tests opens its own connection: the next one may land on the
#: other worker.
FRESH = {"Connection": "close"}


# -- processes, as /proc sees them ---------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process; None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = text[text.rindex(")") + 2 :].split()[:2]
    return state, int(ppid)


def alive(pid: int) -> bool:
    found = _stat(pid)
    return found is not None and found[0] not in ("Z", "X")


def worker_pids(server_pid: int) -> set[int]:
    """The live worker processes of a server: its children that run multiprocessing's spawn.

    (The other child of the parent is multiprocessing's resource tracker.)
    """
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _stat(pid)
        if stat is None or stat[1] != server_pid or stat[0] in ("Z", "X"):
            continue
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"spawn_main" in command:
            found.add(pid)
    return found


def wait_for_workers(server_pid: int, count: int = 2, timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(server_pid)
        if len(pids) == count:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"not {count} live workers: {worker_pids(server_pid)}")


def private_nats(server_pid: int) -> tuple[int, Path]:
    """The writer's own ``nats-server`` (its child) and that server's config file."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None or stat[1] != server_pid or stat[0] in ("Z", "X"):
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if command[0].endswith(b"nats-server"):
            return int(entry), Path(command[command.index(b"-c") + 1].decode())
    raise AssertionError(f"process {server_pid} runs no nats-server")


def owner_of(server_port: int, client_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server end of the TCP connection from ``client_port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except FileNotFoundError:
                continue
    return None


def ask(
    server: Server,
    pids: set[int],
    path: str,
    *,
    data: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    token: str | None = None,
) -> tuple[httpx.Response, int | None]:
    """One request on a new connection; the answer and the worker that gave it.

    The connection stays open (keep-alive) until its owner is known, then this client
    closes it: the next request opens another one, which the kernel may give to
    either worker.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        if data is not None:
            answer = client.post(path, data=data)
        else:
            answer = client.get(path, params=params)
        stream = answer.extensions.get("network_stream")
        host_port = stream.get_extra_info("client_addr") if stream is not None else None
        worker = owner_of(server.port, int(host_port[1]), pids) if host_port else None
    return answer, worker


def on_both_workers(
    server: Server, pids: set[int], request: Callable[[], tuple[Any, int | None]], least: int
) -> list[tuple[Any, int | None]]:
    """At least ``least`` answers, and more until both workers gave some (at most 200)."""
    answers: list[tuple[Any, int | None]] = []
    while len(answers) < least or not pids <= {worker for _, worker in answers}:
        assert len(answers) < 200, f"one worker never answered: {[w for _, w in answers]}"
        answers.append(request())
    return answers


# -- the book the database holds -------------------------------------------------------------------


def open_depth(url: str) -> dict[str, list[list[str]]]:
    """What ``get_depth`` must show, from the open orders in the database."""
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            rows = list(
                conn.execute(
                    select(orders).where(
                        orders.c.status.in_(("open", "partially_filled")), orders.c.market == PAIR
                    )
                )
            )
    finally:
        engine.dispose()
    levels: dict[str, dict[int, int]] = {"bids": {}, "asks": {}}
    for row in rows:
        side = levels["bids" if row.side == "buy" else "asks"]
        side[row.price] = side.get(row.price, 0) + row.amount - row.filled
    return {
        name: [
            [f"{price // 100}.{price % 100:02d}", f"{total // 10**8}.{total % 10**8:08d}"]
            for price, total in sorted(side.items(), reverse=name == "bids")
        ]
        for name, side in levels.items()
    }


def assert_both_show_the_stored_book(server: Server, pids: set[int], url: str) -> None:
    """Each worker's ``get_depth`` is the book of the open orders in the database."""
    expected = open_depth(url)
    for answer, _ in on_both_workers(
        server,
        pids,
        lambda: ask(server, pids, "/api/get_depth", params={"pair": PAIR, "limit": "500"}),
        least=4,
    ):
        data = answer.json()["data"]
        assert {k: data[k] for k in ("bids", "asks")} == expected


# -- 1. trading and market data through both workers ----------------------------------------


def test_trading_and_market_data_agree_on_every_worker(db_url: str, tmp_path: Path) -> None:
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(db_url, smtp_port)
        with running_server(free_port(), env, tmp_path / "server.log", args=WORKERS) as server:
            assert server.process is not None
            pids = wait_for_workers(server.process.pid)
            assert server.process.pid not in pids and all(alive(pid) for pid in pids)
            nats_pid, nats_conf = private_nats(server.process.pid)
            assert nats_conf.stat().st_mode & 0o777 == 0o600  # it holds the accounts
            assert nats_conf.parent.stat().st_mode & 0o777 == 0o700

            seller = register_over_http(server.url, mailbox, "seller@example.com")
            buyer = register_over_http(server.url, mailbox, "buyer@example.com")
            for args in (
                ("seller@example.com", "BTC", "1"),
                ("buyer@example.com", "USDT", "30000"),
            ):
                done = admin(env, "credit", *args)
                assert done.returncode == 0, done.stderr
            # The credits are visible on both workers (balances are the writer's).
            for answer, _ in on_both_workers(
                server,
                pids,
                lambda: ask(server, pids, "/api/get_user_coin", data={}, token=seller),
                least=4,
            ):
                assert answer.json()["data"]["BTC"] == {
                    "available": "1.00000000",
                    "frozen": "0.00000000",
                }

            sold, _ = ask(
                server,
                pids,
                "/api/sell",
                data={"pair": PAIR, "amount": "0.5", "price": "20000"},
                token=seller,
            )
            assert sold.json()["status"] and sold.json()["data"]["status"] == "open", sold.text
            bought, _ = ask(
                server,
                pids,
                "/api/buy",
                data={"pair": PAIR, "amount": "0.3", "price": "20100"},
                token=buyer,
            )
            order = bought.json()["data"]
            assert bought.json()["status"] and order["status"] == "filled", bought.text
            (trade,) = order["trades"]
            assert trade["price"] == "20000.00" and trade["amount"] == "0.30000000"

            # Right after the answer, every worker's replica has the batch.
            expected_coins = {
                seller: {
                    "BTC": {"available": "0.50000000", "frozen": "0.20000000"},
                    "USDT": {"available": "5988.000000", "frozen": "0.000000"},
                },
                buyer: {
                    "BTC": {"available": "0.29940000", "frozen": "0.00000000"},
                    "USDT": {"available": "24000.000000", "frozen": "0.000000"},
                },
            }
            depths: list[dict[str, Any]] = []
            deals: list[list[dict[str, Any]]] = []
            candles: list[list[list[Any]]] = []
            served: dict[str, set[int | None]] = {"coins": set(), "market": set()}

            def read_all() -> tuple[None, int | None]:
                for token, coins in expected_coins.items():
                    answer, worker = ask(server, pids, "/api/get_user_coin", data={}, token=token)
                    served["coins"].add(worker)
                    data = answer.json()["data"]
                    assert {k: data[k] for k in coins} == coins, (worker, data)
                    assert data["ETH"] == {"available": "0.00000000", "frozen": "0.00000000"}
                answer, worker = ask(server, pids, "/api/get_depth", params={"pair": PAIR})
                depths.append({**answer.json()["data"], "worker": worker})
                answer, worker = ask(server, pids, "/api/get_deal_record", params={"pair": PAIR})
                deals.append(answer.json()["data"])
                answer, worker = ask(
                    server, pids, "/api/get_coin_k_line", params={"pair": PAIR, "interval": "1m"}
                )
                candles.append(answer.json()["data"])
                served["market"].add(worker)
                return None, worker

            on_both_workers(server, pids, read_all, least=12)
            assert pids <= served["coins"] and pids <= served["market"], served

            for depth in depths:
                assert depth["bids"] == [] and depth["asks"] == [["20000.00", "0.20000000"]], depth
            for deal in deals:
                assert deal == [
                    {
                        "id": trade["trade_id"],
                        "price": "20000.00",
                        "amount": "0.30000000",
                        "time": trade["time"],
                        "side": "buy",
                    }
                ]
            minute = trade["time"] - trade["time"] % 60_000
            for rows in candles:
                traded = [row for row in rows if Decimal(row[5]) != 0]
                assert traded == [
                    [minute, "20000.00", "20000.00", "20000.00", "20000.00", "0.30000000"]
                ], rows
                assert all(row[4] == "20000.00" for row in rows)  # filler candles too

            # Still the same two workers: nobody died on the way.
            assert worker_pids(server.process.pid) == pids
            assert server.stop() == 0
        assert not any(alive(pid) for pid in (*pids, nats_pid))
        assert not nats_conf.parent.exists()  # a clean stop leaves nothing in /tmp
    check_database_ledger(db_url)


# -- 2. the WebSocket stream of every worker ----------------------------------------------


async def _ws_on_each_worker(server: Server, pids: set[int]) -> dict[int, ClientConnection]:
    """One /ws connection per worker (connections to a worker already held are closed)."""
    sockets: dict[int, ClientConnection] = {}
    for _ in range(100):
        if set(sockets) == pids:
            return sockets
        socket = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws")
        worker = owner_of(server.port, socket.local_address[1], pids)
        if worker is None or worker in sockets:
            await socket.close()
        else:
            sockets[worker] = socket
    raise AssertionError(f"could not reach both workers: {set(sockets)} of {pids}")


async def _receive_until(
    socket: ClientConnection, done: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"nothing matched in {seen}"
        message = orjson.loads(await asyncio.wait_for(socket.recv(), left))
        seen.append(message)
        if done(message):
            return seen


async def _stream_scenario(
    server: Server, pids: set[int], seller: str, buyer: str
) -> list[tuple[int, list[dict[str, Any]]]]:
    sockets = await _ws_on_each_worker(server, pids)
    try:
        for socket in sockets.values():
            await socket.send(orjson.dumps({"op": "auth", "session": buyer}).decode())
            await _receive_until(socket, lambda m: m.get("op") == "authenticated")
            for channel in ("trades", "depth", "orders", "balances"):
                subscribe = {"op": "subscribe", "channel": channel, "pair": PAIR}
                await socket.send(orjson.dumps(subscribe).decode())

                def acked(message: dict[str, Any], channel: str = channel) -> bool:
                    return message.get("op") == "subscribed" and message["channel"] == channel

                await _receive_until(socket, acked)

        def place(token: str, side: str, amount: str, price: str) -> dict[str, Any]:
            answer, _ = ask(
                server,
                pids,
                f"/api/{side}",
                data={"pair": PAIR, "amount": amount, "price": price},
                token=token,
            )
            body = answer.json()
            assert body["status"], answer.text
            data: dict[str, Any] = body["data"]
            return data

        await asyncio.to_thread(place, seller, "sell", "0.5", "20000")
        order = await asyncio.to_thread(place, buyer, "buy", "0.3", "20100")
        (trade,) = order["trades"]
        want = {
            "trade": {
                "id": trade["trade_id"],
                "price": "20000.00",
                "amount": "0.30000000",
                "time": trade["time"],
                "side": "buy",
            },
            "depth": {"bids": [], "asks": [["20000.00", "0.20000000"]]},
            "balances": {
                "BTC": {"available": "0.29940000", "frozen": "0.00000000"},
                "USDT": {"available": "24000.000000", "frozen": "0.000000"},
            },
        }
        results = []
        for worker, socket in sockets.items():
            missing = {"trades", "depth", "orders", "balances"}

            def complete(message: dict[str, Any], missing: set[str] = missing) -> bool:
                channel = message.get("channel")
                data: Any = message.get("data")
                if channel == "trades" and data == want["trade"]:
                    assert message["pair"] == PAIR
                    missing.discard("trades")
                elif channel == "depth" and {k: data[k] for k in ("bids", "asks")} == want["depth"]:
                    missing.discard("depth")
                elif (
                    channel == "orders"
                    and data["order_id"] == order["order_id"]
                    and data["status"] == "filled"
                ):
                    assert data["filled"] == "0.30000000" and message["pair"] is None
                    missing.discard("orders")
                elif channel == "balances" and all(
                    data[coin] == value for coin, value in want["balances"].items()
                ):
                    missing.discard("balances")
                return not missing

            results.append((worker, await _receive_until(socket, complete)))
        return results
    finally:
        for socket in sockets.values():
            await socket.close()


def test_websocket_on_each_worker_gets_the_trade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(url, smtp_port)
        with running_server(free_port(), env, tmp_path / "server.log", args=WORKERS) as server:
            assert server.process is not None
            pids = wait_for_workers(server.process.pid)
            seller = register_over_http(server.url, mailbox, "seller@example.com")
            buyer = register_over_http(server.url, mailbox, "buyer@example.com")
            credit(url, ("seller@example.com", "BTC", "1"), ("buyer@example.com", "USDT", "30000"))
            results = asyncio.run(_stream_scenario(server, pids, seller, buyer))
            assert {worker for worker, _ in results} == pids
            for _worker, messages in results:
                # Events count 1, 2, 3... per channel on each connection: nothing lost.
                counted: dict[str, list[int]] = {}
                for message in messages:
                    if "seq" in message:
                        counted.setdefault(message["channel"], []).append(message["seq"])
                for seqs in counted.values():
                    assert seqs == list(range(1, len(seqs) + 1)), counted
    check_database_ledger(url)


def test_every_worker_enforces_the_request_limits(tmp_path: Path) -> None:
    """Workers run the same guarded protocol: oversized headers and URLs get the envelope."""
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    env = exchange_env(
        url, EXCHANGE_HTTP_MAX_HEADER_BYTES="4096", EXCHANGE_HTTP_MAX_URL_BYTES="2048"
    )
    with running_server(free_port(), env, tmp_path / "server.log", args=WORKERS) as server:
        assert server.process is not None
        wait_for_workers(server.process.pid)
        for attempt in range(20):  # new connections: the kernel spreads them over both
            big = b"X-Big: " + b"a" * 8000
            for request, status in (
                (b"GET /api/get_rank HTTP/1.1\r\nHost: 127.0.0.1\r\n" + big + b"\r\n\r\n", 431),
                (
                    b"GET /api/get_rank?q=" + b"u" * 3000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                    414,
                ),
            ):
                with socket.create_connection(("127.0.0.1", server.port), timeout=20) as conn:
                    conn.sendall(request)
                    raw = b""
                    while chunk := conn.recv(65536):
                        raw += chunk
                head, _, body = raw.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 %d" % status), (attempt, head)
                assert orjson.loads(body)["description"].startswith("invalid_argument: ")
        assert httpx.get(f"{server.url}/api/get_rank").status_code == 200


# -- 3. logout reaches every worker at once -------------------------------------------------


def test_logout_on_one_worker_ends_the_session_on_all(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(url, smtp_port)
        with running_server(free_port(), env, tmp_path / "server.log", args=WORKERS) as server:
            assert server.process is not None
            pids = wait_for_workers(server.process.pid)
            token = register_over_http(server.url, mailbox, "alice@example.com")
            other = register_over_http(server.url, mailbox, "bob@example.com")

            # Both workers have the session in their cache (valid for 5 s).
            for answer, _ in on_both_workers(
                server,
                pids,
                lambda: ask(server, pids, "/api/get_user_coin", data={}, token=token),
                least=4,
            ):
                assert answer.status_code == 200 and answer.json()["status"], answer.text

            answer, _ = ask(server, pids, "/api/logout", data={}, token=token)
            assert answer.status_code == 200 and answer.json() == {
                "status": True,
                "data": None,
                "description": "",
            }
            refused: list[tuple[httpx.Response, int | None]] = [
                ask(server, pids, "/api/get_user_coin", data={}, token=token) for _ in range(20)
            ]
            refused += on_both_workers(
                server,
                pids,
                lambda: ask(server, pids, "/api/get_user_coin", data={}, token=token),
                least=1,
            )
            for answer, worker in refused:
                assert answer.status_code == 401, (worker, answer.text)
                body = answer.json()
                assert body["status"] is False and body["data"] is None
                assert body["description"].startswith("not_logged_in: "), body
            # Another user's session is untouched, on both workers.
            for answer, _ in on_both_workers(
                server,
                pids,
                lambda: ask(server, pids, "/api/get_user_coin", data={}, token=other),
                least=4,
            ):
                assert answer.status_code == 200, answer.text


# -- the load for the kill -9 tests ---------------------------------------------------------


# -- 4. kill -9 of one worker ---------------------------------------------------------------


async def _load_killing_a_worker(
    server: Server, tokens: list[str], pids: set[int]
) -> tuple[Acks, float, float, set[int]]:
    """The load; one worker killed after 100 orders; on until 100 more after its respawn."""
    assert server.process is not None
    load = Acks()
    stop = asyncio.Event()
    moments: list[float] = []
    respawned: set[int] = set()

    async def operator() -> None:
        try:
            await until(lambda: len(load.orders) >= 100, 30, "100 orders")
            await asyncio.sleep(random.uniform(0.0, 0.2))
            victim = min(pids)
            moments.append(time.monotonic())
            os.kill(victim, signal.SIGKILL)
            await until(lambda: not alive(victim), 10, "the worker to die")
            assert server.process is not None
            parent = server.process.pid
            fresh: set[int] = set()

            def two_again() -> bool:
                fresh.clear()
                fresh.update(worker_pids(parent))
                return len(fresh) == 2 and victim not in fresh

            await until(two_again, 30, "a new worker")
            respawned.update(fresh)
            moments.append(time.monotonic())
            await until(lambda: load.orders_since(moments[1]) >= 100, 30, "100 orders more")
        finally:
            stop.set()

    await asyncio.gather(
        operator(), *(trade(server.url, token, i, load, stop) for i, token in enumerate(tokens))
    )
    return load, moments[0], moments[1], respawned


def test_kill_9_of_a_worker_under_load(db_url: str, tmp_path: Path) -> None:
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(db_url, smtp_port)
        with running_server(free_port(), env, tmp_path / "server.log", args=WORKERS) as server:
            assert server.process is not None
            parent = server.process.pid
            pids = wait_for_workers(parent)
            tokens = start_users(server, mailbox, db_url, 4)
            load, killed, back, now_pids = asyncio.run(_load_killing_a_worker(server, tokens, pids))
            assert server.process.poll() is None and server.process.pid == parent
            assert len(now_pids) == 2 and now_pids & pids and now_pids - pids
            # Failures only for requests that were under way when the worker died.
            failures = check_outcomes(load, failure_allowed=lambda o: o.started < killed + 1.0)
            assert any(a["trades"] for a in load.orders.values()), "nothing traded"
            assert load.orders_since(back) >= 100

            # The new worker serves, and both replicas show the books the database holds
            # (the dead worker's orphaned commands were committed or refused by now).
            assert_both_show_the_stored_book(server, now_pids, db_url)
            assert server.stop() == 0
        kinds = sorted({f.error.split("(")[0] or str(f.status) for f in failures})
        during = load.orders_since(killed) - load.orders_since(back)
        print(
            f"{len(load.orders)} orders acknowledged, {during} while the worker was respawned; "
            f"{len(failures)} failures: {kinds}"
        )
        check_acknowledged(db_url, load)
        check_money(db_url)


# -- 5. kill -9 of the writer ---------------------------------------------------------------


async def _load_killing_the_writer(server: Server, tokens: list[str]) -> tuple[Acks, float]:
    assert server.process is not None
    load = Acks()
    stop = asyncio.Event()
    moments: list[float] = []

    async def operator() -> None:
        assert server.process is not None
        try:
            await until(lambda: len(load.orders) >= 150, 30, "150 orders")
            await asyncio.sleep(random.uniform(0.0, 0.2))
            moments.append(time.monotonic())
            os.kill(server.process.pid, signal.SIGKILL)
            await asyncio.sleep(0.5)
        finally:
            stop.set()

    await asyncio.gather(
        operator(), *(trade(server.url, token, i, load, stop) for i, token in enumerate(tokens))
    )
    return load, moments[0]


def test_kill_9_of_the_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    port = free_port()
    with smtp_server() as (mailbox, smtp_port):
        env = exchange_env(url, smtp_port)
        with running_server(port, env, tmp_path / "server.log", args=WORKERS) as server:
            assert server.process is not None
            pids = wait_for_workers(server.process.pid)
            nats_pid, nats_conf = private_nats(server.process.pid)
            tokens = start_users(server, mailbox, url, 4)
            try:
                load, killed = asyncio.run(_load_killing_the_writer(server, tokens))
                assert server.process.wait(timeout=10) == -signal.SIGKILL
                # The orphaned workers notice and stop by themselves (they poll every
                # 0.5 s and give requests in flight up to 5 s).
                deadline = time.monotonic() + 15
                while any(alive(pid) for pid in (*pids, nats_pid)):  # NATS too
                    assert time.monotonic() < deadline, [_stat(pid) for pid in pids]
                    time.sleep(0.1)
                gone_after = time.monotonic() - killed
            finally:
                for pid in pids:  # never leave a worker behind, even when this test fails
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)
                # A killed writer cannot remove its private directory: this test does.
                shutil.rmtree(nats_conf.parent, ignore_errors=True)
        # What the clients saw after the kill: no answer, or 503 (the writer is gone), or an
        # unknown outcome for what was in flight; never a 200 for an order that is lost.
        failures = check_outcomes(load, failure_allowed=lambda o: o.started >= killed - 1.0)
        kinds = sorted({f.error.split("(")[0] or f.body["description"][:40] for f in failures})
        print(f"{len(failures)} failures: {kinds}")
        check_acknowledged(url, load)
        check_money(url)

        # The port is free: a new server binds it and carries on from the same state.
        with running_server(port, env, tmp_path / "server2.log", args=WORKERS) as server:
            assert server.process is not None
            new_pids = wait_for_workers(server.process.pid)
            assert not new_pids & pids
            assert_both_show_the_stored_book(server, new_pids, url)
            answer, _ = ask(
                server,
                new_pids,
                "/api/buy",
                data={"pair": PAIR, "amount": "0.01", "price": "1000"},
                token=tokens[0],
            )
            assert answer.json()["status"], answer.text
            assert server.stop() == 0
        print(f"{len(load.orders)} orders acknowledged; workers gone {gone_after:.1f} s after")
        check_acknowledged(url, load)
        check_money(url)
