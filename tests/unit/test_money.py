"""Parsing and formatting of exact money (SPEC §3)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.domain.errors import ExchangeError
from exchange.domain.money import format_units, parse_decimal, to_units, units_of


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.1", Decimal("0.1")),
        (Decimal("0.1"), Decimal("0.1")),
        ("  12.5000 ", Decimal("12.5000")),
        (7, Decimal(7)),
        ("0", Decimal(0)),
        ("-0", Decimal(0)),
        ("1e3", Decimal(1000)),
        (".5", Decimal("0.5")),
        ("+3", Decimal(3)),
    ],
)
def test_parse_decimal_accepts_exact_values(value: object, expected: Decimal) -> None:
    parsed = parse_decimal(value)
    assert parsed == expected
    assert isinstance(parsed, Decimal)


def test_parse_decimal_keeps_one_tenth_exact() -> None:
    assert parse_decimal("0.1") * 3 == Decimal("0.3")
    assert to_units(parse_decimal("0.1"), 8, "amount") == 10_000_000


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "abc",
        "NaN",
        "nan",
        "Infinity",
        "inf",
        "-inf",
        "1e400",
        "1e-400",
        "1E31",
        "-1",
        "-0.5",
        "1_000",
        "1,5",
        "0x10",
        "١٢",  # Arabic-Indic digits: Decimal() would accept them
        "1" * 41,
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("-1"),
        Decimal("1e400"),
        -3,
        10**45,
        True,
        None,
        [1],
    ],
)
def test_parse_decimal_rejects(value: object) -> None:
    with pytest.raises(ExchangeError) as caught:
        parse_decimal(value)
    assert caught.value.code == "invalid_argument"


def test_parse_decimal_rejects_float_objects() -> None:
    one_tenth = 1 / 10  # built without a float literal: the no-float check covers src only
    with pytest.raises(ExchangeError) as caught:
        parse_decimal(one_tenth)
    assert caught.value.code == "invalid_argument"
    assert "float" in caught.value.message


def test_parse_decimal_error_names_the_value() -> None:
    with pytest.raises(ExchangeError) as caught:
        parse_decimal("abc")
    assert "'abc'" in caught.value.message


@pytest.mark.parametrize(
    ("text", "scale", "units"),
    [
        ("0.00120000", 8, 120_000),
        ("1", 6, 1_000_000),
        ("123.456", 3, 123_456),
        ("1e2", 0, 100),
        ("0", 8, 0),
        ("2.50", 1, 25),  # trailing zeros beyond the scale are not precision
    ],
)
def test_to_units_is_exact(text: str, scale: int, units: int) -> None:
    assert to_units(Decimal(text), scale, "amount") == units


def test_to_units_refuses_excess_decimals_instead_of_rounding() -> None:
    with pytest.raises(ExchangeError) as caught:
        to_units(Decimal("0.123456789"), 8, "amount")
    assert caught.value.code == "invalid_argument"
    assert caught.value.message == "amount has more than 8 decimals"


def test_to_units_negative() -> None:
    assert to_units(Decimal("-1.5"), 2, "delta") == -150


@pytest.mark.parametrize(
    ("units", "scale", "text"),
    [
        (120_000, 8, "0.00120000"),
        (12, 0, "12"),
        (-50_000_000, 8, "-0.50000000"),
        (0, 6, "0.000000"),
        (123_456_789, 2, "1234567.89"),
        (10**30, 8, "10000000000000000000000.00000000"),
    ],
)
def test_format_units_plain_notation(units: int, scale: int, text: str) -> None:
    assert format_units(units, scale) == text
    assert "e" not in text.lower()
    assert to_units(Decimal(text), scale, "x") == units


def _general(value: object, scale: int) -> int | str:
    try:
        return to_units(parse_decimal(value), scale, "amount")
    except ExchangeError as refusal:
        return refusal.code


def _fast(value: object, scale: int) -> int | str:
    try:
        return units_of(value, scale, "amount")
    except ExchangeError as refusal:
        return refusal.code


NUMBERISH = st.text(alphabet="0123456789.-+eE ", min_size=0, max_size=45)
PLAIN = st.from_regex(r"\A[0-9]{1,22}(\.[0-9]{0,22})?\Z")


@settings(max_examples=3000)
@given(value=st.one_of(NUMBERISH, PLAIN), scale=st.integers(0, 18))
def test_units_of_is_the_general_path_for_every_text(value: str, scale: int) -> None:
    """The fast path for plain digits gives what parse_decimal and to_units give: the
    same integer, or a refusal with the same code."""
    assert _fast(value, scale) == _general(value, scale)


@pytest.mark.parametrize(
    ("value", "scale", "units"),
    [("0.005", 8, 500_000), ("20010", 2, 2_001_000), ("1.000000000", 2, 100), ("7.", 0, 7)],
)
def test_units_of_plain_text(value: str, scale: int, units: int) -> None:
    assert units_of(value, scale, "amount") == units
