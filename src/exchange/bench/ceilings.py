"""The two ceilings a durable order is measured against, on the machine of the run.

* **bare ASGI**: the same HTTP server with the same settings (``server_config``)
  serving an app that only reads the request's form and answers a small orjson
  object — what HTTP alone allows, with wrk and the same script as the orders;
* **naive commit loop**: one SQLite transaction per row (WAL, ``synchronous=FULL``,
  the exchange's own pragmas), rows shaped like an order's — what the database
  allows without group commit, which is what batching is there to beat.

``exchange bench orders`` prints both and each order figure's ratio to them, so
a change is judged against what this machine can do on that day, not against a
figure from another machine.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from exchange.bench.load import LoadResult, post, run_load
from exchange.bench.server import free_port, granian_command

__all__ = ["CommitLoop", "bare_asgi", "commit_loop"]

FORM = b"pair=BTC%2FUSDT&amount=0.005&price=20010"  # as the orders' script sends
ANSWER = orjson.dumps({"status": True, "data": {"order_id": 1, "status": "open"}})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The whole application of the ceiling: the form read, an orjson answer."""
    if scope["type"] == "lifespan":
        while True:
            event = (await receive())["type"]
            await send({"type": event + ".complete"})
            if event == "lifespan.shutdown":
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    form = dict(parse_qsl(body.decode()))
    answer = ANSWER if "pair" in form else b'{"status":false}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            # The length, as the exchange's answers carry it: without it the answer is
            # chunked, which the project's own load generator (no wrk) does not read.
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


def _serve(port: int) -> None:
    """The ceiling's server process: ``server_config`` as every exchange process has it."""
    import uvicorn

    from exchange.config import Settings
    from exchange.server import server_config

    settings = Settings(log_level="error")
    uvicorn.Server(server_config(app, settings, host="127.0.0.1", port=port)).run()


def bare_asgi(seconds: float, connections: int, http: str = "uvicorn") -> LoadResult:
    """Requests/s of the bare app under the orders' own wrk script; ``http``: the server
    (``server_config``'s uvicorn, or granian for ``bench servers``)."""
    import httpx

    from exchange.bench.orders import wrk_load

    port = free_port()
    if http == "granian":
        command = granian_command("exchange.bench.ceilings:app", port)
    else:
        command = [
            sys.executable,
            "-c",
            f"from exchange.bench.ceilings import _serve; _serve({port})",
        ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.post(url, data={"pair": "x"}, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the bare ASGI server did not start") from None
                time.sleep(0.05)
        if shutil.which("wrk"):
            return wrk_load(url, ["bench"], seconds, connections)
        request = post("/api/buy", FORM, {"Authorization": "Bearer bench"})
        return asyncio.run(
            run_load(port, lambda _c, _n: request, connections=connections, seconds=seconds)
        )
    finally:
        process.terminate()
        process.wait(10)


@dataclass(frozen=True, slots=True)
class CommitLoop:
    """The naive loop's rate, and how long one commit took (the fsync a durable answer
    waits for at least: the floor under any order's latency at a low load)."""

    per_second: float  # float-ok: a rate
    p50_ms: float  # float-ok: milliseconds
    p99_ms: float  # float-ok: milliseconds


def commit_loop(seconds: float) -> CommitLoop:
    """Rows committed one transaction each (WAL, synchronous=FULL), for ``seconds``."""
    with tempfile.TemporaryDirectory() as folder:
        db = sqlite3.connect(Path(folder) / "loop.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER, market TEXT,"
            " side TEXT, price INTEGER, amount INTEGER, created INTEGER)"
        )
        rows = 0
        took: list[float] = []  # float-ok: seconds
        start = now = time.perf_counter()
        end = start + seconds
        while not took or now < end:  # one commit at least, whatever ``seconds``
            db.execute("BEGIN")
            db.execute(
                "INSERT INTO orders (user_id, market, side, price, amount, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (rows % 64, "BTC/USDT", "buy", 2_000_000, 100_000, rows),
            )
            db.execute("COMMIT")
            rows += 1
            committed = time.perf_counter()
            took.append(committed - now)
            now = committed
        db.close()
        took.sort()
        return CommitLoop(
            rows / (now - start),
            1000 * took[len(took) // 2],
            1000 * took[min(len(took) - 1, len(took) * 99 // 100)],
        )
