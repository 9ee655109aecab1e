"""Withdrawal addresses and withdrawals (SPEC §7): the money leaving the exchange.

This is the path attackers aim at, so the rules are strict and split by who can
enforce them without a race:

* Addresses live in the database, not in the engine: they are not money. An
  address is validated (checksums, mainnet only) and stored in its canonical
  form; a new or changed address is usable only after a cooldown, so a stolen
  session cannot redirect funds at once. Re-setting the same address is an
  idempotent no-op and does not restart the cooldown (a user re-saving a form
  must not lock themselves out for a day).
* Balances belong to the engine, the single writer. ``withdraw`` checks the
  address here, then submits ``RequestWithdrawal``; the engine checks the
  minimum and freezes the amount in the same step as it creates the pending
  withdrawal, so concurrent withdrawals are serialised by the writer and can
  never spend the same funds, and funds frozen by open orders are never
  "available" to a withdrawal.

Amounts are integers in minor units from parsing to the database; the API layer
formats them back to decimal strings. No binary float is involved anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import case, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.adapters.db.database import reading
from exchange.adapters.db.records import withdrawal_from_row
from exchange.adapters.db.tables import withdraw_addresses, withdrawals
from exchange.clock import Clock
from exchange.config import Settings
from exchange.domain.addresses import SUPPORTED_COINS, validate_address
from exchange.domain.commands import RequestWithdrawal
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Asset
from exchange.domain.money import units_of
from exchange.domain.withdrawals import Withdrawal, check_minimum
from exchange.engine.port import EnginePort

__all__ = [
    "Wallet",
    "WithdrawAddress",
    "WithdrawRule",
    "Withdrawal",
    "withdraw_rules",
]


@dataclass(frozen=True, slots=True)
class WithdrawRule:
    """A coin's fixed withdrawal fee and minimum amount, in minor units."""

    fee: int
    minimum: int


@dataclass(frozen=True, slots=True)
class WithdrawAddress:
    coin: str
    address: str | None
    usable_from: int | None


def _setting_units(name: str, value: str, asset: Asset) -> int:
    try:
        return units_of(value, asset.scale, name)
    except ExchangeError as error:
        raise ValueError(f"EXCHANGE_{name.upper()}={value!r}: {error.message}") from None


def withdraw_rules(settings: Settings, assets: Mapping[str, Asset]) -> dict[str, WithdrawRule]:
    """Fees and minimums from the settings, exact at each asset's scale.

    A misconfiguration stops the start (ValueError) rather than rounding: a
    minimum that does not exceed the fee would let a withdrawal deliver nothing.
    """
    configured = {
        "BTC": (settings.withdraw_fee_btc, settings.withdraw_min_btc),
        "ETH": (settings.withdraw_fee_eth, settings.withdraw_min_eth),
        "USDT": (settings.withdraw_fee_usdt, settings.withdraw_min_usdt),
    }
    rules: dict[str, WithdrawRule] = {}
    for coin, (fee_text, minimum_text) in configured.items():
        asset = assets.get(coin)
        if asset is None or coin not in SUPPORTED_COINS:
            continue
        fee = _setting_units(f"withdraw_fee_{coin.lower()}", fee_text, asset)
        minimum = _setting_units(f"withdraw_min_{coin.lower()}", minimum_text, asset)
        if minimum <= fee:
            raise ValueError(
                f"EXCHANGE_WITHDRAW_MIN_{coin} ({minimum_text}) must be greater than "
                f"EXCHANGE_WITHDRAW_FEE_{coin} ({fee_text})"
            )
        rules[coin] = WithdrawRule(fee=fee, minimum=minimum)
    return rules


