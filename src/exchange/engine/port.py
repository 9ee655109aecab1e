"""What the API, the services and market data need from the engine.

Two things provide it: ``Engine`` itself (one process) and ``EngineClient``
(an HTTP worker of ``exchange serve --workers N``, talking to the writer over
a Unix socket). Code written against this protocol runs unchanged in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from exchange.domain.events import Outbox
from exchange.domain.markets import Asset, Market
from exchange.engine.commands import Command

__all__ = ["EnginePort", "Levels", "Listener"]

Listener = Callable[[Outbox, int], None]
#: (bids best first, asks best first) of aggregated (price, amount) levels.
Levels = tuple[list[tuple[int, int]], list[tuple[int, int]]]


class EnginePort(Protocol):
    markets: dict[str, Market]

    @property
    def assets(self) -> dict[str, Asset]: ...

    def subscribe(self, listener: Listener) -> None:
        """``listener(outbox, time)`` after each committed batch, in commit order."""

    async def submit(self, command: Command) -> Any:
        """The command's answer after its batch is durable; raises ExchangeError."""

    async def read_balances(self, user_id: int) -> dict[str, dict[str, str]]: ...

    def balances_now(self, user_id: int) -> dict[str, dict[str, str]] | None:
        """The balances if they can be had without waiting, else None."""

    def depth_key(self, symbol: str) -> object:
        """A value (compared with ``==``) that changes whenever the book is replaced or
        rolled back wholesale: depth cached under another key is stale."""

    def depth(self, symbol: str, limit: int) -> Levels: ...
