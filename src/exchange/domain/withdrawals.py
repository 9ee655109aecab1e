"""Withdrawals: money leaving the exchange, held until an operator decides.

A withdrawal freezes its whole amount (fee included) in the same step that
creates it, so two withdrawals never spend the same funds and funds held by
open orders are never available to one. An operator then approves it (``sent``:
``amount - fee`` leaves through the withdrawal account, the fee goes to the fee
account) or rejects it (``rejected``: the amount returns to the user). Each
transition happens once, from ``pending`` only.

``Withdrawal`` is the one record of a withdrawal: the engine's memory, the
journal's rows, the API's answers and the history read from the database all
use it. It is immutable: a transition makes a new record, so an answer already
handed out never changes under its reader.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Asset
from exchange.domain.money import format_units

__all__ = [
    "MAX_ADDRESS",
    "MAX_TXID",
    "PENDING",
    "REJECTED",
    "SENT",
    "WITHDRAWAL_FIELDS",
    "Withdrawal",
    "check_minimum",
]

PENDING = "pending"
SENT = "sent"
REJECTED = "rejected"
#: Widths of the stored address and transaction id: a longer value could not be committed.
MAX_ADDRESS = 128
MAX_TXID = 128


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """``amount`` (minor units) leaves the balance; the address receives ``amount - fee``."""

    id: int
    user_id: int
    coin: str
    amount: int
    fee: int
    address: str
    status: str
    txid: str | None
    reason: str | None
    created: int
    updated: int

    def settled(self, status: str, txid: str | None, reason: str | None, now: int) -> Withdrawal:
        """The record after an operator's decision (only a pending withdrawal has one)."""
        if self.status != PENDING:
            raise ExchangeError("withdrawal_not_found", f"withdrawal {self.id} is not pending")
        return Withdrawal(
            self.id,
            self.user_id,
            self.coin,
            self.amount,
            self.fee,
            self.address,
            status,
            txid,
            reason,
            self.created,
            now,
        )


#: The record's fields in order: the journal's columns and the wire's keys.
WITHDRAWAL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Withdrawal))


def check_minimum(asset: Asset, units: int, minimum: int, fee: int) -> None:
    """Refuse a withdrawal of ``units`` below the minimum, or one that would deliver nothing.

    The one statement of the rule: the wallet asks it early (an explicit amount,
    before the address is looked up) and the engine again, in the step that
    freezes, about the amount actually taken.
    """
    if units < minimum or units <= fee:
        least = format_units(max(minimum, fee + 1), asset.scale)
        raise ExchangeError(
            "below_minimum",
            f"the minimum withdrawal is {least} {asset.code}; "
            f"{format_units(units, asset.scale)} {asset.code} asked",
        )
