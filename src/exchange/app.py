"""The one bootstrap: wires settings, adapters, engine, services and routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from exchange import __version__
from exchange.adapters.db.database import make_async_engine, make_sync_engine, migrate
from exchange.adapters.mailer import Mailer, make_mailer
from exchange.adapters.passwords import PasswordHashing
from exchange.adapters.secret_key import load_secret_key
from exchange.api.context import Services
from exchange.api.envelope import error, error_response
from exchange.api.front_door import FrontDoor
from exchange.api.limits import RateLimiter
from exchange.api.methods import ALL_METHODS, METHODS
from exchange.api.openapi import build_openapi
from exchange.api.router import Dispatcher
from exchange.api.ws import Stream
from exchange.clock import Clock, now_ms
from exchange.config import Settings, get_settings
from exchange.domain.markets import Market, default_assets, default_markets
from exchange.engine.client import EngineClient
from exchange.engine.engine import Engine, database_unavailable, unavailable
from exchange.engine.port import EnginePort
from exchange.engine.writer_lock import WriterLock
from exchange.services.accounts import Accounts
from exchange.services.candle_store import CandleStore
from exchange.services.history import History
from exchange.services.housekeeping import Housekeeping
from exchange.services.marketdata import MarketData
from exchange.services.sessions import Sessions
from exchange.services.wallet import Wallet, withdraw_rules
from exchange.web.pages import page_routes

log = logging.getLogger("exchange")


class AnotherWriter(RuntimeError):
    """Another exchange process already writes to this database."""


class ExchangeApp(FastAPI):
    """FastAPI for pages, streams and docs; the API paths go straight to the dispatcher.

    Every request passes the front door first (real client address, served Host).
    """

    dispatcher: Dispatcher
    front: FrontDoor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
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
                await self.dispatcher(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def configured_markets(settings: Settings) -> dict[str, Market]:
    """The default markets of SPEC §3, with the configured fee rate."""
    return default_markets(default_assets(), settings.fee_rate, settings.markets)


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
        log.warning("%s: the database is unavailable (%s)", request.url.path, exc)
        return error_response(unavailable())
    log.error("unhandled error on %s: %r", request.url.path, exc)
    return error("internal_error", "something went wrong on our side; try again")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock = now_ms,
    mailer: Mailer | None = None,
    writer_socket: str | None = None,
) -> FastAPI:
    """The whole exchange in one process, or (``writer_socket`` set) one HTTP worker.

    A worker has no engine of its own: commands and balances go to the writer
    process over ``writer_socket``, and market data is a replica fed by the
    writer's committed batches (``exchange serve --workers N``, docs/scaling.md).
    """
    settings = settings or get_settings()
    markets = configured_markets(settings)
    db = make_async_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    engine: Engine | None = None
    client: EngineClient | None = None
    port: EnginePort
    if writer_socket is None:
        sync_db = make_sync_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
        lock = WriterLock(settings.database_url)
        port = engine = Engine(
            markets,
            sync_db,
            clock,
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            lock=lock,
            client_id_ttl_ms=settings.client_order_id_ttl * 1000,
        )
    else:
        port = client = EngineClient(writer_socket, markets)
    hashing = PasswordHashing(settings.password_hash_memory_kib, settings.password_hash_time_cost)
    market = MarketData(markets, port, clock, CandleStore(db), persist=engine is not None)
    sessions = Sessions(db, clock, lifetime=settings.session_lifetime, idle=settings.session_idle)
    services = Services(
        settings=settings,
        db=db,
        clock=clock,
        accounts=Accounts(
            db,
            mailer or make_mailer(settings),
            hashing,
            clock,
            secret=load_secret_key(
                settings.database_url, settings.secret_key, settings.secret_key_file
            ),
        ),
        sessions=sessions,
        engine=port,
        history=History(db),
        markets=markets,
        market=market,
        wallet=Wallet(
            db,
            port,
            clock,
            cooldown_seconds=settings.withdraw_address_cooldown,
            rules=withdraw_rules(settings, port.assets),
        ),
    )
    limiter = RateLimiter(settings)  # one table of buckets for the API and the stream
    stream = Stream(
        market,
        sessions,
        port,
        allowed_origins=(o.strip() for o in settings.allowed_origins.split(",") if o.strip()),
        max_message=settings.ws_max_message,
        max_connections=settings.ws_max_connections,
        max_per_address=settings.ws_max_per_address,
        auth_failures=settings.ws_auth_failures,
        limiter=limiter,
    )
    port.subscribe(market.on_commit)  # market data first: the stream reads it
    port.subscribe(stream.on_commit)
    dispatcher = Dispatcher(services, METHODS, limiter)
    housekeeping = Housekeeping(services.accounts, sessions, settings.prune_interval)
    openapi_body = orjson.dumps(build_openapi(ALL_METHODS, version=__version__))

    @asynccontextmanager
    async def writer_lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert engine is not None
        await asyncio.to_thread(migrate, settings.database_url)
        if not await asyncio.to_thread(lock.acquire):
            raise AnotherWriter(
                "another exchange process is already running on this database; stop it first"
            )
        try:
            await market.load()  # before the engine: no trade can slip between
            await engine.start()
            market.start()
            stream.start()
            housekeeping.start()
            yield
        finally:
            await housekeeping.stop()
            await engine.stop()
            await stream.stop()
            await market.stop()  # the last candle flush, while the database is open
            await db.dispose()
            sync_db.dispose()
            lock.release()

    @asynccontextmanager
    async def worker_lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert client is not None

        async def resync() -> None:  # at every (re)connection, the first one too
            # Revocations may have been broadcast while this worker was cut off.
            sessions.forget_all()
            await market.reload()

        client.on_resync = resync
        client.on_revoke = sessions.forget
        sessions.on_end = client.revoke
        try:
            await client.start()  # snapshot, market data loaded, held batches folded in
            stream.start()
            yield
        finally:
            await stream.stop()
            await client.stop()
            await db.dispose()

    async def openapi(_: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    async def healthz(_: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app = ExchangeApp(
        title="Exchange",
        version=__version__,
        lifespan=writer_lifespan if engine is not None else worker_lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        exception_handlers={
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.services = services
    app.state.housekeeping = housekeeping
    app.dispatcher = dispatcher
    app.front = FrontDoor(app.route, settings)
    app.router.routes.extend(
        [
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            WebSocketRoute("/ws", stream.endpoint),
            *page_routes(
                pairs=list(markets),
                taker_fees={symbol: m.taker_fee for symbol, m in markets.items()},
            ),
        ]
    )
    return app
