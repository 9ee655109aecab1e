"""Demo mode: market makers and takers so a new user sees a live market at once.

Bots are ordinary accounts that submit ordinary commands to the engine — the same
queue, checks, ledger and journal as any user's order (no back door into the
books); only the HTTP layer is skipped. Their funds are deposits from the
deposit account, topped up when they run low, so conservation holds as always.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from exchange.api.context import Services
from exchange.config import Settings
from exchange.domain.commands import CancelOrder, Credit, PlaceOrder
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Market
from exchange.engine.engine import Engine
from exchange.runtime import Runtime

log = logging.getLogger("exchange.demo")

#: Starting reference prices (quote per base) of the default markets.
REFERENCE = {"BTC/USDT": "65000", "ETH/USDT": "3200", "ETH/BTC": "0.049"}
#: Deposits of every bot and of the demo user, and the level that triggers a top-up.
BOT_FUNDS = {"BTC": "500", "ETH": "10000", "USDT": "50000000"}
DEMO_FUNDS = {"BTC": "2", "ETH": "30", "USDT": "100000"}
LEVELS = 6
#: Seconds between a bot's rounds (not money).
MAKER_PAUSE = (0.4, 0.9)  # float-ok: seconds
TAKER_PAUSE = (0.2, 0.8)  # float-ok: seconds


class Demo:
    def __init__(
        self, services: Services, settings: Settings, url: str, *, seed: int | None = None
    ) -> None:
        self.services = services
        self.settings = settings
        self.url = url
        self.rng = random.Random(seed)
        self.tasks: list[asyncio.Task[None]] = []
        self.makers: dict[str, int] = {}
        self.takers: dict[str, int] = {}
        self.reference: dict[str, int] = {}

    async def start(self) -> None:
        services = self.services
        demo_id = await services.accounts.ensure_user(
            self.settings.demo_user, self.settings.demo_password
        )
        await self._fund(demo_id, DEMO_FUNDS, only_if_empty=True)
        for symbol, market in services.markets.items():
            slug = symbol.replace("/", "-").lower()
            maker = await services.accounts.ensure_user(
                f"maker-{slug}@bots.example.com", secrets.token_urlsafe(24)
            )
            taker = await services.accounts.ensure_user(
                f"taker-{slug}@bots.example.com", secrets.token_urlsafe(24)
            )
            for bot in (maker, taker):
                await self._fund(bot, BOT_FUNDS, only_if_empty=False)
            self.makers[symbol] = maker
            self.takers[symbol] = taker
            self.reference[symbol] = market.parse_price(REFERENCE.get(symbol, "1"))
            self.tasks.append(asyncio.create_task(self._make(market), name=f"maker {symbol}"))
            self.tasks.append(asyncio.create_task(self._take(market), name=f"taker {symbol}"))
        banner = (
            f"DEMO: open {self.url} and log in as {self.settings.demo_user} / "
            f"{self.settings.demo_password} (funded in every asset)"
        )
        log.warning(banner)
        print(banner, flush=True)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()

    def _engine(self) -> Engine:
        """The in-process engine: bots read books and balances that only the writer holds."""
        engine = self.services.engine
        if not isinstance(engine, Engine):
            raise RuntimeError("the demo bots run where the engine runs, not in a worker")
        return engine

    async def _fund(self, user_id: int, funds: dict[str, str], *, only_if_empty: bool) -> None:
        engine = self._engine()
        for code, amount in funds.items():
            asset = engine.assets[code]
            units = int(amount) * 10**asset.scale
            available, frozen = engine.balances(user_id)[code]
            if only_if_empty and available + frozen > 0:
                continue
            if available < units // 2:
                await engine.submit(Credit(user_id, code, units - available, 0))

    def _walk(self, market: Market) -> int:
        """A random walk of the reference price, on the market's tick."""
        price = self.reference[market.symbol]
        price += price * self.rng.randint(-12, 12) // 10_000
        price = max(market.tick * 100, price - price % market.tick)
        self.reference[market.symbol] = price
        return price

    def _amount(self, market: Market, price: int, spread: int) -> int:
        """A random amount worth at least twice the market's minimum notional."""
        least = market.min_amount
        while market.notional(price, least) < 2 * market.min_notional:
            least += market.step * max(1, least // market.step)
        amount = least * self.rng.randint(1, spread)
        return amount - amount % market.step

    async def _submit(self, command: Any) -> None:
        try:
            await self.services.engine.submit(command)
        except ExchangeError as refusal:
            if refusal.code == "insufficient_balance":
                await self._fund(command.user_id, BOT_FUNDS, only_if_empty=False)
            elif refusal.code != "order_not_found":
                log.debug("demo bot refused: %s", refusal.description)

    async def _make(self, market: Market) -> None:
        """Keep a ladder of bids and asks around the moving reference price."""
        user = self.makers[market.symbol]
        engine = self._engine()
        while True:
            try:
                price = self._walk(market)
                gap = max(market.tick, price // 2_500)  # 0.04 % between levels
                for order in engine.open_orders(user, market.symbol):
                    await self._submit(CancelOrder(user, order.id))
                for level in range(1, LEVELS + 1):
                    for side, sign in (("buy", -1), ("sell", 1)):
                        level_price = price + sign * gap * level
                        level_price -= level_price % market.tick
                        amount = self._amount(market, level_price, 40)
                        await self._submit(
                            PlaceOrder(user, market.symbol, side, amount, level_price)
                        )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("demo market maker failed; going on")
            await asyncio.sleep(self.rng.uniform(*MAKER_PAUSE))

    async def _take(self, market: Market) -> None:
        """Cross the spread now and then, so trades and candles keep coming."""
        user = self.takers[market.symbol]
        await asyncio.sleep(0.3)  # float-ok: seconds
        while True:
            try:
                side = self.rng.choice(("buy", "sell"))
                price = self.reference[market.symbol]
                reach = max(market.tick, price // 500) * (1 if side == "buy" else -1)
                limit = price + reach
                limit -= limit % market.tick
                amount = self._amount(market, limit, 12)
                await self._submit(PlaceOrder(user, market.symbol, side, amount, limit, tif="IOC"))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("demo taker failed; going on")
            await asyncio.sleep(self.rng.uniform(*TAKER_PAUSE))


def attach_demo(runtime: Runtime, url: str) -> None:
    """Run the bots beside the exchange: they start after the engine, stop before it."""

    @asynccontextmanager
    async def bots(running: Runtime) -> AsyncIterator[None]:
        demo = Demo(running.services, running.settings, url)
        await demo.start()
        try:
            yield
        finally:
            await demo.stop()

    runtime.companions.append(bots)
