"""Settings reach the markets: the fee rate is the operator's to choose."""

from __future__ import annotations

from decimal import Decimal

from exchange.config import Settings
from exchange.domain.commands import PlaceOrder
from exchange.domain.ledger import FEE_ACCOUNT
from exchange.domain.matching import MatchingEngine
from exchange.runtime import configured_markets


def test_fee_rate_setting_applies_to_every_market() -> None:
    markets = configured_markets(Settings(fee_rate="0.001"))
    assert {m.taker_fee for m in markets.values()} == {Decimal("0.001")}
    assert {m.maker_fee for m in markets.values()} == {Decimal("0.001")}
    engine = MatchingEngine(markets)
    engine.credit(1, "BTC", 10**8)
    engine.credit(2, "USDT", 100_000 * 10**6)
    engine.place(PlaceOrder(1, "BTC/USDT", "sell", 10**8, 2_000_000), now=1)  # 1 BTC at 20000.00
    engine.place(PlaceOrder(2, "BTC/USDT", "buy", 10**8, 2_000_000), now=2)
    assert engine.ledger.balance(FEE_ACCOUNT, "BTC") == (100_000, 0)  # 0.1 % of 1 BTC
    assert engine.ledger.balance(FEE_ACCOUNT, "USDT") == (20 * 10**6, 0)  # 0.1 % of 20000
    engine.check_invariants()


def test_default_fee_is_two_per_mille() -> None:
    markets = configured_markets(Settings())
    assert {m.taker_fee for m in markets.values()} == {Decimal("0.002")}


def test_markets_setting_overrides_and_adds_markets() -> None:
    settings = Settings(
        markets={
            "btc_usdt": {"tick": "0.1", "min_notional": "10", "taker_fee": "0.001"},
            "BTC/ETH": {
                "tick": "0.01",
                "step": "0.0001",
                "min_amount": "0.001",
                "min_notional": "0.1",
            },
        }
    )
    markets = configured_markets(settings)
    btc = markets["BTC/USDT"]
    assert (btc.format_price(btc.tick), btc.format_quote(btc.min_notional)) == ("0.1", "10.000000")
    assert (btc.taker_fee, btc.maker_fee) == (Decimal("0.001"), Decimal("0.002"))
    assert btc.format_amount(btc.step) == "0.00001000"  # untouched keys keep SPEC's default
    added = markets["BTC/ETH"]
    assert (added.base.code, added.quote.code, added.format_amount(added.min_amount)) == (
        "BTC",
        "ETH",
        "0.00100000",
    )


def test_bad_market_settings_fail_at_start_with_a_reason() -> None:
    import pytest

    from exchange.domain.errors import ExchangeError

    for overrides, reason in [
        ({"BTC/USDT": {"tick": "0"}}, "tick must be"),
        ({"BTC/USDT": {"step": "0.00001", "min_amount": "0.000015"}}, "multiple of step"),
        ({"BTC/USDT": {"taker_fee": "1.5"}}, "taker_fee must be in"),
        ({"BTC/USDT": {"spread": "1"}}, "unknown keys"),
        (
            {"DOGE/USDT": {"tick": "1", "step": "1", "min_amount": "1", "min_notional": "1"}},
            "assets",
        ),
        ({"SOL/USDT": {"tick": "1"}}, "missing"),
    ]:
        with pytest.raises(ExchangeError, match=reason):
            configured_markets(Settings(markets=overrides))
