"""The single writer: one asyncio task owns every book and balance.

API handlers ``submit`` commands and await the answer. The writer takes whatever
is queued (up to ``batch_size``), applies it in memory, commits the batch's
outbox in ONE transaction (group commit) and only then answers.

A commit can fail two ways:

* **The database is unavailable** (down, unreachable, full, locked): nobody in
  the batch gets a success; they get 503 ``overloaded`` and memory is rebuilt
  from the database, which still holds exactly what was acknowledged.
* **Some rows cannot be written** (any other error: a value the database
  refuses). That is one command's fault, not everybody's: memory is rolled back
  to the start of the batch and the batch is applied and committed again in
  halves until each culprit stands alone; only those get 500
  ``internal_error`` (the reason is logged with the command), every other
  command is committed and answered as usual, and nothing is reloaded. A
  command that makes the domain itself raise (a bug) is set aside the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Engine as SyncEngine

from exchange.adapters.db.errors import database_unavailable
from exchange.clock import Clock
from exchange.domain.book import OrderBook
from exchange.domain.commands import (
    ApproveWithdrawal,
    Cancelled,
    CancelOrder,
    CancelOrders,
    Controlled,
    Credit,
    Credited,
    PlaceOrder,
    RejectWithdrawal,
    RequestWithdrawal,
    Returns,
    SetControl,
)
from exchange.domain.errors import ExchangeError, unavailable
from exchange.domain.events import number_books
from exchange.domain.markets import Market
from exchange.domain.matching import CLIENT_ID_TTL_MS, MatchingEngine
from exchange.domain.orders import BUY, Order
from exchange.engine.journal import Batch, Journal, command_from_inbox
from exchange.engine.port import Balances, Listener
from exchange.engine.recovery import State, load_state
from exchange.engine.writer_lock import WriterLock
from exchange.metrics import BATCH_COMMANDS, COMMIT_SECONDS, DATABASE_ERRORS

log = logging.getLogger("exchange.engine")

_Item = tuple["Returns[Any]", "asyncio.Future[Any] | None", int]
R = TypeVar("R")

INBOX_POLL_MS = 250
LOCK_CHECK_MS = 1000


def not_stored() -> ExchangeError:
    """The answer to a command whose own rows the database refuses (it did not happen)."""
    return ExchangeError(
        "internal_error", "this request could not be stored, so it was not carried out"
    )


@dataclass(slots=True, frozen=True)
class Resync(Returns[None]):
    """Wakes the writer to rebuild its state from the database (writer lock lost)."""


class _Unavailable(Exception):
    """A group's commit failed because the database cannot be used now."""


class _Poisoned(Exception):
    """A group's commit failed on its rows: some command in it cannot be written."""


class _SetAside(Exception):
    """One command of a group broke the domain; ``rest`` are the group's other commands."""

    def __init__(self, rest: list[_Item]) -> None:
        super().__init__(len(rest))
        self.rest = rest


