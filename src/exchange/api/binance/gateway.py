"""The ASGI entry of the Binance-compatible API: ``/api/v3/<endpoint>`` on the same port.

One table (``ENDPOINTS``) says, for each verb and path, the handler, Binance's
request weight and what the endpoint needs: nothing (public), or a signed
request by a key with the ``read`` or ``trade`` permission.

A signed request is checked exactly as Binance does: the key in the
``X-MBX-APIKEY`` header, ``timestamp`` within ``recvWindow`` (5,000 ms by
default, at most 60,000) of the server's clock and at most 1 s ahead of it,
and ``signature`` over the query string followed by the body, byte for byte as
received with only the ``signature`` parameter taken out. Parameters are read
from both; where both have one, the query string's wins.

Every answer carries ``X-MBX-USED-WEIGHT-1M``; every refusal is Binance's
``{"code", "msg"}`` with its HTTP status (429 with ``Retry-After`` for limits).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import orjson
from starlette.types import Receive, Scope, Send

from exchange.api.binance import account_endpoints as private
from exchange.api.binance import market_endpoints as public
from exchange.api.binance.errors import BinanceError, from_exchange, mandatory
from exchange.api.binance.params import BinanceCall, integer
from exchange.api.binance.views import symbol_of
from exchange.api.context import Services
from exchange.api.envelope import API_HEADERS
from exchange.api.limits import RateLimiter, WeightWindows
from exchange.api.params import check_text, parse_form, parse_query
from exchange.api.router import BodyTooLarge, Incoming, read_body
from exchange.domain.errors import ExchangeError
from exchange.metrics import API_REFUSALS, DATABASE_ERRORS
from exchange.services.api_keys import READ, TRADE, ApiKey

#: An endpoint that needs only the API key, not a signature (Binance's USER_STREAM).
KEY_ONLY = "key"

__all__ = ["PREFIX", "BinanceApi", "Endpoint"]

log = logging.getLogger("exchange.binance")

PREFIX = "/api/v3/"
DEFAULT_WINDOW = 5_000
MAX_WINDOW = 60_000
Handler = Callable[[BinanceCall], Awaitable[object]]
Weight = Callable[[dict[str, str]], int]


@dataclass(frozen=True, slots=True)
class Endpoint:
    handler: Handler
    weight: int | Weight
    permission: str | None = None  # None: public; READ or TRADE: a signed request

    def weight_of(self, params: dict[str, str]) -> int:
        weight = self.weight
        return weight if isinstance(weight, int) else weight(params)


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("GET", "ping"): Endpoint(public.ping, 1),
    ("GET", "time"): Endpoint(public.server_time, 1),
    ("GET", "exchangeInfo"): Endpoint(public.exchange_info, 20),
    ("GET", "depth"): Endpoint(public.depth, public.depth_weight),
    ("GET", "trades"): Endpoint(public.trades, 25),
    ("GET", "historicalTrades"): Endpoint(public.historical_trades, 25),
    ("GET", "aggTrades"): Endpoint(public.agg_trades, 4),
    ("GET", "klines"): Endpoint(public.klines, 2),
    ("GET", "uiKlines"): Endpoint(public.klines, 2),
    ("GET", "avgPrice"): Endpoint(public.avg_price, 2),
    ("GET", "ticker/24hr"): Endpoint(public.ticker_24hr, public.per_symbols(2, 80)),
    ("GET", "ticker/price"): Endpoint(public.ticker_price, public.per_symbols(2, 4)),
    ("GET", "ticker/bookTicker"): Endpoint(public.book_ticker, public.per_symbols(2, 4)),
    ("GET", "account"): Endpoint(private.account, 20, READ),
    ("GET", "account/commission"): Endpoint(private.commission, 20, READ),
    ("POST", "order"): Endpoint(private.new_order, 1, TRADE),
    ("POST", "order/test"): Endpoint(private.test_order, 1, TRADE),
    ("GET", "order"): Endpoint(private.query_order, 4, READ),
    ("DELETE", "order"): Endpoint(private.cancel_order, 1, TRADE),
    ("GET", "openOrders"): Endpoint(private.open_orders, public.per_symbols(6, 80), READ),
    ("DELETE", "openOrders"): Endpoint(private.cancel_open_orders, 1, TRADE),
    ("GET", "allOrders"): Endpoint(private.all_orders, 20, READ),
    ("GET", "myTrades"): Endpoint(private.my_trades, 20, READ),
    ("POST", "userDataStream"): Endpoint(private.new_listen_key, 2, KEY_ONLY),
    ("PUT", "userDataStream"): Endpoint(private.keep_listen_key, 2, KEY_ONLY),
    ("DELETE", "userDataStream"): Endpoint(private.close_listen_key, 2, KEY_ONLY),
}
PATHS = {path for _verb, path in ENDPOINTS}


def check_time(now: int, timestamp: int | None, window: int | None) -> None:
    """A signed request's ``timestamp`` within ``recvWindow`` of ``now``, as Binance checks it."""
    if timestamp is None:
        raise mandatory("timestamp")
    if window is None:
        window = DEFAULT_WINDOW
    if window > MAX_WINDOW:
        raise BinanceError(-1131, "recvWindow must be less than 60000")
    if timestamp >= now + 1000:
        raise BinanceError(
            -1021, "Timestamp for this request was 1000ms ahead of the server's time."
        )
    if now - timestamp > window:
        raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")


