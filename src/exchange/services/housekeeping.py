"""Housekeeping: deleting, every ``EXCHANGE_PRUNE_INTERVAL``, what no rule needs any more.

Without it the tables that every visitor can grow would only ever grow: a row
per failed login, per code asked for, per session that was never logged out.
One process does it (the writer; workers do not), off the hot path, and a
database that is away just means the next round does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from exchange.services.accounts import Accounts
from exchange.services.sessions import Sessions

__all__ = ["Housekeeping"]

log = logging.getLogger("exchange.housekeeping")


class Housekeeping:
    def __init__(self, accounts: Accounts, sessions: Sessions, interval_seconds: int) -> None:
        self._accounts = accounts
        self._sessions = sessions
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    async def run_once(self) -> dict[str, int]:
        """One round; what was deleted, per kind."""
        deleted = await self._accounts.prune()
        deleted["sessions"] = await self._sessions.prune()
        self.rounds += 1
        if any(deleted.values()):
            log.info("housekeeping deleted %s", deleted)
        return deleted

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="housekeeping")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except Exception as error:  # the database is away: the next round tries again
                log.warning("housekeeping could not run (%s)", error)
