"""The web app over a ``Runtime``: the API dispatcher, the pages, the stream, the front door.

The wiring itself is ``exchange.runtime.build_runtime`` (one bootstrap for
every entry point); this module only decides which path goes where.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send

from exchange import __version__
from exchange.adapters.db.database import make_sync_engine
from exchange.adapters.db.errors import database_unavailable
from exchange.adapters.mailer import Mailer
from exchange.admin import Admin
from exchange.api.binance.gateway import PREFIX as BINANCE_PREFIX
from exchange.api.binance.gateway import BinanceApi
from exchange.api.envelope import error, error_response
from exchange.api.front_door import FrontDoor, parse_origins, same_origin
from exchange.api.methods import ALL_METHODS, METHODS
from exchange.api.openapi import build_openapi
from exchange.api.router import Dispatcher
from exchange.clock import Clock, now_ms
from exchange.config import Settings
from exchange.domain.errors import unavailable
from exchange.logs import REQUEST, request_id
from exchange.metrics import DATABASE_ERRORS, HTTP_METHODS, HTTP_SECONDS
from exchange.runtime import Runtime, build_runtime
from exchange.web.console import console_routes
from exchange.web.pages import page_routes

log = logging.getLogger("exchange")
access = logging.getLogger("exchange.access")

#: (HTTP verb, status) -> its tally row (the label strings are made once per key).
_HTTP_ROWS: dict[tuple[str, int], list[Any]] = {}
_HTTP_BOUNDS = HTTP_SECONDS.bounds


class ExchangeApp(Starlette):
    """Starlette routes the pages and the stream; the API paths go straight to the dispatcher.

    Every request passes the front door first (real client address, served Host).
    """

    runtime: Runtime
    access_log: bool
    dispatcher: Dispatcher
    binance: BinanceApi
    front: FrontDoor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await super().__call__(scope, receive, send)
            else:
                await self._enter(scope, receive, send)
            return
        # Every HTTP request, inline (each Python call here is paid by every order): its
        # log lines know the request (``REQUEST``), its time goes into
        # ``exchange_http_request_duration_seconds``, and with the access log on it has an
        # id (``X-Request-Id``, the client's or a new one) on its answer and its line.
        REQUEST.set(scope)
        status = 0
        tagged = self.access_log

        def sending(message: Message) -> Awaitable[None]:
            # Not a coroutine: the caller awaits uvicorn's own send (no frame of ours).
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if tagged:
                    tag = (b"x-request-id", request_id(scope).encode())
                    message = {**message, "headers": [*message["headers"], tag]}
            return send(message)

        started = perf_counter()
        try:
            front = self.front
            if front.proxied:
                await front(scope, receive, sending)
            else:
                refused = front.admits(scope)
                if refused is None:
                    await self.route(scope, receive, sending)
                else:
                    await front.refuse(scope, sending, refused)
        finally:
            took = perf_counter() - started
            verb = scope["method"]
            if verb not in HTTP_METHODS:
                verb = "other"  # the label (and this dict) stay bounded
            row = _HTTP_ROWS.get((verb, status))
            if row is None:
                row = _HTTP_ROWS[(verb, status)] = HTTP_SECONDS.tally(verb, str(status or "none"))
            row[bisect_left(_HTTP_BOUNDS, took)] += 1
            row[-1] += took
            if tagged:
                access.info(
                    "%s %s %s",
                    verb,
                    scope["path"],
                    status,
                    extra={
                        "method": verb,
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(took * 1000, 3),
                    },
                )

    async def _enter(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        if front.proxied:
            await front(scope, receive, send)
            return
        refused = front.admits(scope)  # inline: this is every request's path
        if refused is not None:
            await front.refuse(scope, send, refused)
            return
        await self.route(scope, receive, send)

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/api/") or path == "/router" or path == "/router/":
                if path.startswith(BINANCE_PREFIX):
                    await self.binance(scope, receive, send)
                else:
                    await self.dispatcher(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/api" or path.startswith("/router")


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if _is_api(request.url.path) or status not in (404, 405):
        if status == 404:
            return error("unknown_method", "there is no such method")
        if status == 405:
            return error("method_not_allowed", "this verb is not allowed here")
        return error("internal_error", "something went wrong on our side; try again")
    return HTMLResponse(f"<h1>{status}</h1><p><a href='/'>Markets</a></p>", status_code=status)


async def _internal_error(request: Request, exc: Exception) -> Response:
    if database_unavailable(exc):  # a page while the database is down: 503, not 500
        DATABASE_ERRORS.labels("pages").inc()
        log.warning("%s: the database is unavailable (%s)", request.url.path, exc)
        return error_response(unavailable())
    log.error("unhandled error on %s: %r", request.url.path, exc)
    return error("internal_error", "something went wrong on our side; try again")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock = now_ms,
    mailer: Mailer | None = None,
    gateway_url: str | None = None,
) -> ExchangeApp:
    """The whole exchange in one process, or (``gateway_url`` set) a gateway to its writer."""
    runtime = build_runtime(settings, clock=clock, mailer=mailer, gateway_url=gateway_url)
    return make_app(runtime)


def make_app(runtime: Runtime) -> ExchangeApp:
    """Serve ``runtime``: its life cycle is the app's lifespan."""
    services, markets = runtime.services, runtime.markets
    dispatcher = Dispatcher(services, METHODS, runtime.limiter, database_unavailable)
    openapi_body = orjson.dumps(build_openapi(ALL_METHODS, version=__version__))

    settings = runtime.settings
    # The console's commands are the CLI's (``Admin``), on a connection pool of their own.
    admin_db = make_sync_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    origins = parse_origins(settings.allowed_origins)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            async with runtime.running():
                yield
        finally:
            admin_db.dispose()

    async def openapi(_: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    async def healthz(_: Request) -> Response:
        """The process lives (a liveness probe: nothing else is checked)."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(_: Request) -> Response:
        """The process can serve (a readiness probe): 200, or 503 naming what is not ready."""
        checks = await runtime.readiness()
        ready = all(checks.values())
        body = {"status": "ready" if ready else "not_ready", "checks": checks}
        return Response(orjson.dumps(body), 200 if ready else 503, media_type="application/json")

    app = ExchangeApp(
        lifespan=lifespan,
        exception_handlers={
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        routes=[
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            WebSocketRoute("/ws", runtime.stream.endpoint),
            WebSocketRoute("/ws/{rest:path}", runtime.binance_streams.raw),
            WebSocketRoute("/stream", runtime.binance_streams.combined),
            WebSocketRoute("/ws-api/v3", runtime.binance_streams.ws_api),
            *console_routes(
                runtime.operators,
                Admin(admin_db, settings.database_url, markets, offline=False),
                services.market,
                services.clock,
                lambda origin, host: same_origin(origin, host, origins),
                cookie_secure=settings.cookie_secure,
            ),
            *page_routes(
                pairs=list(markets),
                taker_fees={symbol: m.taker_fee for symbol, m in markets.items()},
            ),
        ],
    )
    app.runtime = runtime
    app.access_log = runtime.settings.access_log
    app.dispatcher = dispatcher
    app.binance = BinanceApi(services, runtime.limiter, database_unavailable)
    app.front = FrontDoor(app.route, runtime.settings)
    return app
