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
  of the book will cost, and the walk stops as soon as that exceeds what the
  buyer has (so an unfunded order costs the writer one step, not the book);
  a market order's value at the best opposite price must reach the market's
  minimum notional, as a limit order's value at its price must;
* a market order by value (``quote``) gets the largest amount, a multiple of the
  step, whose trades at the book's prices as they stand spend (buy) or bring
  (sell) at most that quote; the walk is the same as the match that follows, in
  the same step of the single writer, so nothing can change in between;
* a repeated ``client_order_id`` returns the first order unchanged, and is
  refused if the repetition asks for a different order.

Every change since the last ``accept`` can be taken back with ``rollback``
(the batch whose rows the database refused): each order is registered in the
outbox, with a copy of its fields if it existed before, before its first
change; the ledger's entries are its own undo log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from exchange.domain.book import Level, OrderBook
from exchange.domain.client_ids import ClientIds
from exchange.domain.commands import PlaceOrder, RequestWithdrawal
from exchange.domain.errors import (
    AMOUNT_MINIMUM,
    AMOUNT_RANGE,
    AMOUNT_STEP,
    NOTIONAL_MINIMUM,
    PRICE_RANGE,
    PRICE_TICK,
    ExchangeError,
)
from exchange.domain.events import Outbox, PlaceResult
from exchange.domain.ledger import DEPOSIT_ACCOUNT, Ledger
from exchange.domain.markets import MAX_UNITS, Market, assets_of
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
    repeated_differently,
)
from exchange.domain.withdrawals import (
    MAX_ADDRESS,
    MAX_TXID,
    PENDING,
    SENT,
    Withdrawal,
    check_minimum,
)
from exchange.domain.withdrawals import REJECTED as W_REJECTED

__all__ = [
    "CLIENT_ID_TTL_MS",
    "CLIENT_ORDER_ID_MAX",
    "FREEZE",
    "HALT",
    "MAX_BALANCE",
    "MatchingEngine",
    "frozen_account",
]

CLIENT_ORDER_ID_MAX = 36
#: How long a client_order_id names its order (at least; see ``ClientIds``).
CLIENT_ID_TTL_MS = 24 * 3600 * 1000
#: Money columns are BIGINT: a deposit that would push the total of an asset past this
#: could never be committed (and would fail every command batched with it).
MAX_BALANCE = 2**63 - 1
#: Closed orders that carry a client_order_id stay in memory (newest first out last)
#: so that a retried placement gets the whole order back without a database read.
CLOSED_WITH_CLIENT_ID_KEPT = 100_000

_TIFS = frozenset(("GTC", "IOC", "FOK"))
#: The operator controls (``set_control``): a halted market, a frozen account.
HALT = "halt"
FREEZE = "freeze"


def frozen_account() -> ExchangeError:
    return ExchangeError(
        "account_frozen",
        "this account is frozen: it cannot trade or withdraw now; contact support",
    )


def _invalid(message: str, rule: str | None = None) -> ExchangeError:
    return ExchangeError("invalid_argument", message, rule=rule)


def _order_id(order: Order) -> int:
    return order.id


