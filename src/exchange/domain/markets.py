"""Assets and markets: scales, tick, step, minimums and fees as exact integers.

Units: an asset amount is an int of minor units (``amount * 10**asset.scale``);
a price is an int of ``price * 10**market.price_scale`` (quote per one base).

Rounding rule (the only place money is ever rounded):

* A trade's quote amount is price x amount rounded DOWN to the quote asset's
  scale. The buyer pays exactly that and the seller receives exactly that, so
  rounding creates and destroys nothing; a buy order freezes
  ceil(limit price x amount), which always covers the floored quote of any
  trade at a price no worse than its limit.
* Fees are rounded UP to the received asset's scale (the exchange never
  under-charges by a sub-unit) and are credited to the fee account, so the
  user receives ``received - fee`` and the sum over all accounts is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from exchange.domain.errors import ExchangeError
from exchange.domain.money import format_units, parse_decimal, to_units, units_of

__all__ = [
    "Asset",
    "Market",
    "assets_of",
    "build_market",
    "default_assets",
    "default_markets",
    "normalize_pair",
]


#: The largest price or amount in minor units. Every stored integer (BIGINT, < 2**63)
#: stays in range: prices and amounts by this bound, balances and order holds by the
#: deposits they come from. Without it one absurd order would fail its whole batch.
MAX_UNITS = 10**15


@dataclass(frozen=True, slots=True)
class Asset:
    code: str
    scale: int


def _ratio(rate: Decimal) -> tuple[int, int]:
    num, den = rate.as_integer_ratio()
    return num, den


@dataclass(frozen=True, slots=True)
class Market:
    symbol: str
    base: Asset
    quote: Asset
    price_scale: int
    tick: int
    step: int
    min_amount: int
    min_notional: int
    maker_fee: Decimal
    taker_fee: Decimal
    # Derived once so the matching loop works on ints only (no Decimal per order).
    notional_div: int = field(init=False, repr=False, compare=False)
    notional_mul: int = field(init=False, repr=False, compare=False)
    maker_num: int = field(init=False, repr=False, compare=False)
    maker_den: int = field(init=False, repr=False, compare=False)
    taker_num: int = field(init=False, repr=False, compare=False)
    taker_den: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("tick", "step", "min_amount"):
            if getattr(self, name) <= 0:
                raise ExchangeError("invalid_argument", f"{self.symbol}: {name} must be > 0")
        if self.min_amount % self.step:
            raise ExchangeError(
                "invalid_argument", f"{self.symbol}: min_amount must be a multiple of step"
            )
        if self.min_notional < 0 or self.price_scale < 0:
            raise ExchangeError("invalid_argument", f"{self.symbol}: negative minimum or scale")
        for name in ("maker_fee", "taker_fee"):
            rate: Decimal = getattr(self, name)
            if not rate.is_finite() or rate < 0 or rate >= 1:
                raise ExchangeError("invalid_argument", f"{self.symbol}: {name} must be in [0, 1)")
        shift = self.price_scale + self.base.scale - self.quote.scale
        setter = object.__setattr__
        setter(self, "notional_div", 10**shift if shift >= 0 else 1)
        setter(self, "notional_mul", 10**-shift if shift < 0 else 1)
        maker_num, maker_den = _ratio(self.maker_fee)
        taker_num, taker_den = _ratio(self.taker_fee)
        setter(self, "maker_num", maker_num)
        setter(self, "maker_den", maker_den)
        setter(self, "taker_num", taker_num)
        setter(self, "taker_den", taker_den)

    # -- parsing ------------------------------------------------------------

    def parse_price(self, value: object) -> int:
        """A positive decimal price in price units, exactly (excess decimals: refused).

        The conversion and the range a number can have; the tick is a rule of an
        order, checked once, by ``MatchingEngine.place``.
        """
        return _in_range(units_of(value, self.price_scale, "price"), "price")

    def parse_amount(self, value: object) -> int:
        """A positive decimal amount in base minor units, exactly (the step: ``place``)."""
        return _in_range(units_of(value, self.base.scale, "amount"), "amount")

    def parse_quote(self, value: object) -> int:
        """A positive decimal of the quote asset in its minor units, exactly."""
        return _in_range(units_of(value, self.quote.scale, "quote"), "quote")

    # -- formatting ---------------------------------------------------------

    def format_price(self, price: int) -> str:
        return format_units(price, self.price_scale)

    def format_amount(self, amount: int) -> str:
        return format_units(amount, self.base.scale)

    def format_quote(self, quote: int) -> str:
        return format_units(quote, self.quote.scale)

    # -- arithmetic ---------------------------------------------------------

    def notional(self, price: int, amount: int) -> int:
        """Quote minor units of price x amount, rounded down (what a trade moves)."""
        return price * amount * self.notional_mul // self.notional_div

    def notional_ceil(self, price: int, amount: int) -> int:
        """Rounded up: what a buy order freezes, so it covers every floored trade quote."""
        return -(-price * amount * self.notional_mul // self.notional_div)

    def fee(self, received: int, rate: Decimal) -> int:
        """Fee in the received asset's minor units, rounded up."""
        num, den = _ratio(rate)
        return -(-received * num // den)

    def maker_fee_of(self, received: int) -> int:
        return -(-received * self.maker_num // self.maker_den)

    def taker_fee_of(self, received: int) -> int:
        return -(-received * self.taker_num // self.taker_den)


def _units(symbol: str, what: str, text: str, scale: int) -> int:
    return units_of(text, scale, f"{symbol} {what}")


def build_market(
    symbol: str,
    base: Asset,
    quote: Asset,
    tick: str,
    step: str,
    min_amount: str,
    min_notional: str,
    maker_fee: str,
    taker_fee: str,
) -> Market:
    """Build a market from configuration text; the price scale follows the tick's decimals."""
    tick_dec = parse_decimal(tick)
    exponent = tick_dec.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    price_scale = max(0, -exponent)
    return Market(
        symbol=normalize_pair(symbol),
        base=base,
        quote=quote,
        price_scale=price_scale,
        tick=to_units(tick_dec, price_scale, f"{symbol} tick"),
        step=_units(symbol, "step", step, base.scale),
        min_amount=_units(symbol, "min_amount", min_amount, base.scale),
        min_notional=_units(symbol, "min_notional", min_notional, quote.scale),
        maker_fee=parse_decimal(maker_fee),
        taker_fee=parse_decimal(taker_fee),
    )


def default_assets() -> dict[str, Asset]:
    return {"BTC": Asset("BTC", 8), "ETH": Asset("ETH", 8), "USDT": Asset("USDT", 6)}


#: SPEC §3's default markets: tick, step, minimum amount, minimum notional.
DEFAULT_MARKETS: dict[str, dict[str, str]] = {
    "BTC/USDT": {"tick": "0.01", "step": "0.00001", "min_amount": "0.00001", "min_notional": "5"},
    "ETH/USDT": {"tick": "0.01", "step": "0.0001", "min_amount": "0.0001", "min_notional": "5"},
    "ETH/BTC": {
        "tick": "0.000001",
        "step": "0.0001",
        "min_amount": "0.0001",
        "min_notional": "0.0001",
    },
}
MARKET_KEYS = ("tick", "step", "min_amount", "min_notional", "maker_fee", "taker_fee")


def default_markets(
    assets: dict[str, Asset],
    fee: str = "0.002",
    overrides: dict[str, dict[str, str]] | None = None,
) -> dict[str, Market]:
    """SPEC §3's markets, with the operator's overrides (and added pairs) applied.

    A wrong override fails here, at start, with a sentence naming the market and key.
    """
    table = {symbol: dict(row) for symbol, row in DEFAULT_MARKETS.items()}
    for raw_symbol, changes in (overrides or {}).items():
        symbol = normalize_pair(raw_symbol)
        unknown = set(changes) - set(MARKET_KEYS)
        if unknown:
            raise ExchangeError("invalid_argument", f"{symbol}: unknown keys {sorted(unknown)}")
        row = table.setdefault(symbol, {})
        row.update(changes)
        missing = {"tick", "step", "min_amount", "min_notional"} - set(row)
        if missing:
            raise ExchangeError("invalid_argument", f"{symbol}: missing {sorted(missing)}")
    markets: dict[str, Market] = {}
    for symbol, row in table.items():
        base, quote = symbol.split("/")
        if base not in assets or quote not in assets or base == quote:
            raise ExchangeError(
                "invalid_argument", f"{symbol}: assets must be two of {sorted(assets)}"
            )
        markets[symbol] = build_market(
            symbol,
            assets[base],
            assets[quote],
            row["tick"],
            row["step"],
            row["min_amount"],
            row["min_notional"],
            row.get("maker_fee", fee),
            row.get("taker_fee", fee),
        )
    return markets


def _in_range(units: int, what: str) -> int:
    """Greater than 0 and below MAX_UNITS: what a number sent to the API can be at all.

    (Every stored and transmitted integer is a signed 64-bit one: a larger value
    could not even reach the engine from a worker.)
    """
    if units <= 0:
        raise ExchangeError("invalid_argument", f"{what} must be greater than 0")
    if units >= MAX_UNITS:
        raise ExchangeError("invalid_argument", f"{what} is larger than this exchange accepts")
    return units


def assets_of(markets: Iterable[Market]) -> dict[str, Asset]:
    """Every asset that some market trades, by code (what the ledger keeps balances of)."""
    found: dict[str, Asset] = {}
    for market in markets:
        found[market.base.code] = market.base
        found[market.quote.code] = market.quote
    return found


def normalize_pair(text: str) -> str:
    """Canonical ``BASE/QUOTE`` from ``btc_usdt``, ``BTC-USDT`` or ``btc/usdt``.

    Existence is the caller's question (it answers ``unknown_pair``); this only
    refuses text that cannot be a pair at all.
    """
    cleaned = text.strip().upper().replace("_", "/").replace("-", "/")
    parts = cleaned.split("/")
    if len(parts) != 2 or not all(part.isascii() and part.isalnum() for part in parts):
        raise ExchangeError("unknown_pair", f"{text[:40]!r} is not a pair such as BTC/USDT")
    return f"{parts[0]}/{parts[1]}"
