"""Hypothesis fuzzing of the parameter parsers (issue 8, item 5).

Whatever arrives (bytes, text, JSON values of any shape), a parser either returns
a value of the promised type or raises ``ExchangeError`` with a SPEC §2 code;
nothing else escapes, so the dispatcher never answers 500 for bad input. Accepted
decimals round-trip exactly at the market's scale, no float ever comes out, and
look-alikes (NaN, Infinity, huge exponents, doubled signs, inner whitespace,
unicode digits such as Arabic-Indic '٣', malformed UTF-8) are refused with
``invalid_argument`` instead of being read as numbers.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exchange.api import params as p
from exchange.domain.errors import ExchangeError
from exchange.domain.markets import Market, default_assets, default_markets
from exchange.domain.money import format_units, parse_decimal, to_units

PARSER_CODES = {"invalid_argument", "missing_argument"}
MARKETS = default_markets(default_assets())
MARKET_LIST = list(MARKETS.values())

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Digits other than 0-9 that str.isdigit() or Decimal() would accept.
UNICODE_DIGITS = [
    c for c in map(chr, range(0x80, 0x1FBFF)) if c.isdigit() or unicodedata.category(c) == "Nd"
]
ASCII_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def refused(call: Callable[[], object], codes: set[str] = PARSER_CODES) -> ExchangeError | None:
    """Run ``call``; None if it returned, the error if it refused with one of ``codes``."""
    try:
        call()
    except ExchangeError as error:
        assert error.code in codes, error.description
        assert error.description.startswith(error.code + ": ")
        return error
    return None


def no_float(value: object) -> None:
    assert not isinstance(value, float), value
    if isinstance(value, dict):
        for key, item in value.items():
            no_float(key)
            no_float(item)
    elif isinstance(value, list):
        for item in value:
            no_float(item)


# -- values a JSON body, a form or a query can carry ---------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=30),
    st.integers(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "NaN", "1e999999999", "٣", "²", "1\x00", "+-1", " 5 ", "0x1f"]),
)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
PARAMS = st.dictionaries(st.sampled_from(["x", "limit", "pair", "amount"]), JSON_LIKE, max_size=4)


# -- body and query parsers ---------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
@example(b"a=%ff")
@example("a=%C3%28&b=1")
@example(b"\xff\xfe")
@example(b"")
def test_parse_query_returns_text_or_refuses(query: bytes | str) -> None:
    result: dict[str, object] = {}

    def run() -> None:
        result.update(p.parse_query(query))
        p.check_text(result)

    if refused(run) is None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())
        assert_storable(result)


def assert_storable(params: dict[str, object]) -> None:
    """What passed ``check_text`` is UTF-8-encodable text without control characters."""
    for key, value in params.items():
        for item in (key, value):
            if isinstance(item, str):
                item.encode("utf-8")  # a lone surrogate would raise here
                assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in item), item


@FUZZ
@given(st.binary(max_size=300))
@example(b"a=\xff")
@example(b"pass=%ff%fe")
@example(b"\xc3\x28=1")
@example(b"amount=1&amount=2")
def test_parse_form_returns_text_or_refuses(body: bytes) -> None:
    result: dict[str, object] = {}

    def run() -> None:
        result.update(p.parse_form(body))
        p.check_text(result)

    error = refused(run)
    if error is None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())
        assert_storable(result)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        assert error is not None  # malformed UTF-8 is refused, never guessed


def json_text(value: object) -> str:
    """JSON for ``value``, Decimals written as the number literal they hold."""
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else ("NaN" if value.is_nan() else "Infinity")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    return json.dumps(value)


@FUZZ
@given(st.one_of(st.binary(max_size=200), JSON_LIKE.map(lambda v: json_text(v).encode())))
@example(b'{"amount": 0.1}')
@example(b'{"amount": NaN}')
@example(b'{"amount": -Infinity}')
@example(b'{"limit": 1e999999999}')
@example(b'{"a": 1, "a": 2}')
@example(b"[" * 100_000)
@example(b'{"a": ' + b"9" * 5000 + b"}")
@example(b"\xff\xfe{\x00}\x00")
@example(b'{"x": "\\ud800"}')
@example(b'{"\\udc80": "1"}')
@example(b'{"x": "a\\u0000b"}')
@example('{"x": "\u009b"}'.encode())
def test_parse_json_gives_objects_without_floats(body: bytes) -> None:
    result: dict[str, object] = {}

    def run() -> None:
        result.update(p.parse_json(body))
        p.check_text(result)

    if refused(run) is None:
        no_float(result)
        assert_storable(result)


def test_parse_json_numbers_are_exact_decimals() -> None:
    parsed = p.parse_json(b'{"price": 0.1, "amount": 1e-3, "n": 7}')
    assert parsed == {"price": Decimal("0.1"), "amount": Decimal("0.001"), "n": 7}
    assert isinstance(parsed["price"], Decimal) and isinstance(parsed["n"], int)


# -- typed getters ------------------------------------------------------------------


@FUZZ
@given(PARAMS, st.integers(1, 300))
def test_text_getters(params: dict[str, object], max_length: int) -> None:
    value: list[object] = []
    if refused(lambda: p.check_text(params)) is not None:  # what every request goes through
        return
    if refused(lambda: value.append(p.text(params, "x", max_length=max_length))) is None:
        assert isinstance(value[0], str) and 0 < len(value[0]) <= max_length
        assert "\x00" not in value[0]
    value.clear()
    if refused(lambda: value.append(p.optional_text(params, "x", max_length=max_length))) is None:
        assert value[0] is None or (isinstance(value[0], str) and len(value[0]) <= max_length)


@FUZZ
@given(PARAMS)
def test_raw_keeps_str_int_or_decimal(params: dict[str, object]) -> None:
    value: list[object] = []
    if refused(lambda: value.append(p.raw(params, "x"))) is None:
        assert type(value[0]) in (str, int, Decimal)


@FUZZ
@given(PARAMS, st.integers(-10, 10), st.integers(0, 2**62))
@example({"x": "²"}, 0, 10)  # str.isdigit() says yes, int() says no
@example({"x": "٣"}, 0, 10)  # int() would read 3
@example({"x": "+-5"}, -10, 10)
@example({"x": Decimal("1e999999999")}, 0, 10)  # int() of it would take minutes
@example({"x": Decimal("5.0")}, 0, 10)
@example({"x": " 7 "}, 0, 10)
def test_integer(params: dict[str, object], low: int, span: int) -> None:
    value: list[int] = []
    error = refused(lambda: value.append(p.integer(params, "x", low, low=low, high=low + span)))
    raw = params.get("x")
    if error is None:
        [number] = value
        assert type(number) is int and low <= number <= low + span
        if isinstance(raw, str) and raw.strip(p.SPACE):
            assert re.fullmatch(r"[+-]?[0-9]+", raw.strip(p.SPACE)), raw
    if isinstance(raw, str) and any(c in UNICODE_DIGITS for c in raw):
        assert error is not None and error.code == "invalid_argument"


@FUZZ
@given(PARAMS)
def test_flag(params: dict[str, object]) -> None:
    value: list[bool] = []
    if refused(lambda: value.append(p.flag(params, "x"))) is None:
        assert type(value[0]) is bool


CHOICES = {"limit": "limit", "market": "market", "GTC": "GTC", "IOC": "IOC"}


@FUZZ
@given(PARAMS)
@example({"x": "ıoc"})  # "ıoc".upper() == "IOC"
@example({"x": " LIMIT "})
def test_choice(params: dict[str, object]) -> None:
    value: list[str] = []
    if refused(lambda: value.append(p.choice(params, "x", CHOICES, "limit"))) is None:
        assert value[0] in CHOICES.values()
        raw = params.get("x")
        if isinstance(raw, str):
            assert raw.isascii() or raw.strip(p.SPACE) == "", raw


# -- money ----------------------------------------------------------------------------

ANY_INPUT = st.one_of(
    JSON_LIKE,
    st.text(alphabet=st.sampled_from("0123456789.eE+- _,\t\n\x00٣²١𝟙"), max_size=20),
    st.floats(),
)


@FUZZ
@given(ANY_INPUT, st.sampled_from(MARKET_LIST))
def test_market_parsers_refuse_or_return_units(value: object, market: Market) -> None:
    codes = {"invalid_argument"}
    for parse in (market.parse_price, market.parse_amount):
        out: list[int] = []
        if refused(lambda parse=parse, out=out: out.append(parse(value)), codes) is None:
            assert type(out[0]) is int and out[0] > 0
            assert not isinstance(value, (float, bool))
    out_decimal: list[Decimal] = []
    if refused(lambda: out_decimal.append(parse_decimal(value)), codes) is None:
        assert isinstance(out_decimal[0], Decimal) and out_decimal[0].is_finite()
        assert out_decimal[0] >= 0
        if isinstance(value, str):
            assert ASCII_DECIMAL.fullmatch(value.strip()), value


@st.composite
def spelled_units(draw: st.DrawFn, scale: int) -> tuple[int, str]:
    """Minor units and one way of writing them: padding, signs, exponents, JSON numbers."""
    units = draw(st.integers(1, 10**15 - 1))
    plain = format_units(units, scale)
    whole, _, fraction = plain.partition(".")
    style = draw(st.sampled_from(["plain", "trim", "pad", "plus", "exp", "space", "lead"]))
    if style == "trim" and fraction:
        text = f"{whole}.{fraction.rstrip('0')}".rstrip(".")
    elif style == "pad":
        text = plain + "000"
    elif style == "plus":
        text = "+" + plain
    elif style == "exp":
        text = f"{units}e-{scale}"
    elif style == "space":
        text = f"  {plain}\t"
    elif style == "lead":
        text = "00" + plain
    else:
        text = plain
    return units, text


@FUZZ
@given(st.data(), st.sampled_from(MARKET_LIST))
def test_accepted_decimals_round_trip_exactly(data: st.DataObject, market: Market) -> None:
    units, text = data.draw(spelled_units(market.price_scale), label="price")
    literal = data.draw(
        st.sampled_from([format_units(units, market.price_scale), f"{units}e-{market.price_scale}"])
    )
    as_json = p.parse_json(f'{{"v": {literal}}}'.encode())["v"]  # a JSON number, as sent
    for spelled in (text, as_json):
        refusal = refused(lambda spelled=spelled: market.parse_price(spelled), {"invalid_argument"})
        if units % market.tick:
            assert refusal is not None  # off the tick: refused, never rounded
            continue
        assert refusal is None, (spelled, refusal)
        parsed = market.parse_price(spelled)
        assert parsed == units
        shown = market.format_price(parsed)
        assert shown == format_units(units, market.price_scale)  # fixed scale, plain notation
        assert Decimal(shown) == Decimal(str(spelled).strip())
    units, text = data.draw(spelled_units(market.base.scale), label="amount")
    if units % market.step == 0:
        assert market.parse_amount(text) == units
        assert to_units(Decimal(market.format_amount(units)), market.base.scale, "a") == units


@FUZZ
@given(st.sampled_from(MARKET_LIST), st.integers(1, 10**6))
def test_excess_precision_is_refused_not_rounded(market: Market, units: int) -> None:
    text = format_units(units, market.price_scale) + "1"  # one digit past the scale
    error = refused(lambda: market.parse_price(text), {"invalid_argument"})
    assert error is not None


LOOKALIKES = [
    "NaN",
    "nan",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "∞",
    "1e400",
    "1e-400",
    "1E+31",
    "9e999999",
    "--1",
    "+-1",
    "-+1",
    "++1",
    "- 1",
    "1 000",
    "1\u00a0000",
    "1_000",
    "1,5",
    "0x10",
    "0b1",
    "1e",
    "e1",
    ".",
    "",
    " ",
    "\t",
    "1.2.3",
    "1e1.5",
    "½",
    "1\x00",
    "-1",
    "-0.5",
]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_are_refused(text: str) -> None:
    for market in MARKET_LIST:
        for parse in (market.parse_price, market.parse_amount):
            error = refused(lambda parse=parse: parse(text), {"invalid_argument"})
            assert error is not None, (text, market.symbol)


@FUZZ
@given(
    st.sampled_from(UNICODE_DIGITS),
    st.text(alphabet="0123456789.", max_size=6),
    st.text(alphabet="0123456789.", max_size=6),
)
def test_unicode_digits_are_refused(digit: str, before: str, after: str) -> None:
    text = f"{before}{digit}{after}"
    assert refused(lambda: parse_decimal(text), {"invalid_argument"}) is not None
    params: dict[str, Any] = {"x": text}
    assert refused(lambda: p.integer(params, "x", 0, low=0, high=10**9)) is not None


@FUZZ
@given(st.integers(-(10**6), 10**6), st.integers(31, 10**9))
def test_huge_exponents_are_refused_quickly(mantissa: int, exponent: int) -> None:
    for text in (f"{mantissa}e{exponent}", f"{mantissa}e-{exponent}"):
        if mantissa == 0:
            continue
        assert refused(lambda text=text: parse_decimal(text), {"invalid_argument"}) is not None
        body = f'{{"limit": {text}}}'.encode()
        parsed = p.parse_json(body)
        assert refused(lambda parsed=parsed: p.integer(parsed, "limit", 1, low=1, high=500))


#: Form text as clients send it and as they should not: separators, escapes (valid,
#: truncated, not UTF-8), plus signs, non-ASCII and surrogate-escaped bytes.
_FORM_TEXT = st.lists(
    st.sampled_from([*"ab=&%+;2F0zé/ \x00", "%2F", "%C3%A9", "%FF", "\udcff"]), max_size=30
).map("".join)


@FUZZ
@given(_FORM_TEXT)
@example("pair=BTC%2FUSDT&amount=0.005&price=20010")
@example("a=1&a=2&&b&=c&d=")
@example("x+y=%2B%20+&%zz=%e9")
def test_form_fields_are_what_parse_qsl_gives(text: str) -> None:
    """The fast path (fields with nothing to unquote taken as they are) changes nothing."""
    from urllib.parse import parse_qsl

    expected = dict(parse_qsl(text, keep_blank_values=True, errors="surrogateescape"))
    assert p.form_fields(text) == expected
    assert p.parse_form(text.encode("utf-8", "surrogateescape")) == expected
