"""Binance's signed endpoints: the account, orders and the user's trades.

Orders go to the same engine as the seed's ``buy``/``sell`` (a ``PlaceOrder``
command, answered after its commit); reads come from the committed database
(``services.history``) or the engine's committed balances.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from exchange.api.binance.errors import (
    NO_ORDER,
    UNKNOWN_ORDER,
    WOULD_TAKE,
    BinanceError,
    bad_parameter,
    filter_failure,
    from_exchange,
    mandatory,
)
from exchange.api.binance.params import (
    CLIENT_ID,
    BinanceCall,
    decimal,
    integer,
    market,
    optional_market,
    required,
    text,
)
from exchange.api.binance.views import (
    balances,
    basis_points,
    client_id_of,
    derived_order_id,
    my_trade,
    new_order_view,
    order_result,
    order_view,
    symbol_of,
)
from exchange.api.limits import parse_rate
from exchange.domain.commands import CancelOrder, PlaceOrder
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Market
from exchange.domain.orders import BUY, LIMIT, MARKET, REJECTED, SELL, Order
from exchange.services.api_keys import TRADE

__all__ = ["account", "cancel_order", "new_order", "query_order"]

SIDES = {"BUY": BUY, "SELL": SELL}
TYPES = ("LIMIT", "MARKET", "LIMIT_MAKER")
TIFS = ("GTC", "IOC", "FOK")
RESPONSES = ("ACK", "RESULT", "FULL")
MAX_ROWS = 1000


def new_client_id() -> str:
    """What Binance makes when a client sends none: 22 characters of ``[A-Za-z0-9_-]``.

    128 random bits in one call (a character at a time cost ~20 µs an order).
    """
    return secrets.token_urlsafe(16)


async def account(call: BinanceCall) -> object:
    services = call.services
    found = await services.engine.read_balances(call.user_id)
    scales = {code: asset.scale for code, asset in services.engine.assets.items()}
    rows = balances(found, scales)
    if call.params.get("omitZeroBalances") == "true":
        rows = [row for row in rows if row["free"].strip("0.") or row["locked"].strip("0.")]
    fee = _default_fees(call)
    maker, taker = basis_points(fee[0]), basis_points(fee[1])
    key = call.key
    return {
        "makerCommission": maker,
        "takerCommission": taker,
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {
            "maker": str(fee[0]),
            "taker": str(fee[1]),
            "buyer": "0",
            "seller": "0",
        },
        "canTrade": key is not None and key.allows(TRADE),
        "canWithdraw": False,  # never with an API key
        "canDeposit": True,
        "brokered": False,
        "requireSelfTradePrevention": False,
        "preventSor": False,
        "updateTime": call.now,
        "accountType": "SPOT",
        "balances": rows,
        "permissions": ["SPOT"],
        "uid": call.user_id,
    }


def _default_fees(call: BinanceCall) -> tuple[Any, Any]:
    first = next(iter(call.symbols.values()))
    return first.maker_fee, first.taker_fee


async def commission(call: BinanceCall) -> object:
    found = market(call)
    zero = {"maker": "0", "taker": "0", "buyer": "0", "seller": "0"}
    return {
        "symbol": symbol_of(found),
        "standardCommission": {
            "maker": str(found.maker_fee),
            "taker": str(found.taker_fee),
            "buyer": "0",
            "seller": "0",
        },
        "specialCommission": zero,
        "taxCommission": zero,
        "discount": {
            "enabledForAccount": False,
            "enabledForSymbol": False,
            "discountAsset": "BNB",
            "discount": "0",
        },
    }


def _choice(call: BinanceCall, name: str, values: tuple[str, ...], code: int, what: str) -> str:
    value = required(call, name).upper()
    if value not in values:
        raise BinanceError(code, f"Invalid {what}.")
    return value


def _units(found: Market, value: str, price: bool) -> int:
    """A decimal at the market's scale; too many decimals or out of range breaks the filter."""
    try:
        return found.parse_price(value) if price else found.parse_amount(value)
    except ExchangeError:
        raise filter_failure("PRICE_FILTER" if price else "LOT_SIZE") from None