async def budgeted(
    limiter: RateLimiter | None, client: str, check: Callable[[], Awaitable[ApiKey]]
) -> ApiKey:
    """An API key check under the client address's failed-auth budget (REST and streams).

    Refused at once when the budget is spent; a key that does not exist or a bad
    signature spends from it (a forbidden permission or address does not).
    """
    if limiter is None:
        return await check()
    limiter.refuse_failed_auth(client)  # over the budget: no lookup at all
    try:
        return await check()
    except ExchangeError as refusal:
        if refusal.code in ("invalid_api_key", "invalid_signature"):
            limiter.failed_auth(client)
        raise


def unsigned(raw: bytes) -> tuple[bytes, bool]:
    """``raw`` without its ``signature=`` parameter, and whether it had one."""
    if b"signature=" not in raw:
        return raw, False
    parts = raw.split(b"&")
    kept = [part for part in parts if not part.startswith(b"signature=")]
    return b"&".join(kept), len(kept) != len(parts)


class BinanceApi:
    def __init__(
        self,
        services: Services,
        limiter: RateLimiter,
        database_unavailable: Callable[[BaseException], bool],
    ) -> None:
        self.services = services
        self.limiter = limiter
        self.weights = WeightWindows(services.settings)
        self.database_unavailable = database_unavailable
        self.symbols = {symbol_of(market): market for market in services.markets.values()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"][len(PREFIX) :].rstrip("/")
        verb: str = scope["method"]
        used = 0
        try:
            endpoint = ENDPOINTS.get(("GET" if verb == "HEAD" else verb, path))
            if endpoint is None:
                if path in PATHS:
                    raise BinanceError(-1014, "Unsupported order combination.", 405)
                raise BinanceError(-1000, f"Unknown endpoint {path[:64]!r}.", 404)
            incoming = Incoming(scope)
            body = await read_body(incoming, receive)
            query: bytes = scope.get("query_string", b"")
            # Both parse to text values (parse_qsl); the query string's win.
            params = cast(dict[str, str], parse_query(query) if query else {})
            if body:
                for name, value in parse_form(body).items():
                    params.setdefault(name, cast(str, value))
            check_text(params)
            now = self.services.clock()
            used = self.weights.spend(incoming.client, endpoint.weight_of(params), now)
            call = BinanceCall(
                self.services, self.limiter, self.symbols, params, incoming.client, now
            )
            if endpoint.permission is not None:
                await self._authenticate(call, incoming, query, body, endpoint.permission)
            result = await endpoint.handler(call)
        except BinanceError as refusal:
            await self._refuse(send, path, refusal, used)
            return
        except ExchangeError as refusal:
            await self._refuse(send, path, from_exchange(refusal), used)
            return
        except BodyTooLarge:
            too_large = BinanceError(-1000, "The request body is too large.", 413)
            await self._refuse(send, path, too_large, used)
            return
        except Exception as failure:
            if self.database_unavailable(failure):
                log.warning("binance %s: the database is unavailable (%s)", path, failure)
                DATABASE_ERRORS.labels("api").inc()
                unavailable = from_exchange(ExchangeError("overloaded", ""))
                await self._refuse(send, path, unavailable, used)
                return
            log.exception("internal error in binance %s", path)
            failed = from_exchange(ExchangeError("internal_error", ""))
            await self._refuse(send, path, failed, used)
            return
        await _send(send, 200, orjson.dumps(result), used)

    async def _authenticate(
        self, call: BinanceCall, incoming: Incoming, query: bytes, body: bytes, permission: str
    ) -> None:
        key = _header(incoming, b"x-mbx-apikey")
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", 401)
        api_keys = self.services.api_keys
        if permission == KEY_ONLY:
            found = await budgeted(
                self.limiter, call.client, lambda: api_keys.identify(key, call.client)
            )
        else:
            check_time(call.now, integer(call, "timestamp"), integer(call, "recvWindow"))
            signature = call.params.get("signature")
            if not signature:
                raise mandatory("signature")
            payload = unsigned(query)[0] + unsigned(body)[0]
            found = await budgeted(
                self.limiter,
                call.client,
                lambda: api_keys.authenticate(key, payload, signature, call.client, permission),
            )
        call.key = found
        call.user_id = found.user_id

    async def _refuse(self, send: Send, path: str, refusal: BinanceError, used: int) -> None:
        API_REFUSALS.labels("binance", path if path in PATHS else "unknown", refusal.code).inc()
        body = orjson.dumps({"code": refusal.code, "msg": refusal.msg})
        extra: list[tuple[bytes, bytes]] = []
        if refusal.retry_after is not None:
            extra.append((b"retry-after", str(refusal.retry_after).encode()))
        await _send(send, refusal.status, body, used, extra)


def _header(incoming: Incoming, name: bytes) -> str:
    for key, value in incoming.raw:
        if key == name:
            return value.decode("latin-1").strip()
    return ""


async def _send(
    send: Send, status: int, body: bytes, used: int, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        *API_HEADERS,
        (b"content-length", str(len(body)).encode()),
        (b"x-mbx-used-weight", str(used).encode()),
        (b"x-mbx-used-weight-1m", str(used).encode()),
    ]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
