"""Per-address state stays bounded: rate-limit buckets, keyed locks, IPv6 keys."""

from __future__ import annotations

import asyncio

import pytest

from exchange.api.limits import RateLimiter, address_key
from exchange.config import Settings
from exchange.domain.errors import ExchangeError
from exchange.services.keyed_locks import KeyedLocks
from exchange.web.pages import safe_next


def limiter(max_buckets: int, **rates: str) -> RateLimiter:
    return RateLimiter(Settings(rate_limits="on", **rates), max_buckets=max_buckets)


def test_buckets_are_bounded_and_idle_ones_go_first() -> None:
    rl = limiter(100, rate_limit_register="2/1")
    rl.check("register", "198.51.100.1", 0, {})
    rl.check("register", "198.51.100.1", 0, {})
    with pytest.raises(ExchangeError) as limited:
        rl.check("register", "198.51.100.1", 0, {})
    assert limited.value.code == "rate_limited" and limited.value.retry_after == 1
    for n in range(10_000):  # a flood of new addresses
        rl.check("register", f"10.0.{n // 256}.{n % 256}", 0, {})
        assert len(rl.buckets) <= 100
    assert len(rl.buckets) <= 100


def test_a_full_bucket_is_forgotten_before_a_busy_one() -> None:
    rl = limiter(4, rate_limit_register="1/3600")
    rl.check("register", "198.51.100.7", 0, {})  # now empty for an hour
    rl.buckets[("register", "idle")] = rl.buckets[("register", "198.51.100.7")].__class__(
        1, 1, 0
    )  # a bucket that is full again
    for name in ("a", "b"):
        rl.check("register", name, 0, {})
    rl.check("register", "c", 0, {})  # the table is full: the idle one goes, not the busy one
    assert ("register", "idle") not in rl.buckets
    with pytest.raises(ExchangeError):
        rl.check("register", "198.51.100.7", 0, {})


def test_ipv6_clients_are_limited_by_their_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("203.0.113.9") == "203.0.113.9"
    assert address_key("::ffff:203.0.113.9") == "::ffff:203.0.113.9"
    assert address_key("unknown") == "unknown"
    rl = limiter(100, rate_limit_register="1/60")
    rl.check("register", "2001:db8::1", 0, {})
    with pytest.raises(ExchangeError):
        rl.check("register", "2001:db8::2", 0, {})


async def test_keyed_locks_keep_only_keys_in_use() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def use(key: str, tag: str) -> None:
        async with locks.hold(key):
            order.append(f"{tag}+")
            await asyncio.sleep(0)
            order.append(f"{tag}-")

    await asyncio.gather(use("a", "1"), use("a", "2"), use("b", "3"))
    assert order.index("1-") < order.index("2+")  # one holder per key at a time
    assert len(locks) == 0
    for n in range(1000):
        async with locks.hold(f"random-{n}@example.com"):
            pass
    assert len(locks) == 0
    with pytest.raises(RuntimeError):
        async with locks.hold("x"):
            raise RuntimeError("the holder fails")
    assert len(locks) == 0


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/trade/BTC_USDT?x=1#a", "/trade/BTC_USDT?x=1#a"),
        ("/account", "/account"),
        ("/\t/evil.example", "/account"),  # the review's case: browsers drop the tab
        ("/%2e//evil.example", "/account"),  # a browser takes %2e as a dot: "//evil.example"
        ("/%2E%2e//evil.example", "/account"),
        ("/.//evil.example", "/account"),
        ("/a/..//evil.example", "/account"),
        ("/a/%2e%2e/b", "/b"),
        ("/\n/evil.example", "/account"),
        ("/\r\n/evil.example", "/account"),
        ("//evil.example", "/account"),
        ("/\\evil.example", "/account"),
        ("\\/evil.example", "/account"),
        (" //evil.example", "/account"),
        ("\x00//evil.example", "/account"),
        ("https://evil.example/", "/account"),
        ("https:evil.example", "/account"),
        ("javascript:alert(1)", "/account"),
        ("evil.example", "/account"),
        ("", "/account"),
        (None, "/account"),
    ],
)
def test_the_next_page_stays_on_this_origin(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected
