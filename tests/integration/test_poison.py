"""One request's bad input never fails another's (SQLite and PostgreSQL, through a worker too).

Two layers. The input layer refuses text that cannot be stored (lone surrogates,
bytes that are not UTF-8) or has no business in a parameter (control
characters) in every parameter of every method, on both endpoints and in every
body format. Behind it, the writer: a command whose rows the database refuses
is set aside alone (memory rolled back, the batch committed again in halves),
answered ``internal_error``, and everyone batched with it is committed and
answered as usual, with no reload.

The fault is injected at the journal's database: a trigger refuses the order
rows whose ``client_order_id`` is ``poison``, exactly as a value the database
cannot take would.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from exchange.adapters.db.database import reading
from exchange.adapters.db.tables import orders
from exchange.api.methods import ALL_METHODS
from exchange.api.params import MULTILINE
from support import (
    assert_envelope,
    check_books_and_ledger,
    check_database_ledger,
    new_trader,
    until,
    writer_held,
)

Pair = tuple[Any, httpx.AsyncClient]
POISON = "poison"
SQLITE_TRIGGER = (
    "CREATE TRIGGER poison BEFORE INSERT ON orders WHEN NEW.client_order_id = 'poison' "
    "BEGIN SELECT RAISE(ABORT, 'this row is poisoned'); END"
)
POSTGRES_TRIGGER = (
    "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.client_order_id = 'poison' THEN RAISE EXCEPTION 'this row is poisoned'; END IF; "
    "RETURN NEW; END $$",
    "CREATE TRIGGER poison BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION poison()",
)


def poison_orders(app: Any) -> None:
    """Make the database refuse every order row with client_order_id 'poison'."""
    db = app.runtime.services.engine.journal.engine
    with db.begin() as conn:
        if db.dialect.name == "sqlite":
            conn.execute(text(SQLITE_TRIGGER))
        else:
            for statement in POSTGRES_TRIGGER:
                conn.execute(text(statement))


def stored_orders(app: Any) -> int:
    # A read: no write lock, which the app's own awaited transactions may hold (on this thread).
    with reading(app.runtime.services.engine.journal.engine).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(orders)).scalar_one())


async def one_batch(app: Any, requests: list[Any]) -> list[httpx.Response]:
    """Send every request while the writer is held, so that they are applied as one batch."""
    engine = app.runtime.services.engine
    with writer_held(engine) as gate:
        first = asyncio.ensure_future(requests[0])  # the writer blocks in its commit
        await until(lambda: engine._busy, what="the writer to start a batch")
        rest = [asyncio.ensure_future(request) for request in requests[1:]]
        await until(lambda: engine._queue.qsize() >= len(rest), what="every command queued")
        gate.set()
        return [await first, *[await task for task in rest]]


async def test_a_poisoned_order_fails_alone_in_a_batch_of_200(
    app_client: Pair, mailbox: Any
) -> None:
    app, client = app_client
    engine = app.runtime.services.engine
    users = [
        await new_trader(app, client, mailbox, f"u{n}@example.com", USDT="100000", BTC="10")
        for n in range(4)
    ]
    poison_orders(app)
    before = stored_orders(app)
    poisoned_at = 137
    requests = []
    for index in range(200):
        user = users[index % 4]
        side = "buy" if index % 2 else "sell"  # they trade with each other in the batch
        price = str(20_000 + index % 5) if side == "sell" else str(20_002 + index % 5)
        params = {"pair": "BTC/USDT", "amount": "0.001", "price": price}
        params["client_order_id"] = POISON if index == poisoned_at else f"c-{index}"
        requests.append(client.post(f"/api/{side}", data=params, headers=user))
    reloads = engine.reloads
    answers = await one_batch(app, requests)
    for index, answer in enumerate(answers):
        if index == poisoned_at:
            assert_envelope(answer, 500, "internal_error")
        else:
            assert assert_envelope(answer, 200)["client_order_id"] == f"c-{index}"
    assert engine.reloads == reloads, "a poisoned command must not reload the engine"
    assert engine.refused_unstorable == 1
    assert stored_orders(app) == before + 199
    assert any(answer.json()["data"]["trades"] for answer in answers if answer.status_code == 200)
    check_books_and_ledger(app)
    check_database_ledger(engine.journal.engine)


async def test_surrogates_among_ordinary_orders_refuse_nothing_else(
    app_client: Pair, mailbox: Any
) -> None:
    """The review's reproduction: 40 bodies with a lone surrogate shuffled among 150 buys."""
    app, client = app_client
    engine = app.runtime.services.engine
    attacker = await new_trader(app, client, mailbox, "a@example.com", USDT="100000")
    trader = await new_trader(app, client, mailbox, "t@example.com", USDT="100000")
    bad = '{"pair":"BTC/USDT","amount":"0.001","price":"10000","client_order_id":"\\ud800"}'
    requests = [
        client.post(
            "/api/buy",
            content=bad.encode(),
            headers={**attacker, "content-type": "application/json"},
        )
        for _ in range(40)
    ] + [
        client.post(
            "/api/buy",
            json={"pair": "BTC/USDT", "amount": "0.001", "price": "10000"},
            headers=trader,
        )
        for _ in range(150)
    ]
    kinds = ["bad"] * 40 + ["good"] * 150
    order = list(range(190))
    random.Random(7).shuffle(order)
    reloads = engine.reloads
    answers = await asyncio.gather(*(requests[i] for i in order))
    for index, answer in zip(order, answers, strict=True):
        if kinds[index] == "bad":
            assert_envelope(answer, 400, "invalid_argument")
            assert "'client_order_id'" in answer.json()["description"]
        else:
            assert assert_envelope(answer, 200)["status"] == "open"
    assert engine.reloads == reloads
    check_books_and_ledger(app)


