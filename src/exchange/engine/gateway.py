"""A gateway's engine: the writer, reached over NATS (``engine/bus.py``).

Commands go to the writer as NATS requests and are answered after the writer's
group commit, so durability and single-writer matching are exactly those of one
process. What a gateway reads from memory it keeps locally, fed by the stream
of committed batches: the depth of every book (aggregated levels, updated from
the new totals of the levels each batch touched) and, through the same listener
interface as ``Engine``, market data and the WebSocket fan-out. Balances are
asked of the writer (one request, no database).

Start and every resynchronisation go one way: a snapshot from the writer,
then the stream from a point before it (batches the snapshot holds are
skipped), held while ``on_resync`` reloads market data from the database, then
folded in; only then may requests use the link. After a NATS reconnection the
stream is replayed from the last batch applied. A gap in the batch numbers, a
new writer (another epoch) or a batch that cannot be read means this replica
cannot be trusted: it resynchronises from a new snapshot.

An answer is passed on only once its batch is applied here, so a client never
reads, on this gateway, a state older than an answer it was given. While the
writer or NATS is away, new commands get 503; commands in flight get
``internal_error`` saying the outcome is unknown (the writer may have committed
them; a ``client_order_id`` makes the retry safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from itertools import count, islice
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sortedcontainers import SortedDict

from exchange.domain.commands import Returns
from exchange.domain.errors import ExchangeError
from exchange.domain.events import Committed, number_books
from exchange.domain.markets import Asset, Market, assets_of
from exchange.domain.orders import BUY
from exchange.engine.bus import SILENT_SECONDS, NatsAuth, Subjects, connect
from exchange.engine.port import Balances, Levels, Listener
from exchange.engine.wire import (
    decode_balances,
    decode_error,
    decode_outbox,
    decode_result,
    encode_command,
    read,
)
from exchange.metrics import GATEWAY_RESYNCS, GATEWAYS_IN_STEP, SAMPLERS

__all__ = ["GatewayEngine", "LevelBook"]

R = TypeVar("R")
log = logging.getLogger("exchange.gateway")

COMMAND_SECONDS = 30.0  # float-ok: seconds a command may wait for its answer
BALANCES_SECONDS = 5.0  # float-ok: seconds a balance read may wait for the writer
SNAPSHOT_SECONDS = 10.0  # float-ok: seconds a snapshot may take
APPLIED_SECONDS = 5.0  # float-ok: seconds an answer waits for its batch before a resync
RETRY_SECONDS = 0.2  # float-ok: seconds between attempts to resynchronise
#: Batches held while market data loads; past this the link resynchronises (a fresh
#: snapshot empties the list) rather than let a gateway that cannot load grow forever.
HELD_MAX = 20_000


def _unknown_outcome() -> ExchangeError:
    return ExchangeError(
        "internal_error",
        "the connection to the matching engine was lost while this was in flight; it may "
        "or may not have been applied: check get_orders or get_withdrawals before retrying",
    )


def _not_connected() -> ExchangeError:
    return ExchangeError(
        "overloaded", "the matching engine is not reachable now; try again", retry_after=1
    )


def _hand_over(outcome: asyncio.Future[dict[str, Any]], request: asyncio.Future[Any]) -> None:
    """The request's end, unless ``outcome`` was failed already (the connection was lost)."""
    if request.cancelled():
        if not outcome.done():
            outcome.cancel()
        return
    error = request.exception()  # retrieved either way: no "never retrieved" warning
    if outcome.done():
        return
    if isinstance(error, NatsTimeout):
        outcome.set_exception(_unknown_outcome())
    elif error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(request.result())


class _Stale(Exception):
    """This replica missed something: take a new snapshot."""


class LevelBook:
    """One market's aggregated depth: price -> total remaining, per side."""

    __slots__ = ("asks", "bids")

    def __init__(self, levels: Sequence[Sequence[Sequence[int]]]) -> None:
        bids, asks = levels
        self.bids: SortedDict = SortedDict({price: total for price, total in bids})
        self.asks: SortedDict = SortedDict({price: total for price, total in asks})

    def set(self, side: str, price: int, total: int) -> None:
        levels = self.bids if side == BUY else self.asks
        if total > 0:
            levels[price] = total
        else:
            levels.pop(price, None)

    def depth(self, limit: int) -> Levels:
        bids, asks = self.bids, self.asks
        return (
            [(price, bids[price]) for price in islice(reversed(bids), limit)],
            [(price, asks[price]) for price in islice(asks, limit)],
        )


