"""The engine against a brute-force reference book, over random command sequences.

The reference is written the slow, obvious way: a flat list of open orders
scanned linearly, and per-user *total* holdings (available + frozen) with the
frozen part derived from the open orders and pending withdrawals. The engine
keeps available and frozen separately with sorted levels and running totals;
the two must agree on every trade, every open order and every balance after
every step, and the engine's own invariants (conservation, frozen = holds,
sound books) must hold throughout.

Batches end with ``accept`` (the commit went through) or ``rollback`` (the
database refused the batch's rows): after a rollback the engine's whole state
must be exactly what it was at the last accept, and the reference goes back to
its copy from then.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from exchange.domain.commands import PlaceOrder, RequestWithdrawal
from exchange.domain.errors import ExchangeError
from exchange.domain.ledger import FEE_ACCOUNT, WITHDRAWAL_ACCOUNT
from exchange.domain.markets import build_market, default_assets
from exchange.domain.matching import MatchingEngine

ASSETS = default_assets()
# Different maker and taker rates, so a role mix-up shows; a small minimum notional
# so that most generated orders are valid; odd prices so that rounding happens.
MARKET = build_market(
    "BTC/USDT",
    ASSETS["BTC"],
    ASSETS["USDT"],
    "0.01",
    "0.00001",
    "0.00002",
    "1",
    "0.001",
    "0.0025",
)
SYMBOL = MARKET.symbol
BASE, QUOTE = "BTC", "USDT"
USERS = (1, 2, 3, 4)
CLIENT_IDS = (None, None, None, "a", "b")
PRICES = (2_999_999, 3_000_000, 3_000_001, 3_000_007, 3_000_013, 3_000_100)
AMOUNTS = tuple(k * MARKET.step for k in (1, 2, 3, 7, 10, 33))
CREDITS = {
    QUOTE: (1_000_000, 5_000_000, 20_000_000),  # 1, 5, 20 USDT
    BASE: (3_000, 10_000, 100_000),  # 0.00003 .. 0.001 BTC
}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def floor_quote(price: int, amount: int) -> int:
    return price * amount // 10**4  # 2 price decimals + 8 base - 6 quote


def ceil_quote(price: int, amount: int) -> int:
    return ceil_div(price * amount, 10**4)


def fee(received: int, rate: tuple[int, int]) -> int:
    return ceil_div(received * rate[0], rate[1])


MAKER_RATE = (1, 1000)
TAKER_RATE = (25, 10000)


@dataclass
class RefOrder:
    id: int
    user: int
    side: str
    price: int
    amount: int
    filled: int = 0

    @property
    def remaining(self) -> int:
        return self.amount - self.filled


class Reference:
    """The obvious implementation of SPEC §6 rules."""

    def __init__(self) -> None:
        self.book: list[RefOrder] = []
        self.total: dict[tuple[int, str], int] = {}
        self.next_id = 1
        #: (user, client id) -> what the first order with it asked: side, kind, price, amount.
        self.client_ids: dict[tuple[int, str], tuple[str, str, int, int]] = {}
        #: pending withdrawal id -> (user, asset, amount, fee)
        self.withdrawals: dict[int, tuple[int, str, int, int]] = {}
        self.next_withdrawal = 1

    def frozen(self, user: int, asset: str) -> int:
        held = sum(w[2] for w in self.withdrawals.values() if (w[0], w[1]) == (user, asset))
        for order in self.book:
            if order.user != user:
                continue
            if order.side == "buy" and asset == QUOTE:
                held += ceil_quote(order.price, order.remaining)
            elif order.side == "sell" and asset == BASE:
                held += order.remaining
        return held

    def balance(self, user: int, asset: str) -> tuple[int, int]:
        frozen = self.frozen(user, asset)
        return self.total.get((user, asset), 0) - frozen, frozen

    def add(self, user: int, asset: str, delta: int) -> None:
        self.total[(user, asset)] = self.total.get((user, asset), 0) + delta

    def candidates(self, side: str, limit: int) -> list[RefOrder]:
        """Opposite orders within the limit, best price first, then oldest."""
        if side == "buy":
            found = [o for o in self.book if o.side == "sell" and (not limit or o.price <= limit)]
            return sorted(found, key=lambda o: (o.price, o.id))
        found = [o for o in self.book if o.side == "buy" and (not limit or o.price >= limit)]
        return sorted(found, key=lambda o: (-o.price, o.id))

    def place(
        self,
        user: int,
        side: str,
        amount: int,
        price: int,
        kind: str,
        tif: str,
        post_only: bool,
        client_id: str | None = None,
    ) -> tuple[str, str, list[tuple[int, int, int, int, int, int, int]]]:
        """Returns (error code or "", status, trades as tuples); status "duplicate" for a retry."""
        if client_id is not None:
            first = self.client_ids.get((user, client_id))
            if first is not None:
                if first != (side, kind, price, amount):
                    return "invalid_argument", "", []
                return "", "duplicate", []
        opposite = self.candidates(side, 0)
        worth = price if kind == "limit" else opposite[0].price if opposite else 0
        if worth and floor_quote(worth, amount) < MARKET.min_notional:
            return "below_minimum", "", []
        if amount < MARKET.min_amount:
            return "below_minimum", "", []
        others = [o for o in self.candidates(side, price) if o.user != user]
        if side == "buy":
            if kind == "limit":
                need = ceil_quote(price, amount)
            else:
                need, left = 0, amount
                for order in others:
                    take = min(left, order.remaining)
                    need += floor_quote(order.price, take)
                    left -= take
                    if not left:
                        break
            have = self.balance(user, QUOTE)[0]
        else:
            need, have = amount, self.balance(user, BASE)[0]
        if have < need:
            return "insufficient_balance", "", []
        order_id = self.next_id
        self.next_id += 1
        if client_id is not None:
            self.client_ids[(user, client_id)] = (side, kind, price, amount)
        if post_only and self.candidates(side, price):
            return "", "rejected", []
        if tif == "FOK" and sum(o.remaining for o in others) < amount:
            return "", "canceled", []
        trades = []
        left = amount
        for maker in self.candidates(side, price):
            if not left:
                break
            if maker.user == user:
                self.book.remove(maker)  # self-trade prevention: cancel the resting one
                continue
            take = min(left, maker.remaining)
            quote = floor_quote(maker.price, take)
            buyer, seller = (user, maker.user) if side == "buy" else (maker.user, user)
            buyer_fee = fee(take, TAKER_RATE if side == "buy" else MAKER_RATE)
            seller_fee = fee(quote, MAKER_RATE if side == "buy" else TAKER_RATE)
            self.add(buyer, QUOTE, -quote)
            self.add(buyer, BASE, take - buyer_fee)
            self.add(seller, BASE, -take)
            self.add(seller, QUOTE, quote - seller_fee)
            self.add(FEE_ACCOUNT, BASE, buyer_fee)
            self.add(FEE_ACCOUNT, QUOTE, seller_fee)
            maker_fee, taker_fee = (
                (seller_fee, buyer_fee) if side == "buy" else (buyer_fee, seller_fee)
            )
            trades.append((maker.price, take, quote, maker.user, user, maker_fee, taker_fee))
            maker.filled += take
            left -= take
            if not maker.remaining:
                self.book.remove(maker)
        if not left:
            return "", "filled", trades
        if kind == "limit" and tif == "GTC":
            self.book.append(RefOrder(order_id, user, side, price, amount, amount - left))
            return "", "partially_filled" if left < amount else "open", trades
        return "", "canceled", trades

    def withdraw(self, user: int, asset: str, amount: int, fee: int, minimum: int) -> str:
        if amount < minimum or amount <= fee:
            return "below_minimum"
        if self.balance(user, asset)[0] < amount:
            return "insufficient_balance"
        self.withdrawals[self.next_withdrawal] = (user, asset, amount, fee)
        self.next_withdrawal += 1
        return ""

    def settle(self, withdrawal_id: int, approve: bool) -> bool:
        found = self.withdrawals.pop(withdrawal_id, None)
        if found is None:
            return False
        user, asset, amount, fee = found
        if approve:
            self.add(user, asset, -amount)
            self.add(WITHDRAWAL_ACCOUNT, asset, amount - fee)
            self.add(FEE_ACCOUNT, asset, fee)
        return True

    def cancel(self, user: int, order_id: int) -> bool:
        for order in self.book:
            if order.id == order_id and order.user == user:
                self.book.remove(order)
                return True
        return False


class EngineVersusReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = MatchingEngine({SYMBOL: MARKET})
        self.ref = Reference()
        self.now = 0
        for user in USERS:  # start funded, so that most orders can trade
            for asset, amount in ((QUOTE, 30_000_000), (BASE, 100_000)):
                self.engine.credit(user, asset, amount)
                self.ref.add(user, asset, amount)
        self.engine.accept()
        self.saved = (copy.deepcopy(self.ref), full_state(self.engine))

    def _place(
        self,
        user: int,
        side: str,
        amount: int,
        price: int,
        kind: str,
        tif: str,
        post_only: bool,
        client_id: str | None = None,
    ) -> None:
        self.now += 1
        code, status, trades = self.ref.place(
            user, side, amount, price, kind, tif, post_only, client_id
        )
        try:
            result = self.engine.place(
                PlaceOrder(
                    user,
                    SYMBOL,
                    side,
                    amount,
                    price,
                    type=kind,
                    tif=tif,
                    post_only=post_only,
                    client_order_id=client_id,
                ),
                now=self.now,
            )
        except ExchangeError as error:
            assert error.code == code, f"engine refused with {error.code}, reference {code!r}"
            return
        assert code == "", f"engine accepted, reference refused with {code}"
        if status == "duplicate":
            assert result.duplicate and not result.trades
            event("duplicate client id")
            return
        assert not result.duplicate
        assert result.order is not None
        assert result.order.status == status
        got = [
            (t.price, t.amount, t.quote, t.maker_user_id, t.taker_user_id, t.maker_fee, t.taker_fee)
            for t in result.trades
        ]
        assert got == trades
        event(f"{kind} {side} {result.order.status} with {min(len(trades), 2)} trades")
        assert result.order.filled == sum(t[1] for t in trades)

    @rule(
        user=st.sampled_from(USERS),
        side=st.sampled_from(("buy", "sell")),
        amount=st.sampled_from(AMOUNTS),
        price=st.sampled_from(PRICES),
        tif=st.sampled_from(("GTC", "GTC", "IOC", "FOK")),
        client_id=st.sampled_from(CLIENT_IDS),
    )
    def limit(
        self, user: int, side: str, amount: int, price: int, tif: str, client_id: str | None
    ) -> None:
        self._place(user, side, amount, price, "limit", tif, False, client_id)

    @rule(
        user=st.sampled_from(USERS),
        side=st.sampled_from(("buy", "sell")),
        amount=st.sampled_from(AMOUNTS),
        price=st.sampled_from(PRICES),
    )
    def post_only(self, user: int, side: str, amount: int, price: int) -> None:
        self._place(user, side, amount, price, "limit", "GTC", True)

    @rule(
        user=st.sampled_from(USERS),
        side=st.sampled_from(("buy", "sell")),
        amount=st.sampled_from(AMOUNTS),
        price=st.sampled_from((0, *PRICES)),
        tif=st.sampled_from(("IOC", "FOK")),
        client_id=st.sampled_from(CLIENT_IDS),
    )
    def market(
        self, user: int, side: str, amount: int, price: int, tif: str, client_id: str | None
    ) -> None:
        self._place(user, side, amount, price, "market", tif, False, client_id)

    @precondition(lambda self: bool(self.ref.book))
    @rule(data=st.data(), own=st.booleans())
    def cancel(self, data: st.DataObject, own: bool) -> None:
        target = data.draw(st.sampled_from(self.ref.book))
        user = target.user if own else data.draw(st.sampled_from(USERS))
        self.now += 1
        expected = self.ref.cancel(user, target.id)
        try:
            order = self.engine.cancel(user, target.id, self.now)
        except ExchangeError as error:
            assert error.code == "order_not_found"
            assert not expected
            event("cancel refused")
            return
        assert expected and order.status == "canceled"
        event("cancel done")

    @rule(user=st.sampled_from(USERS), asset=st.sampled_from((BASE, QUOTE)), data=st.data())
    def credit(self, user: int, asset: str, data: st.DataObject) -> None:
        amount = data.draw(st.sampled_from(CREDITS[asset]))
        self.engine.credit(user, asset, amount)
        self.ref.add(user, asset, amount)

    @rule(
        user=st.sampled_from(USERS),
        asset=st.sampled_from((BASE, QUOTE)),
        amount=st.sampled_from((1_000, 50_000, 3_000_000)),
        fee=st.sampled_from((0, 500)),
    )
    def withdraw(self, user: int, asset: str, amount: int, fee: int) -> None:
        self.now += 1
        code = self.ref.withdraw(user, asset, amount, fee, 1_000)
        try:
            found = self.engine.request_withdrawal(
                RequestWithdrawal(user, asset, amount, fee, 1_000, "0x" + "ab" * 20), self.now
            )
        except ExchangeError as error:
            assert error.code == code
            return
        assert code == "" and found.status == "pending"
        event("withdrawal requested")

    @precondition(lambda self: bool(self.ref.withdrawals))
    @rule(data=st.data(), approve=st.booleans())
    def settle(self, data: st.DataObject, approve: bool) -> None:
        withdrawal_id = data.draw(st.sampled_from(sorted(self.ref.withdrawals)))
        self.now += 1
        assert self.ref.settle(withdrawal_id, approve)
        if approve:
            done = self.engine.approve_withdrawal(withdrawal_id, "0xtx", self.now)
        else:
            done = self.engine.reject_withdrawal(withdrawal_id, "no", self.now)
        assert done.status == ("sent" if approve else "rejected")

    @rule()
    def drain(self) -> None:
        outbox = self.engine.drain()
        assert len({order.id for order in outbox.orders}) == len(outbox.orders)
        assert sum(entry.d_available + entry.d_frozen for entry in outbox.entries) == 0
        self.saved = (copy.deepcopy(self.ref), full_state(self.engine))

    @rule()
    def rollback(self) -> None:
        self.engine.rollback()
        saved_ref, saved_state = self.saved
        assert full_state(self.engine) == saved_state
        assert self.engine.outbox().orders == [] and self.engine.outbox().entries == []
        self.ref = copy.deepcopy(saved_ref)
        event("rolled back")

    @invariant()
    def same_state(self) -> None:
        self.engine.check_invariants()
        engine_open = sorted(
            (o.id, o.user_id, o.side, o.price, o.amount - o.filled)
            for o in self.engine.open_orders()
        )
        ref_open = sorted((o.id, o.user, o.side, o.price, o.remaining) for o in self.ref.book)
        assert engine_open == ref_open
        for user in (*USERS, FEE_ACCOUNT):
            for asset in (BASE, QUOTE):
                assert self.engine.ledger.balance(user, asset) == self.ref.balance(user, asset), (
                    user,
                    asset,
                )
        assert self.engine.next_order_id == self.ref.next_id


def _order_fields(o: Any) -> tuple[Any, ...]:
    return (
        o.id,
        o.user_id,
        o.side,
        o.price,
        o.amount,
        o.filled,
        o.quote_filled,
        o.frozen,
        o.status,
        o.updated,
        o.client_order_id,
    )


def full_state(engine: MatchingEngine) -> Any:
    """Everything a batch may change, in comparable form (an absent account is a zero one)."""
    book = engine.books[SYMBOL]
    return (
        sorted((u, a, av, fr) for u, a, av, fr in engine.ledger.accounts() if av or fr),
        sorted(engine.ledger.holds().items()),
        [_order_fields(o) for o in engine.open_orders()],
        [
            (name, price, [o.id for o in level.orders], level.total)
            for name, side in (("bid", book.bids), ("ask", book.asks))
            for price, level in side.items()
        ],
        sorted(engine._client_ids.items()),
        sorted(engine._closed),
        sorted(engine.withdrawals.items()),
        (engine.next_order_id, engine.next_trade_id, engine.next_withdrawal_id),
    )


EngineVersusReference.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineVersusReference = EngineVersusReference.TestCase
