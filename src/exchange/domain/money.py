"""Exact money: decimal text in, integer minor units inside, plain decimal text out.

A binary float cannot hold 0.1, so money never touches one: input text is parsed
with :class:`decimal.Decimal` (under a strict grammar, so ``"1_000"``, ``"NaN"``,
unicode digits or ``"1e400"`` never sneak in), converted once to integer minor
units (``amount * 10**scale``) without ever rounding, and formatted back in plain
notation with the asset's fixed number of decimals.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from exchange.domain.errors import ExchangeError

__all__ = [
    "MAX_EXPONENT",
    "MAX_SIGNIFICANT_DIGITS",
    "format_units",
    "parse_decimal",
    "to_units",
    "units_of",
]

#: Exponent notation beyond this is not a price or an amount anyone means.
MAX_EXPONENT = 30
#: More significant digits than this is either a mistake or an attack on CPU time.
MAX_SIGNIFICANT_DIGITS = 40

# ASCII digits only: ``\d`` would also accept Arabic-Indic digits, which Decimal parses.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,6})?")


#: What nearly every amount and price is: digits and at most one point, short enough
#: for every limit of ``parse_decimal`` (20 + 20 digits, exponent at most 20).
_PLAIN = re.compile(r"([0-9]{1,20})(?:\.([0-9]{0,20}))?")


def _invalid(value: object, why: str) -> ExchangeError:
    shown = repr(value) if not isinstance(value, str) else repr(value[:60])
    return ExchangeError("invalid_argument", f"{shown} is not a valid number: {why}")


def parse_decimal(value: object) -> Decimal:
    """Turn user input into an exact, finite, non-negative Decimal.

    Floats are refused even though JSON numbers may arrive as them: by then the
    exact value the user typed is already lost (the API must parse JSON numbers
    as Decimal). Zero passes; the caller decides whether zero means anything.
    """
    if isinstance(value, bool):
        raise _invalid(value, "a boolean is not a number")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ExchangeError("invalid_argument", "an empty value is not a valid number")
        if _DECIMAL_TEXT.fullmatch(text) is None:
            raise _invalid(value, "expected a plain decimal such as 0.015")
        try:
            number = Decimal(text)
        except InvalidOperation:  # pragma: no cover - the grammar above already filters
            raise _invalid(value, "expected a plain decimal such as 0.015") from None
    else:
        raise _invalid(value, f"expected a decimal string, got {type(value).__name__}")
    if not number.is_finite():
        raise _invalid(value, "it must be finite")
    _sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    if abs(exponent) > MAX_EXPONENT:
        raise _invalid(value, "its exponent is out of range")
    if len(digits) > MAX_SIGNIFICANT_DIGITS:
        raise _invalid(value, f"it has more than {MAX_SIGNIFICANT_DIGITS} digits")
    if number < 0:
        raise _invalid(value, "it must not be negative")
    if number.is_zero():
        return Decimal(0)  # drops a "-0" sign and any trailing exponent
    return number


def units_of(value: object, scale: int, what: str) -> int:
    """``to_units(parse_decimal(value), scale, what)``, without a Decimal for plain text.

    Plain digits with at most ``scale`` significant decimals are the same integer
    either way (trailing zeros carry no value); anything else — signs, exponents,
    spaces, too many decimals — takes the general path, with its exact refusals.
    """
    if type(value) is str:
        plain = _PLAIN.fullmatch(value)
        if plain is not None:
            fraction = (plain.group(2) or "").rstrip("0")
            if len(fraction) <= scale:
                return int(plain.group(1) + fraction + "0" * (scale - len(fraction)))
    return to_units(parse_decimal(value), scale, what)


def to_units(value: Decimal, scale: int, what: str) -> int:
    """Convert exactly to minor units; excess precision is refused, never rounded.

    Integer arithmetic on the digit tuple keeps this exact whatever the decimal
    context's precision is.
    """
    if not value.is_finite():
        raise ExchangeError("invalid_argument", f"{what} must be finite")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    coefficient = int("".join(map(str, digits))) if digits else 0
    shift = exponent + scale
    units: int
    if shift >= 0:
        units = coefficient * 10**shift
    else:
        divisor: int = 10**-shift
        units, rest = divmod(coefficient, divisor)
        if rest:
            raise ExchangeError("invalid_argument", f"{what} has more than {scale} decimals")
    return -units if sign else units


def format_units(units: int, scale: int) -> str:
    """Plain notation with exactly ``scale`` decimals, as SPEC §3 asks for output."""
    sign = "-" if units < 0 else ""
    magnitude = -units if units < 0 else units
    if scale <= 0:
        return f"{sign}{magnitude * 10**-scale}"
    whole, fraction = divmod(magnitude, 10**scale)
    return f"{sign}{whole}.{fraction:0{scale}d}"
