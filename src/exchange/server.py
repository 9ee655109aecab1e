"""The HTTP server every entry point runs: uvicorn, with the limits a public service needs.

uvicorn with httptools reads a request's headers without a size limit or a time
limit, and a connection that never finishes them stays open and keeps growing
(a review saw 128 MiB of headers streamed into one connection). The protocol
below is uvicorn's, with four limits added before any application code runs:

* the request line (URL) and the headers have a maximum size (414 / 431);
* a request must arrive whole — headers and body — within a read timeout from
  its first byte (or from the connection's start), else the connection is
  closed (408 when no response has started): slow clients cannot hold sockets;
* a process accepts at most ``max_connections`` connections at once (HTTP and
  WebSocket together); beyond that a new one is answered 503 and closed.

Refusals are the API's envelope (SPEC §2) with a stable code, never uvicorn's
plain text. WebSocket frames are limited to the stream's message size by
uvicorn's own ``ws_max_size``. ``server_config`` is the one place the uvicorn
settings are chosen, for ``exchange serve``, each HTTP worker and the tests.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from exchange.api.envelope import error_body
from exchange.config import Settings
from exchange.domain.errors import ExchangeError

__all__ = ["HttpLimits", "guarded_protocol", "server_config"]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int
    max_url_bytes: int
    read_timeout: float  # float-ok: seconds
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            max_url_bytes=settings.http_max_url_bytes,
            read_timeout=settings.http_read_timeout,
            max_connections=settings.http_max_connections,
        )


class _Refused(Exception):
    """Raised in a parser callback: the request breaks a limit and is answered at once."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def refusal(status: int, code: str, message: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response carrying the envelope; the connection closes after it."""
    body = error_body(ExchangeError(code, message))
    head = [
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"cache-control: no-store\r\n",
        b"connection: close\r\n",
    ]
    if retry_after is not None:
        head.append(b"retry-after: " + str(retry_after).encode() + b"\r\n")
    return b"".join(head) + b"\r\n" + body


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with size, time and connection limits."""

    LIMITS: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_headers = True  # a request's line and headers are still arriving
        self._refusing = False  # a limit's refusal was sent (or is due after an answer)
        self._raw_bytes = 0  # bytes received since the request began, headers incomplete
        self._url_bytes = 0
        #: When the request being read must be complete (loop time; 0 = nothing due).
        #: One sweep per second checks every connection: no timer per request.
        self._deadline = 0.0
        self._refused: _Refused | None = None

    # -- connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.LIMITS.max_connections:
            self._answer_and_close(
                refusal(503, "overloaded", "too many connections; try again", retry_after=1)
            )
            return
        _watched(self.loop).add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        _watched(self.loop).discard(self)
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.time() + self.LIMITS.read_timeout

    def _disarm(self) -> None:
        self._deadline = 0.0

    def _earlier_answer_pending(self) -> bool:
        """A pipelined request's headers are arriving while we still answer the one before.

        (The current request's cycle is made only when its headers are complete.)
        """
        return self._reading_headers and self.cycle is not None and not self.cycle.response_complete

    def _too_slow(self) -> None:
        self._deadline = 0.0
        if self.transport.is_closing() or self._refusing:
            return
        if self._reading_headers:
            if self._earlier_answer_pending():
                self._arm()  # we are the slow side, answering the request before
                return
            # No response can have started: say why.
            self._answer_and_close(
                refusal(408, "invalid_argument", "the request did not arrive in time")
            )
            return
        cycle = self.cycle
        if cycle is None or not cycle.more_body:
            return  # the request arrived whole (the deadline was for it)
        if self.flow.read_paused:
            self._arm()  # we stopped reading, not the client
            return
        self.transport.close()  # the body stalls: the application sees a disconnect

    def _answer_and_close(self, response: bytes) -> None:
        """Refuse the request being read; never in the middle of an earlier answer."""
        self._disarm()
        self._refusing = True
        if self.transport.is_closing():
            return
        if self._earlier_answer_pending():
            # The answer to the request before is still to be written: it is, and the
            # connection closes after it; the refused request gets no answer.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(response)
        self.transport.close()

    # -- data ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._reading_headers:
            self._raw_bytes += len(data)
        super().data_received(data)
        # Headers still incomplete after this chunk: what the parser buffers counts too.
        if (
            self._reading_headers
            and self._raw_bytes > self.LIMITS.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._answer_and_close(self._too_large())

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this for every parser error; a limit's own refusal goes first."""
        error = self._refused
        if error is not None:
            self._answer_and_close(refusal(error.status, error.code, error.message))
            return
        self._answer_and_close(refusal(400, "invalid_argument", "this is not a valid HTTP request"))

    def _too_large(self) -> bytes:
        limit = self.LIMITS.max_header_bytes // 1024
        return refusal(431, "invalid_argument", f"the request headers are larger than {limit} KiB")

    def _refuse_in_callback(self, status: int, code: str, message: str) -> None:
        # Raising in a callback makes httptools fail the feed; uvicorn then calls
        # send_400_response, which answers with this refusal instead.
        self._refused = _Refused(status, code, message)
        raise self._refused

    # -- parser callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._url_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.LIMITS.max_url_bytes:
            limit = self.LIMITS.max_url_bytes // 1024
            self._refuse_in_callback(414, "invalid_argument", f"the URL is longer than {limit} KiB")
        super().on_url(url)

    def on_headers_complete(self) -> None:
        # Counted once the headers are whole (a header per callback would cost each
        # request a Python call per header); unfinished ones are counted raw above.
        size = self._url_bytes
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        if size > self.LIMITS.max_header_bytes:
            limit = self.LIMITS.max_header_bytes // 1024
            self._refuse_in_callback(
                431, "invalid_argument", f"the request headers are larger than {limit} KiB"
            )
        self._reading_headers = False
        self._raw_bytes = 0
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        # The connection now belongs to the WebSocket protocol (its own limits apply).
        self._disarm()
        _watched(self.loop).discard(self)
        super().handle_websocket_upgrade()


#: The open connections of each event loop, swept once a second for missed deadlines.
_WATCHED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[_GuardedProtocol]] = (
    weakref.WeakKeyDictionary()
)
SWEEP_SECONDS = 1.0  # float-ok: seconds between deadline sweeps


