"""Double-entry balances: every unit comes from somewhere and goes somewhere.

Each (account, asset) has ``available`` and ``frozen`` ints in minor units.
Money enters from ``DEPOSIT_ACCOUNT`` (the outside world, the only account
allowed to go negative: it is minus everything ever deposited), leaves to
``WITHDRAWAL_ACCOUNT``, and fees collect in ``FEE_ACCOUNT``. Every change is an
:class:`Entry` in the outbox, so the sum over all accounts of every asset is
exactly zero after any sequence of operations, and the journal can persist the
entries as an audit trail alongside the new balances of the touched accounts.

Withdrawal holds are tracked apart from order holds so that the invariant
"frozen == what open orders hold + what pending withdrawals hold" can be checked.

The entries since the last ``accept`` are also the undo log: ``rollback`` takes
every one of them back (and the hold changes beside them), so a batch whose
rows cannot be committed leaves memory exactly as the database has it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from operator import itemgetter
from typing import NamedTuple

from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Asset
from exchange.domain.money import format_units

__all__ = [
    "DEPOSIT_ACCOUNT",
    "FEE_ACCOUNT",
    "SYSTEM_ACCOUNTS",
    "WITHDRAWAL_ACCOUNT",
    "Entry",
    "Ledger",
]

DEPOSIT_ACCOUNT = -1
FEE_ACCOUNT = -2
WITHDRAWAL_ACCOUNT = -3
SYSTEM_ACCOUNTS = (DEPOSIT_ACCOUNT, FEE_ACCOUNT, WITHDRAWAL_ACCOUNT)


class Entry(NamedTuple):
    user_id: int
    asset: str
    d_available: int
    d_frozen: int
    reason: str
    ref: int


# tuple.__new__ skips NamedTuple's Python-level __new__: entries are made per trade.
_new_entry = tuple.__new__
_account_of = itemgetter(0, 1)


class Ledger:
    """Balances in memory; the engine is its only writer."""

    __slots__ = ("_accounts", "_assets", "_entries", "_hold_log", "_holds")

    def __init__(self, assets: Mapping[str, Asset]) -> None:
        self._assets = dict(assets)
        # (user, asset) -> [available, frozen]; a list so the hot path mutates in place.
        self._accounts: dict[tuple[int, str], list[int]] = {}
        self._holds: dict[tuple[int, str], int] = {}
        self._entries: list[Entry] = []
        #: (user, asset, change) of every withdrawal hold since the last accept.
        self._hold_log: list[tuple[int, str, int]] = []

    # -- reading ------------------------------------------------------------

    @property
    def assets(self) -> dict[str, Asset]:
        return self._assets

    def available(self, user: int, asset: str) -> int:
        account = self._accounts.get((user, asset))
        return account[0] if account is not None else 0

    def frozen(self, user: int, asset: str) -> int:
        account = self._accounts.get((user, asset))
        return account[1] if account is not None else 0

    def balance(self, user: int, asset: str) -> tuple[int, int]:
        account = self._accounts.get((user, asset))
        return (account[0], account[1]) if account is not None else (0, 0)

    def held(self, user: int, asset: str) -> int:
        """Frozen for pending withdrawals (not for orders)."""
        return self._holds.get((user, asset), 0)

    def holds(self) -> dict[tuple[int, str], int]:
        return dict(self._holds)

    def accounts(self) -> Iterator[tuple[int, str, int, int]]:
        """Every account as (user, asset, available, frozen), e.g. for a snapshot."""
        for (user, asset), (available, frozen) in self._accounts.items():
            yield user, asset, available, frozen

    def totals(self) -> dict[str, int]:
        """Sum per asset over every account, system ones included: always exactly 0."""
        sums = dict.fromkeys(self._assets, 0)
        for (_user, asset), (available, frozen) in self._accounts.items():
            sums[asset] = sums.get(asset, 0) + available + frozen
        return sums

    # -- changing -----------------------------------------------------------

    def _account(self, user: int, asset: str) -> list[int]:
        key = (user, asset)
        account = self._accounts.get(key)
        if account is None:
            if asset not in self._assets:
                raise ExchangeError("unknown_coin", f"{asset!r} is not a listed coin")
            account = self._accounts[key] = [0, 0]
        return account

    def insufficient_error(self, asset: str, need: int, have: int) -> ExchangeError:
        scale = self._assets[asset].scale
        return ExchangeError(
            "insufficient_balance",
            f"need {format_units(need, scale)} {asset}, {format_units(have, scale)} available",
        )

    def freeze(self, user: int, asset: str, amount: int, reason: str, ref: int) -> None:
        """Move available to frozen, or refuse without changing anything."""
        if amount <= 0:
            if amount == 0:
                return
            raise ValueError(f"negative freeze {amount}")
        account = self._accounts.get((user, asset))
        have = account[0] if account is not None else 0
        if account is None or have < amount:
            if asset not in self._assets:
                raise ExchangeError("unknown_coin", f"{asset!r} is not a listed coin")
            raise self.insufficient_error(asset, amount, have)
        account[0] = have - amount
        account[1] += amount
        self._entries.append(_new_entry(Entry, (user, asset, -amount, amount, reason, ref)))

    def unfreeze(self, user: int, asset: str, amount: int, reason: str, ref: int) -> None:
        if amount <= 0:
            if amount == 0:
                return
            raise ValueError(f"negative unfreeze {amount}")
        account = self._accounts.get((user, asset))
        if account is None or account[1] < amount:
            raise AssertionError(f"unfreeze {amount} {asset} of user {user}: not that much frozen")
        account[0] += amount
        account[1] -= amount
        self._entries.append(_new_entry(Entry, (user, asset, amount, -amount, reason, ref)))

    def credit(self, user: int, asset: str, amount: int, reason: str, ref: int) -> None:
        """A deposit: from the outside world to the user's available balance."""
        if amount <= 0:
            raise ExchangeError("invalid_argument", "a credit must be greater than 0")
        if user < 0:
            raise ExchangeError("invalid_argument", "cannot credit a system account")
        target = self._account(user, asset)
        source = self._account(DEPOSIT_ACCOUNT, asset)
        source[0] -= amount
        target[0] += amount
        entries = self._entries
        entries.append(_new_entry(Entry, (DEPOSIT_ACCOUNT, asset, -amount, 0, reason, ref)))
        entries.append(_new_entry(Entry, (user, asset, amount, 0, reason, ref)))

    def move_frozen_to(
        self, user_from: int, asset: str, amount: int, user_to: int, reason: str, ref: int
    ) -> None:
        """Frozen of one account to available of another (settlements, withdrawals)."""
        if amount <= 0:
            if amount == 0:
                return
            raise ValueError(f"negative move {amount}")
        source = self._account(user_from, asset)
        if source[1] < amount:
            raise AssertionError(
                f"move {amount} {asset} from user {user_from}: not that much frozen"
            )
        target = self._account(user_to, asset)
        source[1] -= amount
        target[0] += amount
        entries = self._entries
        entries.append(_new_entry(Entry, (user_from, asset, 0, -amount, reason, ref)))
        entries.append(_new_entry(Entry, (user_to, asset, amount, 0, reason, ref)))

    # -- withdrawals ----------------------------------------------------------

    def hold(self, user: int, asset: str, amount: int, ref: int) -> None:
        """Freeze for a pending withdrawal (insufficient_balance if not available)."""
        if amount <= 0:
            raise ExchangeError("invalid_argument", "a withdrawal must be greater than 0")
        self.freeze(user, asset, amount, "withdrawal", ref)
        self._change_hold(user, asset, amount)

    def _change_hold(self, user: int, asset: str, change: int) -> None:
        key = (user, asset)
        held = self._holds.get(key, 0) + change
        if held:
            self._holds[key] = held
        else:
            del self._holds[key]
        self._hold_log.append((user, asset, change))

    def _take_hold(self, user: int, asset: str, amount: int) -> None:
        held = self._holds.get((user, asset), 0)
        if amount <= 0 or held < amount:
            raise AssertionError(f"withdrawal hold of user {user} is {held} {asset}, not {amount}")
        self._change_hold(user, asset, -amount)

    def release_hold(self, user: int, asset: str, amount: int, ref: int) -> None:
        """A rejected withdrawal: the amount goes back to available."""
        self._take_hold(user, asset, amount)
        self.unfreeze(user, asset, amount, "withdrawal_rejected", ref)

    def settle_hold(self, user: int, asset: str, amount: int, fee: int, ref: int) -> None:
        """An approved withdrawal: amount - fee leaves the exchange, the fee stays with it."""
        if not 0 <= fee <= amount:
            raise ExchangeError("invalid_argument", "withdrawal fee must be between 0 and amount")
        self._take_hold(user, asset, amount)
        self.move_frozen_to(user, asset, amount - fee, WITHDRAWAL_ACCOUNT, "withdrawal", ref)
        self.move_frozen_to(user, asset, fee, FEE_ACCOUNT, "withdrawal_fee", ref)

    # -- the matching hot path ------------------------------------------------

    def settle_trade(
        self,
        buyer: int,
        seller: int,
        base: str,
        quote: str,
        amount: int,
        quote_amount: int,
        buyer_fee: int,
        seller_fee: int,
        buyer_release: int,
        ref: int,
    ) -> None:
        """Settle one trade from both sides' frozen funds in one call.

        The buyer's frozen quote drops by what it paid plus ``buyer_release``
        (the part of its hold no longer needed, e.g. price improvement), which
        returns to available. Zero-delta entries are not written.
        """
        accounts = self._accounts
        entries = self._entries
        b_quote = accounts[(buyer, quote)]
        b_quote[0] += buyer_release
        b_quote[1] -= quote_amount + buyer_release
        if quote_amount or buyer_release:
            paid = -quote_amount - buyer_release
            entries.append(_new_entry(Entry, (buyer, quote, buyer_release, paid, "trade", ref)))
        key = (buyer, base)
        b_base = accounts.get(key)
        if b_base is None:
            b_base = accounts[key] = [0, 0]
        b_base[0] += amount - buyer_fee
        entries.append(_new_entry(Entry, (buyer, base, amount - buyer_fee, 0, "trade", ref)))
        accounts[(seller, base)][1] -= amount
        entries.append(_new_entry(Entry, (seller, base, 0, -amount, "trade", ref)))
        key = (seller, quote)
        s_quote = accounts.get(key)
        if s_quote is None:
            s_quote = accounts[key] = [0, 0]
        if quote_amount:
            s_quote[0] += quote_amount - seller_fee
            entries.append(
                _new_entry(Entry, (seller, quote, quote_amount - seller_fee, 0, "trade", ref))
            )
        if buyer_fee:
            key = (FEE_ACCOUNT, base)
            fee_account = accounts.get(key)
            if fee_account is None:
                fee_account = accounts[key] = [0, 0]
            fee_account[0] += buyer_fee
            entries.append(_new_entry(Entry, (FEE_ACCOUNT, base, buyer_fee, 0, "fee", ref)))
        if seller_fee:
            key = (FEE_ACCOUNT, quote)
            fee_account = accounts.get(key)
            if fee_account is None:
                fee_account = accounts[key] = [0, 0]
            fee_account[0] += seller_fee
            entries.append(_new_entry(Entry, (FEE_ACCOUNT, quote, seller_fee, 0, "fee", ref)))

    # -- batches and recovery -------------------------------------------------

    def pending(self) -> tuple[list[Entry], set[tuple[int, str]]]:
        """The entries since the last ``accept`` and the accounts they touched."""
        entries = self._entries
        return entries, set(map(_account_of, entries))

    def accept(self) -> None:
        """The pending entries are durable: they can no longer be rolled back."""
        self._entries = []
        self._hold_log = []

    def drain(self) -> tuple[list[Entry], set[tuple[int, str]]]:
        """``pending`` then ``accept``."""
        entries, touched = self.pending()
        self.accept()
        return entries, touched

    def rollback(self) -> None:
        """Take back every change since the last ``accept``, newest first.

        Every change of an account has its entry, so subtracting the entries
        restores each account exactly; an account left at zero is dropped, as an
        absent account reads as zero everywhere.
        """
        accounts = self._accounts
        for user, asset, d_available, d_frozen, _reason, _ref in reversed(self._entries):
            account = accounts[(user, asset)]
            account[0] -= d_available
            account[1] -= d_frozen
        for user, asset, _d_available, _d_frozen, _reason, _ref in self._entries:
            left = accounts.get((user, asset))
            if left is not None and left[0] == 0 and left[1] == 0:
                del accounts[(user, asset)]
        for user, asset, change in reversed(self._hold_log):
            key = (user, asset)
            held = self._holds.get(key, 0) - change
            if held:
                self._holds[key] = held
            else:
                del self._holds[key]
        self._entries = []
        self._hold_log = []

    def restore(
        self,
        rows: Iterable[tuple[int, str, int, int]],
        holds: Iterable[tuple[int, str, int]] = (),
    ) -> None:
        """Load (user, asset, available, frozen) rows and pending withdrawal holds."""
        self._accounts = {}
        self._holds = {}
        self._entries = []
        self._hold_log = []
        for user, asset, available, frozen in rows:
            if asset not in self._assets:
                raise ExchangeError("unknown_coin", f"{asset!r} is not a listed coin")
            self._accounts[(user, asset)] = [available, frozen]
        for user, asset, amount in holds:
            key = (user, asset)
            self._holds[key] = self._holds.get(key, 0) + amount
