"""Token-bucket rate limits on the abuse-prone methods (SPEC §4).

Buckets live in process memory: they protect this process's CPU (argon2 hashing,
SMTP) and are cheap enough for the order path. Limits are ``n/seconds`` strings
from the settings; ``EXCHANGE_RATE_LIMITS=off`` disables them for load tests.

The table of buckets is bounded: a bucket idle long enough to be full again is
the same as no bucket, so those go first when the table is full; only if a flood
of new keys leaves none idle are the least recently used dropped.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import time
from collections.abc import Mapping

from exchange.config import Settings
from exchange.domain.errors import ExchangeError


def address_key(client: str) -> str:
    """The key of a client address for limits: IPv6 by its /64 (one subscriber's network).

    An IPv6 user is usually given a whole /64, so per-address limits keyed on
    single IPv6 addresses would give one client 2**64 buckets.
    """
    if ":" not in client:
        return client
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return client


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

    def full(self, now: int) -> bool:
        """As good as a new bucket: nothing is lost by forgetting it."""
        return self.tokens + (now - self.stamp) * self.refill_per_ns >= self.capacity

    def wait(self, now: int) -> int:
        """0 if a token is there now, else the seconds until one is (nothing taken)."""
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill_per_ns)
        if tokens >= 1:
            return 0
        return max(1, math.ceil((1 - tokens) / self.refill_per_ns / 1_000_000_000))

    def take(self, now: int) -> int:
        """0 when allowed, else the seconds to wait for the next token."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill_per_ns)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.refill_per_ns / 1_000_000_000))


MAX_BUCKETS = 100_000


class WeightWindows:
    """Binance's request weight: a fixed window (a minute) of weight per client address.

    ``spend`` adds a request's weight and answers the weight used in the current
    window (the ``X-MBX-USED-WEIGHT-1M`` header); over the limit it refuses with
    the seconds until the window ends. The table is emptied when a window ends,
    so it holds at most the addresses of one window.
    """

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits == "on"
        self.limit, seconds = parse_rate(settings.rate_limit_weight)
        self.window_ms = seconds * 1000
        self._window = -1
        self._used: dict[str, int] = {}

    def spend(self, client: str, weight: int, now_ms: int) -> int:
        window = now_ms // self.window_ms
        if window != self._window:
            self._window = window
            self._used = {}
        key = address_key(client)
        if len(self._used) >= MAX_BUCKETS and key not in self._used:
            self._used = {}  # a flood of addresses: forget the window (bounded memory)
        used = self._used.get(key, 0) + weight
        self._used[key] = used
        if self.enabled and used > self.limit:
            wait = max(1, math.ceil(((window + 1) * self.window_ms - now_ms) / 1000))
            raise ExchangeError(
                "rate_limited", f"request weight over {self.limit}", retry_after=wait
            )
        return used


class RateLimiter:
    def __init__(self, settings: Settings, max_buckets: int = MAX_BUCKETS) -> None:
        self.enabled = settings.rate_limits == "on"
        self.rules: dict[str, tuple[int, int]] = {
            "code": parse_rate(settings.rate_limit_code),
            "login": parse_rate(settings.rate_limit_login),
            "login_user": parse_rate(settings.rate_limit_login_user),
            "register": parse_rate(settings.rate_limit_register),
            "exists": parse_rate(settings.rate_limit_exists),
            "orders": parse_rate(settings.rate_limit_orders),
            "auth_failures": parse_rate(settings.rate_limit_auth_failures),
        }
        self.max_buckets = max_buckets
        #: Least recently used first: a bucket is moved to the end at each use.
        self.buckets: dict[tuple[str, str], Bucket] = {}

    def _take(self, rule: str, key: str, now: int) -> None:
        buckets = self.buckets
        bucket = buckets.pop((rule, key), None)
        if bucket is None:
            if len(buckets) >= self.max_buckets:
                self._make_room(now)
            capacity, seconds = self.rules[rule]
            bucket = Bucket(capacity, seconds, now)
        buckets[(rule, key)] = bucket
        wait = bucket.take(now)
        if wait:
            raise ExchangeError(
                "rate_limited", f"too many requests; try again in {wait} s", retry_after=wait
            )

    def refuse_failed_auth(self, client: str) -> None:
        """Refuse, with no session lookup, a client that spent its failed-auth budget.

        Each lookup of a token that names no session costs a database query; a
        guesser with fresh random tokens (HTTP Bearer or WebSocket ``auth``) is held
        to ``EXCHANGE_RATE_LIMIT_AUTH_FAILURES`` of them per address.
        """
        if not self.enabled:
            return
        bucket = self.buckets.get(("auth_failures", address_key(client)))
        if bucket is not None:
            wait = bucket.wait(time.monotonic_ns())
            if wait:
                raise ExchangeError(
                    "rate_limited",
                    f"too many unknown sessions from your address; try again in {wait} s",
                    retry_after=wait,
                )

    def failed_auth(self, client: str) -> None:
        """Count one failed session lookup of this client address."""
        if not self.enabled:
            return
        with contextlib.suppress(ExchangeError):
            self._take("auth_failures", address_key(client), time.monotonic_ns())

    def _make_room(self, now: int) -> None:
        kept = {key: bucket for key, bucket in self.buckets.items() if not bucket.full(now)}
        if len(kept) > self.max_buckets * 3 // 4:  # a flood: keep the newer half
            recent = list(kept.items())[len(kept) - self.max_buckets // 2 :]
            kept = dict(recent)
        self.buckets = kept  # at least a quarter of the table is free: sweeps are rare

    def check(self, rule: str, client: str, user_id: int, params: Mapping[str, object]) -> None:
        if not self.enabled:
            return
        now = time.monotonic_ns()
        if rule == "orders":
            self._take(rule, str(user_id), now)
            return
        self._take(rule, address_key(client), now)
        if rule == "login":
            user = params.get("user")
            if isinstance(user, str):
                self._take("login_user", user.strip().lower(), now)