class Engine:
    def __init__(
        self,
        markets: dict[str, Market],
        db: SyncEngine,
        clock: Clock,
        *,
        queue_size: int = 10_000,
        batch_size: int = 2_000,
        lock: WriterLock | None = None,
        client_id_ttl_ms: int = CLIENT_ID_TTL_MS,
    ) -> None:
        self.markets = markets
        self.core = MatchingEngine(markets, client_id_ttl_ms=client_id_ttl_ms)
        self.assets = self.core.ledger.assets
        self.journal = Journal(db)
        self._db = db
        self._clock = clock
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = False
        self._lock = lock
        self._resync = False
        self._inbox_seen: set[int] = set()
        #: True while a batch is applied, committed or rolled back (memory may then hold
        #: changes that are not, or will never be, in the database).
        self._busy = False
        self._on_idle: list[Callable[[], None]] = []
        self.batches = 0
        #: market -> the last committed batch that changed its book (``number_books``).
        self.book_numbers: dict[str, int] = {}
        self.commands = 0
        self.commit_ns = 0  # total time spent in group commits, for operators and benchmarks
        self.reloads = 0  # times memory was rebuilt from the database after the start
        self.rollbacks = 0  # batches (or parts) whose changes were taken back
        self.refused_unstorable = 0  # commands set aside because their rows cannot be written
        #: (command class, "accepted" or the refusal's code) -> committed answers, for metrics.
        self.outcomes: dict[tuple[type, str], int] = {}
        self.trades = 0  # trades committed
        #: withdrawal status -> changes committed (requested, sent, rejected).
        self.withdrawal_changes: dict[str, int] = {}
        self._commit_row = COMMIT_SECONDS.tally()
        self._batch_row = BATCH_COMMANDS.tally()

    # -- life cycle -----------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """``listener(outbox, time)`` runs after each durable commit (market data, streams)."""
        self._listeners.append(listener)

    async def start(self, *, poll_inbox: bool = True) -> None:
        await self._reload()
        self._tasks.append(asyncio.create_task(self._run(), name="engine-writer"))
        if poll_inbox:
            self._tasks.append(asyncio.create_task(self._poll_inbox(), name="engine-inbox"))

    async def stop(self) -> None:
        """Finish what is queued, then stop (Ctrl-C loses nothing that was accepted)."""
        if self._tasks:
            await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await asyncio.to_thread(self.journal.close)  # after a commit still in its thread

    def _restore(self, state: State, now: int) -> None:
        self.core.restore(
            state.open_orders,
            state.balances,
            state.next_order_id,
            state.next_trade_id,
            state.client_ids,
            state.pending_withdrawals,
            state.next_withdrawal_id,
            now=now,
            controls=state.controls,
        )
        self.core.check_invariants()

    async def _reload(self) -> None:
        """(Re)build memory from the database, retrying until the database answers."""
        self._ready = False
        delay_ms = 200
        while True:
            try:
                now = self._clock()
                state = await asyncio.to_thread(self._load, now - self.core.client_ids_kept_ms)
                break
            except Exception as error:  # the database is down: wait, never give up
                log.error("cannot load the engine state (%s); retrying in %d ms", error, delay_ms)
                await asyncio.sleep(delay_ms / 1000)
                delay_ms = min(delay_ms * 2, 5000)
        self._restore(state, now)
        self._inbox_seen.clear()
        self._ready = True

    def _load(self, client_ids_since: int) -> State:
        # The writer lock first (taken again if a lost connection released it): with
        # another writer about, this memory would be stale and its writes wrong.
        if self._lock is not None and not self._lock.ensure():
            raise RuntimeError("another process holds the writer lock")
        with self._db.begin() as conn:
            self.journal.release_claims(conn)
            return load_state(conn, client_ids_since)

    # -- submitting -----------------------------------------------------------

    async def submit(self, command: Returns[R]) -> R:
        return await self.enqueue(command)

    def enqueue(self, command: Returns[R]) -> asyncio.Future[R]:
        """Queue a command; the future resolves after its batch's commit (or fails)."""
        if not self._ready:
            raise unavailable()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((command, future, 0))
        except asyncio.QueueFull:
            raise ExchangeError("overloaded", "too many orders in flight; try again") from None
        return future

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` now if no batch is in flight, else right after the batch.

        Between batches memory is exactly what the database holds, so readers that
        must never see an uncommitted (maybe doomed) change read there: a worker's
        snapshot, balances asked for over the socket or through the API.
        """
        if self._busy:
            self._on_idle.append(callback)
        else:
            callback()

    def _idle(self) -> None:
        callbacks, self._on_idle = self._on_idle, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("engine idle callback failed")

    @property
    def ready(self) -> bool:
        """False while memory is being rebuilt from the database (answers are 503)."""
        return self._ready

    async def read_balances(self, user_id: int) -> Balances:
        """Committed balances (waits for the batch in flight, if any)."""
        if not self._ready:  # reloading, maybe until the database is back: do not hang
            raise unavailable()
        if not self._busy:
            return self.balances(user_id)
        future: asyncio.Future[Balances] = asyncio.get_running_loop().create_future()

        def answer() -> None:
            if future.done():
                return
            if self._ready:
                future.set_result(self.balances(user_id))
            else:  # the batch failed and the writer reloads: do not wait for the database
                future.set_exception(unavailable())

        self.when_idle(answer)
        return await future

    async def settled(self) -> None:
        """Return once no batch is in flight (memory = the database), at once if none is."""
        if not self._busy:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.when_idle(lambda: None if future.done() else future.set_result(None))
        await future

    def balances_now(self, user_id: int) -> Balances | None:
        """Balances without waiting (the stream's fan-out cannot await)."""
        return self.balances(user_id)

    def open_orders(self, user_id: int, symbol: str) -> list[Order]:
        """``user_id``'s open orders on ``symbol``, as memory holds them now."""
        return self.core.open_orders(user_id, symbol)

    @property
    def books(self) -> dict[str, OrderBook]:
        """The live books (the writer hub snapshots them for its workers)."""
        return self.core.books

    def depth_key(self, symbol: str) -> object:
        """Changes when the book is rebuilt or rolled back: cached depth never outlives either.

        (Depth read during a batch may show its changes; if the batch is rolled back,
        what was cached from it must go.)
        """
        return self.core.books[symbol], self.rollbacks

    def depth(self, symbol: str, limit: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return self.core.depth(symbol, limit)

    def level_total(self, symbol: str, side: str, price: int) -> int:
        book = self.core.books[symbol]
        level = (book.bids if side == BUY else book.asks).get(price)
        return 0 if level is None else int(level.total)

    @property
    def sequence(self) -> int:
        return self.batches

    def book_number(self, symbol: str) -> int:
        return self.book_numbers.get(symbol, 0)

    # -- the writer -----------------------------------------------------------

    async def _run(self) -> None:
        queue = self._queue
        while True:
            items = [await queue.get()]
            while len(items) < self._batch_size:
                try:
                    items.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            self._busy = True
            try:
                await self._process(items)
            except Exception:  # never let the writer die; memory is rebuilt to be sure
                log.exception("engine batch failed: answering the rest and reloading")
                with contextlib.suppress(Exception):
                    failed = ExchangeError("internal_error", "the request failed; try again")
                    await self._fail(items, failed)
            finally:
                self._busy = False
                for _ in items:
                    queue.task_done()
            self._idle()  # not when cancelled mid-batch: that memory may be doomed

    async def _process(self, items: list[_Item]) -> None:
        if self._resync:
            self._resync = False
            log.error("the writer lock was lost: answering 503 and reloading")
            await self._fail(items, unavailable())
            return
        groups: deque[list[_Item]] = deque([items])
        while groups:
            group = groups.popleft()
            try:
                await self._commit_group(group)
            except _Unavailable:
                left = [item for rest in (group, *groups) for item in rest]
                await self._fail(left, unavailable())
                return
            except _SetAside as aside:
                if aside.rest:
                    groups.appendleft(aside.rest)
            except _Poisoned as error:
                if len(group) > 1:  # the culprit is in one half (or both): each on its own
                    half = len(group) // 2
                    groups.extendleft((group[half:], group[:half]))
                    continue
                log.error(
                    "cannot store %r (%r): refused with internal_error",
                    group[0][0],
                    error.__cause__ or error,
                )
                await self._refuse_alone(group[0], not_stored())

    async def _commit_group(self, group: list[_Item]) -> None:
        """Apply, commit and answer one group of commands; memory is rolled back on failure."""
        now = self._clock()
        batch = Batch(now)
        results: list[Any] = []
        for index, (command, _future, _inbox_id) in enumerate(group):
            try:
                result: Any = self._apply(command, now)
            except ExchangeError as refusal:
                result = refusal
            except Exception as bug:
                log.exception("engine bug while applying %r: refusing it alone", command)
                self._rollback()
                failed = ExchangeError("internal_error", "the request failed; try again")
                await self._refuse_alone(group[index], failed)
                # The others again, from the state before the group.
                raise _SetAside(group[:index] + group[index + 1 :]) from bug
            results.append(result)
        try:  # from here to the commit, any failure takes the group back
            for (_command, _future, inbox_id), result in zip(group, results, strict=True):
                if not inbox_id:
                    continue
                if isinstance(result, ExchangeError):
                    batch.inbox.append((inbox_id, "failed", result.description))
                else:
                    done = json.dumps(_inbox_result(result), default=str)
                    batch.inbox.append((inbox_id, "done", done))
            outbox = self.core.outbox()
            batch.orders = outbox.orders
            batch.trades = outbox.trades
            batch.entries = outbox.entries
            ledger = self.core.ledger
            batch.balances = [(u, a, *ledger.balance(u, a)) for u, a in outbox.accounts]
            batch.withdrawals = outbox.withdrawals
            batch.controls = outbox.controls
            # Off the loop: SQLite transactions of the async services hold the write
            # lock across awaits, so a commit that blocked the loop could deadlock.
            started = time.perf_counter_ns()
            await asyncio.to_thread(self.journal.commit, batch)
            took = time.perf_counter_ns() - started
            self.commit_ns += took
        except Exception as error:
            self._rollback()
            if database_unavailable(error):
                DATABASE_ERRORS.labels("commit").inc()
                log.error("group commit failed (%s): answering 503 and reloading", error)
                raise _Unavailable() from error
            log.error(
                "group commit of %d commands refused (%r): finding the command it cannot store",
                len(group),
                error,
            )
            raise _Poisoned() from error
        self.core.accept()
        self.batches += 1
        outbox.books = number_books(self.book_numbers, outbox.orders, self.batches)
        self.commands += len(group)
        COMMIT_SECONDS.count(self._commit_row, took / 1_000_000_000)
        BATCH_COMMANDS.count(self._batch_row, len(group))
        outcomes = self.outcomes
        for (command, future, _inbox), result in zip(group, results, strict=True):
            if isinstance(result, ExchangeError):
                key = (type(command), result.code)
                if future is not None and not future.done():
                    future.set_exception(result)
            else:
                key = (type(command), "accepted")
                if future is not None and not future.done():
                    future.set_result(result)
            outcomes[key] = outcomes.get(key, 0) + 1
        self.trades += len(outbox.trades)
        for withdrawal in outbox.withdrawals:
            changes = self.withdrawal_changes
            changes[withdrawal.status] = changes.get(withdrawal.status, 0) + 1
        for listener in self._listeners:
            try:
                listener(outbox, now)
            except Exception:
                log.exception("engine listener failed")

    def _rollback(self) -> None:
        self.core.rollback()
        self.rollbacks += 1

    async def _refuse_alone(self, item: _Item, answer: ExchangeError) -> None:
        """The one command that cannot be carried out: it alone gets an error."""
        _command, future, inbox_id = item
        self.refused_unstorable += 1
        if future is not None and not future.done():
            future.set_exception(answer)
        if inbox_id:  # an operator's command: its inbox row says how it ended
            try:
                await asyncio.to_thread(
                    self.journal.mark_inbox, inbox_id, "failed", answer.description, self._clock()
                )
            except Exception as failure:  # stays claimed: retried after the next reload
                log.error("cannot mark inbox command %s failed (%s)", inbox_id, failure)

    async def _fail(self, items: list[_Item], error: ExchangeError) -> None:
        self._ready = False  # refuse new commands from now on, not after the reload
        self._idle()  # readers waiting for this batch: 503 now, not after the database is back
        # Commands queued behind the failed batch were not applied: refuse them now
        # rather than park their callers until the database is back (maybe minutes).
        queued: list[_Item] = []
        while True:
            try:
                queued.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        for group, refusal in ((items, error), (queued, unavailable())):
            for _command, future, _inbox in group:
                if future is not None and not future.done():
                    future.set_exception(refusal)
        for _ in queued:
            self._queue.task_done()
        self.reloads += 1
        await self._reload()

    def _apply(self, command: Returns[Any], now: int) -> Any:
        core = self.core
        if isinstance(command, PlaceOrder):
            result = core.place(command, now)
            if result.order is not None:
                # A snapshot: later batches mutate the live order while the answer is built.
                result.order = result.order.snapshot()
            return result
        if isinstance(command, CancelOrder):
            return core.cancel(command.user_id, command.order_id, now).snapshot()
        if isinstance(command, Credit):
            core.credit(command.user_id, command.asset, command.amount, command.ref)
            return Credited(command.user_id, command.asset, command.amount)
        if isinstance(command, RequestWithdrawal):
            return core.request_withdrawal(command, now)
        if isinstance(command, ApproveWithdrawal):
            return core.approve_withdrawal(command.withdrawal_id, command.txid, now)
        if isinstance(command, RejectWithdrawal):
            return core.reject_withdrawal(command.withdrawal_id, command.reason, now)
        if isinstance(command, SetControl):
            changed = core.set_control(command.kind, command.key, command.active)
            return Controlled(command.kind, command.key, command.active, changed)
        if isinstance(command, CancelOrders):
            done = core.cancel_all(command.user_id, command.market, now)
            return Cancelled(command.user_id, command.market, tuple(o.id for o in done))
        return None  # Resync: its batch found the flag already handled

    # -- operator commands from other processes -------------------------------

    async def _poll_inbox(self) -> None:
        checked_ns = 0
        while True:
            await asyncio.sleep(INBOX_POLL_MS / 1000)
            if not self._ready:
                continue
            now_ns = time.monotonic_ns()
            if self._lock is not None and now_ns - checked_ns > LOCK_CHECK_MS * 1_000_000:
                checked_ns = now_ns
                if not await asyncio.to_thread(self._lock.held):
                    await self._lost_lock()
                    continue
            try:
                await self.run_inbox()
            except Exception as error:
                log.warning("cannot read the command inbox (%s)", error)

    async def _lost_lock(self) -> None:
        """Refuse commands until the writer has taken the lock again and reloaded."""
        self._ready = False
        self._resync = True
        await self._queue.put((Resync(), None, 0))

    async def run_inbox(self) -> int:
        """Queue pending operator commands; each is marked done in its batch's commit."""
        rows = await asyncio.to_thread(self.journal.claim_inbox)
        futures = []
        ids = []
        for inbox_id, kind, payload in rows:
            if inbox_id in self._inbox_seen:
                continue
            self._inbox_seen.add(inbox_id)
            try:
                command = command_from_inbox(kind, json.loads(payload), inbox_id)
            except (ValueError, KeyError, TypeError) as error:
                log.error("bad inbox command %s: %s", inbox_id, error)
                continue
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            await self._queue.put((command, future, inbox_id))
            futures.append(future)
            ids.append(inbox_id)
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)
            # Done rows are no longer pending; failed batches cleared the set on reload.
            self._inbox_seen.difference_update(ids)
        return len(futures)

    # -- reading (from memory: no database on the hot path) -------------------

    @property
    def queued(self) -> int:
        """Commands waiting for the writer (the engine queue's depth)."""
        return self._queue.qsize()

    async def ledger_totals(self) -> dict[tuple[str, int, int], int]:
        """(asset, account, 0 available / 1 frozen) -> units summed over the accounts, with
        every user account under 0 and the system accounts under their own (negative) ids:
        committed, read between batches (so the sum per asset is exactly 0)."""
        while self._busy:  # another batch may have begun before this coroutine resumed
            await self.settled()
        totals: dict[tuple[str, int, int], int] = {}
        for user, asset, available, frozen in self.core.ledger.accounts():
            holder = user if user < 0 else 0
            for part, units in ((0, available), (1, frozen)):
                key = (asset, holder, part)
                totals[key] = totals.get(key, 0) + units
        return totals

    def balances(self, user_id: int) -> Balances:
        """What memory holds now (between batches: what the database holds)."""
        balance = self.core.ledger.balance
        return {code: balance(user_id, code) for code in sorted(self.assets)}


def _inbox_result(result: object) -> object:
    """What an operator's command answered, as JSON for the inbox row."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return result
