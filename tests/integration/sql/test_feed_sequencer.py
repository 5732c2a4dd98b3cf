"""The feed sequencer on a real Postgres (issue 12): committed ledger rows get positions in seq
order, one sequencer at a time; two running at once beside four writers never let a reader see
a position below one it already saw; and the sequencer heals after its connection is killed."""

from __future__ import annotations

import contextlib
import random
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from billing.adapters.sql import SqlStore, migrate
from billing.adapters.sql.sequencer import FEED_LOCK_KEY, FeedSequencer, SequencerPass
from billing.adapters.system_clock import SystemClock
from billing.domain.errors import InsufficientCoins
from billing.domain.events import CoinsCredited, CoinsDebited, DomainEvent
from billing.domain.ledger import LedgerEntry, Posting, TransactionType
from billing.use_cases._unit import UnitRunner
from billing.use_cases.grant_coins import GrantCoins
from billing.use_cases.spend_coins import CoinsCommand, SpendCoins

WAIT_S = 30  # the longest any wait here may take before the test fails


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(empty_postgres_url: str) -> str:
    """A database of the test's own: the sequencer numbers every row there is."""
    migrate(empty_postgres_url)
    return empty_postgres_url


@pytest.fixture
def store(url: str) -> Iterator[SqlStore]:
    opened = SqlStore(url, pool_size=6)
    yield opened
    opened.dispose()


