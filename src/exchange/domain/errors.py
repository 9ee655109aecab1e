"""The one error type every layer raises.

A refusal carries a stable snake_case ``code`` (SPEC §2) and a human sentence;
the API layer maps the code to an HTTP status, so domain code never knows HTTP.
"""

from __future__ import annotations


class ExchangeError(Exception):
    """A refusal with a stable code; ``retry_after`` feeds the Retry-After header."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def description(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self) -> tuple[object, tuple[str, str, int | None]]:
        # Picklable (a benchmark's child process may raise one): keyword-only retry_after.
        return _rebuild, (self.code, self.message, self.retry_after)


def unavailable() -> ExchangeError:
    """The refusal while the database cannot be used: nothing happened, try again (503)."""
    return ExchangeError(
        "overloaded", "the exchange cannot use its database now; try again", retry_after=1
    )


def _rebuild(code: str, message: str, retry_after: int | None) -> ExchangeError:
    return ExchangeError(code, message, retry_after=retry_after)
