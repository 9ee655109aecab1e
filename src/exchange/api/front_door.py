"""What every request passes first: the real client address, and a Host this server serves.

* **Behind a reverse proxy** every client arrives from the proxy's address, so
  rate limits, lockouts and logs would treat all users as one. The headers
  ``X-Forwarded-For`` and ``X-Forwarded-Proto`` say who the client really is —
  but anybody can send them, so they are honoured only from the peers listed in
  ``EXCHANGE_TRUSTED_PROXIES`` (addresses or CIDR networks; none by default).
  The client is then the right-most address of the chain that is not itself a
  trusted proxy (uvicorn's ``ProxyHeadersMiddleware`` does exactly that).
* **DNS rebinding**: a web page can make a browser send requests to
  ``127.0.0.1`` under the attacker's host name. A request whose ``Host`` is not
  one this server answers for is refused (400 ``invalid_argument`` on the API,
  a plain page otherwise, a refused handshake on WebSockets). The served names
  are the loopback names, the address the server binds (``EXCHANGE_HOST``) and
  ``EXCHANGE_ALLOWED_HOSTS`` (``*`` admits any).
* **Cross-site requests** (CSRF, cross-site WebSocket hijacking): a browser
  names the page's origin; the API's cookie-carrying POSTs and the stream's
  cookie login accept only this server's own origin or one of
  ``EXCHANGE_ALLOWED_ORIGINS`` (``same_origin``, the one statement of the rule).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from exchange.api.envelope import error_body
from exchange.config import Settings
from exchange.domain.errors import ExchangeError

__all__ = ["FrontDoor", "host_name"]

ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]
LOOPBACK_NAMES = frozenset(("localhost", "127.0.0.1", "::1"))
WILDCARDS = frozenset(("", "0.0.0.0", "::", "*"))


def host_name(value: str) -> str:
    """The name part of a Host header: ``[::1]:8088`` -> ``::1``, ``Ex.COM:80`` -> ``ex.com``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, _, _port = value.partition(":") if value.count(":") == 1 else (value, "", "")
    return name.rstrip(".")


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The served host names, or None when any is admitted."""
    listed = {name.strip().lower() for name in settings.allowed_hosts.split(",") if name.strip()}
    if "*" in listed:
        return None
    names = set(LOOPBACK_NAMES) | {host_name(name) for name in listed}
    if settings.host not in WILDCARDS:
        names.add(host_name(settings.host))
    return frozenset(names)


def parse_origins(text: str) -> frozenset[str]:
    """``EXCHANGE_ALLOWED_ORIGINS``: comma-separated origins (``https://app.example``)."""
    return frozenset(origin.strip() for origin in text.split(",") if origin.strip())


def same_origin(origin: str | None, host: str, allowed: frozenset[str]) -> bool:
    """Whether a request naming ``origin`` (None: sent no Origin, not a browser's) may act."""
    if origin is None:
        return True
    return origin in (f"http://{host}", f"https://{host}") or origin in allowed


class FrontDoor:
    """Wraps the app: fixes the client address from trusted proxies, then checks Host."""

    def __init__(self, app: ASGI, settings: Settings) -> None:
        self.hosts = allowed_hosts(settings)
        #: Host header as sent -> the refused name, or None (served). Clients send a
        #: handful of spellings: this saves parsing the header on every request.
        self._decided: dict[bytes, str | None] = {}
        proxies = [p.strip() for p in settings.trusted_proxies.split(",") if p.strip()]
        self._inner = app
        self._entry: ASGI = self._checked
        #: Whether requests pass uvicorn's proxy middleware first (else ``admits`` alone).
        self.proxied = bool(proxies)
        if proxies:
            middleware: Any = ProxyHeadersMiddleware(
                cast(Any, self._checked), trusted_hosts=proxies
            )
            self._entry = middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    def admits(self, scope: Scope) -> str | None:
        """None if the request's Host is served, else the (lower-cased) host it asked for."""
        if self.hosts is None:
            return None
        for key, value in scope.get("headers", ()):
            if key == b"host":
                decided = self._decided.get(value, "")
                if decided != "":
                    return decided
                name = host_name(value.decode("latin-1"))
                refused = None if name in self.hosts else name
                if len(self._decided) >= 1024:  # random Host headers: forget, stay bounded
                    self._decided.clear()
                self._decided[value] = refused
                return refused
        return None  # HTTP/1.0 without Host: no browser sends that

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = self.admits(scope)
        if refused is None:
            await self._inner(scope, receive, send)
            return
        await self.refuse(scope, send, refused)

    async def refuse(self, scope: Scope, send: Send, refused: str) -> None:
        """Answer a request for a host this server does not serve."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        shown = ascii(refused[:60])
        path: str = scope.get("path", "")
        if path.startswith(("/api", "/router")):
            body = error_body(
                ExchangeError(
                    "invalid_argument",
                    f"this server does not answer for host {shown} (EXCHANGE_ALLOWED_HOSTS)",
                )
            )
            kind = b"application/json"
        else:
            body = b"<h1>400</h1><p>This server does not answer for that host name.</p>"
            kind = b"text/html; charset=utf-8"
        headers = [
            (b"content-type", kind),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})
