"""API fuzzing (issue 8, item 5): schemathesis and hypothesis against the real app.

Three layers, all in-process through ASGI on a real SQLite file:

* **schemathesis** reads ``/openapi.json`` and generates positive and negative
  requests for every documented operation, sent to ``/api/<method>`` without a
  session and with a funded user's Bearer token, and the same generated cases
  sent to ``/router?router=<method>``. Every answer must pass schemathesis'
  checks (no 5xx, documented status, content type and body schema, auth not
  ignored, wrong verbs refused) *and* SPEC §2: the three-key envelope, a known
  snake_case code on error, and the HTTP status SPEC §2 gives that code.
* **hypothesis** builds requests for ``/router`` from the method table itself
  (realistic pairs, grid-aligned decimals and junk, in every encoding), so the
  trading and wallet methods get deep into the engine.
* **raw ASGI** edge cases the dispatcher handles: content types, chunked and
  oversized bodies, bogus ``Content-Length``, duplicate keys, empty bodies,
  other verbs.

After each run the engine's invariants hold and every asset sums to zero, in
memory and in the database: fuzzing must never create or destroy money.

Runs are bounded and deterministic (fixed seeds, derandomized hypothesis, no
example database) so CI sees the same cases every time.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes, urlencode

import jsonschema_rs
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.python.asgi import get_client, shutdown_lifespans
from schemathesis.specs.openapi.checks import positive_data_acceptance

from exchange import __version__
from exchange.api.context import Method, Param
from exchange.api.methods import ALL_METHODS, METHODS
from exchange.api.openapi import build_openapi
from exchange.app import create_app
from exchange.config import Settings
from support import (
    check_books_and_ledger,
    check_database_ledger,
    make_settings,
    new_trader,
    running_app,
    smtp_server,
)

# -- SPEC §2, written out here so the suite checks the implementation against it --

SPEC_STATUS: dict[str, int] = {
    "invalid_argument": 400,
    "missing_argument": 400,
    "unknown_method": 404,
    "method_not_allowed": 405,
    "unknown_pair": 404,
    "unknown_coin": 404,
    "not_logged_in": 401,
    "forbidden": 403,
    "user_exists": 409,
    "invalid_email": 400,
    "weak_password": 400,
    "invalid_code": 400,
    "code_expired": 400,
    "too_many_attempts": 429,
    "invalid_credentials": 401,
    "rate_limited": 429,
    "insufficient_balance": 400,
    "order_not_found": 404,
    "invalid_address": 400,
    "address_not_set": 400,
    "address_cooldown": 400,
    "below_minimum": 400,
    "market_halted": 400,
    "overloaded": 503,
    "internal_error": 500,
}
DESCRIPTION = re.compile(r"([a-z]+(?:_[a-z]+)*): \S")
PAYLOAD_TOO_LARGE = 413

PASSWORD = "correct-horse-42"  # what support.new_trader registers with
TRADER = "fuzz-trader@example.com"
MAKER = "fuzz-maker@example.com"
PAIRS = ("BTC/USDT", "ETH/USDT", "ETH/BTC")
COINS = ("BTC", "ETH", "USDT")
BTC_ADDRESS = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
ETH_ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"

#: Examples per operation and phase: 21 operations x 3 runs stay well inside CI's time
#: budget. EXCHANGE_FUZZ_EXAMPLES=500 makes a deeper local run (same seeds).
SCHEMATHESIS_EXAMPLES = int(os.environ.get("EXCHANGE_FUZZ_EXAMPLES", "12"))
SEED = 20240805


def header(headers: Mapping[str, Any], name: str) -> str:
    """One header from httpx (str values) or schemathesis (lists of str) headers."""
    for key, value in headers.items():
        if key.lower() == name:
            return str(value[0] if isinstance(value, list) else value)
    return ""


def check_envelope(
    status: int, headers: Mapping[str, Any], content: bytes, name: str | None = None
) -> dict[str, Any]:
    """SPEC §2 for one answer: never a 500, the envelope, a known code and its status."""
    assert status != 500, content
    assert header(headers, "content-type").startswith("application/json"), headers
    body = orjson.loads(content)
    assert isinstance(body, dict) and set(body) == {"status", "data", "description"}, body
    assert isinstance(body["status"], bool) and isinstance(body["description"], str), body
    if status == 200:
        if name != "check_exist_name":
            assert body["status"] is True, body
        assert body["description"] == "", body
        return body
    assert body["status"] is False and body["data"] is None, body
    found = DESCRIPTION.match(body["description"])
    assert found, body
    code = found.group(1)
    assert code in SPEC_STATUS, body
    if status == PAYLOAD_TOO_LARGE:
        assert code == "invalid_argument", body
    else:
        assert status == SPEC_STATUS[code], (status, body)
    if status == 429:
        assert header(headers, "retry-after").isdigit(), headers
    return body


def check_conservation(app: Any, database_url: str) -> None:
    check_books_and_ledger(app)
    check_database_ledger(database_url)


# -- the fuzzed app ---------------------------------------------------------------


@dataclass
class Fuzzed:
    app: Any
    database_url: str
    bearer: dict[str, str]
    cases: int = 0  # schemathesis cases sent so far in this run


def fuzz_settings(database_url: str, smtp_port: int | None = None, **extra: Any) -> Settings:
    # Cooldown 0: the funded user's addresses are usable at once, so `withdraw` gets
    # past address checks; long sessions: nothing expires in the middle of a run;
    # schemathesis calls the app as host "testserver".
    return make_settings(
        database_url,
        smtp_port,
        allowed_hosts="testserver",
        withdraw_address_cooldown=0,
        session_idle=86_400,
        session_lifetime=86_400,
        **extra,
    )


async def seed_accounts(database_url: str) -> dict[str, str]:
    """A funded trader with withdrawal addresses and a book with resting orders."""
    with smtp_server() as (mailbox, port):
        async with running_app(fuzz_settings(database_url, port)) as (app, client):
            maker = await new_trader(
                app, client, mailbox, MAKER, BTC="50", ETH="500", USDT="5000000"
            )
            trader = await new_trader(
                app, client, mailbox, TRADER, BTC="20", ETH="200", USDT="2000000"
            )
            for pair, low, high in (
                ("BTC/USDT", 20_000, 21_000),
                ("ETH/USDT", 1_000, 1_100),
                ("ETH/BTC", "0.05", "0.06"),
            ):
                for side, price in (("buy", low), ("sell", high)):
                    answer = await client.post(
                        f"/api/{side}",
                        data={"pair": pair, "amount": "1", "price": str(price)},
                        headers=maker,
                    )
                    check_envelope(answer.status_code, answer.headers, answer.content)
            for coin, address in (
                ("BTC", BTC_ADDRESS),
                ("ETH", ETH_ADDRESS),
                ("USDT", ETH_ADDRESS),
            ):
                answer = await client.post(
                    "/api/set_withdraw_address",
                    data={"coin": coin, "address": address},
                    headers=trader,
                )
                check_envelope(answer.status_code, answer.headers, answer.content)
            check_books_and_ledger(app)
    return trader


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'exchange.db'}"
    bearer = asyncio.run(seed_accounts(database_url))
    # The app schemathesis drives: its lifespan runs in schemathesis' own event loop,
    # started by the first request and stopped below.
    app = create_app(fuzz_settings(database_url))
    try:
        yield Fuzzed(app, database_url, bearer)
        check_conservation(app, database_url)
    finally:
        shutdown_lifespans()


DOCUMENT: dict[str, Any] = build_openapi(ALL_METHODS, version=__version__)


def without_prefix_items(node: Any) -> Any:
    """The document with each tuple (``prefixItems``) loosened to ``items: anyOf``.

    schemathesis 4.32 rewrites ``prefixItems`` in response schemas to the draft-4
    array form of ``items`` and then rejects its own rewrite as an invalid OpenAPI
    3.1 schema (cf. schemathesis#3842), so its copy gets a looser but sound form.
    ``check_data`` validates every 200 answer against the exact document.
    """
    if isinstance(node, list):
        return [without_prefix_items(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: without_prefix_items(value) for key, value in node.items()}
    prefix = out.pop("prefixItems", None)
    if prefix is not None:
        unique = [json for i, json in enumerate(prefix) if json not in prefix[:i]]
        out["items"] = unique[0] if len(unique) == 1 else {"anyOf": unique}
    return out


# Loaded from the same builder that serves /openapi.json (test_served_document_is_the_one_fuzzed
# holds them equal), so collection needs no running app. (`schemathesis.pytest.from_fixture`
# would be the lazy alternative, but it does not work with pytest 9.)
schema = schemathesis.openapi.from_dict(without_prefix_items(DOCUMENT))
schema.config.seed = SEED
# The session is the funded user's Bearer header, never a generated `session` cookie
# (a cookie wins over the header, so a random one would only ever test 401).
schema.config.generation.update(
    max_examples=SCHEMATHESIS_EXAMPLES,
    deterministic=True,
    database="none",
    with_security_parameters=False,
)

_VALIDATORS: dict[str, Any] = {}


def check_data(name: str, status: int, content: bytes) -> None:
    """A 200 answer against the exact schema /openapi.json documents (JSON Schema 2020-12)."""
    if status != 200:
        return
    validator = _VALIDATORS.get(name)
    if validator is None:
        method = METHODS[name]
        operation = DOCUMENT["paths"][f"/api/{name}"][method.verb.lower()]
        envelope = operation["responses"]["200"]["content"]["application/json"]["schema"]
        validator = jsonschema_rs.Draft202012Validator(
            {**envelope, "components": DOCUMENT["components"]}
        )
        _VALIDATORS[name] = validator
    validator.validate(orjson.loads(content))


# Schema-valid is not business-valid: a random e-mail, an off-grid price or an
# unfunded amount is rightly refused with a 4xx, so "positive data is accepted"
# cannot hold for this API. Every other built-in check runs.
EXCLUDED = [positive_data_acceptance]


def bind(case: Any, fuzzed: Fuzzed) -> Method:
    """Point the case (and the checks that re-send it) at the app; its method-table row."""
    fuzzed.cases += 1
    case.operation.schema.app = fuzzed.app
    case.operation.app = fuzzed.app
    return METHODS[case.path.removeprefix("/api/")]


def fresh_bearer(fuzzed: Fuzzed, case: Any) -> dict[str, str]:
    """``logout`` ends the session it is given: hand it a session of its own."""
    operation = case.operation.schema["/api/login"]["POST"]
    operation.app = fuzzed.app
    login = operation.Case(
        body={"user": TRADER, "pass": PASSWORD}, media_type="application/x-www-form-urlencoded"
    )
    answer = login.call(app=fuzzed.app)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['data']['session']}"}


@schema.parametrize()
def test_api_without_session(case: Any, fuzzed: Fuzzed) -> None:
    method = bind(case, fuzzed)
    response = case.call_and_validate(excluded_checks=EXCLUDED)
    check_envelope(response.status_code, response.headers, response.content, method.name)
    check_data(method.name, response.status_code, response.content)


@schema.parametrize()
def test_api_with_session(case: Any, fuzzed: Fuzzed) -> None:
    method = bind(case, fuzzed)
    bearer = fresh_bearer(fuzzed, case) if method.name == "logout" else fuzzed.bearer
    response = case.call_and_validate(headers=bearer, excluded_checks=EXCLUDED)
    check_envelope(response.status_code, response.headers, response.content, method.name)
    check_data(method.name, response.status_code, response.content)
    if method.auth:
        assert response.status_code != 401, response.text


@schema.parametrize()
def test_router_with_session(case: Any, fuzzed: Fuzzed) -> None:
    """The same generated cases through the seed's endpoint, against the same schema."""
    method = bind(case, fuzzed)
    bearer = fresh_bearer(fuzzed, case) if method.name == "logout" else fuzzed.bearer
    case.path = "/router"
    response = case.call(headers=bearer, params={"router": method.name})
    case.validate_response(
        response,
        headers=bearer,
        excluded_checks=EXCLUDED,
        # Checks that re-send the case (without auth, with another verb) reach /router too.
        transport_kwargs={"headers": bearer, "params": {"router": method.name}},
    )
    check_envelope(response.status_code, response.headers, response.content, method.name)
    check_data(method.name, response.status_code, response.content)


def test_served_document_is_the_one_fuzzed(fuzzed: Fuzzed) -> None:
    with get_client(fuzzed.app) as client:  # the app's own loop, as the cases use
        served = client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == DOCUMENT


def test_schemathesis_runs_kept_conservation(fuzzed: Fuzzed) -> None:
    """After the generated cases (collected above, so run before): money is conserved.

    The fixture checks it again when the module ends, whatever ran.
    """
    if fuzzed.cases == 0:
        pytest.skip("no schemathesis case ran before this test: nothing to check yet")
    check_conservation(fuzzed.app, fuzzed.database_url)


# -- /router from the method table (hypothesis) -------------------------------------


class Number:
    """A JSON number literal sent as typed (``0.1``, ``1e400``, ``-0``): never a float."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Number({self.text!r})"


def json_value(value: object) -> str:
    if isinstance(value, Number):
        return value.text
    return orjson.dumps(value).decode()


JUNK_TEXT = st.text(max_size=40)
JUNK_NUMBER_TEXT = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-1",
        "-0",
        "0",
        "1e400",
        "1e-400",
        "1E+30",
        "0x10",
        "1_000",
        "1,5",
        "٣",
        "١٢.٥",
        "²",
        " 1 ",
        "+1",
        "++1",
        "1.",
        ".5",
        "1e",
        "--",
        "",
        " ",
        "0.000000001",
        "99999999999999999999999",
        "1" * 80,
        "\x00",
        "1\x00",
    ]
)
TICKS = {
    "BTC/USDT": ("0.01", "0.00001"),
    "ETH/USDT": ("0.01", "0.0001"),
    "ETH/BTC": ("0.000001", "0.0001"),
}
NEAR = {"BTC/USDT": 20_500, "ETH/USDT": 1_050, "ETH/BTC": 0.055}


def grid(step: str, low: int, high: int) -> st.SearchStrategy[str]:
    """Multiples of ``step`` as plain decimal text (exact: integer arithmetic only)."""
    scale = len(step.split(".")[1]) if "." in step else 0
    unit = int(step.replace(".", ""))

    def text(n: int) -> str:
        units = str(n * unit).rjust(scale + 1, "0")
        return f"{units[:-scale]}.{units[-scale:]}" if scale else units

    return st.integers(low, high).map(text)


def decimal_value(name: str) -> st.SearchStrategy[object]:
    if name == "price":
        realistic = st.sampled_from(list(TICKS)).flatmap(
            lambda pair: grid(TICKS[pair][0], 1, 3_000_000 if pair != "ETH/BTC" else 80_000)
        )
    else:
        realistic = st.sampled_from([v[1] for v in TICKS.values()]).flatmap(
            lambda step: grid(step, 1, 20_000)
        )
    return st.one_of(
        realistic,
        realistic.map(Number),
        JUNK_NUMBER_TEXT,
        JUNK_NUMBER_TEXT.filter(lambda t: t.strip() != "").map(Number),
        st.integers(-10, 10**30),
        JUNK_TEXT,
    )


def string_value(name: str) -> st.SearchStrategy[object]:
    realistic: dict[str, st.SearchStrategy[object]] = {
        "pair": st.sampled_from([*PAIRS, "btc_usdt", "eth-btc", "Eth/Usdt", "BTC/EUR", "BTC"]),
        "coin": st.sampled_from([*COINS, "btc", "Usdt", "DOGE", ""]),
        "address": st.sampled_from([BTC_ADDRESS, ETH_ADDRESS, ETH_ADDRESS.lower(), "bc1q"]),
        "user": st.sampled_from([TRADER, MAKER, "new@example.com", "not-an-email", "a@b"]),
        "pass": st.sampled_from([PASSWORD, "short", "password", "x" * 200]),
        "valid_code": st.sampled_from(["123456", "000000", "12345", "abcdef"]),
        "client_order_id": st.sampled_from(["fuzz-1", "fuzz-2", "x" * 36, "x" * 37]),
    }
    return st.one_of(realistic.get(name, st.nothing()), JUNK_TEXT, st.integers(-5, 5))


def param_value(param: Param) -> st.SearchStrategy[object]:
    if param.enum:
        known = st.sampled_from(list(param.enum))
        return st.one_of(known, known.map(str.upper), known.map(lambda v: f" {v} "), JUNK_TEXT)
    if param.type == "decimal":
        return decimal_value(param.name)
    if param.type == "integer":
        small = st.integers(-3, 600)
        return st.one_of(small, small.map(str), JUNK_NUMBER_TEXT, st.just(Number("1e999999999")))
    if param.type == "boolean":
        return st.one_of(
            st.booleans(), st.sampled_from(["true", "FALSE", "1", "0", "on", "maybe", " yes "])
        )
    if param.name == "order_id":
        return st.integers(1, 60)
    return string_value(param.name)


def method_params(method: Method) -> st.SearchStrategy[list[tuple[str, object]]]:
    """Each parameter absent, null, or a value; now and then a duplicate or an unknown key."""
    fields = [
        st.one_of(
            st.just([]),
            st.just([(p.name, None)]),
            param_value(p).map(lambda v, n=p.name: [(n, v)]),
            param_value(p).map(lambda v, n=p.name: [(n, v)]),
            param_value(p).map(lambda v, n=p.name: [(n, v)]),
            st.tuples(param_value(p), param_value(p)).map(
                lambda vs, n=p.name: [(n, vs[0]), (n, vs[1])]
            ),
        )
        for p in method.params
    ]
    extra = st.lists(
        st.tuples(st.sampled_from(["session", "router", "zzz"]), JUNK_TEXT), max_size=1
    )
    return st.tuples(*fields, extra).map(lambda parts: [kv for part in parts for kv in part])


def as_text(value: object) -> str:
    if isinstance(value, Number):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def encode(
    encoding: str, items: list[tuple[str, object]]
) -> tuple[list[tuple[str, str]], list[tuple[bytes, bytes]], bytes]:
    """(query items, headers, body) carrying ``items`` in one of SPEC §1's encodings."""
    if encoding == "query":
        return [(k, as_text(v)) for k, v in items], [], b""
    if encoding == "form":
        body = urlencode([(k, as_text(v)) for k, v in items]).encode()
        return [], [(b"content-type", b"application/x-www-form-urlencoded")], body
    if encoding == "json":
        body = "{" + ",".join(f"{json_value(k)}:{json_value(v)}" for k, v in items) + "}"
        return [], [(b"content-type", b"application/json")], body.encode()
    boundary = "fuzzboundary7MA4YWxkTrZu0gW"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{as_text(v)}\r\n'
        for k, v in items
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return [], [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())], body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def asgi_call(
    app: Any,
    verb: str,
    path: str,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: list[bytes] | None = None,
) -> Answer:
    """One request straight through ASGI: any headers, any chunking, nothing normalised."""
    pending = list(chunks if chunks is not None else [b""])
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": verb,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8088"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8088),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start", sent
    body = b"".join(m.get("body", b"") for m in sent[1:])
    names = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    return Answer(start["status"], names, body)


