"""E-mail address syntax: the user name of every account (SPEC §4)."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from exchange.domain.errors import ExchangeError

MAX_EMAIL = 254


def normalize_email(value: str) -> str:
    """Lower-case, syntax-checked address; names compare case-insensitively."""
    text = value.strip()
    if not text or len(text) > MAX_EMAIL:
        raise ExchangeError(
            "invalid_email", "user must be an e-mail address of at most 254 characters"
        )
    try:
        validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise ExchangeError(
            "invalid_email", f"user is not a valid e-mail address ({error})"
        ) from None
    return text.lower()