async def test_forty_poisoned_orders_among_150_fail_alone(app_client: Pair, mailbox: Any) -> None:
    """The same mix past the input layer: rows the database refuses, in one batch."""
    app, client = app_client
    engine = app.runtime.services.engine
    attacker = await new_trader(app, client, mailbox, "a@example.com", USDT="100000")
    trader = await new_trader(app, client, mailbox, "t@example.com", USDT="100000")
    poison_orders(app)
    kinds = ["bad"] * 40 + ["good"] * 150
    random.Random(11).shuffle(kinds)
    requests = [
        client.post(
            "/api/buy",
            data={"pair": "BTC/USDT", "amount": "0.001", "price": "10000"}
            | ({"client_order_id": POISON} if kind == "bad" else {}),
            headers=attacker if kind == "bad" else trader,
        )
        for kind in kinds
    ]
    reloads = engine.reloads
    answers = await one_batch(app, requests)
    refused = [
        kind for kind, answer in zip(kinds, answers, strict=True) if answer.status_code != 200
    ]
    assert refused == ["bad"] * 40  # every poisoned order failed, no ordinary one did
    for kind, answer in zip(kinds, answers, strict=True):
        if kind == "bad":
            assert_envelope(answer, 500, "internal_error")
    assert engine.reloads == reloads
    balances = await client.post("/api/get_user_coin", headers=attacker)
    assert assert_envelope(balances, 200)["USDT"]["frozen"] == "0.000000"  # nothing held
    check_books_and_ledger(app)
    check_database_ledger(engine.journal.engine)


