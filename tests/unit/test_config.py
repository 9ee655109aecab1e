"""Settings reach the markets: the fee rate is the operator's to choose."""

from __future__ import annotations

from decimal import Decimal

from exchange.app import configured_markets
from exchange.config import Settings
from exchange.domain.ledger import FEE_ACCOUNT
from exchange.domain.matching import MatchingEngine


def test_fee_rate_setting_applies_to_every_market() -> None:
    markets = configured_markets(Settings(fee_rate="0.001"))
    assert {m.taker_fee for m in markets.values()} == {Decimal("0.001")}
    assert {m.maker_fee for m in markets.values()} == {Decimal("0.001")}
    engine = MatchingEngine(markets)
    engine.credit(1, "BTC", 10**8)
    engine.credit(2, "USDT", 100_000 * 10**6)
    engine.place(1, "BTC/USDT", "sell", 10**8, 2_000_000, now=1)  # 1 BTC at 20000.00
    engine.place(2, "BTC/USDT", "buy", 10**8, 2_000_000, now=2)
    assert engine.ledger.balance(FEE_ACCOUNT, "BTC") == (100_000, 0)  # 0.1 % of 1 BTC
    assert engine.ledger.balance(FEE_ACCOUNT, "USDT") == (20 * 10**6, 0)  # 0.1 % of 20000
    engine.check_invariants()


def test_default_fee_is_two_per_mille() -> None:
    markets = configured_markets(Settings())
    assert {m.taker_fee for m in markets.values()} == {Decimal("0.002")}