@pytest.fixture
async def router_app(tmp_path: Path) -> AsyncIterator[tuple[Any, str, dict[str, str]]]:
    database_url = f"sqlite:///{tmp_path / 'router.db'}"
    bearer = await seed_accounts(database_url)
    # Rate limits on (the defaults): the 429 answers and their Retry-After are fuzzed too.
    async with running_app(fuzz_settings(database_url, rate_limits="on")) as (app, _client):
        yield app, database_url, bearer
        check_conservation(app, database_url)


#: Price of each book's centre in ticks (the maker rests 1 unit each side of it).
CENTRE_TICKS = {"BTC/USDT": 2_050_000, "ETH/USDT": 105_000, "ETH/BTC": 55_000}
MIN_STEPS = {"BTC/USDT": 30, "ETH/USDT": 60, "ETH/BTC": 25}
#: Every method, the engine's three twice more: they have the most to break.
FUZZED_METHODS = [*ALL_METHODS, *[METHODS[n] for n in ("buy", "sell", "cancel_order") * 2]]


@st.composite
def coherent_order(draw: st.DrawFn) -> list[tuple[str, object]]:
    """A buy/sell that can pass every check, so the engine matches, rests and cancels."""
    pair = draw(st.sampled_from(PAIRS))
    tick, step = TICKS[pair]
    centre = CENTRE_TICKS[pair]
    price = draw(grid(tick, centre * 9 // 10, centre * 11 // 10))
    least = MIN_STEPS[pair]  # below the minimum notional the engine is never reached
    amount = draw(st.one_of(grid(step, least, 20 * least), grid(step, least, 300_000)))
    spell = draw(st.sampled_from([str, Number, str.strip]))
    items: list[tuple[str, object]] = [
        ("pair", draw(st.sampled_from([pair, pair.lower().replace("/", "_")]))),
        ("amount", spell(amount)),
    ]
    order_type = draw(st.sampled_from(["", "limit", "market"]))
    if order_type:
        items.append(("type", order_type))
    if order_type != "market" or draw(st.booleans()):
        items.append(("price", spell(price)))
    for name, options in (
        ("time_in_force", ["GTC", "IOC", "FOK", "gtc"]),
        ("post_only", ["true", "false", True, 1]),
        ("client_order_id", ["fuzz-a", "fuzz-b", "fuzz-c"]),
    ):
        if draw(st.integers(0, 3)) == 0:
            items.append((name, draw(st.sampled_from(options))))
    return items


def request_params(method: Method) -> st.SearchStrategy[list[tuple[str, object]]]:
    generic = method_params(method)
    if method.name in ("buy", "sell"):
        return st.one_of(coherent_order(), coherent_order(), coherent_order(), generic)
    return generic


# Half the requests carry the funded session; the rest try every other way in.
AUTHS = st.one_of(
    st.just("bearer"),
    st.sampled_from(["none", "param", "bad-bearer", "cookie", "cookie-foreign"]),
)
FUZZ = settings(
    max_examples=int(os.environ.get("EXCHANGE_FUZZ_ROUTER_EXAMPLES", "500")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def auth_headers(
    auth: str, bearer: dict[str, str]
) -> tuple[list[tuple[bytes, bytes]], list[tuple[str, object]]]:
    token = bearer["Authorization"].removeprefix("Bearer ")
    if auth == "bearer":
        return [(b"authorization", f"Bearer {token}".encode())], []
    if auth == "bad-bearer":
        return [(b"authorization", b"Bearer not-a-session")], []
    if auth == "param":
        return [], [("session", token)]
    if auth == "cookie":
        return [(b"cookie", f"theme=dark; session={token}".encode())], []
    if auth == "cookie-foreign":
        return [(b"cookie", f"session={token}".encode()), (b"origin", b"https://evil.test")], []
    return [], []


@FUZZ
@given(
    data=st.data(),
    method=st.sampled_from(FUZZED_METHODS),
    encoding=st.sampled_from(["query", "form", "json", "multipart"]),
    auth=AUTHS,
)
async def test_router_method_table(
    router_app: tuple[Any, str, dict[str, str]],
    data: st.DataObject,
    method: Method,
    encoding: str,
    auth: str,
) -> None:
    app, _url, bearer = router_app
    if method.name in ("logout", "login") and auth in ("bearer", "param", "cookie"):
        # Both end the session they carry: keep the one every other example relies on.
        auth = "bad-bearer"
    items = data.draw(request_params(method), label="params")
    if method.verb == "GET" and encoding != "query":
        encoding = "query"
    auth_head, auth_items = auth_headers(auth, bearer)
    query_items, headers, body = encode(encoding, items + auth_items)
    query = urlencode([("router", method.name), *query_items]).encode()
    answer = await asgi_call(app, method.verb, "/router", query, headers + auth_head, [body])
    check_envelope(answer.status, answer.headers, answer.body, method.name)
    check_data(method.name, answer.status, answer.body)
    if auth == "cookie-foreign" and method.verb == "POST":
        assert answer.status in (400, 403, 404), answer  # CSRF: never done
        assert answer.status != 200
    if method.auth and auth in ("none", "bad-bearer"):
        refused = (400, 401, 404)
        if auth == "bad-bearer" and answer.body.startswith(b'{"status":false,"data":null,'):
            # Rate limits are on here: after 30 unknown sessions from one address in a
            # minute, the failed-session throttle answers 429 before any lookup.
            refused += (
                (429,) if b'"description":"rate_limited: too many unknown' in answer.body else ()
            )
        assert answer.status in refused, answer
    check_books_and_ledger(app)


# -- raw HTTP edges the dispatcher handles ------------------------------------------

CONTENT_TYPES = [
    None,
    b"application/json",
    b"application/json; charset=utf-8",
    b"application/vnd.api+json",
    b"application/x-www-form-urlencoded",
    b"APPLICATION/X-WWW-FORM-URLENCODED; charset=latin-1",
    b"multipart/form-data",  # no boundary
    b"multipart/form-data; boundary=fuzzboundary7MA4YWxkTrZu0gW",
    b"text/plain",
    b"application/xml",
    b"image/png",
    b";;;",
    b"\xff\xfe",
]
BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"{}",
            b"[]",
            b"null",
            b"1",
            b'"x"',
            b"{",
            b'{"pair": "BTC/USDT", "pair": 7}',
            b'{"amount": NaN}',
            b'{"amount": Infinity}',
            b'{"limit": 1e999999999}',
            b"[" * 5000,
            b'{"a":' * 3000,
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{\x00}\x00",
            b"pair=BTC/USDT&pair=ETH/BTC&limit=5&limit=x",
            b"a=%ff%fe",
            b"=&&==&",
            b"user=%00",
            b"\x00\x01\x02",
            b'--fuzzboundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name="f"; '
            b'filename="a.txt"\r\n\r\nhello\r\n--fuzzboundary7MA4YWxkTrZu0gW--\r\n',
            b"--fuzzboundary7MA4YWxkTrZu0gW\r\nbroken",
        ]
    ),
    st.integers(60 * 1024, 80 * 1024).map(lambda n: b"a=" + b"1" * n),  # around the 64 KiB line
)
LENGTHS = st.sampled_from(["none", "right", "wrong", "²", "٣", "-1", " 12", "9" * 30, "9" * 5000])
TARGETS = st.one_of(st.sampled_from([m.name for m in ALL_METHODS]), st.text(max_size=12))
VERBS = st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE"])


def split(body: bytes, sizes: list[int]) -> list[bytes]:
    """``body`` as ASGI chunks of the given sizes (the rest in one last chunk)."""
    chunks, at = [], 0
    for size in sizes:
        if at >= len(body):
            break
        chunks.append(body[at : at + size])
        at += size
    chunks.append(body[at:])
    return chunks


@FUZZ
@given(
    verb=VERBS,
    target=TARGETS,
    via=st.sampled_from(["api", "router", "router/", "router-missing", "router-twice"]),
    content_type=st.sampled_from(CONTENT_TYPES),
    twice=st.booleans(),
    body=BODIES,
    length=LENGTHS,
    sizes=st.lists(st.integers(0, 40_000), max_size=4),
    with_session=st.booleans(),
)
async def test_raw_requests_always_answer_the_envelope(
    router_app: tuple[Any, str, dict[str, str]],
    verb: str,
    target: str,
    via: str,
    content_type: bytes | None,
    twice: bool,
    body: bytes,
    length: str,
    sizes: list[int],
    with_session: bool,
) -> None:
    app, _url, bearer = router_app
    if target in ("logout", "login"):
        with_session = False  # both end the session they carry
    name = target.encode("utf-8", "surrogatepass")
    path, query = "/router", b""
    if via == "api":
        path = f"/api/{target}"
    elif via == "router/":
        path, query = "/router/", b"router=" + quote_bytes(name)
    elif via == "router":
        query = b"router=" + quote_bytes(name)
    elif via == "router-twice":
        query = b"router=get_rank&router=" + quote_bytes(name)
    headers: list[tuple[bytes, bytes]] = []
    if content_type is not None:
        headers.append((b"content-type", content_type))
        if twice:
            headers.append((b"content-type", b"application/json"))
    if length != "none":
        value = str(len(body)) if length == "right" else str(len(body) + 3)
        value = value if length in ("right", "wrong") else length
        headers.append((b"content-length", value.encode("utf-8")))
    if with_session:
        headers.append((b"authorization", bearer["Authorization"].encode()))
    answer = await asgi_call(app, verb, path, query, headers, split(body, sizes))
    if verb == "HEAD" and answer.status == 200:
        assert answer.headers["content-type"].startswith("application/json")
    else:
        check_envelope(answer.status, answer.headers, answer.body, target)
    method = METHODS.get(target)
    if via != "router-missing" and method is not None and answer.status != 404:
        allowed = verb == method.verb or (verb == "HEAD" and method.verb == "GET")
        assert (answer.status == 405) == (not allowed), (verb, target, answer)
        if answer.status == 405:
            assert answer.headers["allow"] == method.verb
    if len(body) > 64 * 1024 and answer.status not in (404, 405):
        assert answer.status in (400, 413), answer  # 400: a Content-Length that is no number
    check_books_and_ledger(app)


def quote_bytes(raw: bytes) -> bytes:
    return quote_from_bytes(raw, safe="").encode()


async def test_http_edges_by_hand(router_app: tuple[Any, str, dict[str, str]]) -> None:
    """The dispatcher's documented edges, each once, with the exact answer."""
    app, _url, bearer = router_app
    auth = [(b"authorization", bearer["Authorization"].encode())]
    form = [(b"content-type", b"application/x-www-form-urlencoded")]

    async def call(
        verb: str, query: bytes, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        answer = await asgi_call(app, verb, "/router", query, headers, chunks)
        return (
            answer.status,
            check_envelope(answer.status, answer.headers, answer.body),
            (answer.headers),
        )

    # 70 KiB in 1 KiB chunks, no Content-Length: refused once it passes 64 KiB.
    big = [b"a=" + b"1" * 1022] + [b"1" * 1024] * 69
    status, body, _ = await call("POST", b"router=get_user_coin", auth + form, big)
    assert status == 413 and body["description"].startswith("invalid_argument: ")
    # The same with an honest Content-Length: refused before reading.
    status, _, _ = await call(
        "POST", b"router=get_user_coin", [*auth, *form, (b"content-length", b"71680")], [b""]
    )
    assert status == 413
    # 64 KiB exactly is fine.
    exact = b"a=" + b"1" * (64 * 1024 - 2)
    status, _, _ = await call("POST", b"router=get_user_coin", auth + form, split(exact, [1000]))
    assert status == 200
    # Content-Length that is not a number: "²" passes str.isdigit(); 5000 digits pass too.
    for bogus in ("²".encode("latin-1"), "٣".encode(), b"-1", b"9" * 5000, b"0x10", b""):
        status, body, _ = await call(
            "POST", b"router=get_user_coin", [*auth, (b"content-length", bogus)], [b""]
        )
        assert status in (400, 413), (bogus, body)
    # Duplicate keys: the last one wins in query, form and JSON alike.
    for headers, payload in (
        (form, b"pair=ETH/BTC&pair=BTC/USDT"),
        ([(b"content-type", b"application/json")], b'{"pair": "ETH/BTC", "pair": "BTC/USDT"}'),
    ):
        status, body, _ = await call(
            "POST", b"router=get_orders&status=all", auth + headers, [payload]
        )
        assert status == 200
        assert all(order["pair"] == "BTC/USDT" for order in body["data"])
    status, body, _ = await call("GET", b"router=get_coin&pair=ETH/BTC&pair=btc_usdt", [], [b""])
    assert status == 200 and body["data"][0] == "BTC/USDT"
    # Empty bodies of every content type are no parameters at all.
    for content_type in (b"application/json", b"multipart/form-data", b"text/plain", b"x/y"):
        status, body, _ = await call(
            "POST", b"router=get_user_coin", [*auth, (b"content-type", content_type)], [b""]
        )
        assert status == 200
    # Other verbs on every method: 405 with Allow; HEAD serves the GET methods.
    for method in ALL_METHODS:
        query = f"router={method.name}".encode()
        for verb in ("OPTIONS", "PUT", "DELETE", "PATCH", "HEAD"):
            answer = await asgi_call(app, verb, "/router", query, [], [b""])
            if verb == "HEAD" and method.verb == "GET":
                assert answer.status in (200, 400), answer
                continue
            check_envelope(answer.status, answer.headers, answer.body)
            assert answer.status == 405 and answer.headers["allow"] == method.verb
    check_conservation(app, _url)
