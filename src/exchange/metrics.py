"""The exchange's Prometheus metrics: what each process counts, and the listener that serves them.

Every metric is defined here, once, with ``prometheus-client`` (docs/operations.md
lists them with example alert rules). Two kinds:

* **counted where it happens** (HTTP requests, logins, codes sent, WebSocket
  drops, the writer's batch histograms): the module-level objects below, which
  any process updates;
* **read from the writer's memory when scraped** (queue depth, commands by
  outcome, trades, reloads, balance totals per asset): ``EngineCollector`` in
  ``exchange.engine.gauges``, so the order path pays nothing for them.

With ``--workers N`` the processes are counted once each through
prometheus-client's multiprocess mode: the parent sets ``PROMETHEUS_MULTIPROC_DIR``
(a private directory) before this module is imported anywhere, every worker
inherits it, each process writes its values to its own memory-mapped files,
and the writer's listener adds them up (``MultiProcessCollector``). Gauges
that each process sets (WebSocket connections) use ``livesum``: a dead
worker's files are dropped (``process_died``), its counters stay counted.

The listener is a separate port (``EXCHANGE_METRICS_ADDRESS``, loopback by
default) so that metrics are never public by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "API_REFUSALS",
    "BATCH_COMMANDS",
    "CODES_SENT",
    "COMMIT_SECONDS",
    "DATABASE_ERRORS",
    "GATEWAYS_IN_STEP",
    "GATEWAY_RESYNCS",
    "HTTP_METHODS",
    "HTTP_SECONDS",
    "LOGINS",
    "MULTIPROCESS_ENV",
    "SAMPLERS",
    "WS_CONNECTIONS",
    "WS_DROPPED",
    "WS_SUBSCRIPTIONS",
    "MetricsListener",
    "MetricsUnavailable",
    "parse_address",
    "process_died",
]

#: prometheus-client's own switch to multiprocess mode (read when it is imported).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_SECONDS = 1  # how often tallied observations reach the histograms (a scrape's lag)


class Tally:
    """A histogram's observations counted in plain ints, folded into it once a second.

    ``Histogram.observe`` costs a lock and a Python loop per call (~13,000 instructions
    under callgrind: 15 % of a read request); the hot paths — every HTTP request, every
    group commit — add one to a list instead (``tally(labels)`` once, then
    ``count(row, value)``), and ``flush`` (on the event loop, the only thread that
    counts) adds the counts to the histogram's own values, which are what a scrape
    reads and, with ``--workers``, what the memory-mapped files hold. The values are
    prometheus-client's ``_buckets`` and ``_sum`` (``tests/unit/test_metric_tally.py``
    checks the result against ``observe``, so an upgrade that changes them fails).
    """

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.bounds: list[float] = list(histogram._upper_bounds)  # float-ok: seconds
        self._rows: dict[tuple[str, ...], list[Any]] = {}
        TALLIES.append(self)

    def tally(self, *labels: str) -> list[Any]:
        """The row that counts one label set: [count per bucket …, sum]."""
        row = self._rows.get(labels)
        if row is None:
            row = self._rows[labels] = [0] * len(self.bounds) + [0]
        return row

    def count(self, row: list[Any], value: Any) -> None:
        row[bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def flush(self) -> None:
        for labels, row in self._rows.items():
            if not any(row[:-1]):
                continue
            child: Any = self.histogram.labels(*labels) if labels else self.histogram
            for index, counted in enumerate(row[:-1]):
                if counted:
                    child._buckets[index].inc(counted)
            child._sum.inc(row[-1])
            row[:] = [0] * len(row)


TALLIES: list[Tally] = []
#: Gauges a process sets from its own state once a second, with the tallies' flush.
SAMPLERS: list[Callable[[], None]] = []


def flush() -> None:
    for tally in TALLIES:
        tally.flush()
    for sample in SAMPLERS:
        sample()


@contextlib.asynccontextmanager
async def flushing() -> AsyncIterator[None]:
    """Fold the tallies into their histograms every second while a process runs."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            flush()

    task = asyncio.create_task(loop(), name="metrics-flush")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        flush()


