"""The lean dispatcher behind ``/router?router=<method>`` and ``/api/<method>``.

These two paths carry every order and market-data request, so they are served
straight from ASGI: no framework middleware, no Request object. The body is read
once (at most 64 KiB), parsed with the standard library, the method looked up in
one dict and the answer serialised with orjson (docs/architecture.md: the
framework layers alone halved the request rate).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Mapping

from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser
from starlette.types import Receive, Scope, Send

from exchange.api.context import Call, Method, Services
from exchange.api.envelope import API_HEADERS, PAYLOAD_TOO_LARGE, error_body, ok_body, status_of
from exchange.api.front_door import parse_origins, same_origin
from exchange.api.limits import RateLimiter
from exchange.api.params import (
    MAX_BODY,
    Params,
    check_text,
    parse_form,
    parse_json,
    parse_query,
)
from exchange.domain.errors import ExchangeError, unavailable
from exchange.metrics import API_REFUSALS, DATABASE_ERRORS

log = logging.getLogger("exchange.api")

SESSION_COOKIE = "session"
RawHeaders = list[tuple[bytes, bytes]]


class Answer:
    """A successful call whose envelope ``status`` is not simply true (check_exist_name)."""

    __slots__ = ("data", "status")

    def __init__(self, data: object, status: bool) -> None:
        self.data = data
        self.status = status


class BodyTooLarge(Exception):
    pass


class Incoming:
    """What the dispatcher needs from one HTTP request, read once from the ASGI scope."""

    __slots__ = (
        "authorization",
        "client",
        "content_type",
        "cookie",
        "host",
        "length",
        "origin",
        "raw",
    )

    def __init__(self, scope: Scope) -> None:
        self.content_type = self.cookie = self.authorization = self.origin = self.host = ""
        self.length: str | None = None
        self.raw: RawHeaders = scope["headers"]
        for key, value in self.raw:
            if key == b"content-type":
                self.content_type = value.decode("latin-1")
            elif key == b"content-length":
                self.length = value.decode("latin-1")
            elif key == b"cookie":
                self.cookie = value.decode("latin-1")
            elif key == b"authorization":
                self.authorization = value.decode("latin-1")
            elif key == b"origin":
                self.origin = value.decode("latin-1")
            elif key == b"host":
                self.host = value.decode("latin-1")
        client = scope.get("client")
        self.client = client[0] if client else "unknown"

    def session_cookie(self) -> str | None:
        if not self.cookie:
            return None
        for part in self.cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE and value:
                return value.strip('"')
        return None


async def read_body(incoming: Incoming, receive: Receive) -> bytes:
    if incoming.length is not None:
        length = incoming.length.strip()
        # isascii(): "²" (latin-1 0xB2) passes isdigit() but not int(); a 5000-digit
        # length passes both checks and then int() refuses it.
        if not (length.isascii() and length.isdigit()):
            raise ExchangeError("invalid_argument", "Content-Length is not a number")
        if len(length.lstrip("0")) > 12 or int(length) > MAX_BODY:
            raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _MultiPart(MultiPartParser):
    """Starlette's parser, but a part that is not UTF-8 is not silently read as Latin-1.

    Its bytes become lone surrogates instead, which ``check_text`` refuses by name,
    as it does for a form or query that is not UTF-8. (``_current_part`` is the
    parser's own state; a test of every body format covers this override.)
    """

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            self.items.append((part.field_name, part.data.decode("utf-8", "surrogateescape")))
        else:
            super().on_part_end()


async def parse_multipart(raw: RawHeaders, body: bytes) -> dict[str, object]:
    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await _MultiPart(Headers(raw=raw), chunks(), max_files=0, max_fields=100).parse()
    except Exception:
        raise ExchangeError("invalid_argument", "the multipart body is not valid") from None
    params: dict[str, object] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str):
            raise ExchangeError("invalid_argument", "file uploads are not accepted")
        params[key] = value
    return params


async def request_params(
    query: Params | None, raw_query: bytes, incoming: Incoming, body: bytes
) -> dict[str, object]:
    """Every parameter of the request; ``query`` is the query string if already parsed."""
    if query is None:
        query = parse_query(raw_query) if raw_query else {}
    params = query  # this request's own dict: the body's parameters join it
    params.pop("router", None)
    if body:
        content_type = incoming.content_type.split(";")[0].strip().lower()
        if content_type in ("application/x-www-form-urlencoded", "text/plain", ""):
            params.update(parse_form(body))
        elif content_type == "application/json" or content_type.endswith("+json"):
            params.update(parse_json(body))
        elif content_type == "multipart/form-data":
            params.update(await parse_multipart(incoming.raw, body))
        else:
            raise ExchangeError(
                "invalid_argument", f"unsupported content type {content_type[:60]!r}"
            )
    check_text(params)
    return params


def credentials(incoming: Incoming, params: Mapping[str, object]) -> list[tuple[str, bool]]:
    """The session tokens a request carries, in SPEC §4's order, each with "from the cookie".

    The first *valid* one counts: a stale cookie left in a browser must not hide
    the valid Bearer token of the same request.
    """
    found: list[tuple[str, bool]] = []
    cookie = incoming.session_cookie()
    if cookie:
        found.append((cookie, True))
    authorization = incoming.authorization
    if authorization[:7].lower() == "bearer " and authorization[7:].strip():
        found.append((authorization[7:].strip(), False))
    value = params.get("session")
    if isinstance(value, str) and value:
        found.append((value, False))
    return found


async def send_json(send: Send, status: int, body: bytes, extra: RawHeaders | None = None) -> None:
    headers = [*API_HEADERS, (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ExchangeError, status: int | None = None) -> None:
    status = status or status_of(error)
    extra: RawHeaders = []
    if status == 429 or error.retry_after is not None:
        extra.append((b"retry-after", str(error.retry_after or 1).encode()))
    await send_json(send, status, error_body(error), extra)


class Dispatcher:
    def __init__(
        self,
        services: Services,
        methods: Mapping[str, Method],
        limiter: RateLimiter,
        database_unavailable: Callable[[BaseException], bool],
    ) -> None:
        """``database_unavailable`` tells an error that means 503 (the adapters know how)."""
        self.services = services
        self.database_unavailable = database_unavailable
        self.methods = methods
        self.limiter = limiter
        self.allowed_origins = parse_origins(services.settings.allowed_origins)
        settings = services.settings
        secure = "; Secure" if settings.cookie_secure else ""
        self._cookie_tail = (
            f"; Max-Age={settings.session_lifetime}; Path=/; HttpOnly; SameSite=lax{secure}"
        )
        self._cookie_clear = (
            f'{SESSION_COOKIE}=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/; '
            f"HttpOnly; SameSite=lax{secure}"
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        query: bytes = scope.get("query_string", b"")
        via_router = path == "/router" or path == "/router/"
        parsed: Params | None = None  # the query, parsed once (here only when it names the method)
        if via_router:
            parsed = parse_query(query) if query else {}
            name = str(parsed.get("router", ""))
        else:
            name = path[5:]  # after "/api/"
        try:
            if not name and via_router:
                raise ExchangeError(
                    "missing_argument", "parameter 'router' names the method to call"
                )
            await self._dispatch(scope, receive, send, name, query, parsed)
        except BodyTooLarge:
            refusal = ExchangeError("invalid_argument", "the request body is larger than 64 KiB")
            self._count(name, refusal)
            await send_error(send, refusal, PAYLOAD_TOO_LARGE)
        except ExchangeError as refusal:
            self._count(name, refusal)
            await send_error(send, refusal)
        except Exception as failure:
            if self.database_unavailable(failure):  # e.g. a session check while the DB is down
                log.warning("method %r: the database is unavailable (%s)", name, failure)
                DATABASE_ERRORS.labels("api").inc()
                self._count(name, unavailable())
                await send_error(send, unavailable())
                return
            log.exception("internal error in method %r", name)
            failed = ExchangeError("internal_error", "something went wrong on our side; try again")
            self._count(name, failed)
            await send_error(send, failed)

    def _count(self, name: str, refusal: ExchangeError) -> None:
        method = name if name in self.methods else "unknown"
        API_REFUSALS.labels("seed", method, refusal.code).inc()

    async def _first_valid(self, carried: list[tuple[str, bool]]) -> tuple[str, int] | None:
        """(token, user id) of the first live session, in SPEC's order."""
        for token, _from_cookie in carried:
            user_id = await self.services.sessions.resolve(token)
            if user_id is not None:
                return token, user_id
        return None

    async def _dispatch(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        query: bytes,
        parsed: Params | None,
    ) -> None:
        method = self.methods.get(name)
        if method is None:
            raise ExchangeError("unknown_method", f"there is no method {name[:64]!r}")
        verb: str = scope["method"]
        if verb != method.verb and not (verb == "HEAD" and method.verb == "GET"):
            error = ExchangeError(
                "method_not_allowed", f"{name} needs {method.verb}, not {verb[:10]}"
            )
            self._count(name, error)
            await send_json(send, 405, error_body(error), [(b"allow", method.verb.encode())])
            return
        incoming = Incoming(scope)
        body = await read_body(incoming, receive)
        params = await request_params(parsed, query, incoming, body)
        call = Call(self.services, params, incoming.client)
        carried = credentials(incoming, params)
        call.carried = tuple(token for token, _cookie in carried)
        # CSRF: a cross-origin POST that carries the browser's cookie, or logs in or out.
        if (
            verb == "POST"
            and (name == "login" or name == "logout" or any(c for _t, c in carried))
            and not same_origin(incoming.origin or None, incoming.host, self.allowed_origins)
        ):
            raise ExchangeError("forbidden", "cross-origin request refused")
        if method.auth:
            if carried:
                self.limiter.refuse_failed_auth(incoming.client)
            winner = await self._first_valid(carried)
            if winner is None:
                if carried:
                    self.limiter.failed_auth(incoming.client)
                raise ExchangeError("not_logged_in", "log in first")
            call.token, call.user_id = winner
        if method.limit is not None:
            self.limiter.check(method.limit, incoming.client, call.user_id, params)
        result = await method.run(call)
        if isinstance(result, Answer):
            body = ok_body(result.data, ok=result.status)
        else:
            body = ok_body(result)
        extra: RawHeaders = []
        if call.set_session is not None:
            cookie = f"{SESSION_COOKIE}={call.set_session}{self._cookie_tail}"
            extra.append((b"set-cookie", cookie.encode()))
        elif call.clear_session:
            extra.append((b"set-cookie", self._cookie_clear))
        await send_json(send, 200, body, extra)