def _watched(loop: asyncio.AbstractEventLoop) -> set[_GuardedProtocol]:
    found = _WATCHED.get(loop)
    if found is None:
        found = _WATCHED[loop] = set()
        loop.call_later(SWEEP_SECONDS, _sweep, loop)
    return found


def _sweep(loop: asyncio.AbstractEventLoop) -> None:
    """Drop the connections whose request is overdue (a deadline is a second late at most)."""
    watched = _WATCHED.get(loop)
    if watched is None or loop.is_closed():
        return
    now = loop.time()
    for protocol in [p for p in watched if p._deadline and p._deadline <= now]:
        try:
            protocol._too_slow()
        except Exception:  # one broken connection never stops the sweep
            watched.discard(protocol)
    loop.call_later(SWEEP_SECONDS, _sweep, loop)


def guarded_protocol(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol bound to these limits (uvicorn takes a class)."""
    return type("GuardedHttpToolsProtocol", (_GuardedProtocol,), {"LIMITS": limits})


def server_config(app: Any, settings: Settings, **where: Any) -> uvicorn.Config:
    """uvicorn's settings for this exchange; ``where`` is host/port (or nothing for sockets)."""
    return uvicorn.Config(
        app,
        **where,
        proxy_headers=False,  # the app honours X-Forwarded-* from EXCHANGE_TRUSTED_PROXIES only
        loop="uvloop",
        http=guarded_protocol(HttpLimits.of(settings)),
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_message,
        log_config=None,  # exchange.logs configured every logger, uvicorn's too
        log_level=None,
        access_log=False,  # the app's own access line (EXCHANGE_ACCESS_LOG) names no query
        timeout_graceful_shutdown=5,
        server_header=False,
    )
