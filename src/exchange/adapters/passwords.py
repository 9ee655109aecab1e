"""Password hashing (argon2id) and the password rules of SPEC §4.

Hashing is deliberately slow and memory hard; it runs in a worker thread (argon2's
C code releases the GIL) so a login never stalls the event loop.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from exchange.domain.errors import ExchangeError

COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")
MIN_LENGTH = 8
MAX_LENGTH = 128


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line and not line.startswith("#"))


def check_password_rules(password: str, email: str) -> None:
    """Refuse weak passwords before any hashing work is spent on them."""
    if len(password) < MIN_LENGTH:
        raise ExchangeError("weak_password", f"the password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ExchangeError(
            "weak_password", f"the password may have at most {MAX_LENGTH} characters"
        )
    if password.strip().lower() == email.lower():
        raise ExchangeError("weak_password", "the password must not be the e-mail address")
    if password.lower() in common_passwords():
        raise ExchangeError("weak_password", "this password is one of the most common passwords")


class PasswordHashing:
    """argon2id with at least OWASP's minimum (m=19 MiB, t=2, p=1)."""

    def __init__(self, memory_kib: int = 19 * 1024, time_cost: int = 2) -> None:
        self._hasher = PasswordHasher(
            time_cost=max(time_cost, 2),
            memory_cost=max(memory_kib, 19 * 1024),
            parallelism=1,
            type=Type.ID,
        )
        # Verifying against this for unknown users makes their answer take as long
        # as a wrong password does, so timing does not reveal who is registered.
        self._dummy = self._hasher.hash("not-a-real-password")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False
