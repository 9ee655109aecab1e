"""What a method handler receives: the wired services and one call's inputs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import Clock
from exchange.config import Settings
from exchange.domain.markets import Market
from exchange.engine.port import EnginePort
from exchange.services.accounts import Accounts
from exchange.services.history import History
from exchange.services.marketdata import MarketData
from exchange.services.sessions import Sessions
from exchange.services.wallet import Wallet


@dataclass(slots=True)
class Services:
    """Everything a handler may use; built once by ``exchange.app.build``."""

    settings: Settings
    db: AsyncEngine
    clock: Clock
    accounts: Accounts
    sessions: Sessions
    engine: EnginePort
    history: History
    markets: dict[str, Market]
    wallet: Wallet
    market: MarketData


@dataclass(slots=True)
class Call:
    services: Services
    params: dict[str, object]
    client: str
    token: str | None = None  # the session that authenticated this call
    carried: tuple[str, ...] = ()  # every session token the request carried
    user_id: int = 0
    set_session: str | None = None
    clear_session: bool = False


Handler = Callable[[Call], Awaitable[object]]
ParamType = Literal["string", "decimal", "integer", "boolean"]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: ParamType = "string"
    required: bool = False
    description: str = ""
    enum: tuple[str, ...] = ()
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class Method:
    """One row of the method table: routing, auth, docs and schema in one place."""

    name: str
    verb: Literal["GET", "POST"]
    handler: Handler
    summary: str
    data: Any
    params: tuple[Param, ...] = ()
    auth: bool = False
    tag: str = "account"
    limit: str | None = None
