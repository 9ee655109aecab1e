"""Resource limits of the real server (uvicorn with the exchange's protocol), raw sockets.

Each cap of ``EXCHANGE_HTTP_*`` and ``EXCHANGE_WS_*`` is set low here and then
broken: the answer is the envelope with a stable code, and the connection is
closed. The review saw each of these unbounded: 16 MiB of headers answered 200,
128 MiB of unfinished headers held a connection open and grew the server, an
8 MiB WebSocket frame was read whole, 300 sockets from one address were taken,
and 2,000 bogus ``auth`` messages made 2,000 database lookups.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from exchange.clock import ManualClock
from support import make_settings, served

WAIT = 20.0  # an upper bound for an event, never a measured time


@asynccontextmanager
async def server(
    sqlite_url: str, clock: ManualClock, **limits: Any
) -> AsyncIterator[tuple[Any, str, int]]:
    settings = make_settings(sqlite_url, **limits)
    async with served(settings, clock) as (app, where):
        host, port = where.rsplit(":", 1)
        yield app, host, int(port)


async def exchange_bytes(host: str, port: int, *chunks: bytes) -> tuple[int, dict[str, Any]]:
    """Send the chunks, read the whole answer until the server closes: (status, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), WAIT)  # until EOF: the server closed
    finally:
        writer.close()
    return parse_response(raw)