class GatewayEngine:
    def __init__(
        self,
        url: str,
        markets: dict[str, Market],
        subjects: Subjects | None = None,
        auth: NatsAuth | None = None,
    ):
        self.url = url
        self.auth = auth
        self.markets = markets
        self.subjects = subjects or Subjects()
        self._assets = assets_of(markets.values())
        self.books: dict[str, LevelBook] = {symbol: LevelBook([[], []]) for symbol in markets}
        self.epoch = ""
        self.seq = 0
        #: The writer's ``book_numbers``: from the snapshot, then moved on by each batch.
        self.book_numbers: dict[str, int] = {}
        #: Runs at every resynchronisation, before missed batches could be misread.
        self.on_resync: Callable[[], Awaitable[None]] | None = None
        #: Runs when any gateway ends a session (forget the cached copy).
        self.on_revoke: Callable[[str], None] | None = None
        self._listeners: list[Listener] = []
        self.nc: Client | None = None
        #: The stream's consumer (every batch, in order) and the live core subscription.
        self._events: Subscription | None = None
        self._live: Subscription | None = None
        #: Live batches are applied (not while a snapshot is awaited: they would be
        #: folded into the state the snapshot replaces, then rolled back by it).
        self._live_open = False
        #: The stream sequence of the last batch applied (where a replay resumes).
        self._stream_seq = 0
        self._ready = False
        self._held: list[tuple[Committed, int]] | None = None
        #: (batch, tie, future) of answers waiting for their batch to be applied here.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._ties = count()
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._resync: asyncio.Task[None] | None = None
        self._unsent_revokes: list[str] = []
        self._sending: set[asyncio.Future[None]] = set()
        self.resyncs = 0
        #: When the writer was last heard from (a heartbeat or a snapshot), monotonic.
        self._heard = 0.0  # float-ok: seconds

    @property
    def assets(self) -> dict[str, Asset]:
        return self._assets

    @property
    def connected(self) -> bool:
        """The link is up, the writer heard from lately, and this replica in step with it."""
        return (
            self._ready
            and self.nc is not None
            and self.nc.is_connected
            and time.monotonic() - self._heard < SILENT_SECONDS
        )

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- life cycle -----------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:  # float-ok: seconds
        """Connect, take a snapshot, load market data; ConnectionError if the writer cannot
        be reached within ``timeout``."""
        try:
            self.nc = await connect(
                self.url,
                "exchange-gateway",
                self.auth,
                disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
            )
        except ConnectionError:
            raise
        except Exception as error:
            raise ConnectionError(f"cannot reach NATS ({type(error).__name__})") from None
        await self.nc.subscribe(self.subjects.revoke, cb=self._revoked)
        await self.nc.subscribe(self.subjects.alive, cb=self._heartbeat)
        SAMPLERS.append(self._sample)
        self._schedule_resync(fresh=True)
        try:
            async with asyncio.timeout(timeout):
                await self._in_step()
        except TimeoutError:
            raise ConnectionError("the writer did not answer a snapshot request") from None

    def _sample(self) -> None:
        GATEWAYS_IN_STEP.set(1 if self.connected else 0)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            SAMPLERS.remove(self._sample)
        GATEWAYS_IN_STEP.set(0)
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
            self._resync = None
        self._fail_in_flight()
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _disconnected(self) -> None:
        log.warning("lost the connection to NATS; reconnecting")
        self._fail_in_flight()

    async def _reconnected(self) -> None:
        log.warning("reconnected to NATS: replaying the batches missed")
        self._schedule_resync(fresh=False)

    def _schedule_resync(self, *, fresh: bool) -> asyncio.Task[None]:
        self._ready = False
        if self._resync is not None and not self._resync.done():
            self._resync.cancel()
        task = asyncio.create_task(self._resynchronise(fresh=fresh), name="gateway-sync")
        self._resync = task
        return task

    async def _in_step(self) -> None:
        """Wait for the resynchronisation under way, and for any that replaces it."""
        while (task := self._resync) is not None and not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this waiter itself is cancelled
                # else: a newer resynchronisation replaced that one; wait for it

    def _fail_in_flight(self) -> None:
        flying, self._in_flight = self._in_flight, set()
        for future in flying:
            if not future.done():
                future.set_exception(_unknown_outcome())

    # -- snapshot, replay, hold, fold -------------------------------------------

    async def _resynchronise(self, *, fresh: bool) -> None:
        """Until it succeeds: (snapshot or replay), market data reloaded, held batches folded."""
        self._ready = False
        self.resyncs += 1
        GATEWAY_RESYNCS.inc()
        while True:
            try:
                await self._follow(fresh)
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("cannot follow the writer yet (%s); retrying", type(error).__name__)
                fresh = True
                await asyncio.sleep(RETRY_SECONDS)
        delay = RETRY_SECONDS
        while self.on_resync is not None:
            try:
                await self.on_resync()
                break
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: keep the old data, hold, retry
                log.exception("cannot load market data; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)  # float-ok: seconds
        held, self._held = self._held, None
        for outbox, now in held or ():
            self._publish(outbox, now)
        self._ready = True
        unsent, self._unsent_revokes = self._unsent_revokes, []
        for key in unsent:  # sessions ended while the link was down
            self.revoke(key)

    async def _follow(self, fresh: bool) -> None:
        """Subscribe to the stream (from the last batch applied, or from before a snapshot)."""
        nc = self.nc
        assert nc is not None
        for old in (self._events, self._live):
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.unsubscribe()
        self._events = self._live = None
        self._held = []
        self._live_open = not fresh  # a replay continues this state; a snapshot replaces it
        # Live first (and registered by the server before the snapshot is asked for), so
        # every batch after the snapshot also arrives the fastest way there is.
        self._live = await nc.subscribe(self.subjects.events, cb=self._live_batch)
        await nc.flush()
        js = nc.jetstream()
        if fresh:
            info = await js.stream_info(self.subjects.stream)
            start = info.state.last_seq + 1
            reply = await nc.request(self.subjects.snapshot, b"", timeout=SNAPSHOT_SECONDS)
            self._hello(read(reply.data))
            self._stream_seq = start - 1  # a later replay resumes here at the earliest
        else:
            start = self._stream_seq + 1
        # A plain push consumer: no acks, no flow control (whose pauses would hold answers
        # waiting for their batch); order and gaps are this class's own business (batch
        # numbers), and a lost consumer is made again at the next resynchronisation.
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(start, 1),
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=60.0,  # float-ok: seconds; a gone gateway's consumer is dropped
        )
        self._events = await js.subscribe(
            self.subjects.events, stream=self.subjects.stream, cb=self._batch, config=config
        )

    def _hello(self, message: dict[str, Any]) -> None:
        if message.get("t") != "hello":
            raise ValueError("the writer did not answer with a snapshot")
        self._heard = time.monotonic()
        epoch = str(message["epoch"])
        if epoch != self.epoch:  # a new writer: what it loaded holds every earlier answer
            self._release_waiting(everything=True)
        self.epoch = epoch
        self.seq = int(message["seq"])
        self.book_numbers = {str(s): int(n) for s, n in message.get("numbers", {}).items()}
        books = message["books"]
        self.books = {symbol: LevelBook(books.get(symbol, [[], []])) for symbol in self.markets}
        self._live_open = True
        self._release_waiting()

    def _number(self, msg: Msg) -> int | None:
        """The batch's number, read from its message id (not its body); None when it is
        another writer's or unreadable."""
        epoch, _, seq = (msg.headers or {}).get("Nats-Msg-Id", "").partition(".")
        return int(seq) if epoch == self.epoch and seq.isdigit() else None

    async def _live_batch(self, msg: Msg) -> None:
        """A batch as NATS routes it, before (or while) JetStream stores it: applied if it
        is the next one. Anything else (one dropped, or a new epoch) is left to the stream,
        which delivers every batch in order and tells gaps apart."""
        if self._live_open and self._number(msg) == self.seq + 1:
            await self._batch(msg, stored=False)

    async def _batch(self, msg: Msg, *, stored: bool = True) -> None:
        number = self._number(msg) if stored else None
        if number is not None and number <= self.seq:  # it came live already
            self._stream_seq = msg.metadata.sequence.stream
            return
        try:
            self._apply(read(msg.data))
        except _Stale as why:
            log.warning("%s: taking a new snapshot", why)
            self._schedule_resync(fresh=True)
            return
        except Exception as error:  # a batch that cannot be read: this replica is unsafe
            log.error("cannot apply a batch (%r): taking a new snapshot", error)
            self._schedule_resync(fresh=True)
            return
        if stored:
            self._stream_seq = msg.metadata.sequence.stream

    def _apply(self, message: dict[str, Any]) -> None:
        if message.get("t") != "events":
            raise ValueError("not a batch")
        seq = int(message["seq"])
        if message.get("epoch") != self.epoch:  # another run of the writer than the snapshot's
            raise _Stale("the writer restarted")
        if seq <= self.seq:
            return  # already in the snapshot
        if seq != self.seq + 1:
            raise _Stale(f"batches {self.seq + 1}..{seq - 1} never arrived")
        self.seq = seq
        books = self.books
        for symbol, levels in message["books"].items():
            if symbol in books:
                books[symbol] = LevelBook(levels)
        for market, side, price, total in message["levels"]:
            book = books.get(market)
            if book is not None:
                book.set(side, price, total)
        outbox = decode_outbox(message)
        outbox.books = number_books(self.book_numbers, outbox.orders, seq)
        now = int(message["now"])
        if self._held is not None:
            if len(self._held) >= HELD_MAX:
                raise _Stale("market data is still loading and too many batches wait")
            self._held.append((outbox, now))
        else:
            self._publish(outbox, now)
        self._release_waiting()

    def _release_waiting(self, *, everything: bool = False) -> None:
        waiting = self._waiting
        while waiting and (everything or waiting[0][0] <= self.seq):
            _seq, _tie, future = heapq.heappop(waiting)
            if not future.done():
                future.set_result(None)

    def _publish(self, outbox: Committed, now: int) -> None:
        for listener in self._listeners:
            try:
                listener(outbox, now)
            except Exception:
                log.exception("engine listener failed")

    # -- requests --------------------------------------------------------------

    async def _request(
        self,
        subject: str,
        data: bytes,
        timeout: float,  # float-ok: seconds
    ) -> dict[str, Any]:
        nc = self.nc
        if nc is None or not self.connected:
            raise _not_connected()
        try:
            reply = await nc.request(subject, data, timeout=timeout)
        except NoRespondersError:
            raise _not_connected() from None  # nobody took it: nothing was applied
        return read(reply.data)

    async def submit(self, command: Returns[R]) -> R:
        """Sent to the writer; returned once its batch is applied here too."""
        data = encode_command(command)  # first: a command that cannot be sent leaves nothing
        if not self.connected:
            # Refused here, not in the request's task: the link may be down before NATS
            # has called ``_disconnected``, which would then fail the outcome as lost in
            # flight ("may or may not have been applied") though nothing was sent.
            raise _not_connected()
        subject = self.subjects.command(type(command).__name__)
        outcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        request = asyncio.ensure_future(self._request(subject, data, COMMAND_SECONDS))
        request.add_done_callback(partial(_hand_over, outcome))
        self._in_flight.add(outcome)  # a lost connection fails it at once
        try:
            message = await outcome
        finally:
            self._in_flight.discard(outcome)
        if message.get("t") == "err":
            raise decode_error(message)
        if message.get("epoch") != self.epoch:  # answered by a writer this replica does not follow
            self._schedule_resync(fresh=True)
            await self._in_step()
        else:
            await self._applied(int(message.get("seq", 0)))
        answer: R = decode_result(message)
        return answer

    async def _applied(self, seq: int) -> None:
        """Wait until batch ``seq`` is applied here (or a resync holds it)."""
        if seq <= self.seq and self._held is None:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (seq, next(self._ties), future))
        self._release_waiting()
        try:
            await asyncio.wait_for(asyncio.shield(future), APPLIED_SECONDS)
        except TimeoutError:
            log.warning("batch %d did not arrive in %.0f s: resynchronising", seq, APPLIED_SECONDS)
            self._schedule_resync(fresh=True)
        await self._in_step()  # a resynchronisation's snapshot holds the batch

    async def read_balances(self, user_id: int) -> Balances:
        data = b'{"u":%d}' % user_id
        try:
            message = await self._request(self.subjects.balances, data, BALANCES_SECONDS)
        except NatsTimeout:
            raise _not_connected() from None
        if message.get("t") == "err":
            raise decode_error(message)
        return decode_balances(message["v"])

    async def settled(self) -> None:
        return None  # a gateway only ever holds committed batches

    def balances_now(self, user_id: int) -> Balances | None:
        return None  # a round trip away: the stream asks with read_balances

    def revoke(self, key: str) -> None:
        """Tell every gateway (this one too) that a session ended; kept until the link is up."""
        nc = self.nc
        if nc is not None and nc.is_connected and self._ready:
            sending = asyncio.ensure_future(nc.publish(self.subjects.revoke, key.encode()))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)
        elif len(self._unsent_revokes) < 100_000:
            self._unsent_revokes.append(key)

    async def _heartbeat(self, msg: Msg) -> None:
        try:
            epoch = str(read(msg.data)["epoch"])
        except (ValueError, KeyError):
            return
        self._heard = time.monotonic()
        if epoch != self.epoch and self._ready:  # a new writer: follow it from a snapshot
            log.warning("a new writer is running: taking its snapshot")
            self._schedule_resync(fresh=True)

    async def _revoked(self, msg: Msg) -> None:
        if self.on_revoke is not None:
            self.on_revoke(msg.data.decode("utf-8", "replace"))

    def depth_key(self, symbol: str) -> object:
        # The book changes in place as batches arrive, also while they are held back
        # from market data (a reload): its number says which batches it holds.
        return self.books[symbol], self.book_numbers.get(symbol, 0)

    def depth(self, symbol: str, limit: int) -> Levels:
        return self.books[symbol].depth(limit)

    def level_total(self, symbol: str, side: str, price: int) -> int:
        book = self.books[symbol]
        return int((book.bids if side == BUY else book.asks).get(price, 0))

    @property
    def sequence(self) -> int:
        return self.seq

    def book_number(self, symbol: str) -> int:
        return self.book_numbers.get(symbol, 0)
