"""The ledger: double entry, refusals that change nothing, withdrawal holds."""

from __future__ import annotations

import pytest

from exchange.domain.errors import ExchangeError
from exchange.domain.ledger import (
    DEPOSIT_ACCOUNT,
    FEE_ACCOUNT,
    WITHDRAWAL_ACCOUNT,
    Entry,
    Ledger,
)
from exchange.domain.markets import default_assets


def _ledger() -> Ledger:
    ledger = Ledger(default_assets())
    ledger.credit(1, "USDT", 100_000_000, "deposit", 7)
    return ledger


def _entry_sums(entries: list[Entry]) -> dict[str, int]:
    sums: dict[str, int] = {}
    for entry in entries:
        sums[entry.asset] = sums.get(entry.asset, 0) + entry.d_available + entry.d_frozen
    return sums


def test_credit_comes_from_the_deposit_account() -> None:
    ledger = _ledger()
    assert ledger.balance(1, "USDT") == (100_000_000, 0)
    assert ledger.available(DEPOSIT_ACCOUNT, "USDT") == -100_000_000
    assert ledger.totals() == {"BTC": 0, "ETH": 0, "USDT": 0}
    entries, touched = ledger.drain()
    assert entries == [
        Entry(DEPOSIT_ACCOUNT, "USDT", -100_000_000, 0, "deposit", 7),
        Entry(1, "USDT", 100_000_000, 0, "deposit", 7),
    ]
    assert touched == {(1, "USDT"), (DEPOSIT_ACCOUNT, "USDT")}
    assert ledger.drain() == ([], set())


def test_freeze_and_unfreeze() -> None:
    ledger = _ledger()
    ledger.drain()
    ledger.freeze(1, "USDT", 40_000_000, "order", 3)
    assert ledger.balance(1, "USDT") == (60_000_000, 40_000_000)
    ledger.unfreeze(1, "USDT", 10_000_000, "order_release", 3)
    assert ledger.balance(1, "USDT") == (70_000_000, 30_000_000)
    entries, _ = ledger.drain()
    assert entries == [
        Entry(1, "USDT", -40_000_000, 40_000_000, "order", 3),
        Entry(1, "USDT", 10_000_000, -10_000_000, "order_release", 3),
    ]


def test_insufficient_balance_changes_nothing_and_says_why() -> None:
    ledger = _ledger()
    ledger.drain()
    with pytest.raises(ExchangeError) as caught:
        ledger.freeze(1, "USDT", 100_000_001, "order", 1)
    assert caught.value.code == "insufficient_balance"
    assert caught.value.message == "need 100.000001 USDT, 100.000000 available"
    with pytest.raises(ExchangeError) as caught:
        ledger.freeze(2, "BTC", 1, "order", 1)
    assert caught.value.message == "need 0.00000001 BTC, 0.00000000 available"
    assert ledger.balance(1, "USDT") == (100_000_000, 0)
    assert ledger.drain() == ([], set())


def test_unknown_coin_and_bad_credit() -> None:
    ledger = _ledger()
    with pytest.raises(ExchangeError) as caught:
        ledger.credit(1, "DOGE", 5, "deposit", 0)
    assert caught.value.code == "unknown_coin"
    with pytest.raises(ExchangeError):
        ledger.credit(1, "BTC", 0, "deposit", 0)
    with pytest.raises(ExchangeError):
        ledger.credit(FEE_ACCOUNT, "BTC", 5, "deposit", 0)


def test_withdrawal_approved_moves_amount_and_fee() -> None:
    ledger = _ledger()
    ledger.drain()
    ledger.hold(1, "USDT", 30_000_000, 9)
    assert ledger.balance(1, "USDT") == (70_000_000, 30_000_000)
    assert ledger.held(1, "USDT") == 30_000_000
    ledger.settle_hold(1, "USDT", 30_000_000, 1_000_000, 9)
    assert ledger.balance(1, "USDT") == (70_000_000, 0)
    assert ledger.available(WITHDRAWAL_ACCOUNT, "USDT") == 29_000_000
    assert ledger.available(FEE_ACCOUNT, "USDT") == 1_000_000
    assert ledger.held(1, "USDT") == 0
    assert ledger.totals()["USDT"] == 0
    entries, touched = ledger.drain()
    assert _entry_sums(entries) == {"USDT": 0}
    assert touched == {(1, "USDT"), (WITHDRAWAL_ACCOUNT, "USDT"), (FEE_ACCOUNT, "USDT")}


def test_withdrawal_rejected_returns_the_amount() -> None:
    ledger = _ledger()
    ledger.hold(1, "USDT", 30_000_000, 9)
    ledger.release_hold(1, "USDT", 30_000_000, 9)
    assert ledger.balance(1, "USDT") == (100_000_000, 0)
    assert ledger.holds() == {}
    with pytest.raises(AssertionError):
        ledger.release_hold(1, "USDT", 1, 9)


def test_settle_trade_conserves_every_asset() -> None:
    ledger = _ledger()
    ledger.credit(2, "BTC", 100_000_000, "deposit", 8)
    ledger.freeze(1, "USDT", 30_001, "order", 1)
    ledger.freeze(2, "BTC", 1_000, "order", 2)
    ledger.drain()
    ledger.settle_trade(1, 2, "BTC", "USDT", 1_000, 30_000, 2, 60, 1, 5)
    assert ledger.balance(1, "USDT") == (100_000_000 - 30_000, 0)
    assert ledger.balance(1, "BTC") == (998, 0)
    assert ledger.balance(2, "BTC") == (100_000_000 - 1_000, 0)
    assert ledger.balance(2, "USDT") == (29_940, 0)
    assert ledger.balance(FEE_ACCOUNT, "BTC") == (2, 0)
    assert ledger.balance(FEE_ACCOUNT, "USDT") == (60, 0)
    assert ledger.totals() == {"BTC": 0, "ETH": 0, "USDT": 0}
    entries, _ = ledger.drain()
    assert _entry_sums(entries) == {"BTC": 0, "USDT": 0}
    assert all(entry.ref == 5 for entry in entries)


def test_restore_and_accounts_roundtrip() -> None:
    ledger = _ledger()
    ledger.freeze(1, "USDT", 5, "order", 1)
    rows = list(ledger.accounts())
    other = Ledger(default_assets())
    other.restore(rows, [(1, "USDT", 5)])
    assert other.balance(1, "USDT") == (100_000_000 - 5, 5)
    assert other.held(1, "USDT") == 5
    assert other.totals()["USDT"] == 0
    assert other.drain() == ([], set())
