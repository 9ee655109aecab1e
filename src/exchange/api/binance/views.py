"""Binance's shapes of markets, orders, trades and balances, from the exchange's records.

Every field Binance documents is present (ccxt reads many of them); amounts are
decimal strings at the asset's scale, never floats. An order object never has a
``code`` key: ccxt would take it for an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from exchange.domain.markets import MAX_UNITS, Market
from exchange.domain.money import format_units
from exchange.domain.orders import (
    BUY,
    CANCELED,
    FILLED,
    LIMIT,
    OPEN,
    PARTIALLY_FILLED,
    REJECTED,
    Order,
    Trade,
)
from exchange.engine.port import Balances

ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET"]
#: An order placed without ``newClientOrderId`` is shown as ``ex-<orderId>``: Binance
#: always shows one, but a made-up id would cost a stored, indexed client id per
#: order for nothing (the client never had it to retry with). ``_find`` reads it back.
DERIVED_PREFIX = "ex-"


def client_id_of(order: Order) -> str:
    """The order's ``clientOrderId``: the client's own, or the one derived from its id."""
    return order.client_order_id or f"{DERIVED_PREFIX}{order.id}"


def derived_order_id(client_id: str) -> int | None:
    """The order id in a derived client id (``ex-42`` -> 42), else None."""
    digits = client_id[len(DERIVED_PREFIX) :]
    if client_id.startswith(DERIVED_PREFIX) and digits.isascii() and digits.isdigit():
        return int(digits) if len(digits) < 19 else None
    return None


def symbol_of(market: Market) -> str:
    """``BTC/USDT`` -> ``BTCUSDT``."""
    return market.base.code + market.quote.code


def _max(step: int) -> int:
    """The largest multiple of ``step`` below MAX_UNITS (what the engine accepts)."""
    top = MAX_UNITS - 1
    return top - top % step


def market_info(market: Market, halted: bool = False) -> dict[str, Any]:
    """One ``exchangeInfo`` symbol, every figure from the market's settings (``HALT`` while an
    operator has halted it)."""
    price = market.format_price
    amount = market.format_amount
    lot = {"minQty": amount(market.min_amount), "maxQty": amount(_max(market.step))}
    return {
        "symbol": symbol_of(market),
        "status": "HALT" if halted else "TRADING",
        "baseAsset": market.base.code,
        "baseAssetPrecision": market.base.scale,
        "quoteAsset": market.quote.code,
        "quotePrecision": market.quote.scale,
        "quoteAssetPrecision": market.quote.scale,
        "baseCommissionPrecision": market.base.scale,
        "quoteCommissionPrecision": market.quote.scale,
        "orderTypes": ORDER_TYPES,
        "icebergAllowed": False,
        "ocoAllowed": False,
        "otoAllowed": False,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": False,
        "cancelReplaceAllowed": False,
        "amendAllowed": False,
        "pegInstructionsAllowed": False,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": price(market.tick),
                "maxPrice": price(_max(market.tick)),
                "tickSize": price(market.tick),
            },
            {"filterType": "LOT_SIZE", **lot, "stepSize": amount(market.step)},
            {"filterType": "MARKET_LOT_SIZE", **lot, "stepSize": amount(market.step)},
            {
                "filterType": "NOTIONAL",
                "minNotional": market.format_quote(market.min_notional),
                "applyMinToMarket": True,
                "maxNotional": market.format_quote(_max(1)),
                "applyMaxToMarket": False,
                "avgPriceMins": 0,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_MAKER"],
    }


def status_of(order: Order) -> str:
    """Binance's status: an IOC, FOK or market order's unfilled rest *expires*."""
    status = order.status
    if status == OPEN:
        return "NEW"
    if status == PARTIALLY_FILLED:
        return "PARTIALLY_FILLED"
    if status == FILLED:
        return "FILLED"
    if status == REJECTED:
        return "REJECTED"
    if status == CANCELED and order.type == LIMIT and order.tif == "GTC":
        return "CANCELED"  # only a resting order can be cancelled by its owner
    return "EXPIRED"


def type_of(order: Order) -> str:
    if order.type != LIMIT:
        return "MARKET"
    return "LIMIT_MAKER" if order.post_only else "LIMIT"


def order_result(order: Order, market: Market) -> dict[str, Any]:
    """The fields every Binance order answer has (a cancel's, the RESULT of a new order)."""
    return {
        "symbol": symbol_of(market),
        "orderId": order.id,
        "orderListId": -1,
        "clientOrderId": client_id_of(order),
        "price": market.format_price(order.price),
        "origQty": market.format_amount(order.amount),
        "executedQty": market.format_amount(order.filled),
        "cummulativeQuoteQty": market.format_quote(order.quote_filled),
        "status": status_of(order),
        "timeInForce": order.tif if order.type == LIMIT else "GTC",
        "type": type_of(order),
        "side": "BUY" if order.side == BUY else "SELL",
        "selfTradePreventionMode": "EXPIRE_MAKER",
    }


def order_view(order: Order, market: Market) -> dict[str, Any]:
    """``GET /api/v3/order``, ``openOrders`` and ``allOrders`` items."""
    view = order_result(order, market)
    view["stopPrice"] = market.format_price(0)
    view["icebergQty"] = market.format_amount(0)
    view["time"] = order.created
    view["updateTime"] = order.updated
    view["isWorking"] = order.is_open
    view["workingTime"] = order.created if order.is_open or order.filled else -1
    view["origQuoteOrderQty"] = market.format_quote(0)
    return view


def fee_of(trade: Trade, order: Order, market: Market) -> tuple[str, str]:
    fee = trade.taker_fee if trade.taker_order_id == order.id else trade.maker_fee
    if order.side == BUY:
        return market.format_amount(fee), market.base.code
    return market.format_quote(fee), market.quote.code


def new_order_view(
    order: Order, trades: list[Trade], market: Market, respond: str, by_value: int = 0
) -> dict[str, Any]:
    """``POST /api/v3/order``'s answer as ``newOrderRespType`` asks (ACK, RESULT or FULL).

    ``by_value``: the ``quoteOrderQty`` of a market order by value (not stored: later
    queries of the order show 0 there).
    """
    if respond == "ACK":
        return {
            "symbol": symbol_of(market),
            "orderId": order.id,
            "orderListId": -1,
            "clientOrderId": client_id_of(order),
            "transactTime": order.updated,
        }
    view = order_result(order, market)
    view["transactTime"] = order.updated
    view["origQuoteOrderQty"] = market.format_quote(by_value)
    view["workingTime"] = order.created if order.is_open or order.filled else -1
    if respond == "FULL":
        fills = []
        for trade in trades:
            commission, asset = fee_of(trade, order, market)
            fills.append(
                {
                    "price": market.format_price(trade.price),
                    "qty": market.format_amount(trade.amount),
                    "commission": commission,
                    "commissionAsset": asset,
                    "tradeId": trade.id,
                }
            )
        view["fills"] = fills
    return view


def public_trade(trade: Trade, market: Market) -> dict[str, Any]:
    return {
        "id": trade.id,
        "price": market.format_price(trade.price),
        "qty": market.format_amount(trade.amount),
        "quoteQty": market.format_quote(trade.quote),
        "time": trade.time,
        "isBuyerMaker": trade.taker_side != BUY,
        "isBestMatch": True,
    }


def aggregate_trades(trades: list[Trade], market: Market) -> list[dict[str, Any]]:
    """Binance's aggregate trades: the fills of one taker order at one price, summed.

    An aggregate's id is its first trade's id, so ``fromId`` selects by trade id.
    """
    groups: list[list[Trade]] = []
    for trade in trades:
        group = groups[-1] if groups else None
        if (
            group
            and group[0].taker_order_id == trade.taker_order_id
            and (group[0].price == trade.price)
        ):
            group.append(trade)
        else:
            groups.append([trade])
    return [_aggregate(group, market) for group in groups]


def _aggregate(group: list[Trade], market: Market) -> dict[str, Any]:
    first = group[0]
    return {
        "a": first.id,
        "p": market.format_price(first.price),
        "q": market.format_amount(sum(trade.amount for trade in group)),
        "f": first.id,
        "l": group[-1].id,
        "T": first.time,
        "m": first.taker_side != BUY,
        "M": True,
    }


def my_trade(trade: Trade, user_id: int, market: Market) -> dict[str, Any]:
    """A ``myTrades`` item: the user's side of one trade."""
    taker = trade.taker_user_id == user_id
    buyer = (trade.taker_side == BUY) == taker
    fee = trade.taker_fee if taker else trade.maker_fee
    return {
        "symbol": symbol_of(market),
        "id": trade.id,
        "orderId": trade.taker_order_id if taker else trade.maker_order_id,
        "orderListId": -1,
        "price": market.format_price(trade.price),
        "qty": market.format_amount(trade.amount),
        "quoteQty": market.format_quote(trade.quote),
        "commission": market.format_amount(fee) if buyer else market.format_quote(fee),
        "commissionAsset": market.base.code if buyer else market.quote.code,
        "time": trade.time,
        "isBuyer": buyer,
        "isMaker": not taker,
        "isBestMatch": True,
    }


def basis_points(rate: Decimal) -> int:
    """A fee rate as Binance's account commissions (0.002 -> 20, in 0.01 %), floored."""
    return int(rate * 10_000)


def balances(balances: Balances, scales: Mapping[str, int]) -> list[dict[str, str]]:
    return [
        {
            "asset": asset,
            "free": format_units(available, scales[asset]),
            "locked": format_units(frozen, scales[asset]),
        }
        for asset, (available, frozen) in balances.items()
    ]