def parse_response(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    assert headers[b"content-type"] == b"application/json", headers
    envelope: dict[str, Any] = json.loads(body)
    assert set(envelope) == {"status", "data", "description"}
    assert envelope["status"] is False and envelope["data"] is None
    return status, envelope


async def test_headers_larger_than_the_cap_are_refused(sqlite_url: str, clock: ManualClock) -> None:
    async with server(sqlite_url, clock, http_max_header_bytes=4096) as (_app, host, port):
        big = b"GET /api/get_rank HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
        status, body = await exchange_bytes(host, port, big)
        assert status == 431 and body["description"].startswith("invalid_argument: ")
        # Many small headers add up the same way.
        many = b"".join(b"X-H%d: %s\r\n" % (n, b"b" * 100) for n in range(100))
        status, _ = await exchange_bytes(
            host, port, b"GET /api/get_rank HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"
        )
        assert status == 431
        # Headers that never end: refused once the cap is passed, not buffered forever.
        _reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /api/get_rank HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        with pytest.raises((ConnectionError, BrokenPipeError)):
            while sent < 64 * 1024 * 1024:
                writer.write(b"c" * 65536)
                await asyncio.wait_for(writer.drain(), WAIT)
                sent += 65536
        assert sent < 1024 * 1024, "the server kept reading unfinished headers"
        writer.close()
        # An ordinary request on a new connection is served.
        status_line = await plain_get(host, port, "/api/get_rank")
        assert status_line.startswith(b"HTTP/1.1 200")


async def plain_get(host: str, port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    return raw.split(b"\r\n", 1)[0]


async def test_an_oversized_url_gets_the_envelope(sqlite_url: str, clock: ManualClock) -> None:
    async with server(sqlite_url, clock, http_max_url_bytes=2048) as (_app, host, port):
        for length in (3_000, 100_000):
            request = f"GET /api/get_rank?x={'u' * length} HTTP/1.1\r\nHost: x\r\n\r\n"
            status, body = await exchange_bytes(host, port, request.encode())
            assert status == 414 and body["description"].startswith("invalid_argument: ")


async def test_a_request_that_does_not_arrive_in_time_is_dropped(
    sqlite_url: str, clock: ManualClock
) -> None:
    async with server(sqlite_url, clock, http_read_timeout=1) as (_app, host, port):
        # Nothing at all after connecting.
        status, body = await exchange_bytes(host, port)
        assert status == 408 and body["description"].startswith("invalid_argument: ")
        # Half a request line, then silence.
        status, _ = await exchange_bytes(host, port, b"GET /api/get_ra")
        assert status == 408
        # A slow drip that would keep the connection forever without a deadline.
        reader, writer = await asyncio.open_connection(host, port)
        drip = b"GET /api/get_rank HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"d" * 1000
        closed = False
        for byte in drip:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof():
                closed = True
                break
            await asyncio.sleep(0.05)  # the client's pace, not a wait for the server
        if not closed:
            assert await asyncio.wait_for(reader.read(), WAIT) is not None
        assert closed or reader.at_eof()
        writer.close()
        # A body that never comes: the connection is closed (the app saw a disconnect).
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\nuser="
        )
        await writer.drain()
        await asyncio.wait_for(reader.read(), WAIT)  # returns at EOF
        assert reader.at_eof()
        writer.close()


async def test_connections_beyond_the_cap_get_503(sqlite_url: str, clock: ManualClock) -> None:
    async with server(sqlite_url, clock, http_max_connections=4, http_read_timeout=60) as (
        _app,
        host,
        port,
    ):
        idle = [await asyncio.open_connection(host, port) for _ in range(4)]
        try:
            status, body = await exchange_bytes(host, port)
            assert status == 503 and body["description"].startswith("overloaded: ")
        finally:
            for _reader, writer in idle:
                writer.close()
        for _reader, writer in idle:
            await writer.wait_closed()

        async def served_again() -> bool:
            try:
                return (await plain_get(host, port, "/api/get_rank")).startswith(b"HTTP/1.1 200")
            except (ConnectionError, ValueError, IndexError):
                return False

        for _ in range(200):  # the server notices the closed sockets, then serves again
            if await served_again():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the server never served again")


async def test_a_websocket_frame_over_the_message_limit_is_not_read(
    sqlite_url: str, clock: ManualClock
) -> None:
    async with (
        server(sqlite_url, clock, ws_max_message=4096) as (_app, host, port),
        websockets.connect(f"ws://{host}:{port}/ws", max_size=None) as ws,
    ):
        await ws.send(json.dumps({"op": "ping", "pad": "p" * 3000}))
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT)) == {"op": "pong"}
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send("x" * (8 * 1024 * 1024))
            await asyncio.wait_for(ws.recv(), WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_websocket_connections_per_address_and_in_total(
    sqlite_url: str, clock: ManualClock
) -> None:
    async with server(sqlite_url, clock, ws_max_per_address=3, ws_max_connections=100) as (
        _app,
        host,
        port,
    ):
        url = f"ws://{host}:{port}/ws"
        held = [await websockets.connect(url) for _ in range(3)]
        try:
            async with websockets.connect(url) as extra:
                refused = json.loads(await asyncio.wait_for(extra.recv(), WAIT))
                assert refused["description"].startswith("rate_limited: ")
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(extra.recv(), WAIT)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        finally:
            for ws in held:
                await ws.close()
        async with websockets.connect(url) as again:  # freed: room again
            await again.send(json.dumps({"op": "ping"}))
            assert json.loads(await asyncio.wait_for(again.recv(), WAIT)) == {"op": "pong"}
    async with server(sqlite_url, clock, ws_max_per_address=50, ws_max_connections=2) as (
        _app,
        host,
        port,
    ):
        url = f"ws://{host}:{port}/ws"
        held = [await websockets.connect(url) for _ in range(2)]
        try:
            async with websockets.connect(url) as extra:
                refused = json.loads(await asyncio.wait_for(extra.recv(), WAIT))
                assert refused["description"].startswith("overloaded: ")
        finally:
            for ws in held:
                await ws.close()


async def test_failed_auth_messages_are_throttled_and_unknown_tokens_remembered(
    sqlite_url: str, clock: ManualClock
) -> None:
    async with server(sqlite_url, clock, ws_auth_failures="5/60") as (app, host, port):
        sessions = app.runtime.services.sessions
        lookups: list[str] = []
        real_load = sessions._load

        async def counted(key: str, now: int) -> Any:
            lookups.append(key)
            return await real_load(key, now)

        sessions._load = counted
        async with websockets.connect(f"ws://{host}:{port}/ws") as ws:
            codes = []
            for n in range(2000):
                await ws.send(json.dumps({"op": "auth", "session": f"bogus-{n}"}))
                answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                codes.append(answer["description"].split(":", 1)[0])
        assert len(lookups) == 6, len(lookups)  # the budget of 5, then one that closes it
        assert codes[:6] == ["not_logged_in"] * 6
        assert set(codes[6:]) == {"rate_limited"}
        lookups.clear()
        for _ in range(3):  # a new socket repeating one bogus token: one lookup in all
            async with websockets.connect(f"ws://{host}:{port}/ws") as ws:
                await ws.send(json.dumps({"op": "auth", "session": "bogus-again"}))
                answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                assert answer["description"].startswith("not_logged_in: ")
        assert len(lookups) == 1
    # Many sockets from one address share that address's budget of failed auths.
    async with server(
        sqlite_url,
        clock,
        rate_limits="on",
        ws_auth_failures="5/60",
        rate_limit_auth_failures="4/60",
    ) as (app, host, port):
        sessions = app.runtime.services.sessions
        lookups.clear()
        real_load = sessions._load
        sessions._load = counted
        refused = 0
        for socket_number in range(4):
            async with websockets.connect(f"ws://{host}:{port}/ws") as ws:
                for n in range(3):
                    await ws.send(json.dumps({"op": "auth", "session": f"s{socket_number}-{n}"}))
                    answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                    refused += answer["description"].startswith("rate_limited: ")
        assert len(lookups) == 4 and refused == 8


async def test_a_slow_answer_is_not_cut_off_by_the_next_pipelined_request(
    sqlite_url: str, clock: ManualClock
) -> None:
    """The read deadline is the client's, not ours: while the answer to a request is
    still being made, the pipelined request behind it is not refused over it."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async with server(sqlite_url, clock, http_read_timeout=1) as (app, host, port):
        release = asyncio.Event()

        async def slow(_request: Any) -> PlainTextResponse:
            await release.wait()
            return PlainTextResponse("slow done")

        app.router.routes.insert(0, Route("/slow", slow))
        reader, writer = await asyncio.open_connection(host, port)
        # A whole request, then the start of a second that never ends.
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /api/get_rank HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        )
        await writer.drain()
        await asyncio.sleep(2.5)  # the scenario: the deadline passes while we answer /slow
        release.set()
        raw = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        first, _, rest = raw.partition(b"slow done")
        assert first.startswith(b"HTTP/1.1 200"), raw[:200]
        if rest:  # then the unfinished request is refused, after the answer
            status, _body = parse_response(rest)
            assert status == 408