def query(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            result = connection.execute(text(sql), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def commit_rows(store: SqlStore, user_id: str, count: int) -> list[LedgerEntry]:
    """`count` grants to one user, in one unit."""
    with store() as unit:
        account = unit.accounts.lock(user_id)
        rows = []
        for _ in range(count):
            rows.append(unit.ledger.add(account.credit(
                Posting(key=new_id("grant"), type=TransactionType.GRANT, coins=1),
                datetime.now(UTC))))
        unit.accounts.save(account)
        unit.commit()
    return rows


def positions_by_seq(url: str) -> list[tuple[object, ...]]:
    return query(url, "SELECT seq, feed_position FROM ledger ORDER BY seq")


def sequencer_pids(url: str) -> list[object]:
    return [pid for (pid,) in query(url, "SELECT pid FROM pg_stat_activity"
                                         " WHERE application_name = 'billing-sequencer'"
                                         " AND datname = current_database()")]


class Sequenced:
    """on_sequenced for the tests: counts what every sequencer numbered, and lets a test wait
    until a number of rows has been (a condition, no sleeps)."""

    def __init__(self) -> None:
        self.count = 0
        self.top = 0
        self.calls = 0
        self._changed = threading.Condition()

    def __call__(self, count: int, top: int) -> None:
        with self._changed:
            self.count += count
            self.top = max(self.top, top)
            self.calls += 1
            self._changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.count >= count, WAIT_S), (
                f"{self.count} of {count} rows numbered")


# -- one pass ---------------------------------------------------------------------------------


def test_a_pass_numbers_committed_rows_in_seq_order_page_by_page(url: str) -> None:
    """Rows written in another order than their seq (explicit seqs here) are numbered by seq,
    three to a statement, all in one transaction, and the callback hears of it once."""
    seqs = [7, 3, 11, 1, 5, 2, 9]
    query(url, "INSERT INTO accounts (user_id, balance) VALUES ('u', 0)")
    for seq in seqs:
        query(url, "INSERT INTO ledger (seq, key, user_id, type, coins, balance_after, shortfall,"
                   " description, session_id, payment_id, caller, request_id, created_at)"
                   " VALUES (:seq, :key, 'u', 'GRANT', 1, 1, 0, '', '', '', '', '', now())",
              seq=seq, key=f"grant:{seq}")
    sequenced = Sequenced()
    sequencer = FeedSequencer(url, page=3, on_sequenced=sequenced)
    try:
        done = sequencer.sequence_once()
        again = sequencer.sequence_once()
    finally:
        sequencer.stop()

    assert (done.numbered, done.top, done.busy, done.more) == (7, 7, False, False)
    assert again.numbered == 0
    assert positions_by_seq(url) == list(zip(sorted(seqs), range(1, 8), strict=True))
    assert (sequenced.count, sequenced.top, sequenced.calls) == (7, 7, 1)


def test_a_pass_stops_after_max_pages_full_pages_and_says_there_is_more(
    store: SqlStore, url: str,
) -> None:
    commit_rows(store, new_id("user"), 5)
    sequencer = FeedSequencer(url, page=2, max_pages=2)
    try:
        first = sequencer.sequence_once()
        second = sequencer.sequence_once()
    finally:
        sequencer.stop()

    assert (first.numbered, first.more) == (4, True)
    assert (second.numbered, second.more) == (1, False)
    assert [position for _, position in positions_by_seq(url)] == [1, 2, 3, 4, 5]


def test_a_pass_that_finds_the_lock_held_does_nothing_and_says_rows_wait(
    store: SqlStore, url: str,
) -> None:
    commit_rows(store, new_id("user"), 1)
    holder = create_engine(url, poolclass=NullPool)
    sequencer = FeedSequencer(url)
    try:
        with holder.begin() as connection:
            connection.execute(text(f"SELECT pg_advisory_xact_lock({FEED_LOCK_KEY})"))
            busy = sequencer.sequence_once()
        after = sequencer.sequence_once()
    finally:
        sequencer.stop()
        holder.dispose()

    assert (busy.busy, busy.waiting, busy.numbered) == (True, True, 0)
    assert (after.busy, after.numbered) == (False, 1)


def test_the_sequencer_refuses_a_database_other_than_postgres() -> None:
    sequencer = FeedSequencer("sqlite:///billing.db")
    with pytest.raises(ValueError, match="Postgres"):
        sequencer.sequence_once()


# -- the thread ---------------------------------------------------------------------------------


class BusyWatched(FeedSequencer):
    """Says when one of its passes found the lock held."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.found_busy = threading.Event()

    def sequence_once(self) -> SequencerPass:
        done = super().sequence_once()
        if done.busy:
            self.found_busy.set()
        return done


def test_a_woken_sequencer_numbers_rows_a_busy_holder_missed_once_the_lock_is_free(
    store: SqlStore, url: str,
) -> None:
    """While another sequencer holds the lock, a woken one re-tries while rows still lack a
    position (no poll here: an hour), and numbers them once the holder ends."""
    sequenced = Sequenced()
    sequencer = BusyWatched(url, poll_s=3600, on_sequenced=sequenced)
    holder = create_engine(url, poolclass=NullPool)
    sequencer.start()
    try:
        with holder.begin() as connection:
            connection.execute(text(f"SELECT pg_advisory_xact_lock({FEED_LOCK_KEY})"))
            commit_rows(store, new_id("user"), 2)
            sequencer.wake()
            assert sequencer.found_busy.wait(WAIT_S)  # its pass came while the lock was held
        sequenced.wait_for(2)
    finally:
        assert sequencer.stop()
        holder.dispose()

    assert [position for _, position in positions_by_seq(url)] == [1, 2]


def test_the_poll_numbers_rows_nobody_woke_the_sequencer_for(store: SqlStore, url: str) -> None:
    sequenced = Sequenced()
    sequencer = FeedSequencer(url, poll_s=0.05, on_sequenced=sequenced)
    sequencer.start()
    try:
        commit_rows(store, new_id("user"), 3)  # as a replica that died after its commit
        sequenced.wait_for(3)
    finally:
        assert sequencer.stop()

    assert sequenced.top == 3


def test_stop_ends_the_thread_and_its_connection(url: str) -> None:
    sequencer = FeedSequencer(url, poll_s=3600)
    sequencer.start()
    sequencer.wake()

    assert sequencer.stop(timeout=WAIT_S)
    assert sequencer_pids(url) == []


def test_the_sequencer_reconnects_after_its_backend_is_terminated(
    store: SqlStore, url: str,
) -> None:
    sequenced = Sequenced()
    sequencer = FeedSequencer(url, poll_s=3600, on_sequenced=sequenced, reconnect_s=0.01)
    sequencer.start()
    try:
        commit_rows(store, new_id("user"), 1)
        sequencer.wake()
        sequenced.wait_for(1)  # connected, and working
        (before,) = sequencer_pids(url)
        assert query(url, "SELECT pg_terminate_backend(:pid, 5000)", pid=before) == [(True,)]

        commit_rows(store, new_id("user"), 2)
        sequencer.wake()  # its next statement fails; it reconnects and numbers them
        sequenced.wait_for(3)
        (after,) = sequencer_pids(url)
    finally:
        assert sequencer.stop()

    assert after != before
    assert [position for _, position in positions_by_seq(url)] == [1, 2, 3]


# -- two sequencers at once -------------------------------------------------------------------

WRITERS = 4
LOOK_BACK = 200
UNITS_PER_WRITER = 120
USERS = [f"user_{n:02d}" for n in range(16)]


class WakeOnLedgerRows:
    """A Notifier as a replica's: after a commit that wrote ledger rows, wake its sequencer."""

    def __init__(self, sequencer: FeedSequencer) -> None:
        self._sequencer = sequencer

    def publish(self, events: Sequence[DomainEvent]) -> None:
        if any(isinstance(event, CoinsCredited | CoinsDebited) for event in events):
            self._sequencer.wake()


def test_two_sequencers_beside_four_writers_never_let_a_reader_go_back(
    store: SqlStore, url: str,
) -> None:
    """Four writer threads (two "replicas", each waking its own sequencer) grant and spend for
    16 users, and sometimes credit two users in one unit; two sequencers, each on its own
    connection, number what commits; a reader follows the whole feed from the last position
    it saw. The reader never receives a position at or below one it saw; in the end every row
    has one distinct position, per user in seq order, and the reader saw each row once."""
    sequenced = Sequenced()
    sequencers = [FeedSequencer(url, poll_s=0.5, on_sequenced=sequenced, page=7, max_pages=2)
                  for _ in range(2)]
    failures: list[BaseException] = []
    seen: list[int] = []
    seen_once: set[int] = set()
    all_numbered = threading.Event()
    expected: list[int] = []  # the number of rows, once the writers are done

    def write(index: int) -> None:
        sequencer = sequencers[index % 2]
        units = UnitRunner(store, SystemClock(), WakeOnLedgerRows(sequencer))
        rng = random.Random(index)
        try:
            for n in range(UNITS_PER_WRITER):
                user_id = rng.choice(USERS)
                command = CoinsCommand(user_id=user_id, coins=rng.randint(1, 9), reason="",
                                       idempotency_key=f"w{index}-{n}")
                if n % 10 == 9:
                    credit_two(store, sorted(rng.sample(USERS, 2)))
                    sequencer.wake()
                elif rng.random() < 0.6:
                    GrantCoins(units)(command)
                else:
                    with contextlib.suppress(InsufficientCoins):
                        SpendCoins(units)(command)
        except BaseException as error:
            failures.append(error)

    def follow() -> None:
        """Reads on from the last position seen, looking back LOOK_BACK positions too: a row
        that shows up there, unseen, got its position after a higher one was visible."""
        last, caught_up = 0, False
        try:
            while not caught_up:
                done = all_numbered.is_set()  # before the read: it then sees every row
                with store(read_only=True) as unit:
                    page = unit.ledger.feed(max(0, last - LOOK_BACK), None, LOOK_BACK + 50)
                new = [entry.position for entry in page if entry.position > last]
                late = {entry.position for entry in page if entry.position <= last} - seen_once
                assert not late, f"positions {sorted(late)} appeared after {last} was seen"
                seen.extend(new)
                seen_once.update(new)
                last = max(new, default=last)
                caught_up = done and len(page) < LOOK_BACK + 50
        except BaseException as error:
            failures.append(error)

    for sequencer in sequencers:
        sequencer.start()
    reader = threading.Thread(target=follow, daemon=True)
    writers = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(WRITERS)]
    try:
        reader.start()
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(4 * WAIT_S)
        assert not any(thread.is_alive() for thread in writers), "a writer never finished"
        ((rows,),) = query(url, "SELECT count(*) FROM ledger")
        expected.append(int(str(rows)))
        for sequencer in sequencers:
            sequencer.wake()
        sequenced.wait_for(expected[0])
        all_numbered.set()
        reader.join(4 * WAIT_S)
        assert not reader.is_alive(), "the reader never finished"
    finally:
        stopped = [sequencer.stop() for sequencer in sequencers]
    if failures:
        raise failures[0]

    assert stopped == [True, True]
    rows_now = query(url, "SELECT user_id, seq, feed_position FROM ledger ORDER BY user_id, seq")
    positions = [position for _, _, position in rows_now]
    assert None not in positions
    assert len(set(positions)) == len(positions) == expected[0] > WRITERS * UNITS_PER_WRITER / 2
    for user_id in USERS:
        mine = [position for user, _, position in rows_now if user == user_id]
        assert mine == sorted(mine), f"{user_id}: positions out of seq order"  # type: ignore
    assert len(seen) == len(set(seen)) == expected[0]
    assert set(seen) == set(positions)
    assert sequenced.count == expected[0]


def credit_two(store: SqlStore, user_ids: Sequence[str]) -> None:
    """One unit, a row for each of two users (locked in order, as group commit does)."""
    with store() as unit:
        for account in unit.accounts.lock_many(user_ids):
            unit.ledger.add(account.credit(
                Posting(key=new_id("grant"), type=TransactionType.GRANT, coins=1),
                datetime.now(UTC)))
            unit.accounts.save(account)
        unit.commit()