class Wallet:
    """Use cases of SPEC §7 for one logged-in user; the engine does the money part."""

    def __init__(
        self,
        db: AsyncEngine,
        engine: EnginePort,
        clock: Clock,
        *,
        cooldown_seconds: int,
        rules: Mapping[str, WithdrawRule],
    ) -> None:
        if cooldown_seconds < 0:
            raise ValueError("the withdrawal address cooldown cannot be negative")
        self._db = db
        self._reads = reading(db)  # reads take no write lock on SQLite
        self._engine = engine
        self._clock = clock
        self._cooldown_ms = cooldown_seconds * 1000
        self._rules = dict(rules)

    # -- coins ----------------------------------------------------------------

    @property
    def coins(self) -> list[str]:
        return sorted(self._rules)

    def rule(self, coin: str) -> WithdrawRule:
        return self._rules[self.asset(coin).code]

    def asset(self, coin: str) -> Asset:
        """The asset of a coin name in any case; ``unknown_coin`` (404) otherwise."""
        code = coin.strip().upper()
        if code not in self._rules:
            shown = coin[:16]
            raise ExchangeError(
                "unknown_coin", f"{shown!r} cannot be withdrawn; use one of {', '.join(self.coins)}"
            )
        return self._engine.assets[code]

    def parse_amount(self, asset: Asset, value: object) -> int:
        """Exact minor units; zero, negative, NaN or excess decimals are refused."""
        units = units_of(value, asset.scale, "amount")
        if units <= 0:
            raise ExchangeError("invalid_argument", "amount must be greater than 0")
        return units

    # -- addresses ------------------------------------------------------------

    async def address(self, user_id: int, coin: str) -> WithdrawAddress:
        code = self.asset(coin).code
        async with self._reads.connect() as conn:
            row = (
                await conn.execute(
                    select(withdraw_addresses.c.address, withdraw_addresses.c.usable_from).where(
                        withdraw_addresses.c.user_id == user_id, withdraw_addresses.c.coin == code
                    )
                )
            ).first()
        if row is None:
            return WithdrawAddress(code, None, None)
        return WithdrawAddress(code, str(row.address), int(row.usable_from))

    async def set_address(self, user_id: int, coin: str, address: str) -> WithdrawAddress:
        """Store the canonical address; only a new or different one restarts the cooldown.

        One upsert statement decides "same or changed" inside the database, so two
        concurrent calls cannot both see "no address yet" (no read-then-write race).
        """
        code = self.asset(coin).code
        canonical = validate_address(code, address)
        now = self._clock()
        table = withdraw_addresses
        dialect = postgresql if self._db.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(table).values(
            user_id=user_id,
            coin=code,
            address=canonical,
            usable_from=now + self._cooldown_ms,
            updated=now,
        )
        same = table.c.address == insert.excluded.address
        statement = insert.on_conflict_do_update(
            index_elements=[table.c.user_id, table.c.coin],
            set_={
                "address": insert.excluded.address,
                "usable_from": case((same, table.c.usable_from), else_=insert.excluded.usable_from),
                "updated": case((same, table.c.updated), else_=insert.excluded.updated),
            },
        ).returning(table.c.address, table.c.usable_from)
        async with self._db.begin() as conn:
            row = (await conn.execute(statement)).one()
        return WithdrawAddress(code, str(row.address), int(row.usable_from))

    async def _usable_address(self, user_id: int, asset: Asset) -> str:
        found = await self.address(user_id, asset.code)
        if found.address is None or found.usable_from is None:
            raise ExchangeError("address_not_set", f"set a {asset.code} withdrawal address first")
        now = self._clock()
        if now < found.usable_from:
            wait = -(-(found.usable_from - now) // 1000)
            raise ExchangeError(
                "address_cooldown",
                f"the {asset.code} address was set recently; it can be used from "
                f"{found.usable_from} (in {wait} s)",
            )
        return found.address

    # -- withdrawals ----------------------------------------------------------

    async def withdraw(self, user_id: int, coin: str, amount: object | None) -> Withdrawal:
        """Freeze ``amount`` (default: all available) in a new pending withdrawal.

        Checks that need no balance happen here; the minimum and the balance are
        checked by the engine in the same step that freezes, which is what makes
        concurrent withdrawals safe.
        """
        asset = self.asset(coin)
        units = None if amount is None else self.parse_amount(asset, amount)
        rule = self._rules[asset.code]
        if units is not None:
            check_minimum(asset, units, rule.minimum, rule.fee)
        address = await self._usable_address(user_id, asset)
        answer: Withdrawal = await self._engine.submit(
            RequestWithdrawal(user_id, asset.code, units, rule.fee, rule.minimum, address)
        )
        return answer

    async def withdrawals(self, user_id: int, coin: str | None, limit: int) -> list[Withdrawal]:
        """This user's withdrawals, newest first; never anyone else's."""
        query = select(withdrawals).where(withdrawals.c.user_id == user_id)
        if coin is not None:
            query = query.where(withdrawals.c.coin == self.asset(coin).code)
        query = query.order_by(withdrawals.c.id.desc()).limit(limit)
        async with self._reads.connect() as conn:
            rows = await conn.execute(query)
            return [withdrawal_from_row(row) for row in rows]
