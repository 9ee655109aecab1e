"""Time as integer milliseconds since the Unix epoch (SPEC §3).

Services receive a ``Clock`` instead of calling ``time`` directly, so tests can
run a day of trades, an expiry or a lockout window without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ManualClock:
    """A clock the tests move by hand."""

    def __init__(self, start: int = 1_767_225_600_000) -> None:  # 2026-01-01T00:00Z
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms
