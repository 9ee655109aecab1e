"""A lean HTTP/1.1 keep-alive load generator for the benchmarks.

httpx costs more CPU per request than the server it measures; on two cores the
client would become the bottleneck. This sends prebuilt request bytes over raw
asyncio streams and reads each answer by its Content-Length.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    refused: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    #: Percentiles reported by an external load generator (wrk), fraction -> ms.
    reported_ms: dict[float, float] = field(default_factory=dict)
    #: CPU time the server's processes spent during the load (0: not measured).
    server_cpu_seconds: float = 0.0

    def cpu_per_request_us(self) -> float:
        done = self.ok + self.refused
        return 1e6 * self.server_cpu_seconds / done if done else 0.0

    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if fraction in self.reported_ms:
            return self.reported_ms[fraction]
        if not self.latencies_ns:
            return 0.0
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, int(len(ordered) * fraction))
        return ordered[index] / 1e6


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    return await reader.readexactly(length)


async def run_load(
    port: int,
    make_request: Callable[[int, int], bytes],
    *,
    connections: int,
    seconds: float,
    rate: float | None = None,
    accepted: bytes = b'{"status":true',
) -> LoadResult:
    """Drive ``connections`` keep-alive connections for ``seconds``.

    An answer whose body starts with ``accepted`` counts as done (the seed's
    envelope by default; a Binance order answer starts ``{"symbol"``).

    ``make_request(connection, n)`` builds the n-th request of a connection. With
    ``rate`` (requests/s over all connections) requests are paced on a fixed
    schedule, so latency is measured at that offered load (no coordinated omission:
    a late answer delays the schedule of nobody else).
    """
    result = LoadResult()
    start = time.perf_counter()
    deadline = start + seconds

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        interval = connections / rate if rate else 0.0
        next_at = start + (index / rate if rate else 0.0)
        try:
            while True:
                if rate:
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at += interval
                if time.perf_counter() >= deadline:
                    break
                sent = time.perf_counter_ns()
                body = await _exchange(reader, writer, make_request(index, n))
                result.latencies_ns.append(time.perf_counter_ns() - sent)
                n += 1
                if body.startswith(accepted):
                    result.ok += 1
                else:
                    result.refused += 1
        except (OSError, asyncio.IncompleteReadError):
            result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    result.seconds = time.perf_counter() - start
    return result
