"""The matching engine: order books and balances of all markets, changed together.

One object owns every book and the ledger, so a command either applies whole
or (when refused) not at all: all checks run before the first change. Each
change lands in an outbox (orders in their final state, trades, ledger
entries) which the caller drains once per batch and persists.

Rules (SPEC §6):

* price-time priority; a trade executes at the resting (maker) order's price;
* a limit buy freezes ceil(price x amount) quote; each trade takes its floored
  quote from that hold; an open buy keeps exactly ceil(price x remaining)
  frozen and the rest (price improvement, rounding) returns to available as
  soon as it is no longer needed; an ended buy keeps nothing frozen;
* a sell freezes its amount of base;
* fees (taker rate for the incoming order, maker rate for the resting one) are
  taken from what each side receives, rounded up, into ``FEE_ACCOUNT``;
* self-trade prevention: an incoming order that reaches its own user's resting
  order cancels that resting order and goes on matching;
* post-only orders that would cross are ``rejected``; FOK orders that cannot
  fill completely now (not counting the user's own resting orders) are
  ``canceled`` with nothing changed; both still get an id and appear in the
  outbox so they are recorded;
* market orders are IOC (or FOK); ``price`` 0 means no limit, otherwise it is
  the worst acceptable price; a market buy freezes exactly the quote its walk
  of the book will cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from exchange.domain.book import Level, OrderBook
from exchange.domain.errors import ExchangeError
from exchange.domain.events import Outbox, PlaceResult
from exchange.domain.ledger import DEPOSIT_ACCOUNT, Ledger
from exchange.domain.markets import MAX_UNITS, Asset, Market
from exchange.domain.orders import (
    BUY,
    CANCELED,
    FILLED,
    LIMIT,
    MARKET,
    OPEN,
    PARTIALLY_FILLED,
    REJECTED,
    SELL,
    Order,
    Trade,
)

__all__ = ["CLIENT_ORDER_ID_MAX", "MatchingEngine"]

CLIENT_ORDER_ID_MAX = 36
#: Closed orders that carry a client_order_id stay in memory (newest first out last)
#: so that a retried placement gets the whole order back without a database read.
CLOSED_WITH_CLIENT_ID_KEPT = 100_000

_TIFS = frozenset(("GTC", "IOC", "FOK"))


def _invalid(message: str) -> ExchangeError:
    return ExchangeError("invalid_argument", message)


class MatchingEngine:
    """Books plus ledger; the single writer of both."""

    __slots__ = (
        "_client_ids",
        "_closed",
        "_open",
        "_out_orders",
        "_out_trades",
        "books",
        "ledger",
        "markets",
        "next_order_id",
        "next_trade_id",
    )

    def __init__(self, markets: Mapping[str, Market], ledger: Ledger | None = None) -> None:
        self.markets: dict[str, Market] = dict(markets)
        if ledger is None:
            assets: dict[str, Asset] = {}
            for market in self.markets.values():
                assets[market.base.code] = market.base
                assets[market.quote.code] = market.quote
            ledger = Ledger(assets)
        self.ledger = ledger
        self.books: dict[str, OrderBook] = {symbol: OrderBook(symbol) for symbol in self.markets}
        self.next_order_id = 1
        self.next_trade_id = 1
        self._open: dict[int, Order] = {}
        self._closed: dict[int, Order] = {}
        self._client_ids: dict[tuple[int, str], int] = {}
        self._out_orders: dict[int, Order] = {}
        self._out_trades: list[Trade] = []

    # -- reading ------------------------------------------------------------

    def market(self, symbol: str) -> Market:
        market = self.markets.get(symbol)
        if market is None:
            raise ExchangeError("unknown_pair", f"{symbol[:40]!r} is not a listed pair")
        return market

    def order(self, order_id: int) -> Order | None:
        """An open order, or a closed one still remembered in memory."""
        return self._open.get(order_id) or self._closed.get(order_id)

    def open_orders(self, user_id: int | None = None, market: str | None = None) -> list[Order]:
        """Open orders in id (= time) order, optionally of one user and/or one market."""
        return [
            order
            for order in self._open.values()
            if (user_id is None or order.user_id == user_id)
            and (market is None or order.market == market)
        ]

    def depth(
        self, market: str, limit: int = 50
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(bids, asks) as aggregated (price, amount) levels, best first."""
        self.market(market)
        return self.books[market].depth(limit)

    # -- commands -------------------------------------------------------------

    def place(
        self,
        user_id: int,
        market: str,
        side: str,
        amount: int,
        price: int,
        *,
        type: str = LIMIT,
        tif: str = "GTC",
        post_only: bool = False,
        client_order_id: str | None = None,
        now: int,
    ) -> PlaceResult:
        """Place an order; a refusal raises ExchangeError and changes nothing."""
        if client_order_id is not None:
            if not client_order_id:
                client_order_id = None
            else:
                if len(client_order_id) > CLIENT_ORDER_ID_MAX:
                    raise _invalid(
                        f"client_order_id is longer than {CLIENT_ORDER_ID_MAX} characters"
                    )
                known = self._client_ids.get((user_id, client_order_id))
                if known is not None:
                    original = self._open.get(known) or self._closed.get(known)
                    return PlaceResult(original, [], True, known)
        m = self.markets.get(market)
        if m is None:
            raise ExchangeError("unknown_pair", f"{market[:40]!r} is not a listed pair")
        if user_id < 0:
            raise _invalid("system accounts cannot trade")
        is_buy = side == BUY
        if not is_buy and side != SELL:
            raise _invalid(f"side must be buy or sell, not {side[:20]!r}")
        if type == LIMIT:
            if tif not in _TIFS:
                raise _invalid(f"time_in_force must be GTC, IOC or FOK, not {tif[:20]!r}")
            if price <= 0:
                raise _invalid("a limit order needs a price greater than 0")
            if post_only and tif != "GTC":
                raise _invalid("post_only orders must be good till canceled (GTC)")
        elif type == MARKET:
            if post_only:
                raise _invalid("post_only is only for limit orders")
            if tif not in _TIFS:
                raise _invalid(f"time_in_force must be GTC, IOC or FOK, not {tif[:20]!r}")
            if price < 0:
                raise _invalid("price must not be negative")
            tif = "FOK" if tif == "FOK" else "IOC"
        else:
            raise _invalid(f"type must be limit or market, not {type[:20]!r}")
        if price >= MAX_UNITS or amount >= MAX_UNITS:
            raise _invalid("price or amount is larger than this exchange accepts")
        if price % m.tick:
            raise _invalid(f"price must be a multiple of {m.format_price(m.tick)} on {market}")
        if amount <= 0 or amount % m.step:
            raise _invalid(
                f"amount must be a positive multiple of {m.format_amount(m.step)} on {market}"
            )
        if amount < m.min_amount:
            raise ExchangeError(
                "below_minimum",
                f"amount must be at least {m.format_amount(m.min_amount)} {m.base.code}",
            )
        if type == LIMIT and price * amount * m.notional_mul // m.notional_div < m.min_notional:
            raise ExchangeError(
                "below_minimum",
                f"order value must be at least {m.format_quote(m.min_notional)} {m.quote.code}",
            )

        book = self.books[market]
        ledger = self.ledger
        if is_buy:
            asset = m.quote.code
            if type == LIMIT:
                need = -(-price * amount * m.notional_mul // m.notional_div)
            else:
                need = self._market_buy_cost(m, book, user_id, amount, price)
        else:
            asset = m.base.code
            need = amount
        have = ledger.available(user_id, asset)
        if have < need:
            raise ledger.insufficient_error(asset, need, have)

        outcome = OPEN
        if post_only:
            if is_buy:
                if book.asks and book.asks.peekitem(0)[0] <= price:
                    outcome = REJECTED
            elif book.bids and book.bids.peekitem(-1)[0] >= price:
                outcome = REJECTED
        elif tif == "FOK" and not self._can_fill(book, is_buy, user_id, amount, price):
            outcome = CANCELED

        order_id = self.next_order_id
        self.next_order_id = order_id + 1
        order = Order(
            order_id,
            user_id,
            market,
            side,
            type,
            tif,
            post_only,
            price,
            amount,
            0,
            0,
            0,
            outcome,
            client_order_id,
            now,
            now,
        )
        if client_order_id is not None:
            self._client_ids[(user_id, client_order_id)] = order_id
        if outcome != OPEN:
            self._out_orders[order_id] = order
            self._forget(order)
            return PlaceResult(order, [], False, order_id)

        if need:
            ledger.freeze(user_id, asset, need, "order", order_id)
            order.frozen = need
        if is_buy:
            trades = self._match_buy(order, m, book, now)
        else:
            trades = self._match_sell(order, m, book, now)

        remaining = amount - order.filled
        if remaining and type == LIMIT and tif == "GTC":
            order.status = PARTIALLY_FILLED if order.filled else OPEN
            if is_buy:
                keep = -(-price * remaining * m.notional_mul // m.notional_div)
                if order.frozen > keep:
                    ledger.unfreeze(user_id, asset, order.frozen - keep, "order_release", order_id)
                    order.frozen = keep
            side_levels = book.bids if is_buy else book.asks
            level: Level | None = side_levels.get(price)
            if level is None:
                level = Level(price)
                side_levels[price] = level
            else:
                order.price = level.price  # one int object per level: ~32 bytes an order
            level.orders.append(order)
            level.total += remaining
            self._open[order_id] = order
        else:
            order.status = FILLED if not remaining else CANCELED
            if order.frozen:
                ledger.unfreeze(user_id, asset, order.frozen, "order_release", order_id)
                order.frozen = 0
            self._forget(order)
        self._out_orders[order_id] = order
        if trades:
            self._out_trades.extend(trades)
        return PlaceResult(order, trades, False, order_id)

    def cancel(self, user_id: int, order_id: int, now: int) -> Order:
        """Cancel an open order of this user; anyone else's order is simply not found."""
        order = self._open.get(order_id)
        if order is None or order.user_id != user_id:
            raise ExchangeError("order_not_found", f"no open order {order_id}")
        self.books[order.market].remove(order)
        self._end_resting(order, now)
        return order

    def credit(self, user_id: int, asset: str, amount: int, ref: int = 0) -> None:
        """A deposit into the user's available balance (through the outbox like any change)."""
        self.ledger.credit(user_id, asset, amount, "deposit", ref)

    # -- matching -------------------------------------------------------------

    def _match_buy(self, order: Order, m: Market, book: OrderBook, now: int) -> list[Trade]:
        trades: list[Trade] = []
        asks = book.asks
        limit = order.price
        user_id = order.user_id
        remaining = order.amount - order.filled
        mul, div = m.notional_mul, m.notional_div
        maker_num, maker_den = m.maker_num, m.maker_den
        taker_num, taker_den = m.taker_num, m.taker_den
        base, quote = m.base.code, m.quote.code
        symbol = m.symbol
        settle = self.ledger.settle_trade
        out_orders = self._out_orders
        open_orders = self._open
        while remaining and asks:
            price, level = asks.peekitem(0)
            if limit and price > limit:
                break
            queue = level.orders
            while queue:
                maker = queue[0]
                maker_remaining = maker.amount - maker.filled
                if maker.user_id == user_id:
                    queue.popleft()
                    level.total -= maker_remaining
                    self._end_resting(maker, now)
                    continue
                fill = remaining if remaining < maker_remaining else maker_remaining
                paid = price * fill * mul // div
                buyer_fee = -(-fill * taker_num // taker_den)
                seller_fee = -(-paid * maker_num // maker_den)
                trade_id = self.next_trade_id
                self.next_trade_id = trade_id + 1
                settle(
                    user_id,
                    maker.user_id,
                    base,
                    quote,
                    fill,
                    paid,
                    buyer_fee,
                    seller_fee,
                    0,
                    trade_id,
                )
                trades.append(
                    Trade(
                        trade_id,
                        symbol,
                        price,
                        fill,
                        paid,
                        BUY,
                        maker.id,
                        order.id,
                        maker.user_id,
                        user_id,
                        seller_fee,
                        buyer_fee,
                        now,
                    )
                )
                remaining -= fill
                order.filled += fill
                order.quote_filled += paid
                order.frozen -= paid
                maker.filled += fill
                maker.quote_filled += paid
                maker.frozen -= fill
                maker.updated = now
                level.total -= fill
                out_orders[maker.id] = maker
                if fill == maker_remaining:
                    maker.status = FILLED
                    queue.popleft()
                    del open_orders[maker.id]
                    if maker.client_order_id is not None:
                        self._forget(maker)
                else:
                    maker.status = PARTIALLY_FILLED
                if not remaining:
                    break
            if not queue:
                del asks[price]
        order.updated = now
        return trades

    def _match_sell(self, order: Order, m: Market, book: OrderBook, now: int) -> list[Trade]:
        trades: list[Trade] = []
        bids = book.bids
        limit = order.price
        user_id = order.user_id
        remaining = order.amount - order.filled
        mul, div = m.notional_mul, m.notional_div
        maker_num, maker_den = m.maker_num, m.maker_den
        taker_num, taker_den = m.taker_num, m.taker_den
        base, quote = m.base.code, m.quote.code
        symbol = m.symbol
        settle = self.ledger.settle_trade
        out_orders = self._out_orders
        open_orders = self._open
        while remaining and bids:
            price, level = bids.peekitem(-1)
            if price < limit:
                break
            queue = level.orders
            while queue:
                maker = queue[0]
                maker_remaining = maker.amount - maker.filled
                if maker.user_id == user_id:
                    queue.popleft()
                    level.total -= maker_remaining
                    self._end_resting(maker, now)
                    continue
                fill = remaining if remaining < maker_remaining else maker_remaining
                paid = price * fill * mul // div
                buyer_fee = -(-fill * maker_num // maker_den)
                seller_fee = -(-paid * taker_num // taker_den)
                # The resting buy keeps exactly ceil(price x remaining) frozen.
                keep = -(-price * (maker_remaining - fill) * mul // div)
                release = maker.frozen - paid - keep
                if release < 0:  # never take more than it holds
                    keep += release
                    release = 0
                trade_id = self.next_trade_id
                self.next_trade_id = trade_id + 1
                settle(
                    maker.user_id,
                    user_id,
                    base,
                    quote,
                    fill,
                    paid,
                    buyer_fee,
                    seller_fee,
                    release,
                    trade_id,
                )
                trades.append(
                    Trade(
                        trade_id,
                        symbol,
                        price,
                        fill,
                        paid,
                        SELL,
                        maker.id,
                        order.id,
                        maker.user_id,
                        user_id,
                        buyer_fee,
                        seller_fee,
                        now,
                    )
                )
                remaining -= fill
                order.filled += fill
                order.quote_filled += paid
                order.frozen -= fill
                maker.filled += fill
                maker.quote_filled += paid
                maker.frozen = keep
                maker.updated = now
                level.total -= fill
                out_orders[maker.id] = maker
                if fill == maker_remaining:
                    maker.status = FILLED
                    queue.popleft()
                    del open_orders[maker.id]
                    if maker.client_order_id is not None:
                        self._forget(maker)
                else:
                    maker.status = PARTIALLY_FILLED
                if not remaining:
                    break
            if not queue:
                del bids[price]
        order.updated = now
        return trades

    def _market_buy_cost(
        self, m: Market, book: OrderBook, user_id: int, amount: int, limit: int
    ) -> int:
        """Exactly what the coming walk will pay: the same floored quote per maker order."""
        cost: int = 0
        left = amount
        mul, div = m.notional_mul, m.notional_div
        asks = book.asks
        for price in asks:
            if limit and price > limit:
                break
            for maker in asks[price].orders:
                if maker.user_id == user_id:
                    continue
                maker_remaining = maker.amount - maker.filled
                fill = left if left < maker_remaining else maker_remaining
                cost += price * fill * mul // div
                left -= fill
                if not left:
                    return cost
        return cost

    @staticmethod
    def _can_fill(book: OrderBook, is_buy: bool, user_id: int, amount: int, limit: int) -> bool:
        """FOK check: other users' liquidity within the limit (own orders would be canceled)."""
        left = amount
        if is_buy:
            levels = book.asks
            prices = iter(levels)
        else:
            levels = book.bids
            prices = reversed(levels)
        for price in prices:
            if limit and (price > limit if is_buy else price < limit):
                return False
            for maker in levels[price].orders:
                if maker.user_id != user_id:
                    left -= maker.amount - maker.filled
                    if left <= 0:
                        return True
        return False

    def _end_resting(self, order: Order, now: int) -> None:
        """Cancel an order already taken out of its book: release its hold, record it."""
        m = self.markets[order.market]
        if order.frozen:
            asset = m.quote.code if order.side == BUY else m.base.code
            self.ledger.unfreeze(order.user_id, asset, order.frozen, "order_release", order.id)
            order.frozen = 0
        order.status = CANCELED
        order.updated = now
        del self._open[order.id]
        self._out_orders[order.id] = order
        self._forget(order)

    def _forget(self, order: Order) -> None:
        """Keep a closed order with a client id reachable for idempotent retries."""
        if order.client_order_id is None:
            return
        closed = self._closed
        closed[order.id] = order
        if len(closed) > CLOSED_WITH_CLIENT_ID_KEPT:
            del closed[next(iter(closed))]

    # -- batches, recovery, checks --------------------------------------------

    def drain(self) -> Outbox:
        """Everything changed since the last drain; each order once, in its last state."""
        orders = list(self._out_orders.values())
        trades = self._out_trades
        self._out_orders = {}
        self._out_trades = []
        entries, accounts = self.ledger.drain()
        return Outbox(orders, trades, entries, accounts)

    def restore(
        self,
        open_orders: Iterable[Order],
        balances: Iterable[tuple[int, str, int, int]],
        next_order_id: int,
        next_trade_id: int,
        client_ids: Iterable[tuple[int, str, int]] = (),
        holds: Iterable[tuple[int, str, int]] = (),
    ) -> None:
        """Rebuild from persisted state; id order is time priority within a level.

        ``holds`` are pending withdrawals as (user, asset, amount), so that the
        frozen-balance invariant can tell them from order holds.
        """
        self.ledger.restore(balances, holds)
        self.books = {symbol: OrderBook(symbol) for symbol in self.markets}
        self._open = {}
        self._closed = {}
        self._out_orders = {}
        self._out_trades = []
        for order in sorted(open_orders, key=lambda item: item.id):
            if order.market not in self.books:
                raise ExchangeError("unknown_pair", f"order {order.id} is on {order.market!r}")
            if not order.is_open or order.amount - order.filled <= 0:
                raise AssertionError(f"order {order.id} is not open, it cannot rest")
            self.books[order.market].add(order)
            self._open[order.id] = order
        self._client_ids = {(user, coid): order_id for user, coid, order_id in client_ids}
        self.next_order_id = next_order_id
        self.next_trade_id = next_trade_id

    def check_invariants(self) -> None:
        """Raise AssertionError naming every broken invariant (tests call it after each step)."""
        problems: list[str] = []
        ledger = self.ledger
        for asset, total in ledger.totals().items():
            if total != 0:
                problems.append(f"{asset} is not conserved: accounts sum to {total}")
        expected: dict[tuple[int, str], int] = dict(ledger.holds())
        for order in self._open.values():
            m = self.markets[order.market]
            remaining = order.amount - order.filled
            if order.side == BUY:
                key = (order.user_id, m.quote.code)
                if order.frozen != m.notional_ceil(order.price, remaining):
                    problems.append(
                        f"buy order {order.id} holds {order.frozen}, "
                        f"not ceil(price x remaining) = {m.notional_ceil(order.price, remaining)}"
                    )
            else:
                key = (order.user_id, m.base.code)
                if order.frozen != remaining:
                    problems.append(f"sell order {order.id} holds {order.frozen}, not {remaining}")
            expected[key] = expected.get(key, 0) + order.frozen
        for user, asset, available, frozen in ledger.accounts():
            if user != DEPOSIT_ACCOUNT and (available < 0 or frozen < 0):
                problems.append(f"account {user} {asset} is negative: {available}/{frozen}")
            if user == DEPOSIT_ACCOUNT and frozen != 0:
                problems.append(f"deposit account has {frozen} {asset} frozen")
            if frozen != expected.pop((user, asset), 0):
                problems.append(
                    f"account {user} {asset} has {frozen} frozen, its orders and withdrawals "
                    f"hold {ledger.held(user, asset)} + orders"
                )
        for (user, asset), amount in expected.items():
            if amount:
                problems.append(f"user {user} has holds of {amount} {asset} but no account")
        in_books = 0
        for book in self.books.values():
            problems.extend(book.problems())
            for order in book.resting():
                in_books += 1
                if self._open.get(order.id) is not order:
                    problems.append(f"order {order.id} rests in a book but is not open")
        if in_books != len(self._open):
            problems.append(f"{len(self._open)} open orders but {in_books} in the books")
        if problems:
            raise AssertionError("engine invariants broken:\n  " + "\n  ".join(problems))
