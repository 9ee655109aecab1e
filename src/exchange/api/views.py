"""Balances, orders and trades as the API shows them: decimal strings at their scales."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from exchange.domain.markets import Asset, Market
from exchange.domain.money import format_units
from exchange.domain.orders import BUY, SELL, Order, Trade
from exchange.engine.port import Balances


def balances_view(balances: Balances, assets: Mapping[str, Asset]) -> dict[str, dict[str, str]]:
    """get_user_coin's data and the ``balances`` stream: every asset, at its scale."""
    return {
        code: {
            "available": format_units(available, assets[code].scale),
            "frozen": format_units(frozen, assets[code].scale),
        }
        for code, (available, frozen) in balances.items()
    }


def average_price(order: Order, market: Market) -> str | None:
    """quote_filled / filled, shown at the market's price scale (display only)."""
    if order.filled == 0:
        return None
    quote = Decimal(order.quote_filled).scaleb(-market.quote.scale)
    base = Decimal(order.filled).scaleb(-market.base.scale)
    exponent = Decimal(1).scaleb(-market.price_scale)
    return str((quote / base).quantize(exponent, rounding=ROUND_HALF_EVEN))


def order_info(order: Order, market: Market) -> dict[str, Any]:
    return {
        "order_id": order.id,
        "client_order_id": order.client_order_id,
        "pair": order.market,
        "side": order.side,
        "type": order.type,
        "time_in_force": order.tif,
        "post_only": order.post_only,
        "price": market.format_price(order.price) if order.price else None,
        "amount": market.format_amount(order.amount),
        "filled": market.format_amount(order.filled),
        "average_price": average_price(order, market),
        "status": order.status,
        "created": order.created,
        "updated": order.updated,
    }


def _fee_of(trade: Trade, user_is_taker: bool, side: str, market: Market) -> tuple[str, str]:
    fee = trade.taker_fee if user_is_taker else trade.maker_fee
    if side == BUY:
        return market.format_amount(fee), market.base.code
    return market.format_quote(fee), market.quote.code


def order_view(order: Order, trades: list[Trade], market: Market) -> dict[str, Any]:
    view = order_info(order, market)
    rows = []
    for trade in trades:
        taker = trade.taker_order_id == order.id
        fee, fee_coin = _fee_of(trade, taker, order.side, market)
        rows.append(
            {
                "trade_id": trade.id,
                "price": market.format_price(trade.price),
                "amount": market.format_amount(trade.amount),
                "fee": fee,
                "fee_coin": fee_coin,
                "role": "taker" if taker else "maker",
                "time": trade.time,
            }
        )
    view["trades"] = rows
    return view


def my_trade_view(trade: Trade, user_id: int, market: Market) -> dict[str, Any]:
    taker = trade.taker_user_id == user_id
    side = trade.taker_side if taker else SELL if trade.taker_side == BUY else BUY
    fee, fee_coin = _fee_of(trade, taker, side, market)
    return {
        "trade_id": trade.id,
        "order_id": trade.taker_order_id if taker else trade.maker_order_id,
        "pair": trade.market,
        "side": side,
        "role": "taker" if taker else "maker",
        "price": market.format_price(trade.price),
        "amount": market.format_amount(trade.amount),
        "fee": fee,
        "fee_coin": fee_coin,
        "time": trade.time,
    }
