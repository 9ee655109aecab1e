"""Token-bucket rate limits on the abuse-prone methods (SPEC §4).

Buckets live in process memory: they protect this process's CPU (argon2 hashing,
SMTP) and are cheap enough for the order path. Limits are ``n/seconds`` strings
from the settings; ``EXCHANGE_RATE_LIMITS=off`` disables them for load tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from exchange.config import Settings
from exchange.domain.errors import ExchangeError


def parse_rate(text: str) -> tuple[int, int]:
    count, _, seconds = text.partition("/")
    return max(int(count), 1), max(int(seconds or "1"), 1)


class Bucket:
    __slots__ = ("capacity", "refill_per_ns", "stamp", "tokens")

    def __init__(self, capacity: int, seconds: int, now: int) -> None:
        self.capacity = capacity
        self.refill_per_ns = capacity / (seconds * 1_000_000_000)  # tokens, not money
        self.tokens = capacity * 1.0
        self.stamp = now

    def take(self, now: int) -> int:
        """0 when allowed, else the seconds to wait for the next token."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill_per_ns)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.refill_per_ns / 1_000_000_000))


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits == "on"
        self.rules: dict[str, tuple[int, int]] = {
            "code": parse_rate(settings.rate_limit_code),
            "login": parse_rate(settings.rate_limit_login),
            "login_user": parse_rate(settings.rate_limit_login_user),
            "exists": parse_rate(settings.rate_limit_exists),
            "orders": parse_rate(settings.rate_limit_orders),
        }
        self.buckets: dict[tuple[str, str], Bucket] = {}

    def _take(self, rule: str, key: str, now: int) -> None:
        bucket = self.buckets.get((rule, key))
        if bucket is None:
            if len(self.buckets) > 200_000:
                self.buckets.clear()
            capacity, seconds = self.rules[rule]
            bucket = self.buckets[(rule, key)] = Bucket(capacity, seconds, now)
        wait = bucket.take(now)
        if wait:
            raise ExchangeError(
                "rate_limited", f"too many requests; try again in {wait} s", retry_after=wait
            )

    def check(self, rule: str, client: str, user_id: int, params: Mapping[str, object]) -> None:
        if not self.enabled:
            return
        now = time.monotonic_ns()
        if rule == "orders":
            self._take(rule, str(user_id), now)
            return
        self._take(rule, client, now)
        if rule == "login":
            user = params.get("user")
            if isinstance(user, str):
                self._take("login_user", user.strip().lower(), now)
