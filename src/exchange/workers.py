"""``exchange serve --workers N``: one writer process, N HTTP worker processes.

The parent process is the writer: it runs the whole one-process app's life
cycle (migrations, writer lock, engine, market data and candle persistence,
the admin inbox) but serves no HTTP. It binds the listening port once and
hands the socket to N worker processes (spawned, not forked: the parent runs
threads and an event loop), which accept connections from it — the kernel
spreads them — and run uvicorn on a gateway app (``gateway_url``). Workers
reach the writer over NATS: ``EXCHANGE_NATS_URL``, or a private ``nats-server``
this process starts on a loopback port and stops on exit
(``adapters/nats_server.py``; the workers get its gateway account, which cannot
publish batches).

Supervision: a worker that dies (kill -9, a crash) is started again; one that
keeps dying within seconds of its start stops the whole server, since that is
a configuration error, not bad luck. A worker whose parent is gone shuts down
by itself, so a killed writer never leaves workers holding the port. SIGINT or
SIGTERM stops the workers first (each finishes its requests in flight, whose
commands the writer still answers), then the writer, which drains its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from typing import Any

from exchange.config import Settings

__all__ = ["run_workers"]

log = logging.getLogger("exchange.workers")

QUICK_DEATH_SECONDS = 5.0  # float-ok: seconds; a worker dying sooner counts as a failed start
QUICK_DEATHS_ALLOWED = 3
STOP_SECONDS = 10.0  # float-ok: seconds a worker has to finish before it is killed


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker_main(settings: Settings, sock: socket.socket, url: str, parent: int) -> None:
    """A worker process: uvicorn on the shared socket, the engine behind NATS at ``url``."""
    import uvicorn

    from exchange.app import create_app
    from exchange.logs import configure_logging
    from exchange.server import server_config

    configure_logging(settings)
    app: Any = create_app(settings, gateway_url=url)
    server = uvicorn.Server(server_config(app, settings))

    def watch_parent() -> None:
        while not server.should_exit:
            if os.getppid() != parent:
                log.error("the writer process is gone: this worker stops")
                server.should_exit = True
                return
            time.sleep(0.5)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(3)


@dataclass
class _Workers:
    settings: Settings
    sock: socket.socket | None
    #: How the workers reach NATS (the gateway account).
    url: str
    count: int
    processes: list[SpawnProcess] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    quick_deaths: int = 0

    def spawn(self, index: int) -> SpawnProcess:
        context = multiprocessing.get_context("spawn")
        process = context.Process(
            target=_worker_main,
            args=(self.settings, self.sock, self.url, os.getpid()),
            name=f"exchange-worker-{index}",
        )
        process.start()
        return process

    def start(self) -> None:
        if self.sock is None:
            return
        for index in range(self.count):
            self.processes.append(self.spawn(index))
            self.started.append(time.monotonic())

    def check(self) -> bool:
        """Restart dead workers; False when they keep dying at start."""
        from exchange.metrics import process_died  # after the multiprocess choice

        for index, process in enumerate(self.processes):
            if process.is_alive():
                continue
            process.join()
            if process.pid is not None:
                process_died(process.pid)
            lived = time.monotonic() - self.started[index]
            log.error(
                "worker %d (pid %s) ended with %s after %.1f s; starting another",
                index,
                process.pid,
                process.exitcode,
                lived,
            )
            self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
            if self.quick_deaths > QUICK_DEATHS_ALLOWED:
                return False
            self.processes[index] = self.spawn(index)
            self.started[index] = time.monotonic()
        return True

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


def _stop_on_signals() -> asyncio.Event:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    return stopping


async def _supervise(workers: _Workers, stopping: asyncio.Event) -> int:
    """Start the workers, restart those that die, until a signal; the exit status."""
    await asyncio.to_thread(workers.start)
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)
            if stopping.is_set():
                break  # workers that got the same signal are not restarted
            if not await asyncio.to_thread(workers.check):
                log.error("workers keep failing at start; stopping")
                return 3
        return 0
    finally:
        await asyncio.to_thread(workers.stop)


async def _writer(settings: Settings, workers: _Workers, writer_url: str) -> int:
    from exchange.engine.bus import Subjects
    from exchange.engine.bus_writer import WriterBus
    from exchange.runtime import build_runtime, nats_auth

    runtime = build_runtime(settings)  # the writer serves no HTTP: no app here
    engine = runtime.writer
    assert engine is not None
    stopping = _stop_on_signals()
    async with runtime.running():
        hub = WriterBus(
            engine,
            writer_url,
            Subjects(settings.nats_prefix),
            max_age=settings.nats_events_max_age,
            max_bytes=settings.nats_events_max_bytes,
            auth=nats_auth(settings),
        )
        await hub.start()
        try:
            where = workers.sock.getsockname() if workers.sock is not None else "other hosts"
            log.warning(
                "exchange: writer pid %d, %d HTTP workers on %s",
                os.getpid(),
                workers.count,
                where,
            )
            return await _supervise(workers, stopping)
        finally:
            await hub.stop()


async def _gateways(workers: _Workers) -> int:
    log.warning(
        "exchange: %d gateway processes on %s",
        workers.count,
        workers.sock.getsockname() if workers.sock is not None else "-",
    )
    return await _supervise(workers, _stop_on_signals())


def run_gateways(settings: Settings, host: str, port: int, count: int) -> int:
    """``exchange gateway --workers N``: N gateway processes on one port, no writer here."""
    import uvloop

    try:
        sock = bind(host, port)
    except OSError as error:
        log.error("cannot listen on %s:%s (%s)", host, port, error.strerror or error)
        return 3
    with _counting_every_process(settings):
        from exchange.metrics import MetricsListener, MetricsUnavailable  # after that choice

        listener: MetricsListener | None = None
        try:
            listener = MetricsListener.serve(settings.metrics_address)  # this host's gateways
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(_gateways(_Workers(settings, sock, settings.nats_url, count)))
        except (MetricsUnavailable, ValueError) as error:  # ValueError: a malformed address
            log.error("%s", error)
            return 3
        finally:
            if listener is not None:
                listener.stop()
            sock.close()


@contextlib.contextmanager
def _counting_every_process(settings: Settings) -> Iterator[None]:
    """prometheus-client's multiprocess mode for this process and the workers it spawns,
    in a private folder (0700) removed at the end; nothing when metrics are off.

    Set before ``exchange.metrics`` is first imported (its values pick their storage
    then); the workers inherit the variable.
    """
    if not settings.metrics_address.strip():
        yield
        return
    if "exchange.metrics" in sys.modules:
        raise RuntimeError("exchange.metrics was imported before --workers chose its storage")
    directory = tempfile.mkdtemp(prefix="exchange-")
    folder = os.path.join(directory, "metrics")
    os.makedirs(folder, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(directory, ignore_errors=True)


def run_workers(settings: Settings, host: str, port: int, count: int) -> int:
    """Serve with ``count`` HTTP workers; the exit status (3: could not start).

    ``count`` 0: the writer alone (``serve --role writer``), for gateways on other
    hosts; it needs ``EXCHANGE_NATS_URL`` (a private server listens on loopback only).
    """

    sock: socket.socket | None = None
    if count == 0 and not settings.nats_url:
        log.error(
            "serve --role writer needs EXCHANGE_NATS_URL: the gateways on other hosts "
            "reach the writer through that NATS server"
        )
        return 3
    try:
        sock = bind(host, port) if count else None
    except OSError as error:
        log.error("cannot listen on %s:%s (%s)", host, port, error.strerror or error)
        return 3
    with _counting_every_process(settings):
        return _run_writer(settings, sock, count)


def _run_writer(settings: Settings, sock: socket.socket | None, count: int) -> int:
    """``run_workers`` once the metrics' storage is chosen."""
    import uvloop

    from exchange.adapters.nats_server import NatsUnavailable, PrivateNats, store_beside
    from exchange.engine.bus import Subjects
    from exchange.metrics import MetricsUnavailable  # after the metrics' choice
    from exchange.runtime import AnotherWriter

    private: PrivateNats | None = None
    try:
        if settings.nats_url:
            writer_url = gateway_url = settings.nats_url
        else:
            subjects = Subjects(settings.nats_prefix)
            private = PrivateNats(
                store_beside(settings.database_url), prefix=subjects.prefix, stream=subjects.stream
            )
            accounts = private.start()
            writer_url, gateway_url = accounts.writer_url, accounts.gateway_url
            # Its accounts are in its URLs: credentials meant for a server of one's own
            # would only be refused by it.
            settings = settings.model_copy(update={"nats_credentials": "", "nats_nkey_seed": ""})
        workers = _Workers(settings, sock, gateway_url, count)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_writer(settings, workers, writer_url))
    except (AnotherWriter, ConnectionError, MetricsUnavailable, NatsUnavailable) as error:
        log.error("%s", error)
        return 3
    finally:
        if sock is not None:
            sock.close()
        if private is not None:
            private.stop()
