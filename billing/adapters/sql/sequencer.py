"""The post-commit sequencer: gives committed ledger rows their feed positions, on Postgres.

Writers insert ledger rows with no position (NULL). Any replica may run a sequencer; one at a time
numbers, each pass a transaction on a connection of its own:

    BEGIN; SELECT pg_try_advisory_xact_lock(FEED_LOCK_KEY)     -- false: ROLLBACK, "busy"
    WITH picked AS (SELECT seq ... WHERE feed_position IS NULL ORDER BY seq LIMIT n FOR UPDATE)
    ... UPDATE ledger SET feed_position = <drawn from ledger_feed_position_seq, in seq order>
    (again while a page comes back full)
    SELECT pg_notify('billing_feed', '<top position>'); COMMIT

**Why no reader ever misses a row** (the feed's guarantee: once position p is visible, no row is
ever given a position below p; per user, positions follow seq):
- Only the holder of the advisory lock draws positions, and it holds the lock until its COMMIT,
  which makes all its positions visible at once. Postgres makes a commit visible before it
  releases the transaction's locks, so the next holder starts after the previous holder's
  positions are visible, and draws after them.
- The sequence has CACHE 1: no session holds a block of values in reserve, so every draw is
  higher than every earlier draw, whichever session makes it. Positions thus become visible in
  increasing order. (A holder that dies before its COMMIT leaves a gap in the numbers, never a
  lower position later.)
- At READ COMMITTED each statement sees what was committed when it began. The lock is taken in
  its own statement and the rows are picked in a later one, so the picking sees every row (and
  every position) committed before the lock was granted. FOR UPDATE is the backstop: a row
  numbered meanwhile is re-checked and skipped, never numbered twice.
- Per user, seq order is commit order: every writer locks the user's account row and draws its
  seq after the lock (repositories/accounts.py), and Postgres makes a commit visible before it
  releases its row locks. So any snapshot that sees a user's row sees the user's earlier rows;
  the picking takes rows in seq order (ORDER BY seq) and gives the k-th lowest seq the k-th
  lowest position drawn (UPDATE has no ORDER BY: both sides are ranked explicitly), so a user's
  rows are numbered in seq order, within a pass and across passes.
- A row committed while another sequencer holds the lock may be too late for the holder's
  snapshot: a pass that finds the lock busy re-tries after a short pause while rows still lack a
  position. A row nobody was woken for (its replica died after the commit) is found by the poll.

Writers wake their own process's sequencer (`wake`, cheap and coalescing); only the sequencer's
commit notifies other replicas (notifications.py), never one per ledger write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy.engine import URL, Engine, make_url

from billing.adapters.sql.errors import brief
from billing.adapters.sql.notifications import FEED_CHANNEL
from billing.adapters.sql.tables import FEED_SEQUENCE

log = logging.getLogger(__name__)

# The advisory lock one sequencer at a time holds ("billfeed"); a 64-bit key of our own.
FEED_LOCK_KEY = 0x62696C6C66656564

APPLICATION_NAME = "billing-sequencer"
BUSY_ROWS = 16  # a pass that numbers this many rows or more makes the next one wait its turn
# A peer that vanished without closing (a network partition) is noticed within about 25 s.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
               "keepalives_count": 3}

_LOCK = b"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_try_advisory_xact_lock(%d)" % (
    FEED_LOCK_KEY)
_WAITING = b"SELECT EXISTS (SELECT 1 FROM ledger WHERE feed_position IS NULL)"
_BUSY = b"ROLLBACK; " + _WAITING
# The k-th lowest position drawn goes to the k-th lowest seq picked, whatever order the executor
# draws them in. `picked` is read twice, so Postgres runs it (and takes its locks) once.
_NUMBER = f"""
WITH picked AS (
    SELECT seq FROM ledger WHERE feed_position IS NULL ORDER BY seq LIMIT %s FOR UPDATE
), drawn AS (
    SELECT nextval('{FEED_SEQUENCE}') AS position FROM picked
), numbered AS (
    SELECT s.seq, d.position
    FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS rank FROM picked) AS s
    JOIN (SELECT position, row_number() OVER (ORDER BY position) AS rank FROM drawn) AS d
        USING (rank)
), updated AS (
    UPDATE ledger SET feed_position = numbered.position FROM numbered
    WHERE ledger.seq = numbered.seq RETURNING ledger.feed_position
)
SELECT count(*), COALESCE(max(feed_position), 0) FROM updated
"""
_NOTIFY_AND_COMMIT = f"SELECT pg_notify('{FEED_CHANNEL}', %s); COMMIT"


@dataclass(frozen=True, slots=True)
class SequencerPass:
    """What one pass did."""

    numbered: int = 0  # rows given a position (visible now)
    top: int = 0  # the highest position given, 0 if none
    busy: bool = False  # another sequencer held the lock; nothing was done
    waiting: bool = False  # busy, and rows were still without a position
    more: bool = False  # it stopped at max_pages full pages: run another


def connect(source: Engine | URL | str, application_name: str = APPLICATION_NAME) -> Any:
    """A new autocommit psycopg2 connection to the database of `source`, outside any pool (the
    sequencer's, the listener's)."""
    if isinstance(source, Engine):
        dialect, url = source.dialect, source.url
    else:
        url = make_url(source)
        dialect = url.get_dialect()()
    if dialect.name != "postgresql":
        raise ValueError(f"the feed sequencer runs on Postgres, not {dialect.name}")
    args, kwargs = dialect.create_connect_args(url)
    kwargs = {**kwargs, **_KEEPALIVES, "application_name": application_name}
    kwargs.setdefault("connect_timeout", 5)
    connection = psycopg2.connect(*args, **kwargs)
    connection.autocommit = True  # we send BEGIN and COMMIT ourselves
    return connection


class FeedSequencer:
    """Numbers committed ledger rows on a thread of its own (see the module's docstring).

        sequencer = FeedSequencer(store.engine, on_sequenced=...)
        sequencer.start()
        ...  # writers call sequencer.wake() after each commit that wrote ledger rows
        sequencer.stop()

    `on_sequenced(count, top)` runs on the sequencer's thread after each commit that numbered
    rows; it must be quick and must not raise (what it raises is logged). `poll_s`: a pass runs
    at least this often without a wake (it then looks first whether any row waits: one cheap
    query when none does), for rows committed by a replica that never numbered them. A pass
    numbers up to `page` rows a statement and `max_pages` pages a transaction. After any error
    the connection is dropped and made again, `reconnect_s` growing to `reconnect_max_s`
    between tries: rows wait without a position meanwhile, none is lost.
    """

    def __init__(
        self,
        source: Engine | URL | str,
        *,
        poll_s: float = 1.0,
        pass_every_s: float = 0.02,
        on_sequenced: Callable[[int, int], None] | None = None,
        page: int = 1000,
        max_pages: int = 10,
        busy_pause_s: float = 0.002,
        busy_pause_max_s: float = 0.02,
        reconnect_s: float = 0.1,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self._source = source
        self._poll_s = poll_s
        self._pass_every_s = pass_every_s
        self._on_sequenced = on_sequenced
        self._page = page
        self._max_pages = max_pages
        self._busy_pause = (busy_pause_s, busy_pause_max_s)
        self._reconnect = (reconnect_s, reconnect_max_s)
        self._connection: Any = None
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ---------------------------------------------------------------------------
    def start(self) -> None:
        """Run on a daemon thread until `stop`; the first pass runs at once."""
        if self._thread is not None:
            raise RuntimeError("the sequencer was started already")
        self._thread = threading.Thread(target=self._run, name="billing-sequencer",
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Ask for a pass soon (thread-safe; wakes while one runs make one more pass, no more)."""
        self._woken.set()

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop after the current pass and wait for the thread (at most `timeout` s); True if it
        ended. Rows not numbered yet keep waiting for the next sequencer, on any replica."""
        self._stopping.set()
        self._woken.set()
        if self._thread is None:
            self._close()
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        woken, failures = True, 0  # rows may be waiting from before we started
        last_pass, last_numbered = 0.0, 0
        try:
            while not self._stopping.is_set():
                if not woken:
                    woken = self._woken.wait(self._poll_s)
                    if self._stopping.is_set():
                        break
                # After a pass that numbered a batch, the next waits until pass_every_s after
                # it: under load, wakes gather into bigger batches (one transaction, one NOTIFY,
                # one read by each replica's tail); a quiet feed is numbered at once.
                early = last_pass + self._pass_every_s - time.monotonic()
                if last_numbered >= BUSY_ROWS and early > 0 and self._stopping.wait(early):
                    break
                last_pass, last_numbered = time.monotonic(), 0
                self._woken.clear()  # a wake from here on makes another pass
                try:
                    last_numbered = self._drain(look_first=not woken)
                except Exception as error:  # a fault heals: the rows wait, still NULL
                    self._close()
                    failures += 1
                    if failures == 1:
                        log.warning("feed sequencer failed (%s); reconnecting", brief(error))
                    first, most = self._reconnect
                    if self._stopping.wait(min(first * 2 ** (failures - 1), most)):
                        break
                    woken = True  # and try again at once
                    continue
                if failures:
                    log.info("feed sequencer works again after %d failed tries", failures)
                failures, woken = 0, False
        finally:
            self._close()

    def _drain(self, *, look_first: bool) -> int:
        """Passes until none is left to do; after a busy one, again after a short pause while
        rows still lack a position (the holder's snapshot may have come before they did).
        Returns how many rows it numbered."""
        numbered = 0
        if look_first and not self.waiting():
            return numbered
        first, most = self._busy_pause
        pause = first
        while not self._stopping.is_set():
            done = self.sequence_once()
            numbered += done.numbered
            if done.busy:
                if not done.waiting or self._stopping.wait(pause):
                    break
                pause = min(pause * 2, most)
            elif not done.more:
                break
        return numbered

    # -- one pass (also for tests and operators; not while the thread runs) ---------------------
    def sequence_once(self) -> SequencerPass:
        """One pass on the sequencer's connection (made if needed); `on_sequenced` after a
        commit that numbered rows. Raises the driver's error after a failure."""
        try:
            with self._connected().cursor() as cursor:
                done = self._pass(cursor)
        except BaseException:
            self._roll_back()
            raise
        if done.numbered:
            self._sequenced(done.numbered, done.top)
        return done

    def waiting(self) -> bool:
        """Whether any committed row lacks a position (an index lookup, no lock)."""
        with self._connected().cursor() as cursor:
            cursor.execute(_WAITING)
            return bool(cursor.fetchone()[0])

    def _pass(self, cursor: Any) -> SequencerPass:
        cursor.execute(_LOCK)
        if not cursor.fetchone()[0]:
            cursor.execute(_BUSY)
            return SequencerPass(busy=True, waiting=bool(cursor.fetchone()[0]))
        numbered, top, full = 0, 0, False
        for _ in range(self._max_pages):
            cursor.execute(_NUMBER, (self._page,))
            count, high = cursor.fetchone()
            numbered, top = numbered + count, max(top, high)
            full = count == self._page
            if not full:
                break
        if numbered:
            cursor.execute(_NOTIFY_AND_COMMIT, (str(top),))  # one round trip
        else:
            cursor.execute(b"COMMIT")
        return SequencerPass(numbered=numbered, top=top, more=full)

    # -- the connection -----------------------------------------------------------------------
    def _connected(self) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = connect(self._source)
        return self._connection

    def _roll_back(self) -> None:
        """End a pass that failed: ROLLBACK if the connection still works, else drop it."""
        connection = self._connection
        if connection is None or connection.closed:
            return
        try:
            if connection.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                connection.cursor().execute(b"ROLLBACK")
        except Exception:
            self._close()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            try:
                connection.close()
            except Exception:
                log.debug("closing the sequencer's connection failed", exc_info=True)

    def _sequenced(self, count: int, top: int) -> None:
        if self._on_sequenced is None:
            return
        try:
            self._on_sequenced(count, top)
        except Exception:
            log.exception("on_sequenced failed after positions up to %d were given", top)

