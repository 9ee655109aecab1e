"""Idempotency keys: which order a user's ``client_order_id`` named, for a while.

A retried placement with the same client id gets the first order back instead
of a second order — that is what the id is for, and a client retries within
seconds or minutes, not months. Keeping every id ever used would grow memory
(and the start-up load) without bound, so ids are kept for a window: at least
``ttl`` milliseconds and at most ``ttl * (1 + 1/parts)``. After that the same id
may name a new order (``EXCHANGE_CLIENT_ORDER_ID_TTL``).

The keys live in a few dicts, one per ``ttl / parts`` of time, newest last: a
lookup asks each (newest first), and forgetting a slice of time is dropping one
dict — no per-key timestamps, no scan.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

__all__ = ["ClientIds"]

Key = tuple[int, str]  # (user id, client order id)


class ClientIds:
    __slots__ = ("_parts", "_span", "_ttl")

    def __init__(self, ttl_ms: int, parts: int = 4) -> None:
        if ttl_ms <= 0 or parts <= 0:
            raise ValueError("the idempotency window must be positive")
        self._ttl = ttl_ms
        self._span = max(1, ttl_ms // parts)
        #: (start of the slice in ms, keys first used in it), oldest first.
        self._parts: deque[tuple[int, dict[Key, int]]] = deque()

    def __len__(self) -> int:
        return sum(len(part) for _start, part in self._parts)

    def get(self, key: Key, now: int) -> int | None:
        """The order this key named, if it was first used within the window."""
        self.expire(now)
        for _start, part in reversed(self._parts):
            found = part.get(key)
            if found is not None:
                return found
        return None

    def add(self, key: Key, order_id: int, now: int) -> None:
        parts = self._parts
        if not parts or now >= parts[-1][0] + self._span:
            parts.append((now - now % self._span, {}))
            self.expire(now)
        parts[-1][1][key] = order_id

    def discard(self, key: Key, order_id: int) -> None:
        """Forget ``key`` if it names ``order_id`` (a placement that was rolled back)."""
        for _start, part in self._parts:
            if part.get(key) == order_id:
                del part[key]

    def expire(self, now: int) -> None:
        """Drop the slices whose every key is older than the window."""
        parts = self._parts
        cutoff = now - self._ttl
        while parts and parts[0][0] + self._span <= cutoff:
            parts.popleft()

    def items(self) -> list[tuple[Key, int]]:
        """Every kept (key, order id), for checks and tests."""
        return [item for _start, part in self._parts for item in part.items()]

    def restore(self, rows: Iterable[tuple[int, str, int, int]], now: int) -> None:
        """(user, client id, order id, created) of the orders placed within the window."""
        self._parts.clear()
        for user, client_id, order_id, created in sorted(rows, key=lambda row: row[3]):
            key = (user, client_id)
            if self.get(key, created) is None:  # the first use wins, as when it happened
                self.add(key, order_id, created)
        self.expire(now)

    @property
    def kept_ms(self) -> int:
        """How far back a key may still be kept: a start-up load reads this far back."""
        return self._ttl + self._span
