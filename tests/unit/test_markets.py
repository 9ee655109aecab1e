"""Markets: grids, minimums, exact notional and fee arithmetic (SPEC §3)."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import pytest

from exchange.domain.commands import PlaceOrder
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import (
    MAX_UNITS,
    Asset,
    Market,
    build_market,
    default_assets,
    default_markets,
    normalize_pair,
)
from exchange.domain.matching import MatchingEngine

ASSETS = default_assets()
MARKETS = default_markets(ASSETS)
BTC_USDT = MARKETS["BTC/USDT"]
ETH_BTC = MARKETS["ETH/BTC"]


def test_default_assets() -> None:
    expected = {"BTC": Asset("BTC", 8), "ETH": Asset("ETH", 8), "USDT": Asset("USDT", 6)}
    assert expected == ASSETS


@pytest.mark.parametrize(
    ("symbol", "price_scale", "tick", "step", "min_amount", "min_notional"),
    [
        ("BTC/USDT", 2, 1, 1_000, 1_000, 5_000_000),
        ("ETH/USDT", 2, 1, 10_000, 10_000, 5_000_000),
        ("ETH/BTC", 6, 1, 10_000, 10_000, 10_000),
    ],
)
def test_default_markets_follow_spec_table(
    symbol: str, price_scale: int, tick: int, step: int, min_amount: int, min_notional: int
) -> None:
    market = MARKETS[symbol]
    assert market.symbol == symbol
    assert (market.price_scale, market.tick, market.step) == (price_scale, tick, step)
    assert (market.min_amount, market.min_notional) == (min_amount, min_notional)
    assert market.maker_fee == Decimal("0.002") == market.taker_fee


def test_parse_price_and_amount_exact() -> None:
    assert BTC_USDT.parse_price("30000.01") == 3_000_001
    assert BTC_USDT.parse_price(Decimal("0.1")) == 10
    assert BTC_USDT.parse_price(30000) == 3_000_000
    assert BTC_USDT.parse_amount("0.1") == 10_000_000
    assert BTC_USDT.parse_amount("0.00001") == 1_000
    assert ETH_BTC.parse_price("0.066123") == 66_123


@pytest.mark.parametrize(
    "value", ["0", "-1", "1e400", "NaN", "Infinity", "", "abc", "30000.001", "0.00"]
)
def test_parse_price_rejects(value: str) -> None:
    with pytest.raises(ExchangeError) as caught:
        BTC_USDT.parse_price(value)
    assert caught.value.code == "invalid_argument"


@pytest.mark.parametrize("value", ["0", "-0.1", "1e400", "NaN", "0.123456789", "10000000", "1e20"])
def test_parse_amount_rejects(value: str) -> None:
    with pytest.raises(ExchangeError) as caught:
        BTC_USDT.parse_amount(value)
    assert caught.value.code == "invalid_argument"


def test_off_step_and_oversized_values_are_refused_where_orders_are_placed() -> None:
    """Off the grid converts exactly, but no order has it: the engine's rule, checked once;
    the engine refuses an oversized command too, whoever made it."""
    engine = MatchingEngine({BTC_USDT.symbol: BTC_USDT})
    engine.credit(1, "USDT", 10**12)
    off_step = PlaceOrder(1, "BTC/USDT", "buy", BTC_USDT.parse_amount("0.000001"), 3_000_000)
    oversized = PlaceOrder(1, "BTC/USDT", "buy", MAX_UNITS, 3_000_000)
    for order in (off_step, oversized):
        with pytest.raises(ExchangeError) as caught:
            engine.place(order, now=0)
        assert caught.value.code == "invalid_argument"


def test_off_tick_and_off_step_are_refused_not_rounded() -> None:
    market = build_market(
        "X/USDT", Asset("X", 8), ASSETS["USDT"], "0.05", "0.001", "0.001", "1", "0", "0"
    )
    assert market.parse_price("1.05") == 105
    assert market.parse_amount("0.002") == 200_000
    # The grid is a rule of an order, checked once, where orders are placed.
    engine = MatchingEngine({market.symbol: market})
    engine.credit(1, "USDT", 10**12)
    order = PlaceOrder(1, "X/USDT", "buy", market.parse_amount("0.002"), market.parse_price("1.04"))
    with pytest.raises(ExchangeError, match=r"multiple of 0\.05"):
        engine.place(order, now=0)
    order = PlaceOrder(1, "X/USDT", "buy", market.parse_amount("0.0015"), 105)
    with pytest.raises(ExchangeError, match=r"multiple of 0\.00100000"):
        engine.place(order, now=0)


def test_float_objects_are_refused() -> None:
    with pytest.raises(ExchangeError):
        BTC_USDT.parse_price(3 / 2)
    with pytest.raises(ExchangeError):
        BTC_USDT.parse_amount(1 / 4)


def test_formatting_is_plain_and_fixed_scale() -> None:
    assert BTC_USDT.format_price(3_000_001) == "30000.01"
    assert BTC_USDT.format_amount(120_000) == "0.00120000"
    assert BTC_USDT.format_quote(5_000_000) == "5.000000"
    assert ETH_BTC.format_price(66_000) == "0.066000"


@pytest.mark.parametrize(
    ("market", "price", "amount"),
    [
        (BTC_USDT, "30000.01", "0.12345"),
        (BTC_USDT, "0.01", "0.00001"),
        (BTC_USDT, "99999.99", "3.33333"),
        (ETH_BTC, "0.066123", "1.2345"),
        (ETH_BTC, "0.000001", "0.0001"),
    ],
)
def test_notional_is_exact_floor_and_ceil(market: Market, price: str, amount: str) -> None:
    exact = Decimal(price) * Decimal(amount) * 10**market.quote.scale
    p, a = market.parse_price(price), market.parse_amount(amount)
    assert market.notional(p, a) == int(exact.to_integral_value(ROUND_FLOOR))
    assert market.notional_ceil(p, a) == int(exact.to_integral_value(ROUND_CEILING))


def test_fee_rounds_up_in_received_units() -> None:
    assert BTC_USDT.fee(1_000, Decimal("0.002")) == 2
    assert BTC_USDT.fee(1_001, Decimal("0.002")) == 3  # 2.002 -> 3
    assert BTC_USDT.fee(0, Decimal("0.002")) == 0
    assert BTC_USDT.maker_fee_of(3_703_501_234) == 7_407_003
    assert BTC_USDT.taker_fee_of(12_345_000) == 24_690


def test_build_market_validates_fees() -> None:
    with pytest.raises(ExchangeError):
        build_market("A/B", Asset("A", 2), Asset("B", 2), "1", "1", "1", "1", "1", "0")
    with pytest.raises(ExchangeError):
        build_market("A/B", Asset("A", 2), Asset("B", 2), "1", "1", "1", "1", "-0.1", "0")


def test_build_market_price_scale_follows_tick() -> None:
    market = build_market("A/B", Asset("A", 2), Asset("B", 2), "10", "1", "1", "1", "0", "0")
    assert (market.price_scale, market.tick) == (0, 10)


@pytest.mark.parametrize("text", ["btc_usdt", "BTC-USDT", "btc/usdt", " Btc/Usdt "])
def test_normalize_pair(text: str) -> None:
    assert normalize_pair(text) == "BTC/USDT"


@pytest.mark.parametrize("text", ["btcusdt", "a/b/c", "", "b c/d"])
def test_normalize_pair_rejects_non_pairs(text: str) -> None:
    with pytest.raises(ExchangeError) as caught:
        normalize_pair(text)
    assert caught.value.code == "unknown_pair"