async def test_login_with_a_lone_surrogate_is_refused_not_500(client: httpx.AsyncClient) -> None:
    body = '{"user":"x@example.com","pass":"x-\\udfff-\\ud800"}'
    answer = await client.post(
        "/api/login", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert_envelope(answer, 400, "invalid_argument")
    assert "'pass'" in answer.json()["description"]


#: Values that cannot be stored or have no business in a parameter, per body format.
BAD_JSON = ("\ud800", "ok\udc80", "a\x00b", "a\x07", "tab\there", "line\nbreak", "\x9b")
BAD_ENCODED = ("%ED%A0%80", "%FF", "a%00b", "%1B[31m", "%7F", "%C2%9B")


def _method_params() -> list[tuple[str, str, str]]:
    return [
        (method.name, method.verb, param.name) for method in ALL_METHODS for param in method.params
    ]


@pytest.mark.parametrize(("method", "verb", "name"), _method_params())
async def test_every_text_parameter_refuses_unstorable_text(
    client: httpx.AsyncClient, method: str, verb: str, name: str
) -> None:
    """Every parameter of every method, on /api and /router, in every body format.

    (A PEM public key has several lines: for those parameters only, a line break is
    text like any other, and every other character here is still refused.)
    """
    attempts: list[tuple[str, dict[str, Any]]] = []
    for value in BAD_JSON:
        if name in MULTILINE and value == "line\nbreak":
            continue
        body = json.dumps({name: value})  # ensure_ascii: \\ud800 reaches the server escaped
        attempts.append(
            ("json", {"content": body, "headers": {"content-type": "application/json"}})
        )
        attempts.append(
            ("multipart", {"files": {name: (None, value.encode("utf-8", "surrogatepass"))}})
        )
    for encoded in BAD_ENCODED:
        attempts.append(("form", {"content": f"{name}={encoded}", "headers": FORM}))
        attempts.append(("query", {"query": f"{name}={encoded}"}))
    for where, request in attempts:
        for path in (f"/api/{method}", "/router"):
            query = request.get("query", "")
            if path == "/router":
                query = f"router={method}" + (f"&{query}" if query else "")
            options = {k: v for k, v in request.items() if k != "query"}
            if verb == "GET" and where != "query":
                continue
            answer = await client.request(verb, f"{path}?{query}" if query else path, **options)
            assert answer.status_code == 400, (where, path, request, answer.text)
            description = answer.json()["description"]
            assert description.startswith("invalid_argument: "), (where, request, description)
            assert f"'{name}'" in description, (where, request, description)


FORM = {"content-type": "application/x-www-form-urlencoded"}


async def test_a_command_that_breaks_the_domain_is_set_aside_alone(
    app_client: Pair, mailbox: Any
) -> None:
    """An engine bug hit by one command (here: raised after it changed memory) fails it
    alone: its changes are rolled back and the rest of its batch is applied again."""
    app, client = app_client
    engine = app.runtime.services.engine
    seller = await new_trader(app, client, mailbox, "s@example.com", BTC="10")
    buyer = await new_trader(app, client, mailbox, "b@example.com", USDT="100000")
    real_apply = engine._apply

    def buggy_apply(command: Any, now: int) -> Any:
        result = real_apply(command, now)
        if getattr(command, "client_order_id", None) == "bug":
            raise RuntimeError("a bug after the order was applied")
        return result

    engine._apply = buggy_apply
    requests = []
    for index in range(60):
        who, side = (seller, "sell") if index % 2 else (buyer, "buy")
        params = {"pair": "BTC/USDT", "amount": "0.01", "price": "20000"}
        params["client_order_id"] = "bug" if index == 31 else f"o-{index}"
        requests.append(client.post(f"/api/{side}", data=params, headers=who))
    reloads = engine.reloads
    answers = await one_batch(app, requests)
    engine._apply = real_apply
    assert [i for i, a in enumerate(answers) if a.status_code != 200] == [31]
    assert_envelope(answers[31], 500, "internal_error")
    assert engine.reloads == reloads
    check_books_and_ledger(app)
    check_database_ledger(engine.journal.engine)
    seller_coins = assert_envelope(await client.post("/api/get_user_coin", headers=seller), 200)
    assert seller_coins["BTC"]["frozen"] == "0.00000000"  # 29 sells, all filled by 30 buys
    assert seller_coins["BTC"]["available"] == "9.71000000"


async def test_depth_read_during_a_batch_that_is_rolled_back_is_not_served_after(
    app_client: Pair, mailbox: Any
) -> None:
    """Depth read mid-batch may show the batch; once a part is rolled back (and nothing
    commits on that market again), the cached answer must not keep showing it."""
    app, client = app_client
    engine = app.runtime.services.engine
    user = await new_trader(app, client, mailbox, "d@example.com", BTC="1", USDT="100000")
    poison_orders(app)
    poisoned = {"pair": "ETH/BTC", "amount": "1", "price": "0.05", "client_order_id": POISON}
    ordinary = {"pair": "BTC/USDT", "amount": "0.001", "price": "20000"}
    with writer_held(engine) as gate:
        first = asyncio.ensure_future(client.post("/api/buy", data=poisoned, headers=user))
        await until(lambda: engine._busy, what="the batch in flight")
        others = [
            asyncio.ensure_future(client.post("/api/buy", data=ordinary, headers=user))
            for _ in range(3)
        ]
        await until(lambda: engine._queue.qsize() >= 3, what="the others queued")
        if not hasattr(app.state, "worker"):  # one process reads live books meanwhile
            seen = assert_envelope(await client.get("/api/get_depth?pair=ETH/BTC"), 200)
            assert seen["bids"] == [["0.050000", "1.00000000"]]
        gate.set()
        assert_envelope(await first, 500, "internal_error")
        for other in others:
            assert_envelope(await other, 200)
    after = assert_envelope(await client.get("/api/get_depth?pair=ETH/BTC"), 200)
    assert after["bids"] == []
    check_books_and_ledger(app)


async def test_rows_the_database_refuses_are_refused_one_by_one_without_a_reload(
    app_client: Pair, mailbox: Any
) -> None:
    """Every order row refused (a trigger, here): each order fails alone (an attacker's
    burst of such commands must not become everyone's 503), the database stays in use
    for everything else, and nothing is reloaded. A database that cannot be used at
    all (read-only, missing tables, no permission) is told apart by its error class
    (tests/unit/test_database_errors.py) and answered 503 as a whole."""
    app, client = app_client
    engine = app.runtime.services.engine
    user = await new_trader(app, client, mailbox, "e@example.com", USDT="100000")
    db = engine.journal.engine
    with db.begin() as conn:
        if db.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON orders "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN RAISE EXCEPTION 'refused'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON orders FOR EACH ROW "
                    "EXECUTE FUNCTION refuse()"
                )
            )
    order = {"pair": "BTC/USDT", "amount": "0.001", "price": "20000"}
    reloads, batches = engine.reloads, engine.batches
    answers = await one_batch(
        app, [client.post("/api/buy", data=order, headers=user) for _ in range(32)]
    )
    assert {answer.status_code for answer in answers} == {500}
    assert engine.reloads == reloads and engine.ready
    assert engine.batches == batches  # nothing of theirs was committed
    await new_trader(app, client, mailbox, "f@example.com", USDT="5")  # other writes go on
    assert engine.batches > batches
    check_books_and_ledger(app)
