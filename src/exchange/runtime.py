"""The one bootstrap: settings, adapters, engine and services, wired once per process.

``build_runtime`` returns a typed ``Runtime`` that every entry point uses the
same way — the web app (``exchange.app``), the writer process of ``--workers``,
the demo's bots, the benchmarks and the tests — so nobody digs the engine out
of an app's state or reaches into its private parts. ``Runtime.running()`` is
the process's life cycle (docs/architecture.md, "one process"):

* **the writer** (one process, or the parent of ``--workers``): migrations, the
  writer lock, market data loaded before the engine starts (no trade slips
  between), the engine, the stream, housekeeping; stopped in reverse, the last
  candle flush while the database is still open;
* **a gateway** (``gateway_url`` set: an HTTP worker of ``--workers``, or
  ``exchange gateway`` on any host): no engine of its own — commands and
  balances go to the writer over NATS, market data is a replica fed by the
  writer's committed batches from JetStream (docs/scaling.md).

Companions (the demo's bots) start after everything else and stop first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Engine as SyncEngine
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.candle_store import CandleStore
from exchange.adapters.db.database import make_async_engine, make_sync_engine, migrate
from exchange.adapters.mailer import Mailer, make_mailer
from exchange.adapters.passwords import PasswordHashing
from exchange.adapters.secret_box import OPERATOR_TOTP_SECRETS, SecretBox
from exchange.adapters.secret_key import load_secret_key
from exchange.api.binance.streams import BinanceStreams
from exchange.api.context import Services
from exchange.api.front_door import parse_origins
from exchange.api.limits import RateLimiter
from exchange.api.ws import Stream
from exchange.clock import Clock, now_ms
from exchange.config import Settings, get_settings
from exchange.domain.markets import Market, default_assets, default_markets
from exchange.engine.bus import NatsAuth, Subjects
from exchange.engine.engine import Engine
from exchange.engine.gateway import GatewayEngine
from exchange.engine.gauges import EngineCollector
from exchange.engine.port import EnginePort
from exchange.engine.writer_lock import WriterLock
from exchange.metrics import MetricsListener, flushing, multiprocess_on
from exchange.services.accounts import Accounts
from exchange.services.api_keys import ApiKeys
from exchange.services.history import History
from exchange.services.housekeeping import Housekeeping
from exchange.services.marketdata import MarketData
from exchange.services.operators import Operators
from exchange.services.sessions import Sessions
from exchange.services.wallet import Wallet, withdraw_rules

__all__ = [
    "AnotherWriter",
    "Companion",
    "Runtime",
    "build_runtime",
    "configured_markets",
]

#: Something that runs beside the exchange once it has started (the demo's bots).
Companion = Callable[["Runtime"], AbstractAsyncContextManager[None]]


class AnotherWriter(RuntimeError):
    """Another exchange process already writes to this database."""


def configured_markets(settings: Settings) -> dict[str, Market]:
    """The default markets of SPEC §3, with the configured fee rate."""
    return default_markets(default_assets(), settings.fee_rate, settings.markets)


READY_SECONDS = 2  # how long /readyz waits for the database


@contextlib.contextmanager
def started_state_frozen() -> Iterator[None]:
    """What the process holds once started (the books and balances it loaded, the
    markets, the modules) leaves the cyclic collector's scans while it serves.

    A full collection visits every tracked object: with a million resting orders it
    took 176 ms here (docs/performance.md), a pause every request behind it waits
    for; frozen, the loaded state costs the collector nothing. Frozen objects are
    still freed by their reference counts as usual; only a reference cycle that holds
    a frozen object waits for ``unfreeze``, when the last runtime of the process stops
    (several run in one process in the tests: the freeze lasts while any does).
    """
    global _RUNNING
    if _RUNNING == 0:
        gc.collect()  # garbage of the start is not kept for the life of the process
    gc.freeze()  # this runtime's start too, when another already runs
    _RUNNING += 1
    try:
        yield
    finally:
        _RUNNING -= 1
        if _RUNNING == 0:
            gc.unfreeze()


#: Runtimes of this process inside ``started_state_frozen``.
_RUNNING = 0


@dataclass(slots=True)
class _Writer:
    engine: Engine
    database: SyncEngine
    lock: WriterLock


@dataclass(slots=True)
class Runtime:
    """One process's exchange: what the app serves and what its life cycle runs."""

    settings: Settings
    services: Services
    limiter: RateLimiter  # one table of buckets for the API and the stream
    stream: Stream
    #: The Binance dialect's streams (``/ws/...``, ``/stream``, ``/ws-api/v3``).
    binance_streams: BinanceStreams
    housekeeping: Housekeeping
    #: The operator console's accounts and sessions.
    operators: Operators
    database: AsyncEngine
    #: The writer's engine, in the process that holds it; None on a worker.
    writer: Engine | None
    #: The link to the writer, on a worker; None in the writer's process.
    link: GatewayEngine | None
    _writer: _Writer | None = None
    companions: list[Companion] = field(default_factory=list)
    #: The ``/metrics`` listener, in the writer's process while it runs (None: off).
    metrics: MetricsListener | None = None

    @property
    def markets(self) -> dict[str, Market]:
        return self.services.markets

    @property
    def engine(self) -> EnginePort:
        return self.services.engine

    async def readiness(self) -> dict[str, bool]:
        """What ``/readyz`` checks: the database answers, and the engine (the writer's own,
        or a worker's link to it, in step) can take commands. Cheap: one ``SELECT 1``."""
        checks: dict[str, bool] = {}
        try:
            async with asyncio.timeout(READY_SECONDS):
                async with self.database.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:  # unreachable, or slower than a probe waits: not ready
            checks["database"] = False
        if self.writer is not None:
            checks["engine"] = self.writer.ready
        if self.link is not None:
            checks["writer_link"] = self.link.connected
        return checks

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start everything this process runs; stop it all on the way out."""
        core = self._writer_running() if self._writer is not None else self._worker_running()
        async with flushing(), core, contextlib.AsyncExitStack() as companions:
            for companion in self.companions:
                await companions.enter_async_context(companion(self))
            with started_state_frozen():
                yield

    @asynccontextmanager
    async def _writer_running(self) -> AsyncIterator[None]:
        writer = self._writer
        assert writer is not None
        settings, market = self.settings, self.services.market
        await asyncio.to_thread(migrate, settings.database_url)
        if not await asyncio.to_thread(writer.lock.acquire):
            raise AnotherWriter(
                "another exchange process is already running on this database; stop it first"
            )
        try:
            await market.load()  # before the engine: no trade can slip between
            await writer.engine.start()
            market.start()
            self.stream.start()
            self.binance_streams.start()
            self.housekeeping.start()
            self._start_metrics(writer.engine)
            yield
        finally:
            await self._stop_metrics()
            await self.housekeeping.stop()
            await writer.engine.stop()
            await self.stream.stop()
            await self.binance_streams.stop()
            await market.stop()  # the last candle flush, while the database is open
            await self.services.sessions.refreshed()
            await self.database.dispose()
            writer.database.dispose()
            writer.lock.release()

    def _start_metrics(self, engine: Engine | None) -> None:
        """The ``/metrics`` listener: every process's counters and the writer's state, or a
        lone gateway's own (under a parent of several, the parent serves them)."""
        if engine is None and multiprocess_on():
            return
        extra = [] if engine is None else [EngineCollector(engine, asyncio.get_running_loop())]
        self.metrics = MetricsListener.serve(self.settings.metrics_address, extra)

    async def _stop_metrics(self) -> None:
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
            self.metrics = None

    @asynccontextmanager
    async def _worker_running(self) -> AsyncIterator[None]:
        link = self.link
        assert link is not None
        sessions, market = self.services.sessions, self.services.market

        async def resync() -> None:  # at every (re)connection, the first one too
            # Revocations may have been broadcast while this worker was cut off.
            sessions.forget_all()
            await market.reload()

        link.on_resync = resync
        link.on_revoke = sessions.forget
        sessions.on_end = link.revoke
        try:
            await link.start()  # snapshot, market data loaded, held batches folded in
            self.stream.start()
            self.binance_streams.start()
            self._start_metrics(None)
            yield
        finally:
            await self._stop_metrics()
            await self.stream.stop()
            await self.binance_streams.stop()
            await link.stop()
            await sessions.refreshed()
            await self.database.dispose()


