"""The three-key envelope of SPEC §2 and the code → HTTP status table.

Every answer of ``/router`` and ``/api/*`` goes through ``envelope_response``, so
no handler can forget the shape, and no exception text reaches a client.
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
    "overloaded": 503,
    "internal_error": 500,
}

PAYLOAD_TOO_LARGE = 413
ERROR_STATUSES = sorted({*STATUS_OF_CODE.values(), PAYLOAD_TOO_LARGE})


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


#: As the dispatcher's answers: never cached, never sniffed.
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def envelope_response(data: Any, *, ok: bool = True) -> Response:
    head = b'{"status":true,"data":' if ok else b'{"status":false,"data":'
    body = head + orjson.dumps(data) + b',"description":""}'
    return Response(body, media_type="application/json", headers=NO_STORE)


def error_response(error: ExchangeError, status: int | None = None) -> Response:
    status = status or STATUS_OF_CODE.get(error.code, 400)
    headers = dict(NO_STORE)
    if error.retry_after is not None or status == 429:
        headers["Retry-After"] = str(error.retry_after or 1)
    body = orjson.dumps({"status": False, "data": None, "description": error.description})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error(code: str, message: str, status: int | None = None) -> Response:
    return error_response(ExchangeError(code, message), status)
