"""Commands the single writer applies, in the order they were queued."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class PlaceOrder:
    user_id: int
    market: str
    side: str
    amount: int
    price: int
    type: str = "limit"
    tif: str = "GTC"
    post_only: bool = False
    client_order_id: str | None = None


@dataclass(slots=True, frozen=True)
class CancelOrder:
    user_id: int
    order_id: int


@dataclass(slots=True, frozen=True)
class Credit:
    """A deposit booked by an operator; ``ref`` is the inbox command's id."""

    user_id: int
    asset: str
    amount: int
    ref: int


@dataclass(slots=True, frozen=True)
class RequestWithdrawal:
    user_id: int
    coin: str
    amount: int | None  # None = the whole available balance
    fee: int
    minimum: int
    address: str


@dataclass(slots=True, frozen=True)
class ApproveWithdrawal:
    withdrawal_id: int
    txid: str


@dataclass(slots=True, frozen=True)
class RejectWithdrawal:
    withdrawal_id: int
    reason: str


@dataclass(slots=True, frozen=True)
class Resync:
    """Wakes the writer to rebuild its state from the database (writer lock lost)."""


Command = (
    PlaceOrder | CancelOrder | Credit | RequestWithdrawal | ApproveWithdrawal | RejectWithdrawal
)
