"""The lean dispatcher behind ``/router?router=<method>`` and ``/api/<method>``.

Hot paths (orders, market data) avoid FastAPI's per-request dependency machinery:
the body is read once, parsed with the standard library, the method is looked up
in one dict and the answer serialised with orjson (see DESIGN.md's calibration).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import Response

from exchange.api.context import Call, Method, Services
from exchange.api.envelope import PAYLOAD_TOO_LARGE, envelope_response, error, error_response
from exchange.api.limits import RateLimiter
from exchange.api.params import MAX_BODY, parse_form, parse_json, parse_query
from exchange.domain.errors import ExchangeError

log = logging.getLogger("exchange.api")

SESSION_COOKIE = "session"


class Answer:
    """A successful call whose envelope ``status`` is not simply true (check_exist_name)."""

    __slots__ = ("data", "status")

    def __init__(self, data: object, status: bool) -> None:
        self.data = data
        self.status = status


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ExchangeError("invalid_argument", "Content-Length is not a number")
        if int(declared) > MAX_BODY:
            raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def request_params(request: Request, body: bytes) -> dict[str, object]:
    params: dict[str, object] = parse_query(request.scope.get("query_string", b""))
    params.pop("router", None)
    if not body:
        return params
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        params.update(parse_json(body))
    elif content_type == "multipart/form-data":
        async def chunks() -> AsyncIterator[bytes]:
            yield body

        try:
            form = await MultiPartParser(request.headers, chunks(), max_files=0, max_fields=100).parse()
        except Exception:
            raise ExchangeError("invalid_argument", "the multipart body is not valid") from None
        for key, value in form.multi_items():
            if not isinstance(value, str):
                raise ExchangeError("invalid_argument", "file uploads are not accepted")
            params[key] = value
    elif content_type in ("application/x-www-form-urlencoded", "text/plain", ""):
        params.update(parse_form(body))
    else:
        raise ExchangeError("invalid_argument", f"unsupported content type {content_type!r}")
    return params


def session_token(request: Request, params: Mapping[str, object]) -> tuple[str | None, bool]:
    """The session token and whether it came from the cookie (the CSRF-relevant case)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie, True
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip(), False
    value = params.get("session")
    return (value, False) if isinstance(value, str) and value else (None, False)


def same_origin(request: Request, allowed: frozenset[str]) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null" and not request.cookies:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}") or origin in allowed


class Dispatcher:
    def __init__(self, services: Services, methods: Mapping[str, Method], limiter: RateLimiter):
        self.services = services
        self.methods = methods
        self.limiter = limiter
        self.allowed_origins = frozenset(
            o.strip() for o in services.settings.allowed_origins.split(",") if o.strip()
        )

    async def router_endpoint(self, request: Request) -> Response:
        name = request.query_params.get("router", "")
        return await self.dispatch(request, name)

    async def api_endpoint(self, request: Request) -> Response:
        return await self.dispatch(request, request.path_params.get("method", ""))

    async def dispatch(self, request: Request, name: str) -> Response:
        try:
            return await self._dispatch(request, name)
        except BodyTooLarge:
            return error(
                "invalid_argument", "the request body is larger than 64 KiB", PAYLOAD_TOO_LARGE
            )
        except ExchangeError as refusal:
            return error_response(refusal)
        except Exception:
            log.exception("internal error in method %r", name)
            return error("internal_error", "something went wrong on our side; try again")

    async def _dispatch(self, request: Request, name: str) -> Response:
        method = self.methods.get(name)
        if method is None:
            if not name:
                return error("missing_argument", "parameter 'router' names the method to call")
            return error("unknown_method", f"there is no method {name[:64]!r}")
        verb = request.method
        if verb != method.verb and not (verb == "HEAD" and method.verb == "GET"):
            response = error("method_not_allowed", f"{name} needs {method.verb}, not {verb[:10]}")
            response.headers["Allow"] = method.verb
            return response
        body = await read_body(request)
        params = await request_params(request, body)
        client = request.client.host if request.client else "unknown"
        call = Call(self.services, params, client)
        token, from_cookie = session_token(request, params)
        if (
            verb == "POST"
            and (from_cookie or method.name in ("login", "logout"))
            and not same_origin(request, self.allowed_origins)
        ):
            raise ExchangeError("forbidden", "cross-origin request refused")
        call.token = token
        if method.auth:
            user_id = await self.services.sessions.resolve(token)
            if user_id is None:
                raise ExchangeError("not_logged_in", "log in first")
            call.user_id = user_id
        if method.limit is not None:
            self.limiter.check(method.limit, client, call.user_id, params)
        result = await method.handler(call)
        if isinstance(result, Answer):
            response = envelope_response(result.data, ok=result.status)
        else:
            response = envelope_response(result)
        if call.set_session is not None:
            response.set_cookie(
                SESSION_COOKIE,
                call.set_session,
                max_age=self.services.settings.session_lifetime,
                httponly=True,
                samesite="lax",
                secure=self.services.settings.cookie_secure,
                path="/",
            )
        elif call.clear_session:
            response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
        return response
