"""Request parameters from query, form, multipart or JSON (SPEC §1).

JSON numbers are parsed straight to ``Decimal`` (``parse_float=Decimal``), so a
price sent as ``0.1`` is exactly the price sent as ``"0.1"`` — no binary float
ever holds money. Values reach handlers as ``str``, ``int``, ``Decimal`` or
``bool``; the typed getters below turn them into what a handler needs.

Text is checked once, for every parameter of every body format, before any
handler runs (``check_text``): a lone surrogate (a JSON ``\ud800`` escape, or
bytes that are not UTF-8, which the parsers below decode to surrogates on
purpose) cannot be stored by any database driver, and control characters have
no business in an e-mail address, a password, a pair or an id. Either is
refused with ``invalid_argument`` naming the parameter, so such text never
reaches the engine, where it could only fail the batch it is in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from exchange.domain.errors import ExchangeError

Params = dict[str, object]
MAX_BODY = 64 * 1024

# ASCII digits only: str.isdigit() also says yes to "²" (int() then raises) and "٣".
_INTEGER = re.compile(r"[+-]?[0-9]+")
#: Whitespace ignored around integers, flags and choices (openapi.py documents it).
SPACE = " \t\n\r\f\v"


#: Lone surrogates (not text: no driver can encode them) and C0/C1 control characters.
_UNSTORABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: The same, but line breaks allowed: for the one parameter that is several lines (a PEM).
_UNSTORABLE_LINES = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
MULTILINE = frozenset({"public_key"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def shown(text: str, limit: int = 40) -> str:
    """``text`` quoted and escaped for an error message (never raw control or surrogates)."""
    return ascii(text[:limit])


def check_text(params: Mapping[str, object]) -> None:
    """Refuse any parameter name or text value that cannot be stored or has no business here."""
    for name, value in params.items():
        if _UNSTORABLE.search(name) is not None:
            raise ExchangeError(
                "invalid_argument",
                f"parameter name {shown(name)} contains a control character or is not valid UTF-8",
            )
        pattern = _UNSTORABLE_LINES if name in MULTILINE else _UNSTORABLE
        if isinstance(value, str) and pattern.search(value) is not None:
            raise ExchangeError(
                "invalid_argument",
                f"parameter '{name}' contains a control character or is not valid UTF-8",
            )


def _decode(data: bytes) -> str:
    # Bytes that are not UTF-8 become lone surrogates, which check_text then names.
    return data.decode("utf-8", "surrogateescape")


def form_fields(text: str) -> Params:
    """``dict(parse_qsl(text, keep_blank_values=True, errors="surrogateescape"))``, the
    same dict (a hypothesis test compares the two), faster: a field with no ``%`` and
    no ``+`` is taken as it is, not unquoted. Every order's form and query come here.

    Like ``parse_qsl``: ``&`` separates, empty fields are skipped, a field without
    ``=`` has an empty value, the last of a repeated name wins; it never raises.
    """
    fields: Params = {}
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "%" in field or "+" in field:
            name = unquote(name.replace("+", " "), errors="surrogateescape")
            value = unquote(value.replace("+", " "), errors="surrogateescape")
        fields[name] = value
    return fields


def parse_query(query: bytes | str) -> Params:
    return form_fields(_decode(query) if isinstance(query, bytes) else query)


def parse_form(body: bytes) -> Params:
    return form_fields(_decode(body))


def parse_json(body: bytes) -> Params:
    if not body.strip():
        return {}
    try:
        value = json.loads(_decode(body), parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ExchangeError("invalid_argument", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ExchangeError("invalid_argument", "the JSON body must be an object")
    return value


def missing(name: str) -> ExchangeError:
    return ExchangeError("missing_argument", f"parameter '{name}' is required")


def text(params: Mapping[str, object], name: str, *, max_length: int = 256) -> str:
    """A required string parameter."""
    value = optional_text(params, name, max_length=max_length)
    if value is None or value == "":
        raise missing(name)
    return value


def optional_text(params: Mapping[str, object], name: str, *, max_length: int = 256) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ExchangeError("invalid_argument", f"parameter '{name}' must be a string")
    result = value if isinstance(value, str) else str(value)
    if len(result) > max_length:
        raise ExchangeError("invalid_argument", f"parameter '{name}' is longer than {max_length}")
    return result


def raw(params: Mapping[str, object], name: str) -> object:
    """A required value kept as sent (str, int or Decimal) for exact decimal parsing."""
    value = params.get(name)
    if value is None or value == "":
        raise missing(name)
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ExchangeError("invalid_argument", f"parameter '{name}' must be a decimal number")
    if isinstance(value, str) and len(value) > 64:
        raise ExchangeError("invalid_argument", f"parameter '{name}' is too long")
    return value


def integer(params: Mapping[str, object], name: str, default: int, *, low: int, high: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ExchangeError("invalid_argument", f"parameter '{name}' must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and len(value) < 24 and _INTEGER.fullmatch(value.strip(SPACE)):
        number = int(value.strip(SPACE))
    elif (
        isinstance(value, Decimal)
        and value.is_finite()
        and value.adjusted() < 20  # int(Decimal("1e999999999")) would take minutes
        and value == value.to_integral_value()
    ):
        number = int(value)
    else:
        raise ExchangeError("invalid_argument", f"parameter '{name}' must be an integer")
    if not low <= number <= high:
        raise ExchangeError(
            "invalid_argument", f"parameter '{name}' must be between {low} and {high}"
        )
    return number


def flag(params: Mapping[str, object], name: str) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    lowered = str(value).strip(SPACE).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ExchangeError("invalid_argument", f"parameter '{name}' must be true or false")


def choice(
    params: Mapping[str, object], name: str, options: Mapping[str, str], default: object
) -> str | None:
    """An enumerated parameter; ``options`` maps accepted spellings to the canonical value.

    Not sent (or empty): ``default``, a canonical value or None.
    """
    value = optional_text(params, name, max_length=32)
    key = "" if value is None else value.strip(SPACE)
    if key == "":
        return None if default is None else str(default)
    found = None
    if key.isascii():  # "ıoc".upper() is "IOC": a dotless i upper-cases to I
        found = options.get(key) or options.get(key.lower()) or options.get(key.upper())
    if found is None:
        allowed = ", ".join(sorted(set(options.values())))
        raise ExchangeError("invalid_argument", f"parameter '{name}' must be one of {allowed}")
    return found
