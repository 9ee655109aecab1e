"""What a method handler receives: the wired services and one call's inputs.

Each parameter is declared once, as a ``Param`` row of its method (name, type,
required, bounds, choices, length). The dispatcher parses every declared
parameter with it before the handler runs — the same rows produce
``/openapi.json`` and the error messages — and a handler reads the parsed,
typed value with ``PARAM.of(call)``. No handler restates a limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar, cast

from exchange.api import params as read
from exchange.clock import Clock
from exchange.config import Settings
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Asset, Market, normalize_pair
from exchange.engine.port import EnginePort
from exchange.services.accounts import Accounts
from exchange.services.api_keys import ApiKeys
from exchange.services.history import History
from exchange.services.marketdata import MarketData
from exchange.services.sessions import Sessions
from exchange.services.wallet import Wallet


@dataclass(slots=True)
class Services:
    """Everything a handler may use; built once per process by ``runtime.build_runtime``."""

    settings: Settings
    clock: Clock
    accounts: Accounts
    sessions: Sessions
    engine: EnginePort
    history: History
    markets: dict[str, Market]
    wallet: Wallet
    market: MarketData
    api_keys: ApiKeys


@dataclass(slots=True)
class Call:
    services: Services
    params: dict[str, object]  # as sent (the rate limiter and credentials read these)
    client: str
    token: str | None = None  # the session that authenticated this call
    carried: tuple[str, ...] = ()  # every session token the request carried
    user_id: int = 0
    set_session: str | None = None
    clear_session: bool = False
    #: The method's declared parameters, parsed (``Param.of`` reads them).
    args: dict[str, object] = field(default_factory=dict)


Handler = Callable[[Call], Awaitable[object]]
ParamType = Literal["string", "decimal", "integer", "boolean", "pair", "coin"]
T = TypeVar("T")
#: A decimal parameter as sent (text, a JSON integer or a JSON decimal): exact, and
#: parsed at the scale of its market or coin by the handler, which knows it.
Number = str | int | Decimal


@dataclass(frozen=True, slots=True)
class Param(Generic[T]):
    """One parameter of one method; ``T`` is what ``of(call)`` gives the handler.

    Made by the constructors below (``text``, ``integer``, ``choice`` ...), which
    fix ``T`` from the declaration: a required text is a ``str``, an optional one
    ``str | None``.
    """

    name: str
    type: ParamType = "string"
    required: bool = False
    description: str = ""
    #: Canonical values (a choice); any case, and ``aliases`` spell them otherwise.
    enum: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    max_length: int | None = None
    low: int | None = None
    high: int | None = None
    default: object = None
    #: A choice's accepted spellings -> canonical value (made once, from enum and aliases).
    options: Mapping[str, str] = field(init=False, repr=False, compare=False)
    reader: Callable[[Call], object] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        options = {value: value for value in self.enum} | dict(self.aliases)
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "reader", _reader(self))

    def of(self, call: Call) -> T:
        return call.args[self.name]  # type: ignore[return-value]  # parse() made it a T


def _reader(param: Param[Any]) -> Callable[[Call], object]:
    """The parser of one declared parameter, chosen once (every request runs it)."""
    name, required, default = param.name, param.required, param.default
    kind, length = param.type, param.max_length or 256
    if param.enum:
        options = param.options

        def choice(call: Call) -> object:
            found = read.choice(call.params, name, options, default)
            if found is None and required:
                raise read.missing(name)
            return found

        return choice
    if kind == "integer":
        assert param.low is not None and param.high is not None
        low, high, fallback = param.low, param.high, cast(int, default)

        def integer(call: Call) -> object:
            params = call.params
            if required and params.get(name) in (None, ""):
                raise read.missing(name)
            return read.integer(params, name, fallback, low=low, high=high)

        return integer
    if kind == "boolean":
        return lambda call: read.flag(call.params, name)
    if kind == "decimal":

        def decimal(call: Call) -> object:
            params = call.params
            if not required and params.get(name) in (None, ""):
                return None
            return read.raw(params, name)

        return decimal
    if kind == "pair" or kind == "coin":

        def named(call: Call) -> object:
            text = read.optional_text(call.params, name, max_length=length)
            if not required and (text is None or not text.strip()):
                return None  # blank: every market, every coin
            if text is None or text == "":
                raise read.missing(name)
            if kind == "coin":
                return call.services.wallet.asset(text)
            return market_named(call.services.markets, text)

        return named
    if required:
        return lambda call: read.text(call.params, name, max_length=length)
    return lambda call: read.optional_text(call.params, name, max_length=length)


#: Spellings already seen -> canonical pair: every market-data request names one, and
#: normalising costs more than the rest of parsing it. Bounded: cleared when full.
_SPELLINGS: dict[str, str] = {}
_SPELLINGS_KEPT = 4096


def market_named(markets: Mapping[str, Market], pair: str) -> Market:
    """The listed market ``pair`` names, in any accepted spelling; else ``unknown_pair``."""
    symbol = _SPELLINGS.get(pair)
    if symbol is None:
        symbol = normalize_pair(pair)
        if len(_SPELLINGS) >= _SPELLINGS_KEPT:
            _SPELLINGS.clear()
        _SPELLINGS[pair] = symbol
    market = markets.get(symbol)
    if market is None:
        raise ExchangeError("unknown_pair", f"{pair[:32]!r} is not a listed pair")
    return market


def text(name: str, description: str, *, max_length: int) -> Param[str]:
    """Required text, at most ``max_length`` characters."""
    return Param(name, "string", True, description, max_length=max_length)


def optional_text(name: str, description: str, *, max_length: int) -> Param[str | None]:
    return Param(name, "string", False, description, max_length=max_length)


def pair(description: str = "BTC/USDT, btc_usdt, ETH-BTC ...") -> Param[Market]:
    """A listed market, named in any accepted spelling (``unknown_pair`` otherwise)."""
    return Param("pair", "pair", True, description, max_length=32)


def optional_pair(description: str) -> Param[Market | None]:
    return Param("pair", "pair", False, description, max_length=32)


def coin(description: str = "BTC, ETH or USDT (any case)") -> Param[Asset]:
    """A coin that can be withdrawn, in any case (``unknown_coin`` otherwise)."""
    return Param("coin", "coin", True, description, max_length=16)


def optional_coin(description: str) -> Param[Asset | None]:
    return Param("coin", "coin", False, description, max_length=16)


def integer(name: str, description: str, *, default: int, low: int, high: int) -> Param[int]:
    """An optional integer in [low, high]; ``default`` when not sent."""
    return Param(name, "integer", False, description, low=low, high=high, default=default)


def required_integer(name: str, description: str, *, low: int, high: int) -> Param[int]:
    return Param(name, "integer", True, description, low=low, high=high, default=0)


def flag(name: str, description: str) -> Param[bool]:
    return Param(name, "boolean", False, description)


def decimal(name: str, description: str) -> Param[Number]:
    """A required decimal number, kept exact as sent."""
    return Param(name, "decimal", True, description)


def optional_decimal(name: str, description: str) -> Param[Number | None]:
    return Param(name, "decimal", False, description)


def choice(
    name: str,
    description: str,
    values: tuple[str, ...],
    *,
    default: str,
    aliases: Mapping[str, str] | None = None,
) -> Param[str]:
    """One of ``values`` (any case, or an alias); ``default`` when not sent."""
    spelled = tuple((aliases or {}).items())
    return Param(name, "string", False, description, values, spelled, 32, default=default)


def optional_choice(name: str, description: str, values: tuple[str, ...]) -> Param[str | None]:
    """One of ``values`` (any case), or None when not sent (the handler decides)."""
    return Param(name, "string", False, description, values, max_length=32)


@dataclass(frozen=True, slots=True)
class Method:
    """One row of the method table: routing, auth, docs and schema in one place."""

    name: str
    verb: Literal["GET", "POST"]
    handler: Handler
    summary: str
    data: Any
    params: tuple[Param[Any], ...] = ()
    auth: bool = False
    tag: str = "account"
    limit: str | None = None

    def run(self, call: Call) -> Awaitable[object]:
        """Parse the declared parameters (refusing the first bad one), then handle."""
        call.args = {param.name: param.reader(call) for param in self.params}
        return self.handler(call)