class MatchingEngine:
    """Books plus ledger; the single writer of both."""

    __slots__ = (
        "_before",
        "_before_controls",
        "_before_withdrawals",
        "_client_ids",
        "_closed",
        "_mark",
        "_new_client_ids",
        "_open",
        "_out_controls",
        "_out_orders",
        "_out_trades",
        "_out_withdrawals",
        "books",
        "frozen_users",
        "halted",
        "ledger",
        "markets",
        "next_order_id",
        "next_trade_id",
        "next_withdrawal_id",
        "withdrawals",
    )

    def __init__(
        self,
        markets: Mapping[str, Market],
        ledger: Ledger | None = None,
        *,
        client_id_ttl_ms: int = CLIENT_ID_TTL_MS,
    ) -> None:
        self.markets: dict[str, Market] = dict(markets)
        if ledger is None:
            ledger = Ledger(assets_of(self.markets.values()))
        self.ledger = ledger
        self.books: dict[str, OrderBook] = {symbol: OrderBook(symbol) for symbol in self.markets}
        self.next_order_id = 1
        self.next_trade_id = 1
        self.next_withdrawal_id = 1
        self._open: dict[int, Order] = {}
        self._closed: dict[int, Order] = {}
        self._client_ids = ClientIds(client_id_ttl_ms)
        #: Pending withdrawals by id (approved and rejected ones are only in the database).
        self.withdrawals: dict[int, Withdrawal] = {}
        self._out_orders: dict[int, Order] = {}
        self._out_trades: list[Trade] = []
        self._out_withdrawals: dict[int, Withdrawal] = {}
        # -- the undo log of the changes since the last accept --
        #: (next order id, next trade id, next withdrawal id) at the last accept.
        self._mark = (1, 1, 1)
        #: Orders that existed before: their changing fields at their first change.
        self._before: dict[int, tuple[int, int, int, str, int]] = {}
        #: Pending withdrawals as they were before their first change.
        self._before_withdrawals: dict[int, Withdrawal] = {}
        self._new_client_ids: list[tuple[tuple[int, str], int]] = []
        #: Markets whose new orders are refused (cancels still work), by an operator.
        self.halted: set[str] = set()
        #: Accounts that may not trade or withdraw (they may cancel, log in, look).
        self.frozen_users: set[int] = set()
        #: (kind, key) -> active, of the controls changed since the last accept; and what they
        #: were before their first change (the undo log).
        self._out_controls: dict[tuple[str, str], bool] = {}
        self._before_controls: dict[tuple[str, str], bool] = {}

    # -- reading ------------------------------------------------------------

    def market(self, symbol: str) -> Market:
        market = self.markets.get(symbol)
        if market is None:
            raise ExchangeError("unknown_pair", f"{symbol[:40]!r} is not a listed pair")
        return market

    @property
    def client_ids_kept_ms(self) -> int:
        """How far back a start-up must load client ids (the window and its last slice)."""
        return self._client_ids.kept_ms

    def order(self, order_id: int) -> Order | None:
        """An open order, or a closed one still remembered in memory."""
        return self._open.get(order_id) or self._closed.get(order_id)

    def open_orders(self, user_id: int | None = None, market: str | None = None) -> list[Order]:
        """Open orders in id (= time) order, optionally of one user and/or one market."""
        found = [
            order
            for order in self._open.values()
            if (user_id is None or order.user_id == user_id)
            and (market is None or order.market == market)
        ]
        found.sort(key=_order_id)  # a rollback may put an older order back at the end
        return found

    def depth(
        self, market: str, limit: int = 50
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(bids, asks) as aggregated (price, amount) levels, best first."""
        self.market(market)
        return self.books[market].depth(limit)

    # -- commands -------------------------------------------------------------

    def place(self, command: PlaceOrder, now: int) -> PlaceResult:
        """Place an order; a refusal raises ExchangeError and changes nothing."""
        user_id, market, side, amount, price = (
            command.user_id,
            command.market,
            command.side,
            command.amount,
            command.price,
        )
        type, tif, post_only = command.type, command.tif, command.post_only
        client_order_id = command.client_order_id
        if client_order_id is not None:
            if not client_order_id:
                client_order_id = None
            else:
                if len(client_order_id) > CLIENT_ORDER_ID_MAX:
                    raise _invalid(
                        f"client_order_id is longer than {CLIENT_ORDER_ID_MAX} characters"
                    )
                known = self._client_ids.get((user_id, client_order_id), now)
                if known is not None:
                    original = self._open.get(known) or self._closed.get(known)
                    if original is not None and not command.quote:  # by value: amounts vary
                        differs = repeated_differently(original, market, side, type, price, amount)
                        if differs:
                            raise _invalid(
                                f"client_order_id {client_order_id!r} is already used by order "
                                f"{known} with another {', '.join(differs)}"
                            )
                    return PlaceResult(original, [], True, known)
        if market in self.halted:  # after the retry check: a retry still finds its order
            raise ExchangeError(
                "market_halted", f"trading on {market} is halted; cancelling orders still works"
            )
        if user_id in self.frozen_users:
            raise frozen_account()
        if command.quote:
            if type != MARKET or amount:
                raise _invalid("a quote amount is only for market orders, without an amount")
            if command.quote >= MAX_UNITS:
                raise _invalid("quote amount is larger than this exchange accepts", AMOUNT_RANGE)
            m = self.markets.get(market)
            if m is None:
                raise ExchangeError("unknown_pair", f"{market[:40]!r} is not a listed pair")
            if side == BUY:  # the whole value must be there (and no walk for an unfunded one)
                have = self.ledger.available(user_id, m.quote.code)
                if have < command.quote:
                    raise self.ledger.insufficient_error(m.quote.code, command.quote, have)
                most = MAX_UNITS
            else:  # at most what the seller has: the walk stops there
                most = self.ledger.available(user_id, m.base.code)
                if most < m.step:
                    raise self.ledger.insufficient_error(m.base.code, m.step, most)
            amount = self._amount_for_quote(m, self.books[market], user_id, command, most)
            if not amount:
                raise ExchangeError(
                    "below_minimum",
                    f"{m.format_quote(command.quote)} {m.quote.code} does not reach one step "
                    f"({m.format_amount(m.step)} {m.base.code}) at the book's prices",
                    rule=AMOUNT_MINIMUM,
                )
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
        if price >= MAX_UNITS:
            raise _invalid("price is larger than this exchange accepts", PRICE_RANGE)
        if amount >= MAX_UNITS:
            raise _invalid("amount is larger than this exchange accepts", AMOUNT_RANGE)
        if price % m.tick:
            raise _invalid(
                f"price must be a multiple of {m.format_price(m.tick)} on {market}", PRICE_TICK
            )
        if amount <= 0 or amount % m.step:
            raise _invalid(
                f"amount must be a positive multiple of {m.format_amount(m.step)} on {market}",
                AMOUNT_STEP,
            )
        if amount < m.min_amount:
            raise ExchangeError(
                "below_minimum",
                f"amount must be at least {m.format_amount(m.min_amount)} {m.base.code}",
                rule=AMOUNT_MINIMUM,
            )
        book = self.books[market]
        # A market order is worth what it is where it starts to fill (an empty side: nothing).
        worth = price if type == LIMIT else (book.best_ask() if is_buy else book.best_bid()) or 0
        if worth and m.notional(worth, amount) < m.min_notional:
            raise ExchangeError(
                "below_minimum",
                f"order value must be at least {m.format_quote(m.min_notional)} {m.quote.code}",
                rule=NOTIONAL_MINIMUM,
            )

        ledger = self.ledger
        if is_buy:
            asset = m.quote.code
            have = ledger.available(user_id, asset)
            if type == LIMIT:
                need = m.notional_ceil(price, amount)
            else:
                need = self._market_buy_cost(m, book, user_id, amount, price, have)
        else:
            asset = m.base.code
            have = ledger.available(user_id, asset)
            need = amount
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
        self._out_orders[order_id] = order  # registered before any change (rollback)
        if client_order_id is not None:
            key = (user_id, client_order_id)
            self._client_ids.add(key, order_id, now)
            self._new_client_ids.append((key, order_id))
        if outcome != OPEN:
            self._forget(order)
            return PlaceResult(order, [], False, order_id)

        if need:
            ledger.freeze(user_id, asset, need, "order", order_id)
            order.frozen = need
        trades = self._match(order, m, book, now)

        remaining = amount - order.filled
        if remaining and type == LIMIT and tif == "GTC":
            order.status = PARTIALLY_FILLED if order.filled else OPEN
            if is_buy:
                keep = m.notional_ceil(price, remaining)
                if order.frozen > keep:
                    ledger.unfreeze(user_id, asset, order.frozen - keep, "order_release", order_id)
                    order.frozen = keep
            book.add(order)
            self._open[order_id] = order
        else:
            order.status = FILLED if not remaining else CANCELED
            if order.frozen:
                ledger.unfreeze(user_id, asset, order.frozen, "order_release", order_id)
                order.frozen = 0
            self._forget(order)
        if trades:
            self._out_trades.extend(trades)
        return PlaceResult(order, trades, False, order_id)

    def cancel(self, user_id: int, order_id: int, now: int) -> Order:
        """Cancel an open order of this user; anyone else's order is simply not found."""
        order = self._open.get(order_id)
        if order is None or order.user_id != user_id:
            raise ExchangeError("order_not_found", f"no open order {order_id}")
        self._touch(order)
        self.books[order.market].remove(order)
        self._end_resting(order, now)
        return order

    def credit(self, user_id: int, asset: str, amount: int, ref: int = 0) -> None:
        """A deposit into the user's available balance (through the outbox like any change)."""
        if asset not in self.ledger.assets:
            raise ExchangeError("unknown_coin", f"{asset[:20]!r} is not an asset here")
        if amount <= 0:
            raise ExchangeError("invalid_argument", "a credit must be greater than 0")
        # The deposit account is minus everything ever deposited and bounds every
        # other account of the asset, so keeping it in range keeps them all in range.
        deposited = -self.ledger.available(DEPOSIT_ACCOUNT, asset)
        if amount > MAX_BALANCE - deposited:
            raise ExchangeError("invalid_argument", "the credit is too large to be booked")
        self.ledger.credit(user_id, asset, amount, "deposit", ref)

    def cancel_all(self, user_id: int, market: str | None, now: int) -> list[Order]:
        """Cancel every open order of a user (on one market, or all): an operator's command."""
        if market is not None:
            self.market(market)
        return [self.cancel(user_id, o.id, now) for o in self.open_orders(user_id, market)]

    # -- operator controls --------------------------------------------------------

    def set_control(self, kind: str, key: str, active: bool) -> bool:
        """Halt or resume a market (``halt``, key the pair), freeze or unfreeze an account
        (``freeze``, key the user id); returns whether it changed anything."""
        if kind == HALT:
            self.market(key)
            members: set[Any] = self.halted
            member: Any = key
        elif kind == FREEZE:
            # The key is stored as given and read back with int() at the next start: only
            # a user id in plain digits ("7", not "07", " 7" or "x", which int() would
            # take differently or refuse as a ValueError, a bug in the batch), of at
            # most 19 digits (a BIGINT; int() also refuses past 4,300 digits).
            if not (
                0 < len(key) <= 19 and key.isascii() and key.isdigit() and key == str(int(key))
            ):
                raise _invalid("an account to freeze is named by its user id, in digits")
            member = int(key)
            if member <= 0:
                raise _invalid("only a user's account can be frozen")
            members = self.frozen_users
        else:
            raise _invalid(f"unknown control {kind!r}")
        was = member in members
        if was == active:
            return False
        self._before_controls.setdefault((kind, key), was)
        self._out_controls[(kind, key)] = active
        if active:
            members.add(member)
        else:
            members.discard(member)
        return True

    # -- withdrawals ------------------------------------------------------------

    def request_withdrawal(self, command: RequestWithdrawal, now: int) -> Withdrawal:
        """Freeze ``amount`` (None: all available) in a new pending withdrawal.

        The minimum is checked here, in the same step that freezes, against the
        amount actually taken: that is what makes concurrent withdrawals safe.
        """
        user_id, coin, amount = command.user_id, command.coin, command.amount
        fee, minimum, address = command.fee, command.minimum, command.address
        if user_id in self.frozen_users:
            raise frozen_account()
        asset = self.ledger.assets.get(coin)
        if asset is None:
            raise ExchangeError("unknown_coin", f"{coin[:20]!r} is not a listed coin")
        if user_id < 0 or fee < 0 or minimum < 0 or not 0 < len(address) <= MAX_ADDRESS:
            raise _invalid("this withdrawal request is malformed")
        available = self.ledger.available(user_id, coin)
        units = available if amount is None else amount
        check_minimum(asset, units, minimum, fee)
        withdrawal_id = self.next_withdrawal_id
        self.ledger.hold(user_id, coin, units, withdrawal_id)
        self.next_withdrawal_id = withdrawal_id + 1
        withdrawal = Withdrawal(
            withdrawal_id, user_id, coin, units, fee, address, PENDING, None, None, now, now
        )
        self.withdrawals[withdrawal_id] = withdrawal
        self._out_withdrawals[withdrawal_id] = withdrawal
        return withdrawal

    def approve_withdrawal(self, withdrawal_id: int, txid: str, now: int) -> Withdrawal:
        """``amount - fee`` leaves the exchange; the fee stays with it."""
        pending = self._pending_withdrawal(withdrawal_id)
        if not 0 < len(txid) <= MAX_TXID:
            raise _invalid(f"a transaction id has 1 to {MAX_TXID} characters")
        self.ledger.settle_hold(
            pending.user_id, pending.coin, pending.amount, pending.fee, pending.id
        )
        return self._settled(pending.settled(SENT, txid, None, now))

    def reject_withdrawal(self, withdrawal_id: int, reason: str, now: int) -> Withdrawal:
        """The whole amount returns to the user's available balance."""
        pending = self._pending_withdrawal(withdrawal_id)
        self.ledger.release_hold(pending.user_id, pending.coin, pending.amount, pending.id)
        return self._settled(pending.settled(W_REJECTED, None, reason, now))

    def _pending_withdrawal(self, withdrawal_id: int) -> Withdrawal:
        pending = self.withdrawals.get(withdrawal_id)
        if pending is None:
            raise ExchangeError(
                "withdrawal_not_found", f"withdrawal {withdrawal_id} is not pending"
            )
        return pending

    def _settled(self, withdrawal: Withdrawal) -> Withdrawal:
        withdrawal_id = withdrawal.id
        if withdrawal_id < self._mark[2]:
            self._before_withdrawals.setdefault(withdrawal_id, self.withdrawals[withdrawal_id])
        del self.withdrawals[withdrawal_id]
        self._out_withdrawals[withdrawal_id] = withdrawal
        return withdrawal

    # -- matching -------------------------------------------------------------

    def _match(self, order: Order, m: Market, book: OrderBook, now: int) -> list[Trade]:
        """Fill ``order`` (the taker) against the other side, best price first, FIFO.

        One loop for both sides; where they differ (which end of the book, which
        fee rate applies to which asset, and a resting buy's frozen quote) the
        taker's side decides.
        """
        trades: list[Trade] = []
        is_buy = order.side == BUY
        levels = book.asks if is_buy else book.bids
        best = 0 if is_buy else -1
        limit = order.price
        user_id = order.user_id
        remaining = order.amount - order.filled
        mul, div = m.notional_mul, m.notional_div
        maker_num, maker_den = m.maker_num, m.maker_den
        taker_num, taker_den = m.taker_num, m.taker_den
        base, quote = m.base.code, m.quote.code
        symbol = m.symbol
        side = order.side
        settle = self.ledger.settle_trade
        out_orders = self._out_orders
        before = self._before
        open_orders = self._open
        while remaining and levels:
            price, level = levels.peekitem(best)
            if limit and (price > limit if is_buy else price < limit):
                break
            queue = level.orders
            while queue:
                maker = queue[0]
                if maker.id not in out_orders:  # its first change in this batch: undo data
                    before[maker.id] = (
                        maker.filled,
                        maker.quote_filled,
                        maker.frozen,
                        maker.status,
                        maker.updated,
                    )
                    out_orders[maker.id] = maker
                maker_remaining = maker.amount - maker.filled
                if maker.user_id == user_id:
                    queue.popleft()
                    level.total -= maker_remaining
                    self._end_resting(maker, now)
                    continue
                fill = remaining if remaining < maker_remaining else maker_remaining
                # Market.notional and Market.taker_fee_of / maker_fee_of, inlined: this
                # loop runs once per fill, and the calls cost more than the arithmetic
                # (test_matching checks every trade's figures against the helpers).
                paid = price * fill * mul // div
                trade_id = self.next_trade_id
                self.next_trade_id = trade_id + 1
                if is_buy:  # the taker receives base, the resting seller quote
                    taker_fee = -(-fill * taker_num // taker_den)
                    maker_fee = -(-paid * maker_num // maker_den)
                    settle(
                        user_id, maker.user_id, base, quote, fill, paid, taker_fee, maker_fee, 0,
                        trade_id,
                    )  # fmt: skip
                    order.frozen -= paid
                    maker.frozen -= fill
                else:  # the taker receives quote; the resting buy keeps ceil(price x rest)
                    maker_fee = -(-fill * maker_num // maker_den)
                    taker_fee = -(-paid * taker_num // taker_den)
                    keep = -(-price * (maker_remaining - fill) * mul // div)
                    release = maker.frozen - paid - keep
                    if release < 0:  # never take more than it holds
                        keep += release
                        release = 0
                    settle(
                        maker.user_id, user_id, base, quote, fill, paid, maker_fee, taker_fee,
                        release, trade_id,
                    )  # fmt: skip
                    order.frozen -= fill
                    maker.frozen = keep
                trades.append(
                    Trade(
                        trade_id,
                        symbol,
                        price,
                        fill,
                        paid,
                        side,
                        maker.id,
                        order.id,
                        maker.user_id,
                        user_id,
                        maker_fee,
                        taker_fee,
                        now,
                    )
                )
                remaining -= fill
                order.filled += fill
                order.quote_filled += paid
                maker.filled += fill
                maker.quote_filled += paid
                maker.updated = now
                level.total -= fill
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
                del levels[price]
        order.updated = now
        return trades

    @staticmethod
    def _amount_for_quote(
        m: Market, book: OrderBook, user_id: int, command: PlaceOrder, most: int
    ) -> int:
        """The most base (a multiple of the step, at most ``most``) whose trades move at most
        ``command.quote``.

        Walks the opposite side as ``_match`` will (own orders are skipped: they are
        cancelled, not traded), within the price limit if there is one.
        """
        is_buy = command.side == BUY
        most -= most % m.step
        left = command.quote
        limit = command.price
        mul, div, step = m.notional_mul, m.notional_div, m.step
        amount = 0
        if is_buy:
            levels = book.asks
            prices = iter(levels)
        else:
            levels = book.bids
            prices = reversed(levels)
        for price in prices:
            if limit and (price > limit if is_buy else price < limit):
                break
            for maker in levels[price].orders:
                if maker.user_id == user_id:
                    continue
                remaining: int = maker.amount - maker.filled
                # The most base whose floored quote fits: price*f*mul//div <= left.
                affordable: int = ((left + 1) * div - 1) // (price * mul)
                if affordable >= remaining and amount + remaining < most:
                    amount += remaining
                    left -= price * remaining * mul // div
                    continue
                return min(amount + affordable - affordable % step, most)
        return amount

    def _market_buy_cost(
        self, m: Market, book: OrderBook, user_id: int, amount: int, limit: int, have: int
    ) -> int:
        """Exactly what the coming walk will pay: the same floored quote per maker order.

        The walk stops as soon as the cost passes ``have`` (the order is refused
        then), so refusing an unfunded order never costs a walk of the whole book.
        """
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
                if not left or cost > have:
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

    def _touch(self, order: Order) -> None:
        """Register an order in the outbox before its first change (with undo data if old)."""
        if order.id not in self._out_orders:
            self._before[order.id] = (
                order.filled,
                order.quote_filled,
                order.frozen,
                order.status,
                order.updated,
            )
            self._out_orders[order.id] = order

    def _end_resting(self, order: Order, now: int) -> None:
        """Cancel a touched order already taken out of its book: release its hold."""
        m = self.markets[order.market]
        if order.frozen:
            asset = m.quote.code if order.side == BUY else m.base.code
            self.ledger.unfreeze(order.user_id, asset, order.frozen, "order_release", order.id)
            order.frozen = 0
        order.status = CANCELED
        order.updated = now
        del self._open[order.id]
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

    def outbox(self) -> Outbox:
        """Everything changed since the last ``accept``; each order once, in its last state."""
        entries, accounts = self.ledger.pending()
        outbox = Outbox(
            list(self._out_orders.values()),
            self._out_trades,
            entries,
            accounts,
            list(self._out_withdrawals.values()),
        )
        if self._out_controls:
            outbox.controls = [(k, key, a) for (k, key), a in self._out_controls.items()]
        return outbox

    def accept(self) -> None:
        """The changes since the last ``accept`` are durable: start a new batch."""
        self._out_orders = {}
        self._out_trades = []
        self._out_withdrawals = {}
        self._before = {}
        self._before_withdrawals = {}
        self._new_client_ids = []
        if self._out_controls:
            self._out_controls = {}
            self._before_controls = {}
        self._mark = (self.next_order_id, self.next_trade_id, self.next_withdrawal_id)
        self.ledger.accept()

    def drain(self) -> Outbox:
        """``outbox`` then ``accept``."""
        outbox = self.outbox()
        self.accept()
        return outbox

    def rollback(self) -> None:
        """Take back every change since the last ``accept``: the state is as it was then.

        Orders placed since then disappear (with their client ids); orders that
        existed get their fields back and, if they had left their book, their
        place in it (a level's queue is in id order, which is time priority).
        The touched levels are rebuilt from their orders, so totals are exact.
        """
        first_new, _first_trade, first_withdrawal = self._mark
        self.ledger.rollback()
        levels: dict[tuple[str, str, int], tuple[set[int], list[Order]]] = {}
        for order in self._out_orders.values():
            key = (order.market, order.side, order.price)
            gone, back = levels.setdefault(key, (set(), []))
            self._closed.pop(order.id, None)
            if order.id >= first_new:
                if self._open.pop(order.id, None) is not None:
                    gone.add(order.id)
                continue
            order.filled, order.quote_filled, order.frozen, order.status, order.updated = (
                self._before[order.id]
            )
            if order.id in self._open:
                gone.add(order.id)  # put back in place below, with its old remaining amount
            else:
                self._open[order.id] = order
            back.append(order)
        for (symbol, side, price), (gone, back) in levels.items():
            book = self.books[symbol]
            side_levels = book.bids if side == BUY else book.asks
            level: Level | None = side_levels.get(price)
            resting = [o for o in level.orders if o.id not in gone] if level is not None else []
            resting.extend(back)
            if not resting:
                if level is not None:
                    del side_levels[price]
                continue
            resting.sort(key=_order_id)
            if level is None:
                level = side_levels[price] = Level(price)
            level.orders.clear()
            level.orders.extend(resting)
            level.total = sum(o.amount - o.filled for o in resting)
        for client_key, order_id in self._new_client_ids:
            self._client_ids.discard(client_key, order_id)
        for withdrawal_id in self._out_withdrawals:
            if withdrawal_id >= first_withdrawal:
                self.withdrawals.pop(withdrawal_id, None)
        self.withdrawals.update(self._before_withdrawals)
        for (kind, name), was in self._before_controls.items():
            members: set[Any] = self.halted if kind == HALT else self.frozen_users
            member: Any = name if kind == HALT else int(name)
            if was:
                members.add(member)
            else:
                members.discard(member)
        self.next_order_id, self.next_trade_id, self.next_withdrawal_id = self._mark
        self.accept()

    def restore(
        self,
        open_orders: Iterable[Order],
        balances: Iterable[tuple[int, str, int, int]],
        next_order_id: int,
        next_trade_id: int,
        client_ids: Iterable[tuple[int, str, int, int]] = (),
        withdrawals: Iterable[Withdrawal] = (),
        next_withdrawal_id: int = 1,
        now: int | None = None,
        controls: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Rebuild from persisted state; id order is time priority within a level.

        ``client_ids`` are (user, client id, order id, created) of the orders
        placed within the idempotency window before ``now``; ``withdrawals`` are
        the pending ones: their holds let the frozen-balance invariant tell them
        from order holds.
        """
        pending = sorted(withdrawals, key=lambda item: item.id)
        self.ledger.restore(balances, [(w.user_id, w.coin, w.amount) for w in pending])
        self.books = {symbol: OrderBook(symbol) for symbol in self.markets}
        self._open = {}
        self._closed = {}
        for order in sorted(open_orders, key=_order_id):
            if order.market not in self.books:
                raise ExchangeError("unknown_pair", f"order {order.id} is on {order.market!r}")
            if not order.is_open or order.amount - order.filled <= 0:
                raise AssertionError(f"order {order.id} is not open, it cannot rest")
            self.books[order.market].add(order)
            self._open[order.id] = order
        rows = list(client_ids)
        if now is None:
            now = max((row[3] for row in rows), default=0)
        self._client_ids.restore(rows, now)
        self.withdrawals = {w.id: w for w in pending}
        self.next_order_id = next_order_id
        self.next_trade_id = next_trade_id
        self.next_withdrawal_id = next_withdrawal_id
        self.halted = {key for kind, key in controls if kind == HALT and key in self.markets}
        self.frozen_users = {int(key) for kind, key in controls if kind == FREEZE}
        self.accept()

    def check_invariants(self) -> None:
        """Raise AssertionError naming every broken invariant (tests call it after each step)."""
        problems: list[str] = []
        ledger = self.ledger
        for asset, total in ledger.totals().items():
            if total != 0:
                problems.append(f"{asset} is not conserved: accounts sum to {total}")
        expected: dict[tuple[int, str], int] = dict(ledger.holds())
        pending: dict[tuple[int, str], int] = {}
        for withdrawal in self.withdrawals.values():
            key = (withdrawal.user_id, withdrawal.coin)
            pending[key] = pending.get(key, 0) + withdrawal.amount
        if pending != expected:
            problems.append(
                f"withdrawal holds {expected} are not the pending withdrawals {pending}"
            )
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
