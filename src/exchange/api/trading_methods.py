"""Trading methods of SPEC §6; every change goes through the engine's queue."""

from __future__ import annotations

from typing import Any

from exchange.api import schemas
from exchange.api.context import Call, Method, Param
from exchange.api.params import choice, flag, integer, optional_text, raw, text
from exchange.api.views import my_trade_view, order_info, order_view
from exchange.domain.errors import ExchangeError
from exchange.domain.events import PlaceResult
from exchange.domain.markets import Market, normalize_pair
from exchange.domain.orders import BUY, SELL, Order, repeated_differently
from exchange.engine.commands import CancelOrder, PlaceOrder

TYPES = {"limit": "limit", "market": "market"}
TIFS = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK"}
STATUSES = {"open": "open", "all": "all"}


def market_of(call: Call, value: str | None = None) -> Market:
    pair = value if value is not None else text(call.params, "pair", max_length=32)
    market = call.services.markets.get(normalize_pair(pair))
    if market is None:
        raise ExchangeError("unknown_pair", f"{pair[:32]!r} is not a listed pair")
    return market


def optional_market(call: Call) -> Market | None:
    pair = optional_text(call.params, "pair", max_length=32)
    return None if pair is None or pair.strip() == "" else market_of(call, pair)


async def _full_order(
    call: Call, order_id: int, repeated: PlaceOrder | None = None
) -> dict[str, Any]:
    """The stored order with its trades, at its own market's scales.

    ``repeated``: a placement that reused this order's client id. The engine
    compares what it asks when it still holds the order; an order only in the
    database (closed before a restart) is compared here, by the same rule.
    """
    found = await call.services.history.order(call.user_id, order_id)
    if found is None:
        raise ExchangeError("order_not_found", f"no order {order_id}")
    order, trades = found
    if repeated is not None:
        differs = repeated_differently(
            order, repeated.market, repeated.side, repeated.type, repeated.price, repeated.amount
        )
        if differs:
            raise ExchangeError(
                "invalid_argument",
                f"client_order_id {order.client_order_id!r} is already used by order "
                f"{order.id} with another {', '.join(differs)}",
            )
    return order_view(order, trades, call.services.markets[order.market])


async def _place(call: Call, side: str) -> dict[str, Any]:
    params = call.params
    market = market_of(call)
    order_type = choice(params, "type", TYPES, "limit")
    tif = choice(params, "time_in_force", TIFS, "GTC" if order_type == "limit" else "IOC")
    amount = market.parse_amount(raw(params, "amount"))
    if order_type == "limit" or params.get("price") not in (None, ""):
        price = market.parse_price(raw(params, "price"))
    else:
        price = 0
    command = PlaceOrder(
        call.user_id,
        market.symbol,
        side,
        amount,
        price,
        order_type,
        tif,
        flag(params, "post_only"),
        optional_text(params, "client_order_id", max_length=36) or None,
    )
    result: PlaceResult = await call.services.engine.submit(command)
    if result.duplicate or result.order is None:
        return await _full_order(call, result.order_id, command)
    return order_view(result.order, result.trades, market)


async def buy(call: Call) -> object:
    return await _place(call, BUY)


async def sell(call: Call) -> object:
    return await _place(call, SELL)


async def cancel_order(call: Call) -> object:
    if call.params.get("order_id") in (None, ""):
        raise ExchangeError("missing_argument", "parameter 'order_id' is required")
    order_id = integer(call.params, "order_id", 0, low=1, high=2**63 - 1)
    order: Order = await call.services.engine.submit(CancelOrder(call.user_id, order_id))
    return await _full_order(call, order.id)


async def get_orders(call: Call) -> object:
    market = optional_market(call)
    status = choice(call.params, "status", STATUSES, "open")
    limit = integer(call.params, "limit", 100, low=1, high=500)
    found = await call.services.history.orders(
        call.user_id, None if market is None else market.symbol, status == "open", limit
    )
    markets = call.services.markets
    return [order_info(order, markets[order.market]) for order in found]


async def get_my_trades(call: Call) -> object:
    market = optional_market(call)
    limit = integer(call.params, "limit", 100, low=1, high=500)
    found = await call.services.history.trades(
        call.user_id, None if market is None else market.symbol, limit
    )
    markets = call.services.markets
    return [my_trade_view(trade, call.user_id, markets[trade.market]) for trade in found]


PAIR = Param("pair", required=True, description="BTC/USDT, btc_usdt, ETH-BTC ...", max_length=32)
ORDER_PARAMS = (
    PAIR,
    Param("amount", "decimal", True, "base amount, a multiple of the market's step"),
    Param("price", "decimal", False, "limit price (required for limit orders), on the tick"),
    Param("type", description="limit (default) or market", enum=("limit", "market")),
    Param("time_in_force", description="GTC (default), IOC or FOK", enum=("GTC", "IOC", "FOK")),
    Param("post_only", "boolean", description="refuse to take liquidity"),
    Param("client_order_id", description="idempotency key, at most 36 characters", max_length=36),
)

METHODS = (
    Method(
        "buy",
        "POST",
        buy,
        "Place a buy order; answered after its durable commit.",
        schemas.Order,
        ORDER_PARAMS,
        auth=True,
        tag="trading",
        limit="orders",
    ),
    Method(
        "sell",
        "POST",
        sell,
        "Place a sell order; answered after its durable commit.",
        schemas.Order,
        ORDER_PARAMS,
        auth=True,
        tag="trading",
        limit="orders",
    ),
    Method(
        "cancel_order",
        "POST",
        cancel_order,
        "Cancel one of your open orders.",
        schemas.Order,
        (Param("order_id", "integer", True, "the order's id"),),
        auth=True,
        tag="trading",
        limit="orders",
    ),
    Method(
        "get_orders",
        "POST",
        get_orders,
        "Your orders, newest first.",
        list[schemas.OrderInfo],
        (
            Param("pair", description="only this market", max_length=32),
            Param("status", description="open (default) or all", enum=("open", "all")),
            Param("limit", "integer", description="1-500, default 100"),
        ),
        auth=True,
        tag="trading",
    ),
    Method(
        "get_my_trades",
        "POST",
        get_my_trades,
        "Your trades, newest first.",
        list[schemas.MyTrade],
        (
            Param("pair", description="only this market", max_length=32),
            Param("limit", "integer", description="1-500, default 100"),
        ),
        auth=True,
        tag="trading",
    ),
)