HTTP_SECONDS = Tally(
    Histogram(
        "exchange_http_request_duration_seconds",
        "HTTP requests by method and status, and how long they took (the _count is the requests).",
        ["method", "status"],
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )
)
API_REFUSALS = Counter(
    "exchange_api_refusals",
    "Requests the API answered with an error before or instead of the engine, by API "
    "(seed or binance), method and error code (orders refused for their parameters, say).",
    ["api", "method", "code"],
)
BATCH_COMMANDS = Tally(
    Histogram(
        "exchange_batch_commands",
        "Commands committed per group commit (one transaction).",
        buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
    )
)
COMMIT_SECONDS = Tally(
    Histogram(
        "exchange_commit_duration_seconds",
        "How long each group commit (one database transaction) took.",
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    )
)
DATABASE_ERRORS = Counter(
    "exchange_database_errors",
    "Operations refused because the database could not be used (the writer's commits, "
    "the API's and the pages' reads).",
    ["where"],
)
WS_CONNECTIONS = Gauge(
    "exchange_ws_connections",
    "Open WebSocket connections, by dialect (seed /ws, or the Binance streams).",
    ["dialect"],
    multiprocess_mode="livesum",
)
WS_SUBSCRIPTIONS = Gauge(
    "exchange_ws_subscriptions",
    "Subscriptions held by open WebSocket connections, by dialect.",
    ["dialect"],
    multiprocess_mode="livesum",
)
WS_DROPPED = Counter(
    "exchange_ws_slow_clients_dropped",
    "WebSocket clients disconnected because they did not keep up (close code 1008).",
    ["dialect"],
)
LOGINS = Counter(
    "exchange_logins",
    "Login attempts by outcome: ok, invalid_credentials, too_many_attempts.",
    ["outcome"],
)
CODES_SENT = Counter("exchange_codes_sent", "E-mail verification codes handed to the mailer.")
GATEWAYS_IN_STEP = Gauge(
    "exchange_gateways_in_step",
    "Gateway processes following the writer now (NATS up, the writer heard within 2 s, "
    "the replica in step); set once a second by each gateway.",
    multiprocess_mode="livesum",
)
GATEWAY_RESYNCS = Counter(
    "exchange_gateway_resyncs",
    "Times a gateway took the writer's snapshot or replayed the stream to follow it again "
    "(its start, a NATS reconnection, a gap, a new writer).",
)

#: The ``method`` label's values: the standard verbs (anything else is ``other``).
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})


def multiprocess_on() -> bool:
    return bool(os.environ.get(MULTIPROCESS_ENV))


def process_died(pid: int) -> None:
    """A worker ended: its live gauges no longer count (its counters still do)."""
    if multiprocess_on():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def parse_address(address: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` too; port 0 = any free one) of ``EXCHANGE_METRICS_ADDRESS``;
    empty = off."""
    address = address.strip()
    if not address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"EXCHANGE_METRICS_ADDRESS must be host:port, not {address!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


class _Joined(Collector):
    """This process's own metrics (or every process's, in multiprocess mode) and extras."""

    def __init__(self, extra: Iterable[Collector]) -> None:
        self._extra = list(extra)
        self._own: CollectorRegistry = REGISTRY
        if multiprocess_on():
            self._own = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._own)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        yield from self._own.collect()
        for collector in self._extra:
            yield from collector.collect()


class MetricsUnavailable(RuntimeError):
    """The metrics listener cannot bind its address."""


class MetricsListener:
    """The ``/metrics`` port (a thread: scrapes never wait for the loop), in the process that
    owns the counts: one process alone, or the parent of several (multiprocess mode) — the
    writer's, or ``exchange gateway --workers N``'s.

    ``extra`` are collectors that read the writer's state when scraped.
    """

    def __init__(self, address: tuple[str, int], extra: Iterable[Collector] = ()) -> None:
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Joined(extra))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host, port = self.address
        self._server, self._thread = start_http_server(port, host, registry=self.registry)

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one chosen for port 0)."""
        return int(self._server.server_port) if self._server is not None else self.address[1]

    @classmethod
    def serve(cls, address: str, extra: Iterable[Collector] = ()) -> MetricsListener | None:
        """Listening on ``EXCHANGE_METRICS_ADDRESS`` (None: off); MetricsUnavailable if the
        address is taken."""
        where = parse_address(address)
        if where is None:
            return None
        listener = cls(where, extra)
        try:
            listener.start()
        except OSError as error:
            raise MetricsUnavailable(
                f"cannot serve metrics on {where[0]}:{where[1]} ({error.strerror or error}); "
                "set EXCHANGE_METRICS_ADDRESS to a free host:port, or empty to turn them off"
            ) from None
        return listener

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
