"""The matching engine, case by case (SPEC §6); invariants are checked after every step."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import pytest

from exchange.domain.client_ids import ClientIds
from exchange.domain.commands import PlaceOrder, RequestWithdrawal
from exchange.domain.errors import ExchangeError
from exchange.domain.events import PlaceResult
from exchange.domain.ledger import DEPOSIT_ACCOUNT, FEE_ACCOUNT
from exchange.domain.markets import build_market, default_assets, default_markets
from exchange.domain.matching import FREEZE, HALT, MatchingEngine
from exchange.domain.money import to_units
from exchange.domain.orders import Order

MARKETS = default_markets(default_assets())
M = MARKETS["BTC/USDT"]
USERS = (1, 2, 3, 4)


def P(text: str) -> int:
    return M.parse_price(text)


def A(text: str) -> int:
    return M.parse_amount(text)


def U(text: str) -> int:
    return to_units(Decimal(text), 6, "usdt")


def B(text: str) -> int:
    return to_units(Decimal(text), 8, "btc")


START_USDT = U("100000")
START_BTC = B("10")


@pytest.fixture
def engine() -> Iterator[MatchingEngine]:
    engine = MatchingEngine(MARKETS)
    for user in USERS:
        engine.credit(user, "USDT", START_USDT)
        engine.credit(user, "BTC", START_BTC)
        engine.credit(user, "ETH", B("100"))
    engine.drain()
    yield engine
    engine.check_invariants()


def place(
    engine: MatchingEngine, user: int, side: str, amount: str, price: str, **options: Any
) -> PlaceResult:
    now = options.pop("now", 1_000)
    market = options.pop("market", "BTC/USDT")
    command = PlaceOrder(user, market, side, A(amount), P(price) if price else 0, **options)
    result = engine.place(command, now=now)
    engine.check_invariants()
    return result


def bal(engine: MatchingEngine, user: int, asset: str) -> tuple[int, int]:
    return engine.ledger.balance(user, asset)


def trades_of(result: PlaceResult) -> list[tuple[int, int, int, int]]:
    """(price, amount, maker user, taker user) per trade."""
    return [(t.price, t.amount, t.maker_user_id, t.taker_user_id) for t in result.trades]


def snapshot(engine: MatchingEngine) -> Any:
    balances = sorted(engine.ledger.accounts())
    orders = [(o.id, o.status, o.filled, o.frozen) for o in engine.open_orders()]
    return (
        balances,
        orders,
        engine.depth("BTC/USDT", 100),
        engine.next_order_id,
        engine.next_trade_id,
    )


# -- fills ------------------------------------------------------------------


def test_full_fill_settles_both_sides_with_fees(engine: MatchingEngine) -> None:
    maker = place(engine, 1, "sell", "1", "30000")
    assert maker.order is not None and maker.order.status == "open"
    assert bal(engine, 1, "BTC") == (B("9"), B("1"))
    taker = place(engine, 2, "buy", "1", "30000")
    assert taker.order is not None
    assert taker.order.status == "filled"
    assert trades_of(taker) == [(P("30000"), A("1"), 1, 2)]
    trade = taker.trades[0]
    assert trade.quote == U("30000")
    assert trade.taker_side == "buy"
    assert trade.maker_order_id == maker.order.id and trade.taker_order_id == taker.order.id
    assert trade.taker_fee == B("0.002")  # the buyer pays in BTC
    assert trade.maker_fee == U("60")  # the seller pays in USDT
    assert bal(engine, 2, "USDT") == (U("70000"), 0)
    assert bal(engine, 2, "BTC") == (START_BTC + B("0.998"), 0)
    assert bal(engine, 1, "BTC") == (B("9"), 0)
    assert bal(engine, 1, "USDT") == (START_USDT + U("29940"), 0)
    assert bal(engine, FEE_ACCOUNT, "BTC") == (B("0.002"), 0)
    assert bal(engine, FEE_ACCOUNT, "USDT") == (U("60"), 0)
    assert maker.order.status == "filled" and maker.order.frozen == 0
    assert engine.depth("BTC/USDT", 10) == ([], [])


def test_partial_fill_leaves_the_rest_resting(engine: MatchingEngine) -> None:
    maker = place(engine, 1, "sell", "1", "30000")
    taker = place(engine, 2, "buy", "0.4", "30000")
    assert taker.order is not None and taker.order.status == "filled"
    assert maker.order is not None
    assert maker.order.status == "partially_filled"
    assert maker.order.remaining == A("0.6")
    assert maker.order.frozen == A("0.6")
    assert bal(engine, 1, "BTC") == (B("9"), B("0.6"))
    assert engine.depth("BTC/USDT", 10) == ([], [(P("30000"), A("0.6"))])


def test_sweeps_levels_at_maker_prices_and_returns_price_improvement(
    engine: MatchingEngine,
) -> None:
    place(engine, 1, "sell", "0.5", "30000")
    place(engine, 3, "sell", "0.5", "30100")
    place(engine, 3, "sell", "0.5", "30300")
    taker = place(engine, 2, "buy", "0.8", "30200")
    assert trades_of(taker) == [(P("30000"), A("0.5"), 1, 2), (P("30100"), A("0.3"), 3, 2)]
    assert [t.quote for t in taker.trades] == [U("15000"), U("9030")]
    assert taker.order is not None and taker.order.status == "filled"
    assert taker.order.quote_filled == U("24030")
    # froze 0.8 x 30200 = 24160; paid 24030; the 130 difference is back
    assert bal(engine, 2, "USDT") == (START_USDT - U("24030"), 0)
    assert engine.depth("BTC/USDT", 10) == ([], [(P("30100"), A("0.2")), (P("30300"), A("0.5"))])


def test_fifo_within_a_level(engine: MatchingEngine) -> None:
    first = place(engine, 1, "sell", "0.5", "30000")
    place(engine, 3, "sell", "0.5", "30000")
    taker = place(engine, 2, "buy", "0.7", "30000")
    assert trades_of(taker) == [(P("30000"), A("0.5"), 1, 2), (P("30000"), A("0.2"), 3, 2)]
    assert first.order is not None and first.order.status == "filled"


def test_better_priced_level_beats_time(engine: MatchingEngine) -> None:
    place(engine, 1, "buy", "0.5", "29000")
    place(engine, 3, "buy", "0.5", "29500")
    taker = place(engine, 2, "sell", "0.5", "28000")
    assert trades_of(taker) == [(P("29500"), A("0.5"), 3, 2)]
    assert taker.trades[0].taker_side == "sell"


def test_resting_buy_keeps_ceil_of_remaining_and_gets_improvement_back(
    engine: MatchingEngine,
) -> None:
    place(engine, 1, "sell", "0.4", "29000")
    result = place(engine, 2, "buy", "1", "30000")
    order = result.order
    assert order is not None and order.status == "partially_filled"
    assert trades_of(result) == [(P("29000"), A("0.4"), 1, 2)]
    assert order.frozen == U("18000")
    assert bal(engine, 2, "USDT") == (START_USDT - U("11600") - U("18000"), U("18000"))
    # the rest fills later as a maker, at its own price
    place(engine, 3, "sell", "0.6", "29000")
    assert order.status == "filled" and order.frozen == 0
    assert bal(engine, 2, "USDT") == (START_USDT - U("11600") - U("18000"), 0)


def test_rounding_is_floor_for_quote_and_ceil_for_fees(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.12345", "30000.01")
    taker = place(engine, 2, "buy", "0.12345", "30000.01")
    trade = taker.trades[0]
    exact = Decimal("30000.01") * Decimal("0.12345") * 10**6
    quote = int(exact.to_integral_value(ROUND_FLOOR))
    assert trade.quote == quote == 3_703_501_234
    seller_fee = int((Decimal(quote) * Decimal("0.002")).to_integral_value(ROUND_CEILING))
    buyer_fee = int((Decimal(A("0.12345")) * Decimal("0.002")).to_integral_value(ROUND_CEILING))
    assert (trade.maker_fee, trade.taker_fee) == (seller_fee, buyer_fee)
    assert bal(engine, 1, "USDT") == (START_USDT + quote - seller_fee, 0)
    assert bal(engine, 2, "BTC") == (START_BTC + A("0.12345") - buyer_fee, 0)
    assert bal(engine, 2, "USDT") == (START_USDT - quote, 0)
    assert bal(engine, FEE_ACCOUNT, "USDT") == (seller_fee, 0)
    assert bal(engine, FEE_ACCOUNT, "BTC") == (buyer_fee, 0)


def test_maker_and_taker_rates_apply_to_their_roles() -> None:
    assets = default_assets()
    market = build_market(
        "BTC/USDT",
        assets["BTC"],
        assets["USDT"],
        "0.01",
        "0.00001",
        "0.00001",
        "5",
        "0.001",
        "0.003",
    )
    engine = MatchingEngine({"BTC/USDT": market})
    engine.credit(1, "BTC", B("1"))
    engine.credit(2, "USDT", U("100000"))
    engine.place(PlaceOrder(1, "BTC/USDT", "sell", A("1"), P("10000")), now=0)
    result = engine.place(PlaceOrder(2, "BTC/USDT", "buy", A("1"), P("10000")), now=0)
    trade = result.trades[0]
    assert trade.maker_fee == U("10")  # 0.1 % of the seller's 10000 USDT
    assert trade.taker_fee == B("0.003")  # 0.3 % of the buyer's 1 BTC
    engine.check_invariants()


@pytest.mark.parametrize("taker", ["buy", "sell"])
def test_the_matching_loops_compute_what_the_market_helpers_say(taker: str) -> None:
    """Both loops inline Market.notional and the fee helpers: every trade must agree."""
    market = M
    engine = MatchingEngine({"BTC/USDT": market})
    engine.credit(1, "BTC", B("10"))
    engine.credit(2, "USDT", U("1000000"))
    maker = "sell" if taker == "buy" else "buy"
    maker_user, taker_user = (1, 2) if taker == "buy" else (2, 1)  # 1 holds BTC, 2 USDT
    for price, amount in (("29999.99", "0.33333"), ("30000.01", "0.1"), ("30000.37", "0.77777")):
        engine.place(PlaceOrder(maker_user, "BTC/USDT", maker, A(amount), P(price)), now=0)
    limit = P("30001") if taker == "buy" else P("29999")
    result = engine.place(PlaceOrder(taker_user, "BTC/USDT", taker, A("1.12345"), limit), now=1)
    assert len(result.trades) == 3
    for trade in result.trades:
        assert trade.quote == market.notional(trade.price, trade.amount)
        bought, sold = trade.amount, trade.quote  # the buyer receives base, the seller quote
        buyer_is_taker = trade.taker_side == "buy"
        buyer_fee = trade.taker_fee if buyer_is_taker else trade.maker_fee
        seller_fee = trade.maker_fee if buyer_is_taker else trade.taker_fee
        fee_of_buyer = market.taker_fee_of if buyer_is_taker else market.maker_fee_of
        fee_of_seller = market.maker_fee_of if buyer_is_taker else market.taker_fee_of
        assert buyer_fee == fee_of_buyer(bought) and seller_fee == fee_of_seller(sold)
    engine.check_invariants()  # a resting buy keeps Market.notional_ceil of its remainder


# -- time in force, market orders, post only --------------------------------


def test_ioc_matches_what_it_can_and_cancels_the_rest(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.3", "30000")
    result = place(engine, 2, "buy", "1", "30100", tif="IOC")
    assert result.order is not None
    assert result.order.status == "canceled"
    assert result.order.filled == A("0.3")
    assert result.order.frozen == 0
    assert bal(engine, 2, "USDT") == (START_USDT - U("9000"), 0)
    assert engine.depth("BTC/USDT", 10) == ([], [])
    assert engine.open_orders(2) == []


def test_ioc_without_liquidity_is_canceled_unfilled(engine: MatchingEngine) -> None:
    result = place(engine, 2, "sell", "1", "30000", tif="IOC")
    assert result.order is not None and result.order.status == "canceled"
    assert bal(engine, 2, "BTC") == (START_BTC, 0)


def test_fok_fillable_fills_completely(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.5", "30000")
    place(engine, 3, "sell", "0.5", "30050")
    result = place(engine, 2, "buy", "1", "30050", tif="FOK")
    assert result.order is not None and result.order.status == "filled"
    assert [t.amount for t in result.trades] == [A("0.5"), A("0.5")]


def test_fok_not_fillable_changes_nothing_but_is_recorded(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.5", "30000")
    place(engine, 3, "sell", "0.5", "30100")
    engine.drain()
    before = snapshot(engine)
    result = place(engine, 2, "buy", "1", "30050", tif="FOK")
    assert result.order is not None
    assert result.order.status == "canceled" and result.trades == []
    assert result.order.filled == 0 and result.order.frozen == 0
    after = snapshot(engine)
    assert after[:3] == before[:3]
    assert after[3] == before[3] + 1  # it got an id
    outbox = engine.drain()
    assert [o.id for o in outbox.orders] == [result.order.id]
    assert outbox.entries == [] and outbox.trades == []


def test_fok_does_not_count_own_orders_and_does_not_cancel_them(
    engine: MatchingEngine,
) -> None:
    own = place(engine, 2, "sell", "0.5", "30000")
    place(engine, 1, "sell", "0.5", "30000")
    result = place(engine, 2, "buy", "1", "30000", tif="FOK")
    assert result.order is not None and result.order.status == "canceled"
    assert own.order is not None and own.order.status == "open"


def test_market_buy_walks_the_book_and_freezes_exact_cost(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.5", "30000")
    place(engine, 3, "sell", "0.5", "31000")
    engine.drain()
    result = place(engine, 2, "buy", "0.7", "", type="market")
    assert result.order is not None
    assert result.order.status == "filled"
    assert result.order.type == "market" and result.order.tif == "IOC"
    assert trades_of(result) == [(P("30000"), A("0.5"), 1, 2), (P("31000"), A("0.2"), 3, 2)]
    cost = U("15000") + U("6200")
    assert bal(engine, 2, "USDT") == (START_USDT - cost, 0)
    freeze = [e for e in engine.drain().entries if e.user_id == 2 and e.reason == "order"]
    assert [(e.d_available, e.d_frozen) for e in freeze] == [(-cost, cost)]


def test_market_buy_with_price_limit_stops_there(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.5", "30000")
    place(engine, 3, "sell", "0.5", "31000")
    result = place(engine, 2, "buy", "1", "30500", type="market")
    assert result.order is not None
    assert result.order.status == "canceled" and result.order.filled == A("0.5")
    assert engine.depth("BTC/USDT", 10) == ([], [(P("31000"), A("0.5"))])


def test_market_buy_that_cannot_be_paid_is_refused(engine: MatchingEngine) -> None:
    engine.credit(9, "USDT", U("1000"))
    place(engine, 1, "sell", "1", "30000")
    engine.drain()
    before = snapshot(engine)
    with pytest.raises(ExchangeError) as caught:
        place(engine, 9, "buy", "0.5", "", type="market")
    assert caught.value.code == "insufficient_balance"
    assert "need 15000.000000 USDT" in caught.value.message
    assert snapshot(engine) == before
    assert engine.drain().orders == []


def test_unfunded_market_buy_stops_walking_at_once(engine: MatchingEngine) -> None:
    for index in range(200):  # a deep book: the refusal must not cost a walk of it
        place(engine, 1, "sell", "0.01", str(30000 + index))
    broke = 9  # no balance at all
    with pytest.raises(ExchangeError) as refused:
        engine.place(PlaceOrder(broke, "BTC/USDT", "buy", A("1000"), 0, type="market"), now=1)
    assert refused.value.code == "insufficient_balance"
    # "need" is what the walk had reached when it stopped: the first ask alone.
    assert refused.value.message.startswith("need 300.000000 USDT, 0.000000 available")
    engine.credit(broke, "USDT", U("900"))
    with pytest.raises(ExchangeError) as short:
        engine.place(PlaceOrder(broke, "BTC/USDT", "buy", A("1000"), 0, type="market"), now=1)
    assert short.value.message.startswith("need 900.030000 USDT, 900.000000 available")


def test_market_orders_meet_the_minimum_notional(engine: MatchingEngine) -> None:
    for kind_side, resting in (("buy", "sell"), ("sell", "buy")):
        place(engine, 1, resting, "0.5", "30000")
        # 0.0001 BTC at the best price (30000) is 3 USDT, below the 5 USDT minimum.
        with pytest.raises(ExchangeError) as small:
            place(engine, 2, kind_side, "0.0001", "", type="market")
        assert small.value.code == "below_minimum"
        filled = place(engine, 2, kind_side, "0.0002", "", type="market")
        assert filled.order is not None and filled.order.status == "filled"
        engine.cancel(1, engine.open_orders(1)[0].id, now=2)
    # Nothing to fill against: no value to check; the order ends unfilled.
    empty = place(engine, 2, "buy", "0.0001", "", type="market")
    assert empty.order is not None and empty.order.status == "canceled"


def test_market_sell(engine: MatchingEngine) -> None:
    place(engine, 1, "buy", "0.5", "30000")
    place(engine, 3, "buy", "0.5", "29000")
    result = place(engine, 2, "sell", "0.8", "", type="market")
    assert result.order is not None and result.order.status == "filled"
    assert trades_of(result) == [(P("30000"), A("0.5"), 1, 2), (P("29000"), A("0.3"), 3, 2)]
    received = U("15000") + U("8700")
    fee = -(-received * 2 // 1000)
    assert bal(engine, 2, "USDT") == (START_USDT + received - fee, 0)
    assert bal(engine, 2, "BTC") == (START_BTC - A("0.8"), 0)


def test_market_sell_on_empty_book_returns_the_hold(engine: MatchingEngine) -> None:
    result = place(engine, 2, "sell", "0.8", "", type="market")
    assert result.order is not None and result.order.status == "canceled"
    assert bal(engine, 2, "BTC") == (START_BTC, 0)


def test_post_only_rests_when_it_does_not_cross(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.5", "30000")
    result = place(engine, 2, "buy", "0.5", "29999.99", post_only=True)
    assert result.order is not None and result.order.status == "open"
    assert result.order.post_only
    assert bal(engine, 2, "USDT")[1] == M.notional_ceil(P("29999.99"), A("0.5"))


def test_post_only_that_would_cross_is_rejected(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.5", "30000")
    engine.drain()
    before = snapshot(engine)
    result = place(engine, 2, "buy", "0.5", "30000", post_only=True)
    assert result.order is not None
    assert result.order.status == "rejected" and result.trades == []
    assert result.order.frozen == 0
    assert snapshot(engine)[:3] == before[:3]
    outbox = engine.drain()
    assert [o.status for o in outbox.orders] == ["rejected"] and outbox.entries == []


# -- self-trade prevention, client ids, cancel --------------------------------


def test_self_trade_cancels_the_resting_order_and_continues(engine: MatchingEngine) -> None:
    own = place(engine, 1, "sell", "0.5", "30000")
    place(engine, 2, "sell", "0.5", "30000")
    result = place(engine, 1, "buy", "1", "30000")
    assert own.order is not None and own.order.status == "canceled"
    assert own.order.frozen == 0
    assert trades_of(result) == [(P("30000"), A("0.5"), 2, 1)]
    assert result.order is not None and result.order.status == "partially_filled"
    assert bal(engine, 1, "BTC") == (START_BTC + A("0.5") - B("0.001"), 0)
    assert engine.depth("BTC/USDT", 10) == ([(P("30000"), A("0.5"))], [])
    changed = {o.id: o.status for o in engine.drain().orders}
    assert changed[own.order.id] == "canceled"


def test_client_order_id_makes_placing_idempotent(engine: MatchingEngine) -> None:
    first = place(engine, 2, "buy", "0.5", "29000", client_order_id="abc-1")
    engine.drain()
    before = snapshot(engine)
    again = place(engine, 2, "buy", "0.5", "29000", client_order_id="abc-1")
    assert again.duplicate and again.order is first.order
    assert again.order_id == first.order_id
    assert snapshot(engine) == before
    assert engine.drain().orders == []
    other_user = place(engine, 3, "buy", "0.5", "29000", client_order_id="abc-1")
    assert not other_user.duplicate and other_user.order_id != first.order_id


@pytest.mark.parametrize(
    ("side", "amount", "price", "kind", "named"),
    [
        ("buy", "0.9", "29000", "limit", "amount"),
        ("buy", "0.5", "28000", "limit", "price"),
        ("sell", "0.5", "29000", "limit", "side"),
        ("buy", "0.5", "29000", "market", "type"),
    ],
)
def test_client_order_id_reused_for_another_order_is_refused(
    engine: MatchingEngine, side: str, amount: str, price: str, kind: str, named: str
) -> None:
    place(engine, 2, "buy", "0.5", "29000", client_order_id="abc-1")
    engine.drain()
    before = snapshot(engine)
    with pytest.raises(ExchangeError) as refused:
        place(engine, 2, side, amount, price, type=kind, client_order_id="abc-1")
    assert refused.value.code == "invalid_argument" and named in refused.value.message
    assert snapshot(engine) == before
    assert engine.drain().orders == []


def test_client_order_id_of_a_closed_order(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.5", "30000")
    first = place(engine, 2, "buy", "0.5", "30000", client_order_id="x")
    assert first.order is not None and first.order.status == "filled"
    again = place(engine, 2, "buy", "0.5", "30000", client_order_id="x")
    assert again.duplicate and again.order is first.order and again.trades == []
    with pytest.raises(ExchangeError):
        place(engine, 2, "buy", "0.5", "30000", client_order_id="x" * 37)


def test_cancel_returns_the_hold(engine: MatchingEngine) -> None:
    result = place(engine, 2, "buy", "0.5", "29000")
    assert result.order is not None
    order = engine.cancel(2, result.order.id, now=5_000)
    engine.check_invariants()
    assert order is result.order
    assert order.status == "canceled" and order.frozen == 0 and order.updated == 5_000
    assert bal(engine, 2, "USDT") == (START_USDT, 0)
    assert engine.depth("BTC/USDT", 10) == ([], [])
    with pytest.raises(ExchangeError) as caught:
        engine.cancel(2, result.order.id, now=6_000)
    assert caught.value.code == "order_not_found"


def test_cancel_of_another_users_order_is_not_found(engine: MatchingEngine) -> None:
    result = place(engine, 2, "buy", "0.5", "29000")
    assert result.order is not None
    engine.drain()
    with pytest.raises(ExchangeError) as caught:
        engine.cancel(3, result.order.id, now=0)
    assert caught.value.code == "order_not_found"
    assert caught.value.message == f"no open order {result.order.id}"
    assert result.order.status == "open"
    assert engine.drain().orders == []
    with pytest.raises(ExchangeError) as caught:
        engine.cancel(3, 999_999, now=0)
    assert caught.value.message == "no open order 999999"


# -- refusals change nothing --------------------------------------------------


def test_insufficient_balance_changes_nothing(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "1", "30000")
    engine.drain()
    before = snapshot(engine)
    with pytest.raises(ExchangeError) as caught:
        place(engine, 2, "buy", "4", "30000")
    assert caught.value.code == "insufficient_balance"
    assert caught.value.message == "need 120000.000000 USDT, 100000.000000 available"
    with pytest.raises(ExchangeError) as caught:
        place(engine, 2, "sell", "10.00001", "30000")
    assert caught.value.code == "insufficient_balance"
    assert snapshot(engine) == before
    outbox = engine.drain()
    assert (outbox.orders, outbox.trades, outbox.entries) == ([], [], [])


def test_below_minimum_notional(engine: MatchingEngine) -> None:
    with pytest.raises(ExchangeError) as caught:
        place(engine, 2, "buy", "0.0001", "30000")  # 3 USDT < 5
    assert caught.value.code == "below_minimum"
    assert "5.000000 USDT" in caught.value.message
    assert place(engine, 2, "buy", "0.0001", "50000").order is not None  # exactly 5


def test_below_minimum_amount() -> None:
    assets = default_assets()
    market = build_market(
        "BTC/USDT",
        assets["BTC"],
        assets["USDT"],
        "0.01",
        "0.00001",
        "0.001",
        "5",
        "0.002",
        "0.002",
    )
    engine = MatchingEngine({"BTC/USDT": market})
    engine.credit(1, "USDT", U("100000"))
    with pytest.raises(ExchangeError) as caught:
        engine.place(PlaceOrder(1, "BTC/USDT", "buy", A("0.0009"), P("30000")), now=0)
    assert caught.value.code == "below_minimum"
    with pytest.raises(ExchangeError) as caught:
        engine.place(PlaceOrder(1, "BTC/USDT", "buy", A("0.0009"), 0, type="market"), now=0)
    assert caught.value.code == "below_minimum"
    assert engine.next_order_id == 1


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"market": "DOGE/USDT"}, "unknown_pair"),
        ({"side": "hold"}, "invalid_argument"),
        ({"price": 0}, "invalid_argument"),
        ({"price": -100}, "invalid_argument"),
        ({"amount": 1_500}, "invalid_argument"),
        ({"amount": 0}, "invalid_argument"),
        ({"type": "stop"}, "invalid_argument"),
        ({"tif": "GTD"}, "invalid_argument"),
        ({"post_only": True, "tif": "IOC"}, "invalid_argument"),
        ({"post_only": True, "type": "market"}, "invalid_argument"),
    ],
)
def test_invalid_orders_are_refused(
    engine: MatchingEngine, changes: dict[str, Any], code: str
) -> None:
    args: dict[str, Any] = {
        "market": "BTC/USDT",
        "side": "buy",
        "amount": A("0.001"),
        "price": P("30000"),
    }
    args.update(changes)
    with pytest.raises(ExchangeError) as caught:
        engine.place(
            PlaceOrder(
                2,
                args.pop("market"),
                args.pop("side"),
                args.pop("amount"),
                args.pop("price"),
                **args,
            ),
            now=0,
        )
    assert caught.value.code == code
    assert engine.next_order_id == 1
    assert engine.drain().orders == []


def test_off_tick_price_is_refused(engine: MatchingEngine) -> None:
    engine_market = MARKETS["ETH/USDT"]
    with pytest.raises(ExchangeError) as caught:
        engine.place(PlaceOrder(2, "ETH/USDT", "buy", engine_market.step * 1_000, 1), now=0)
    assert caught.value.code == "below_minimum"  # on-tick but tiny: the grid check passed
    odd = build_market(
        "ETH/USDT",
        engine_market.base,
        engine_market.quote,
        "0.05",
        "0.0001",
        "0.0001",
        "5",
        "0.002",
        "0.002",
    )
    strict = MatchingEngine({"ETH/USDT": odd})
    strict.credit(2, "USDT", U("1000000"))
    with pytest.raises(ExchangeError) as caught:
        strict.place(PlaceOrder(2, "ETH/USDT", "buy", 10**8, 200_001), now=0)
    assert caught.value.code == "invalid_argument"


# -- outbox, depth, restore, invariants ---------------------------------------


def test_drain_lists_each_changed_order_once_in_final_state(engine: MatchingEngine) -> None:
    maker = place(engine, 1, "sell", "1", "30000")
    place(engine, 2, "buy", "0.3", "30000")
    place(engine, 3, "buy", "0.3", "30000")
    outbox = engine.drain()
    ids = [o.id for o in outbox.orders]
    assert len(ids) == len(set(ids)) == 3
    assert maker.order is not None
    assert maker.order in outbox.orders and maker.order.filled == A("0.6")
    assert [t.id for t in outbox.trades] == [1, 2]
    assert sum(e.d_available + e.d_frozen for e in outbox.entries) == 0
    assert (2, "BTC") in outbox.accounts and (FEE_ACCOUNT, "USDT") in outbox.accounts
    empty = engine.drain()
    assert (empty.orders, empty.trades, empty.entries, empty.accounts) == ([], [], [], set())


def test_depth_is_aggregated_best_first(engine: MatchingEngine) -> None:
    place(engine, 1, "buy", "0.1", "29000")
    place(engine, 2, "buy", "0.2", "29000")
    place(engine, 1, "buy", "0.3", "29500")
    place(engine, 3, "sell", "0.4", "31000")
    place(engine, 3, "sell", "0.5", "30500")
    bids, asks = engine.depth("BTC/USDT", 10)
    assert bids == [(P("29500"), A("0.3")), (P("29000"), A("0.3"))]
    assert asks == [(P("30500"), A("0.5")), (P("31000"), A("0.4"))]
    assert engine.depth("BTC/USDT", 1) == ([(P("29500"), A("0.3"))], [(P("30500"), A("0.5"))])
    with pytest.raises(ExchangeError):
        engine.depth("NOPE/USDT", 1)


def _copy(order: Order) -> Order:
    return Order(
        order.id,
        order.user_id,
        order.market,
        order.side,
        order.type,
        order.tif,
        order.post_only,
        order.price,
        order.amount,
        order.filled,
        order.quote_filled,
        order.frozen,
        order.status,
        order.client_order_id,
        order.created,
        order.updated,
    )


def test_restore_rebuilds_books_with_time_priority(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.5", "30000", client_order_id="a")
    place(engine, 3, "sell", "0.5", "30000")
    place(engine, 1, "buy", "0.2", "29000")
    place(engine, 2, "buy", "0.1", "30000")
    closed = place(engine, 4, "buy", "0.5", "28000", client_order_id="gone")
    assert closed.order is not None
    engine.cancel(4, closed.order.id, now=0)
    orders = [_copy(o) for o in reversed(engine.open_orders())]  # any order in
    rows = list(engine.ledger.accounts())
    clients = [(1, "a", 1, 1_000), (4, "gone", closed.order.id, 1_000)]
    fresh = MatchingEngine(MARKETS)
    fresh.restore(orders, rows, engine.next_order_id, engine.next_trade_id, clients)
    fresh.check_invariants()
    assert fresh.depth("BTC/USDT", 10) == engine.depth("BTC/USDT", 10)
    result = fresh.place(PlaceOrder(2, "BTC/USDT", "buy", A("0.6"), P("30000")), now=0)
    assert [(t.maker_order_id, t.amount) for t in result.trades] == [(1, A("0.4")), (2, A("0.2"))]
    assert result.order_id == engine.next_order_id
    assert result.trades[0].id == engine.next_trade_id
    duplicate = fresh.place(
        PlaceOrder(1, "BTC/USDT", "sell", A("0.5"), P("30000"), client_order_id="a"), now=0
    )
    assert duplicate.duplicate and duplicate.order is not None and duplicate.order.id == 1
    # Not in memory: the caller loads the order (and compares what was asked) itself.
    gone = fresh.place(
        PlaceOrder(4, "BTC/USDT", "buy", A("1"), P("1"), client_order_id="gone"), now=0
    )
    assert gone.duplicate and gone.order is None and gone.order_id == closed.order.id
    fresh.check_invariants()


def test_check_invariants_detects_corruption(engine: MatchingEngine) -> None:
    place(engine, 1, "sell", "0.5", "30000")
    engine.ledger._accounts[(1, "BTC")][1] += 1  # frozen no longer matches the order
    with pytest.raises(AssertionError, match="frozen"):
        engine.check_invariants()
    engine.ledger._accounts[(1, "BTC")][1] -= 1
    engine.ledger._accounts[(DEPOSIT_ACCOUNT, "USDT")][0] += 1  # value created
    with pytest.raises(AssertionError, match="USDT is not conserved"):
        engine.check_invariants()
    engine.ledger._accounts[(DEPOSIT_ACCOUNT, "USDT")][0] -= 1
    engine.books["BTC/USDT"].asks[P("30000")].total += 1
    with pytest.raises(AssertionError, match="total"):
        engine.check_invariants()
    engine.books["BTC/USDT"].asks[P("30000")].total -= 1


def test_withdrawal_holds_count_in_the_frozen_invariant(engine: MatchingEngine) -> None:
    pending = engine.request_withdrawal(
        RequestWithdrawal(2, "USDT", U("10"), U("1"), U("5"), "0xabc"), 1
    )
    assert pending.status == "pending" and pending.amount == U("10")
    place(engine, 2, "buy", "0.001", "30000")
    engine.check_invariants()
    sent = engine.approve_withdrawal(pending.id, "0xtx", 2)
    assert (sent.status, sent.txid, sent.updated, sent.created) == ("sent", "0xtx", 2, 1)
    engine.check_invariants()
    assert bal(engine, 2, "USDT") == (START_USDT - U("10") - U("30"), U("30"))
    assert engine.withdrawals == {}
    with pytest.raises(ExchangeError) as again:
        engine.reject_withdrawal(pending.id, "late", 3)
    assert again.value.code == "withdrawal_not_found"
    engine.ledger.hold(2, "USDT", U("1"), 99)  # a hold with no withdrawal behind it
    with pytest.raises(AssertionError, match="pending withdrawals"):
        engine.check_invariants()
    engine.ledger.release_hold(2, "USDT", U("1"), 99)


def test_withdrawal_minimum_and_fee_are_checked_on_what_is_taken(
    engine: MatchingEngine,
) -> None:
    with pytest.raises(ExchangeError) as small:
        engine.request_withdrawal(RequestWithdrawal(2, "USDT", U("4"), U("1"), U("5"), "0xabc"), 1)
    assert small.value.code == "below_minimum"
    everything = engine.request_withdrawal(
        RequestWithdrawal(2, "USDT", None, U("1"), U("5"), "0xabc"), 1
    )
    assert everything.amount == START_USDT and bal(engine, 2, "USDT") == (0, START_USDT)
    with pytest.raises(ExchangeError) as nothing_left:
        engine.request_withdrawal(RequestWithdrawal(2, "USDT", None, U("1"), U("5"), "0xabc"), 1)
    assert nothing_left.value.code == "below_minimum"
    rejected = engine.reject_withdrawal(everything.id, "checks", 2)
    assert (rejected.status, rejected.reason) == ("rejected", "checks")
    assert bal(engine, 2, "USDT") == (START_USDT, 0)
    for malformed in (
        dict(fee=-1, address="0xabc"),
        dict(fee=1, address=""),
        dict(fee=1, address="x" * 129),
    ):
        with pytest.raises(ExchangeError) as refused:
            engine.request_withdrawal(
                RequestWithdrawal(2, "USDT", U("10"), minimum=U("5"), **malformed), now=1
            )
        assert refused.value.code == "invalid_argument"
    with pytest.raises(ExchangeError) as unknown:
        engine.request_withdrawal(RequestWithdrawal(2, "DOGE", U("10"), 1, 5, "0xabc"), 1)
    assert unknown.value.code == "unknown_coin"


def test_client_ids_are_kept_for_their_window_then_forgotten() -> None:
    hour = 3_600_000
    engine = MatchingEngine(MARKETS, client_id_ttl_ms=4 * hour)
    engine.credit(2, "USDT", START_USDT)
    first = engine.place(
        PlaceOrder(2, "BTC/USDT", "buy", A("0.1"), P("20000"), client_order_id="k"), now=0
    )
    again = engine.place(
        PlaceOrder(2, "BTC/USDT", "buy", A("0.1"), P("20000"), client_order_id="k"), now=4 * hour
    )
    assert again.duplicate and again.order_id == first.order_id  # within the window
    later = engine.place(
        PlaceOrder(2, "BTC/USDT", "buy", A("0.1"), P("20000"), client_order_id="k"),
        now=5 * hour + 1,
    )
    assert not later.duplicate and later.order_id != first.order_id  # a new order now
    engine.check_invariants()


def test_the_idempotency_window_is_between_ttl_and_a_slice_more() -> None:
    ids = ClientIds(1000, parts=4)
    ids.add((1, "a"), 7, 0)
    for now in (0, 999, 1000, 1249):
        assert ids.get((1, "a"), now) == 7, now
    assert ids.get((1, "a"), 1250) is None  # at most ttl + ttl/4
    for n in range(1000):  # many keys over time: only the window stays
        ids.add((1, str(n)), n, n * 10)
    assert len(ids) <= 126
    ids.restore([(1, "x", 1, 100), (1, "x", 2, 200), (1, "y", 3, 5_000)], now=5_000)
    assert ids.get((1, "y"), 5_000) == 3 and ids.get((1, "x"), 5_000) is None
    ids.restore([(1, "x", 1, 4_500), (1, "x", 2, 4_600)], now=5_000)
    assert ids.get((1, "x"), 5_000) == 1  # the first use wins
    ids.discard((1, "x"), 2)
    assert ids.get((1, "x"), 5_000) == 1
    ids.discard((1, "x"), 1)
    assert ids.get((1, "x"), 5_000) is None


def test_market_orders_by_value(engine: MatchingEngine) -> None:
    """``quote``: the most amount (in steps) whose trades spend or bring at most that."""
    place(engine, 1, "sell", "0.1", "30000")
    place(engine, 3, "sell", "0.5", "31000")
    place(engine, 2, "sell", "0.2", "29000")  # the buyer's own: skipped, then cancelled
    budget = U("4000")  # 3,000 for the first 0.1, then 1,000 / 31,000 = 0.03225.. -> 0.03225
    result = engine.place(
        PlaceOrder(2, "BTC/USDT", "buy", 0, 0, type="market", quote=budget), now=1_000
    )
    engine.check_invariants()
    assert result.order is not None and result.order.status == "filled"
    assert trades_of(result) == [(P("30000"), A("0.1"), 1, 2), (P("31000"), A("0.03225"), 3, 2)]
    spent = U("3000") + U("999.75")
    assert result.order.quote_filled == spent <= budget
    assert bal(engine, 2, "USDT")[0] == START_USDT - spent

    place(engine, 4, "buy", "0.2", "28000")
    sold = engine.place(
        PlaceOrder(1, "BTC/USDT", "sell", 0, 0, type="market", quote=U("2000")), now=1_000
    )
    engine.check_invariants()
    assert sold.order is not None and sold.order.filled == A("0.07142")  # 2,000 / 28,000
    assert sold.order.quote_filled == U("1999.76") <= U("2000")

    # A retry with the same client id gets the first order, even once the book is gone.
    retry = PlaceOrder(
        4, "BTC/USDT", "buy", 0, 0, type="market", quote=U("500"), client_order_id="q"
    )
    first = engine.place(retry, now=1_000)
    assert first.order is not None and first.order.filled == A("0.01612")
    again = engine.place(retry, now=1_001)
    assert again.duplicate and again.order is first.order
    engine.credit(9, "USDT", U("10"))
    for command, words in (
        (PlaceOrder(9, "BTC/USDT", "buy", 0, 0, type="market", quote=U("11")), "insufficient"),
        (PlaceOrder(9, "BTC/USDT", "sell", 0, 0, type="market", quote=U("1")), "insufficient"),
        (PlaceOrder(1, "BTC/USDT", "buy", 0, 0, type="market", quote=U("0.1")), "one step"),
        (PlaceOrder(1, "BTC/USDT", "buy", A("1"), 0, type="market", quote=1), "only for market"),
        (PlaceOrder(1, "BTC/USDT", "buy", 0, P("1"), quote=U("10")), "only for market"),
    ):
        with pytest.raises(ExchangeError, match=words):
            engine.place(command, now=1_000)


# -- operator controls ------------------------------------------------------------


def test_a_halted_market_refuses_new_orders_but_cancels_and_retries_work(
    engine: MatchingEngine,
) -> None:
    resting = place(engine, 1, "buy", "0.1", "20000", client_order_id="mine-1").order
    assert resting is not None
    engine.drain()
    assert engine.set_control(HALT, "BTC/USDT", True) is True
    assert engine.set_control(HALT, "BTC/USDT", True) is False  # already so
    assert engine.outbox().controls == [(HALT, "BTC/USDT", True)]
    with pytest.raises(ExchangeError) as halted:
        place(engine, 2, "sell", "0.1", "20000")
    assert halted.value.code == "market_halted"
    retried = place(engine, 1, "buy", "0.1", "20000", client_order_id="mine-1")
    assert retried.duplicate and retried.order_id == resting.id  # a retry finds its order
    place(engine, 2, "sell", "1", "3000", market="ETH/USDT")  # other markets trade on
    assert engine.cancel(1, resting.id, 2_000).status == "canceled"
    with pytest.raises(ExchangeError) as unknown:
        engine.set_control(HALT, "DOGE/USDT", True)
    assert unknown.value.code == "unknown_pair"


def test_a_frozen_account_cannot_trade_or_withdraw_and_a_rollback_takes_controls_back(
    engine: MatchingEngine,
) -> None:
    engine.set_control(FREEZE, "3", True)
    engine.drain()
    for attempt in (
        lambda: place(engine, 3, "buy", "0.1", "20000"),
        lambda: engine.request_withdrawal(
            RequestWithdrawal(3, "BTC", B("0.1"), 0, 0, "address"), 1_000
        ),
    ):
        with pytest.raises(ExchangeError) as frozen:
            attempt()
        assert frozen.value.code == "account_frozen"
    place(engine, 4, "buy", "0.1", "20000")  # nobody else
    engine.drain()
    before = snapshot(engine), set(engine.halted), set(engine.frozen_users)
    engine.set_control(FREEZE, "3", False)
    engine.set_control(HALT, "BTC/USDT", True)
    engine.set_control(HALT, "BTC/USDT", False)
    engine.set_control(HALT, "ETH/USDT", True)
    assert sorted(engine.outbox().controls) == [
        (FREEZE, "3", False),
        (HALT, "BTC/USDT", False),
        (HALT, "ETH/USDT", True),
    ]
    engine.rollback()
    assert (snapshot(engine), engine.halted, engine.frozen_users) == before
    assert engine.outbox().controls == []
    with pytest.raises(ExchangeError):
        engine.set_control(FREEZE, "-1", True)  # a system account is not an account
    for key in ("x", "07", " 7", "٣", "1e3", "", "9" * 5000):  # by name, never a ValueError
        with pytest.raises(ExchangeError, match="user id"):
            engine.set_control(FREEZE, key, True)
    assert engine.outbox().controls == []


def test_controls_are_restored_with_the_state(engine: MatchingEngine) -> None:
    engine.restore(
        [], list(engine.ledger.accounts()), 1, 1, controls=[(HALT, "BTC/USDT"), (FREEZE, "2")]
    )
    assert engine.halted == {"BTC/USDT"} and engine.frozen_users == {2}
    with pytest.raises(ExchangeError):
        place(engine, 1, "buy", "0.1", "20000")
