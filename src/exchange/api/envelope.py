"""The three-key envelope of SPEC §2 and the code → HTTP status table.

The one place the envelope's bytes are made: the dispatcher's answers
(``ok_body``, ``error_body``), the pages' and the stream's error answers
(``error_response``), the front door's and the HTTP protocol's refusals. So no
handler can forget the shape, and no exception text reaches a client.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from exchange.domain.errors import ExchangeError

STATUS_OF_CODE: dict[str, int] = {
    "invalid_argument": 400,
    "missing_argument": 400,
    "unknown_method": 404,
    "method_not_allowed": 405,
    "unknown_pair": 404,
    "unknown_coin": 404,
    "not_logged_in": 401,
    "forbidden": 403,
    "user_exists": 409,
    "invalid_email": 400,
    "weak_password": 400,
    "invalid_code": 400,
    "code_expired": 400,
    "too_many_attempts": 429,
    "invalid_credentials": 401,
    "rate_limited": 429,
    "insufficient_balance": 400,
    "order_not_found": 404,
    "withdrawal_not_found": 404,
    "invalid_address": 400,
    "address_not_set": 400,
    "address_cooldown": 400,
    "below_minimum": 400,
    "market_halted": 400,
    "account_frozen": 403,
    "overloaded": 503,
    "internal_error": 500,
}

PAYLOAD_TOO_LARGE = 413
ERROR_STATUSES = sorted({*STATUS_OF_CODE.values(), PAYLOAD_TOO_LARGE})


#: Every API answer: never cached (login's carries the session token; balances are
#: private), and never sniffed into another content type.
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
#: The same as raw ASGI headers, with the content type (the dispatcher's answers).
API_HEADERS = (
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)

_OK_HEAD = b'{"status":true,"data":'
_NOT_OK_HEAD = b'{"status":false,"data":'
_TAIL = b',"description":""}'


def ok_body(data: Any, *, ok: bool = True) -> bytes:
    """A success's envelope; ``ok`` False only for check_exist_name's "taken"."""
    return (_OK_HEAD if ok else _NOT_OK_HEAD) + orjson.dumps(data) + _TAIL


def error_body(error: ExchangeError) -> bytes:
    return orjson.dumps({"status": False, "data": None, "description": error.description})


def status_of(error: ExchangeError) -> int:
    return STATUS_OF_CODE.get(error.code, 400)


def envelope_response(data: Any, *, ok: bool = True) -> Response:
    return Response(ok_body(data, ok=ok), media_type="application/json", headers=NO_STORE)


def error_response(error: ExchangeError, status: int | None = None) -> Response:
    status = status or status_of(error)
    headers = dict(NO_STORE)
    if error.retry_after is not None or status == 429:
        headers["Retry-After"] = str(error.retry_after or 1)
    return Response(
        error_body(error), status_code=status, media_type="application/json", headers=headers
    )


def error(code: str, message: str, status: int | None = None) -> Response:
    return error_response(ExchangeError(code, message), status)
