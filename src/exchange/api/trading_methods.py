"""Trading methods of SPEC §6; every change goes through the engine's queue."""

from __future__ import annotations

from typing import Any

from exchange.api import schemas
from exchange.api.context import (
    Call,
    Method,
    choice,
    decimal,
    flag,
    integer,
    optional_choice,
    optional_decimal,
    optional_pair,
    optional_text,
    pair,
    required_integer,
)
from exchange.api.params import missing
from exchange.api.views import my_trade_view, order_info, order_view
from exchange.domain.commands import CancelOrder, PlaceOrder
from exchange.domain.errors import ExchangeError
from exchange.domain.orders import BUY, SELL, repeated_differently

PAIR = pair()
AMOUNT = decimal("amount", "base amount, a multiple of the market's step")
PRICE = optional_decimal("price", "limit price (required for limit orders), on the market's tick")
TYPE = choice("type", "limit or market", ("limit", "market"), default="limit")
TIF = optional_choice(
    "time_in_force",
    "GTC (default for limit), IOC (default for market) or FOK",
    ("GTC", "IOC", "FOK"),
)
POST_ONLY = flag("post_only", "refuse to take liquidity")
CLIENT_ORDER_ID = optional_text(
    "client_order_id", "idempotency key, at most 36 characters", max_length=36
)
#: In the order they are checked (the first bad one is the one refused).
ORDER_PARAMS = (PAIR, TYPE, TIF, AMOUNT, PRICE, POST_ONLY, CLIENT_ORDER_ID)
ORDER_ID = required_integer("order_id", "the order's id", low=1, high=2**63 - 1)
ONLY_PAIR = optional_pair("only this market")
STATUS = choice("status", "open or all", ("open", "all"), default="open")
LIMIT = integer("limit", "how many, newest first", default=100, low=1, high=500)


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
    market = PAIR.of(call)
    order_type = TYPE.of(call)
    amount = market.parse_amount(AMOUNT.of(call))
    sent_price = PRICE.of(call)
    if order_type == "limit" and sent_price is None:
        raise missing("price")
    price = 0 if sent_price is None else market.parse_price(sent_price)
    command = PlaceOrder(
        call.user_id,
        market.symbol,
        side,
        amount,
        price,
        order_type,
        TIF.of(call) or ("GTC" if order_type == "limit" else "IOC"),
        POST_ONLY.of(call),
        CLIENT_ORDER_ID.of(call) or None,
    )
    result = await call.services.engine.submit(command)
    if result.duplicate or result.order is None:
        return await _full_order(call, result.order_id, command)
    return order_view(result.order, result.trades, market)


async def buy(call: Call) -> object:
    return await _place(call, BUY)


async def sell(call: Call) -> object:
    return await _place(call, SELL)


async def cancel_order(call: Call) -> object:
    order = await call.services.engine.submit(CancelOrder(call.user_id, ORDER_ID.of(call)))
    return await _full_order(call, order.id)


async def get_orders(call: Call) -> object:
    market = ONLY_PAIR.of(call)
    found = await call.services.history.orders(
        call.user_id,
        None if market is None else market.symbol,
        STATUS.of(call) == "open",
        LIMIT.of(call),
    )
    markets = call.services.markets
    return [order_info(order, markets[order.market]) for order in found]


async def get_my_trades(call: Call) -> object:
    market = ONLY_PAIR.of(call)
    found = await call.services.history.trades(
        call.user_id, None if market is None else market.symbol, LIMIT.of(call)
    )
    markets = call.services.markets
    return [my_trade_view(trade, call.user_id, markets[trade.market]) for trade in found]


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
        (ORDER_ID,),
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
        (ONLY_PAIR, STATUS, LIMIT),
        auth=True,
        tag="trading",
    ),
    Method(
        "get_my_trades",
        "POST",
        get_my_trades,
        "Your trades, newest first.",
        list[schemas.MyTrade],
        (ONLY_PAIR, LIMIT),
        auth=True,
        tag="trading",
    ),
)
