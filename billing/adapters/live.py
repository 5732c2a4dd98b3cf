"""Implements LiveUpdates: one process's wake-ups and feed tail, fanned out in memory.

Everything here runs on the event loop, except the `wake_*`/`feed_moved` entry points, which any
thread may call (writers publish from the bulkheads, the listener from the loop): they coalesce
into one loop callback however often they are called. So an idle stream is a few objects and a
future, never a thread, and a burst of commits costs the loop one wake-up.

- A watch registers under its session id; a commit that changed the session wakes it (in this
  process through the notifier, from other replicas through the feed tail, which wakes the
  sessions of the rows it reads, or the listener's status channel).
- One tail per process reads the feed after the last position it delivered, in pages, whenever
  the feed moved (a local commit on SQLite or in memory, this process's sequencer, a
  notification from another replica) and every `poll_s` as the safety net, and hands each
  follower the rows it wants. With no stream open it reads nothing; the first stream to open
  reads where the feed ends, so that the tail starts from a place every follower can rely on.
- A follower's buffer is bounded: a consumer that falls `buffer` rows behind is cut off
  (SlowConsumer) and resumes from its last cursor; the server's memory does not grow.
- `max_streams` bounds the open streams (both kinds); `close()` ends them all (ShuttingDown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from billing.domain.errors import Overloaded, ShuttingDown, SlowConsumer
from billing.domain.events import CoinsCredited, CoinsDebited, DomainEvent, PaymentStatusChanged
from billing.domain.ledger import LedgerEntry
from billing.ports import UnitOfWork
from billing.use_cases._unit import UnitRunner

if TYPE_CHECKING:
    from collections.abc import Callable

    from billing.adapters.metrics import Metrics

log = logging.getLogger("billing.live")

WATCH = "WatchPaymentStatus"
BUSY_ROWS = 16  # a tail read of this many rows or more makes the next one wait its turn
FOLLOW = "StreamTransactions"


class _Stream:
    """What both kinds share: a slot, and one future to park on while waiting."""

    __slots__ = ("_hub", "_kind", "_parked", "_ended", "_closed")

    def __init__(self, hub: LiveHub, kind: str) -> None:
        self._hub = hub
        self._kind = kind
        self._parked: asyncio.Future[None] | None = None
        self._ended: Exception | None = None  # why the service ends this stream
        self._closed = False

    def _unpark(self) -> None:
        parked = self._parked
        if parked is not None and not parked.done():
            parked.set_result(None)

    def end(self, why: Exception) -> None:
        if self._ended is None:
            self._ended = why
        self._unpark()

    async def _park(self, timeout: float) -> None:
        if self._ended is not None:
            raise self._ended
        self._parked = parked = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(parked, timeout)
        except TimeoutError:
            pass
        finally:
            self._parked = None
        if self._ended is not None:
            raise self._ended

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._closed_stream(self, self._kind)


class _Waiter(_Stream):
    """Implements SessionWaiter."""

    __slots__ = ("_session_id", "_woken")

    def __init__(self, hub: LiveHub, session_id: str) -> None:
        super().__init__(hub, WATCH)
        self._session_id = session_id
        self._woken = False

    def wake(self) -> None:
        self._woken = True
        self._unpark()

    async def wait(self, timeout: float) -> None:
        if not self._woken:
            await self._park(timeout)
        elif self._ended is not None:
            raise self._ended
        self._woken = False


class _Follower(_Stream):
    """Implements FeedFollower."""

    __slots__ = ("user_id", "_rows", "_limit")

    def __init__(self, hub: LiveHub, user_id: str | None, limit: int) -> None:
        super().__init__(hub, FOLLOW)
        self.user_id = user_id
        self._rows: deque[LedgerEntry] = deque()
        self._limit = limit

    async def attach(self) -> int:
        return await self._hub._attach(self)

    def offer(self, rows: Iterable[LedgerEntry]) -> None:
        if self._ended is not None:
            return
        self._rows.extend(rows)
        if len(self._rows) > self._limit:
            self._rows.clear()  # the consumer resumes from its cursor: keep nothing for it
            self._hub.metrics_refused("slow_consumer")
            self.end(SlowConsumer(
                f"the stream fell more than {self._limit} rows behind; resume from the last "
                "cursor received"
            ))
        else:
            self._unpark()

    async def next(self, timeout: float) -> tuple[Sequence[LedgerEntry], int]:
        if not self._rows:
            await self._park(timeout)
        elif self._ended is not None:
            raise self._ended
        rows = list(self._rows)
        self._rows.clear()
        return rows, self._hub.position


class LiveHub:
    """Implements LiveUpdates for one process. `start()` on the loop before use; until then
    (the CLI, a unit test of something else) the wake-ups are no-ops."""

    def __init__(
        self,
        units: UnitRunner,
        *,
        max_streams: int,
        buffer: int = 1000,
        poll_s: float = 1.0,
        read_every_s: float = 0.025,
        page: int = 500,
        metrics: Metrics | None = None,
    ) -> None:
        self._units = units  # its offload: where the tail's reads run
        self._max_streams = max_streams
        self._buffer = buffer
        self._poll_s = poll_s
        self._read_every_s = read_every_s
        self._page = page
        self._metrics = metrics
        self._open = 0
        self._open_by_kind = {WATCH: 0, FOLLOW: 0}
        self._sessions: dict[str, set[_Waiter]] = {}
        self._followers: dict[str | None, set[_Follower]] = {}  # attached, by user (None: all)
        self._unattached: set[_Follower] = set()
        self._position: int | None = None  # every row up to here has been delivered
        self._reading_end: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._moved: asyncio.Event | None = None
        self._tail: asyncio.Task[None] | None = None
        self._closing = False
        # Written from any thread, read on the loop.
        self._lock = threading.Lock()
        self._due_sessions: set[str] = set()
        self._due_feed = False
        self._due_all = False
        self._scheduled = False

    # -- lifecycle (on the loop) -------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._moved = asyncio.Event()
        self._tail = self._loop.create_task(self._tail_forever(), name="feed-tail")

    async def close(self) -> None:
        """End every open stream with ShuttingDown, refuse new ones, stop the tail."""
        self._closing = True
        why = ShuttingDown("the server is shutting down; resume on another replica")
        for waiters in self._sessions.values():
            for waiter in waiters:
                waiter.end(why)
        for followers in self._followers.values():
            for follower in followers:
                follower.end(why)
        for stream in list(self._unattached):
            stream.end(why)
        if self._tail is not None:
            self._tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail
            self._tail = None

    @property
    def position(self) -> int:
        return self._position or 0

    # -- LiveUpdates ---------------------------------------------------------------------------
    async def watch_session(self, session_id: str) -> _Waiter:
        waiter = _Waiter(self, session_id)
        self._opened(waiter, WATCH)
        self._sessions.setdefault(session_id, set()).add(waiter)
        try:
            await self._ready()
        except BaseException:
            waiter.close()
            raise
        return waiter

    def follow(self, user_id: str | None) -> _Follower:
        follower = _Follower(self, user_id, self._buffer)
        self._opened(follower, FOLLOW)
        self._unattached.add(follower)
        return follower

    # -- wake-ups: from any thread -------------------------------------------------------------
    def wake_sessions(self, session_ids: Iterable[str]) -> None:
        with self._lock:
            self._due_sessions.update(session_ids)
            self._schedule()

    def feed_moved(self) -> None:
        with self._lock:
            self._due_feed = True
            self._schedule()

    def wake_everything(self) -> None:
        """After notifications may have been lost (the listener reconnected): every watch
        re-reads, and the tail reads."""
        with self._lock:
            self._due_all = self._due_feed = True
            self._schedule()

    def _schedule(self) -> None:  # under the lock
        loop = self._loop
        if not self._scheduled and loop is not None and not loop.is_closed():
            self._scheduled = True
            loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            sessions, self._due_sessions = self._due_sessions, set()
            feed, every = self._due_feed, self._due_all
            self._due_feed = self._due_all = self._scheduled = False
        if every:
            sessions = set(self._sessions)
        for session_id in sessions:
            for waiter in self._sessions.get(session_id, ()):
                waiter.wake()
        if feed and self._moved is not None:
            self._moved.set()

    # -- the slots -----------------------------------------------------------------------------
    def _opened(self, stream: _Stream, kind: str) -> None:
        if self._closing:
            raise ShuttingDown("the server is shutting down; open the stream on another replica")
        if self._open >= self._max_streams:
            self.metrics_refused("overloaded")
            raise Overloaded(
                "streams", f"this process has {self._max_streams} streams open "
                "(BILLING_MAX_STREAMS); retry with backoff or on another replica")
        self._open += 1
        self._open_by_kind[kind] += 1
        if self._metrics is not None:
            self._metrics.streams_open.labels(kind).inc()

    def _closed_stream(self, stream: _Stream, kind: str) -> None:
        self._open -= 1
        self._open_by_kind[kind] -= 1
        if self._metrics is not None:
            self._metrics.streams_open.labels(kind).dec()
        if isinstance(stream, _Waiter):
            waiters = self._sessions.get(stream._session_id)
            if waiters is not None:
                waiters.discard(stream)
                if not waiters:
                    del self._sessions[stream._session_id]
        elif isinstance(stream, _Follower):
            self._unattached.discard(stream)
            followers = self._followers.get(stream.user_id)
            if followers is not None:
                followers.discard(stream)
                if not followers:
                    del self._followers[stream.user_id]

    def metrics_refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.streams_refused.labels(reason).inc()

    async def _attach(self, follower: _Follower) -> int:
        position = await self._ready()
        self._unattached.discard(follower)
        self._followers.setdefault(follower.user_id, set()).add(follower)
        return position

    async def _ready(self) -> int:
        """The tail's position, read from the database first if no stream was open."""
        while self._position is None:
            if self._reading_end is None or self._reading_end.done():
                self._reading_end = asyncio.ensure_future(self._read_end())
            await asyncio.shield(self._reading_end)
        return self._position

    async def _read_end(self) -> None:
        end = await self._units.run_async(_feed_end, read_only=True)
        if self._position is None:
            self._position = end

    # -- the tail --------------------------------------------------------------------------------
    async def _tail_forever(self) -> None:
        assert self._moved is not None
        loop = asyncio.get_running_loop()
        failures, last_read, last_rows = 0, 0.0, 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), self._poll_s)
            # After a read that found a batch, the next waits until read_every_s after it: a
            # busy feed is read in batches (grpc.aio sends a burst of messages for far less CPU
            # each than one at a time: measured 230 us a message alone, 70-100 in bursts of
            # 12-60), while a quiet one is read at once.
            early = last_read + self._read_every_s - loop.time()
            if last_rows >= BUSY_ROWS and early > 0:
                await asyncio.sleep(early)
            self._moved.clear()
            last_read, last_rows = loop.time(), 0
            if self._open == 0:
                self._position = None  # nobody listens: read nothing, start afresh next time
                continue
            if self._position is None:
                continue
            try:
                last_rows = await self._read_tail()
            except Exception as error:  # the database is down: the next poll tries again
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("reading the ledger feed failed %d time(s): %s", failures, error)
                continue
            if failures:
                log.info("reading the ledger feed works again after %d failures", failures)
                failures = 0

    async def _read_tail(self) -> int:
        """Reads and delivers what the feed has after the tail's position; how many rows."""
        read = 0
        while self._position is not None:
            after = self._position

            def page(unit: UnitOfWork, after: int = after) -> Sequence[LedgerEntry]:
                return unit.ledger.feed(after, None, self._page)

            rows = await self._units.run_async(page, read_only=True)
            if not rows or self._position != after:
                break
            self._deliver(rows)
            self._position = rows[-1].position
            read += len(rows)
            if len(rows) < self._page:
                break
        return read

    def _deliver(self, rows: Sequence[LedgerEntry]) -> None:
        if self._metrics is not None:
            now = time.time()
            lag = self._metrics.feed_lag
            for row in rows:
                lag.observe(max(0.0, now - row.created_at.timestamp()))
        if self._sessions:
            for row in rows:
                for waiter in self._sessions.get(row.session_id, ()) if row.session_id else ():
                    waiter.wake()
        everyone = self._followers.get(None)
        if everyone:
            for follower in everyone:
                follower.offer(rows)
        if len(self._followers) > (1 if everyone else 0):
            by_user: dict[str, list[LedgerEntry]] = {}
            for row in rows:
                if row.user_id in self._followers:
                    by_user.setdefault(row.user_id, []).append(row)
            for user_id, theirs in by_user.items():
                for follower in self._followers.get(user_id, ()):
                    follower.offer(theirs)


def _feed_end(unit: UnitOfWork) -> int:
    return unit.ledger.feed_end()


class LiveNotifier:
    """Implements Notifier: after a commit, wakes this process's watches of the sessions it
    changed, and moves the feed: through `sequence` where positions are given after commit
    (Postgres: the sequencer numbers the rows, then the tail reads them), else at once (SQLite
    and memory give positions at commit)."""

    def __init__(self, hub: LiveHub, sequence: Callable[[], None] | None = None) -> None:
        self._hub = hub
        self._sequence = sequence or hub.feed_moved

    def publish(self, events: Sequence[DomainEvent]) -> None:
        sessions: list[str] = []
        ledger = False
        for event in events:
            if isinstance(event, CoinsCredited | CoinsDebited):
                ledger = True
                if event.entry.session_id:
                    sessions.append(event.entry.session_id)
            elif isinstance(event, PaymentStatusChanged) and event.session_id:
                sessions.append(event.session_id)
        if sessions:
            self._hub.wake_sessions(sessions)
        if ledger:
            self._sequence()