def _order_command(call: BinanceCall) -> tuple[PlaceOrder, Market, str]:
    """The ``PlaceOrder`` a ``POST /api/v3/order`` asks for, and its response type."""
    found = market(call)
    side = SIDES.get(required(call, "side").upper())
    if side is None:
        raise BinanceError(-1117, "Invalid side.")
    kind = _choice(call, "type", TYPES, -1116, "orderType")
    quantity = decimal(call, "quantity")
    by_value = decimal(call, "quoteOrderQty")
    quote = 0
    if by_value is not None:
        if kind != "MARKET" or quantity is not None:
            raise BinanceError(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        try:
            quote = found.parse_quote(by_value)
        except ExchangeError:
            raise filter_failure("NOTIONAL") from None
        amount = 0
    elif quantity is None:
        raise mandatory("quantity")
    else:
        amount = _units(found, quantity, price=False)
    sent_price = decimal(call, "price")
    tif_text = text(call, "timeInForce")
    if kind == "MARKET":
        if sent_price is not None:
            raise BinanceError(-1106, "Parameter 'price' sent when not required.")
        price, tif = 0, "IOC"
    else:
        if sent_price is None:
            raise mandatory("price")
        price = _units(found, sent_price, price=True)
        if kind == "LIMIT":
            if tif_text is None:
                raise mandatory("timeInForce")
            tif = tif_text.upper()
            if tif not in TIFS:
                raise BinanceError(-1115, "Invalid timeInForce.")
        else:
            tif = "GTC"
    client_id = text(call, "newClientOrderId")  # none: shown as derived from the order id
    if client_id is not None and not CLIENT_ID.fullmatch(client_id):
        raise bad_parameter("newClientOrderId")
    respond = text(call, "newOrderRespType")
    if respond is None:
        respond = "ACK" if kind == "LIMIT_MAKER" else "FULL"
    respond = respond.upper()
    if respond not in RESPONSES:
        raise BinanceError(-1177, "Invalid newOrderRespType.")
    command = PlaceOrder(
        call.user_id,
        found.symbol,
        side,
        amount,
        price,
        MARKET if kind == "MARKET" else LIMIT,
        tif,
        kind == "LIMIT_MAKER",
        client_id,
        quote,
    )
    return command, found, respond


def _orders_limit(call: BinanceCall) -> None:
    limiter, settings = call.limiter, call.services.settings
    count, seconds = parse_rate(settings.rate_limit_orders)
    try:
        limiter.check("orders", call.client, call.user_id, call.params)
    except ExchangeError as refusal:
        raise BinanceError(
            -1015,
            f"Too many new orders; current limit is {count} orders per {seconds} SECOND.",
            429,
            retry_after=refusal.retry_after,
        ) from None


async def new_order(call: BinanceCall) -> object:
    command, found, respond = _order_command(call)
    _orders_limit(call)
    services = call.services
    try:
        result = await services.engine.submit(command)
    except ExchangeError as refusal:
        raise from_exchange(refusal, placing=True) from None
    order, trades = result.order, result.trades
    if result.duplicate or order is None:
        stored = await services.history.order(call.user_id, result.order_id)
        if stored is None:
            raise BinanceError(-2010, "Duplicate order sent.")
        order, trades = stored
        if order.market != found.symbol:
            raise BinanceError(-2010, "Duplicate order sent.")
    elif order.status == REJECTED:
        raise BinanceError(-2010, WOULD_TAKE)
    return new_order_view(order, trades, found, respond, command.quote)


async def test_order(call: BinanceCall) -> object:
    _order_command(call)
    return {}


async def _find(call: BinanceCall, found: Market, missing: str) -> Order:
    """The user's order named by ``orderId`` or ``origClientOrderId`` on this market."""
    order_id = integer(call, "orderId")
    client_id = text(call, "origClientOrderId")
    history = call.services.history
    order: Order | None = None
    if order_id is not None:
        stored = await history.order(call.user_id, order_id)
        order = None if stored is None else stored[0]
        if order is not None and client_id is not None and client_id_of(order) != client_id:
            order = None
    elif client_id is not None:
        order = await history.order_by_client_id(call.user_id, client_id)
        derived = derived_order_id(client_id)
        if order is None and derived is not None:  # ex-42: order 42, placed without an id
            stored = await history.order(call.user_id, derived)
            if stored is not None and stored[0].client_order_id is None:
                order = stored[0]
    else:
        raise BinanceError(
            -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
        )
    if order is None or order.market != found.symbol:
        raise BinanceError(-2013 if missing == NO_ORDER else -2011, missing)
    return order


async def query_order(call: BinanceCall) -> object:
    found = market(call)
    return order_view(await _find(call, found, NO_ORDER), found)


async def _cancel(call: BinanceCall, order: Order, found: Market) -> dict[str, Any]:
    try:
        cancelled = await call.services.engine.submit(CancelOrder(call.user_id, order.id))
    except ExchangeError as refusal:
        if refusal.code == "order_not_found":
            raise BinanceError(-2011, UNKNOWN_ORDER) from None
        raise from_exchange(refusal) from None
    view = order_result(cancelled, found)
    view["origClientOrderId"] = view["clientOrderId"]
    view["clientOrderId"] = text(call, "newClientOrderId") or new_client_id()
    view["transactTime"] = cancelled.updated
    return view


async def cancel_order(call: BinanceCall) -> object:
    found = market(call)
    order = await _find(call, found, UNKNOWN_ORDER)
    _orders_limit(call)
    return await _cancel(call, order, found)


async def cancel_open_orders(call: BinanceCall) -> object:
    found = market(call)
    open_orders = await call.services.history.orders(call.user_id, found.symbol, True, 10_000)
    if not open_orders:
        raise BinanceError(-2011, UNKNOWN_ORDER)
    _orders_limit(call)
    done = await asyncio.gather(
        *(_cancel(call, order, found) for order in open_orders), return_exceptions=True
    )
    cancelled = [view for view in done if isinstance(view, dict)]
    if not cancelled:
        raise BinanceError(-2011, UNKNOWN_ORDER)
    return sorted(cancelled, key=lambda view: int(view["orderId"]))


async def open_orders(call: BinanceCall) -> object:
    found = optional_market(call)
    got = await call.services.history.orders(
        call.user_id, None if found is None else found.symbol, True, 10_000
    )
    got.sort(key=lambda order: order.id)
    return [order_view(order, call.services.markets[order.market]) for order in got]


def _range(call: BinanceCall) -> tuple[int | None, int | None, int]:
    start, end = integer(call, "startTime"), integer(call, "endTime")
    if start is not None and end is not None and end < start:
        raise BinanceError(-1127, "startTime is after endTime.")
    limit = integer(call, "limit", 500, low=1, high=MAX_ROWS)
    assert limit is not None
    return start, end, limit


async def all_orders(call: BinanceCall) -> object:
    found = market(call)
    start, end, limit = _range(call)
    got = await call.services.history.orders_since(
        call.user_id, found.symbol, integer(call, "orderId"), start, end, limit
    )
    return [order_view(order, found) for order in got]


async def my_trades(call: BinanceCall) -> object:
    found = market(call)
    start, end, limit = _range(call)
    got = await call.services.history.trades_since(
        call.user_id,
        found.symbol,
        order_id=integer(call, "orderId"),
        from_id=integer(call, "fromId"),
        start=start,
        end=end,
        limit=limit,
    )
    return [my_trade(trade, call.user_id, found) for trade in got]


# -- user data streams (Binance's USER_STREAM: the API key, no signature) -----------


def _own_listen_key(call: BinanceCall) -> str:
    assert call.key is not None
    listen_key = call.services.api_keys.listen_key(call.key)
    if required(call, "listenKey") != listen_key:
        raise BinanceError(-1125, "This listenKey does not exist.")
    return listen_key


async def new_listen_key(call: BinanceCall) -> object:
    """The key's listen key (the same one each time, like Binance's while it is valid)."""
    assert call.key is not None
    return {"listenKey": call.services.api_keys.listen_key(call.key)}


async def keep_listen_key(call: BinanceCall) -> object:
    """A keepalive: a listen key lives as long as its API key, so this only checks it."""
    _own_listen_key(call)
    return {}


async def close_listen_key(call: BinanceCall) -> object:
    """Accepted; the stream itself ends when its API key is deleted (docs/binance-api.md)."""
    _own_listen_key(call)
    return {}
