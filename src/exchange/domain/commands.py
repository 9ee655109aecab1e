"""What can be asked of the single writer: one frozen record per kind of command.

A command travels whole from where it is made (the API, the wallet, the
operator's inbox) through the engine port to the domain
(``MatchingEngine.place(command, now)``); docs/architecture.md follows one.
Each kind names what it answers (``Returns[...]``), so ``await
engine.submit(PlaceOrder(...))`` is typed as a ``PlaceResult``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from exchange.domain.events import PlaceResult
from exchange.domain.orders import LIMIT, Order
from exchange.domain.withdrawals import Withdrawal

__all__ = [
    "ApproveWithdrawal",
    "CancelOrder",
    "Command",
    "Credit",
    "Credited",
    "PlaceOrder",
    "RejectWithdrawal",
    "RequestWithdrawal",
    "Returns",
]

R = TypeVar("R", covariant=True)


class Returns(Generic[R]):
    """Marks a command with the type of its answer (no data, no behaviour)."""

    __slots__ = ()


@dataclass(slots=True, frozen=True)
class Credited:
    """A deposit's answer (an operator's inbox row records it)."""

    user_id: int
    asset: str
    amount: int


@dataclass(slots=True, frozen=True)
class PlaceOrder(Returns[PlaceResult]):
    user_id: int
    market: str
    side: str
    amount: int
    price: int
    type: str = LIMIT
    tif: str = "GTC"
    post_only: bool = False
    client_order_id: str | None = None
    #: A market order by value: spend (buy) or receive (sell) at most this many quote
    #: units; ``amount`` is then 0 and the engine works it out from the book.
    quote: int = 0


@dataclass(slots=True, frozen=True)
class CancelOrder(Returns[Order]):
    user_id: int
    order_id: int


@dataclass(slots=True, frozen=True)
class Credit(Returns[Credited]):
    """A deposit booked by an operator; ``ref`` is the inbox command's id."""

    user_id: int
    asset: str
    amount: int
    ref: int


@dataclass(slots=True, frozen=True)
class RequestWithdrawal(Returns[Withdrawal]):
    user_id: int
    coin: str
    amount: int | None  # None = the whole available balance
    fee: int
    minimum: int
    address: str


@dataclass(slots=True, frozen=True)
class ApproveWithdrawal(Returns[Withdrawal]):
    withdrawal_id: int
    txid: str


@dataclass(slots=True, frozen=True)
class RejectWithdrawal(Returns[Withdrawal]):
    withdrawal_id: int
    reason: str


@dataclass(slots=True, frozen=True)
class Controlled:
    """What ``SetControl`` did: ``changed`` is False when it was already so."""

    kind: str
    key: str
    active: bool
    changed: bool


@dataclass(slots=True, frozen=True)
class SetControl(Returns[Controlled]):
    """Halt or resume a market (kind ``halt``), freeze or unfreeze an account (``freeze``)."""

    kind: str
    key: str
    active: bool


@dataclass(slots=True, frozen=True)
class Cancelled:
    user_id: int
    market: str | None
    order_ids: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class CancelOrders(Returns[Cancelled]):
    """Cancel every open order of a user, on one market or all (an operator's command)."""

    user_id: int
    market: str | None


Command = (
    PlaceOrder
    | CancelOrder
    | Credit
    | RequestWithdrawal
    | ApproveWithdrawal
    | RejectWithdrawal
    | SetControl
    | CancelOrders
)
