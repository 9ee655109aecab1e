"""What the API, the services and market data need from the engine.

Two things provide it: ``Engine`` itself (one process) and ``EngineClient``
(an HTTP worker of ``exchange serve --workers N``, talking to the writer over
a Unix socket). Code written against this protocol runs unchanged in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from exchange.domain.commands import Returns
from exchange.domain.events import Committed
from exchange.domain.markets import Asset, Market

__all__ = ["Balances", "EnginePort", "Levels", "Listener"]

Listener = Callable[[Committed, int], None]
#: (bids best first, asks best first) of aggregated (price, amount) levels.
Levels = tuple[list[tuple[int, int]], list[tuple[int, int]]]
#: asset -> (available, frozen) in the asset's units, every asset of the exchange.
Balances = dict[str, tuple[int, int]]
R = TypeVar("R")


class EnginePort(Protocol):
    markets: dict[str, Market]

    @property
    def assets(self) -> dict[str, Asset]: ...

    def subscribe(self, listener: Listener) -> None:
        """``listener(outbox, time)`` after each committed batch, in commit order."""

    async def submit(self, command: Returns[R]) -> R:
        """The command's answer after its batch is durable; raises ExchangeError."""

    async def read_balances(self, user_id: int) -> Balances:
        """Committed balances (never a batch's uncommitted changes)."""

    async def settled(self) -> None:
        """Return once this process's memory holds only committed batches (a book read then
        never shows a change that may still be rolled back)."""

    def balances_now(self, user_id: int) -> Balances | None:
        """The balances if they can be had without waiting, else None."""

    def depth_key(self, symbol: str) -> object:
        """A value (compared with ``==``) that changes whenever the book is replaced or
        rolled back wholesale: depth cached under another key is stale."""

    def depth(self, symbol: str, limit: int) -> Levels: ...

    def level_total(self, symbol: str, side: str, price: int) -> int:
        """What rests at one price of one side now (0: nothing)."""

    def book_number(self, symbol: str) -> int:
        """The last committed batch that changed this market's book (0: none yet)."""

    @property
    def sequence(self) -> int:
        """The number of the last committed batch this process has seen.

        The same number for the same batch in every process (the writer counts its
        commits, a worker takes the writer's number with each batch), so a book read
        in one process and a change streamed by another can be put in order.
        """
