"""The one error type every layer raises.

A refusal carries a stable snake_case ``code`` (SPEC §2) and a human sentence;
the API layer maps the code to an HTTP status, so domain code never knows HTTP.
"""

from __future__ import annotations

#: The order rule an order broke, when it broke one (``ExchangeError.rule``): the
#: Binance-compatible API names the filter from it (PRICE_FILTER, LOT_SIZE, NOTIONAL).
PRICE_TICK = "price_tick"
PRICE_RANGE = "price_range"
AMOUNT_STEP = "amount_step"
AMOUNT_RANGE = "amount_range"
AMOUNT_MINIMUM = "amount_minimum"
NOTIONAL_MINIMUM = "notional_minimum"


class ExchangeError(Exception):
    """A refusal with a stable code; ``retry_after`` feeds the Retry-After header.

    ``rule``: which order rule was broken (the constants above), for a dialect that
    names the rule rather than the code.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.rule = rule

    @property
    def description(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self) -> tuple[object, tuple[str, str, int | None, str | None]]:
        # Picklable (a benchmark's child process may raise one): keyword-only arguments.
        return _rebuild, (self.code, self.message, self.retry_after, self.rule)


def unavailable() -> ExchangeError:
    """The refusal while the database cannot be used: nothing happened, try again (503)."""
    return ExchangeError(
        "overloaded", "the exchange cannot use its database now; try again", retry_after=1
    )


def _rebuild(code: str, message: str, retry_after: int | None, rule: str | None) -> ExchangeError:
    return ExchangeError(code, message, retry_after=retry_after, rule=rule)