def nats_auth(settings: Settings) -> NatsAuth:
    """The credentials for ``EXCHANGE_NATS_URL``'s server (a private one has its own)."""
    return NatsAuth(settings.nats_credentials, settings.nats_nkey_seed)


def build_runtime(
    settings: Settings | None = None,
    *,
    clock: Clock = now_ms,
    mailer: Mailer | None = None,
    gateway_url: str | None = None,
) -> Runtime:
    """Wire one process: the writer (``gateway_url`` None) or a gateway to it over NATS."""
    settings = settings or get_settings()
    markets = configured_markets(settings)
    db = make_async_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    writer: _Writer | None = None
    link: GatewayEngine | None = None
    port: EnginePort
    if gateway_url is None:
        sync_db = make_sync_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
        engine = Engine(
            markets,
            sync_db,
            clock,
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            lock=(lock := WriterLock(settings.database_url)),
            client_id_ttl_ms=settings.client_order_id_ttl * 1000,
        )
        writer = _Writer(engine, sync_db, lock)
        port = engine
    else:
        port = link = GatewayEngine(
            gateway_url, markets, Subjects(settings.nats_prefix), nats_auth(settings)
        )
    hashing = PasswordHashing(settings.password_hash_memory_kib, settings.password_hash_time_cost)
    server_key = load_secret_key(
        settings.database_url, settings.secret_key, settings.secret_key_file
    )
    market = MarketData(markets, port, clock, CandleStore(db), persist=writer is not None)
    sessions = Sessions(db, clock, lifetime=settings.session_lifetime, idle=settings.session_idle)
    services = Services(
        settings=settings,
        clock=clock,
        accounts=Accounts(
            db,
            mailer or make_mailer(settings),
            hashing,
            clock,
            secret=server_key,
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
        api_keys=ApiKeys(db, clock, SecretBox(server_key), server_key=server_key),
    )
    limiter = RateLimiter(settings)
    stream = Stream(
        market,
        sessions,
        port,
        allowed_origins=parse_origins(settings.allowed_origins),
        max_message=settings.ws_max_message,
        max_connections=settings.ws_max_connections,
        max_per_address=settings.ws_max_per_address,
        auth_failures=settings.ws_auth_failures,
        limiter=limiter,
    )
    binance_streams = BinanceStreams(
        market,
        port,
        services.api_keys,
        clock,
        admission=stream.admission,
        limiter=limiter,
        max_message=settings.ws_max_message,
    )
    stream.handover = binance_streams.adopt
    port.subscribe(market.on_commit)  # market data first: the streams read it
    port.subscribe(stream.on_commit)
    port.subscribe(binance_streams.on_commit)
    return Runtime(
        settings=settings,
        services=services,
        limiter=limiter,
        stream=stream,
        binance_streams=binance_streams,
        housekeeping=Housekeeping(services.accounts, sessions, settings.prune_interval),
        operators=Operators(
            db,
            hashing,
            SecretBox(server_key, OPERATOR_TOTP_SECRETS),
            clock,
            server_key=server_key,
            lifetime=settings.operator_session_lifetime,
            idle=settings.operator_session_idle,
        ),
        database=db,
        writer=writer.engine if writer is not None else None,
        link=link,
        _writer=writer,
    )
