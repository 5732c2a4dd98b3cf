"""The live hub and the streaming use cases, over the in-memory store on one event loop.

Positions are given at commit in memory, so a grant is in the feed as soon as it returns; the
hub hears of it through LiveNotifier, as in the service. Waits are bounded by asyncio timeouts.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator

import pytest

from billing.adapters.live import LiveHub, LiveNotifier
from billing.adapters.memory import InMemoryStore, ManualClock, RecordingNotifier
from billing.adapters.notifier import Notifiers
from billing.domain.errors import (
    InvalidCursor,
    InvalidField,
    Overloaded,
    ShuttingDown,
    SlowConsumer,
)
from billing.domain.feed import FeedItem, decode_cursor, encode_cursor, start_after
from billing.domain.payment import PaymentStatus
from billing.use_cases._unit import UnitRunner
from billing.use_cases.grant_coins import GrantCoins
from billing.use_cases.spend_coins import CoinsCommand
from billing.use_cases.stream_transactions import StreamTransactions
from billing.use_cases.watch_payment_status import WatchPaymentStatus
from tests.unit.world import World

STEP_S = 5.0  # the longest any single step may take


def on_a_loop(test):
    """Runs an async test on a fresh event loop (the project has no asyncio plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class Feed:
    """A store, a hub wired as the container wires it, and the use cases on top."""

    def __init__(self, *, max_streams: int = 100, buffer: int = 1000) -> None:
        self.store = InMemoryStore()
        reads = UnitRunner(self.store, ManualClock(), RecordingNotifier())
        self.hub = LiveHub(reads, max_streams=max_streams, buffer=buffer, poll_s=60)
        notifier = Notifiers(RecordingNotifier(), LiveNotifier(self.hub))
        self.units = UnitRunner(self.store, ManualClock(), notifier)
        self.grant = GrantCoins(self.units, 10**9)
        self.stream = StreamTransactions(reads, self.hub, idle_checkpoint_s=0.05, page=3)

    def give(self, user: str, coins: int) -> int:
        """Grants; the row's seq (its position is given at commit, after the use case)."""
        entry = self.grant(CoinsCommand(user_id=user, coins=coins, reason="t",
                                        idempotency_key=uuid.uuid4().hex, caller="test"))
        return entry.seq

    def end(self) -> int:
        return self.units.run(lambda unit: unit.ledger.feed_end(), read_only=True)


async def _next(items: AsyncIterator[FeedItem]) -> FeedItem:
    return await asyncio.wait_for(anext(items), STEP_S)


async def _rows(items: AsyncIterator[FeedItem], n: int) -> list[FeedItem]:
    """The next `n` rows, skipping checkpoints."""
    rows: list[FeedItem] = []
    while len(rows) < n:
        item = await _next(items)
        if item.entry is not None:
            rows.append(item)
    return rows


def test_cursors_round_trip_and_refuse_what_no_stream_sent():
    for position in (0, 1, 2**63 - 1):
        assert decode_cursor(encode_cursor(position)) == position
    for bad in ("", "x", encode_cursor(1)[:-2] + "!!", "ZmVlZC52MS4tMQ"):  # "feed.v1.-1"
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)
    assert start_after("", False) == 0 and start_after("", True) is None
    with pytest.raises(InvalidCursor):
        start_after(encode_cursor(3), True)


@on_a_loop
async def test_history_in_pages_then_live_rows_with_no_gap_and_no_repeat():
    feed = Feed()
    feed.hub.start()
    written = [feed.give("ann", c) for c in range(1, 8)]  # more than two pages of 3
    items = feed.stream("ann", "", False)
    assert (await _next(items)) == FeedItem(0)
    history = await _rows(items, 7)
    assert [i.entry.seq for i in history if i.entry] == written
    assert [i.position for i in history] == sorted({i.position for i in history})
    live = [feed.give("ann", 1), feed.give("bob", 1), feed.give("ann", 2)]
    got = await _rows(items, 2)
    assert [i.entry.seq for i in got if i.entry] == [live[0], live[2]]  # bob's is not ann's
    assert [i.entry.balance_after for i in got if i.entry] == [29, 31]
    await items.aclose()
    await feed.hub.close()


@on_a_loop
async def test_from_now_and_idle_checkpoints_give_a_cursor_to_resume_from():
    feed = Feed()
    feed.hub.start()
    feed.give("ann", 5)
    feed.give("bob", 5)
    end = feed.end()
    items = feed.stream("ann", "", True)
    assert (await _next(items)) == FeedItem(end)
    idle = await _next(items)
    assert idle.entry is None and idle.position >= end
    later = feed.give("ann", 1)
    resumed = feed.stream("ann", idle.cursor, False)
    assert (await _next(resumed)).position == idle.position
    assert [i.entry.seq for i in await _rows(resumed, 1) if i.entry] == [later]
    for stream in (items, resumed):
        await stream.aclose()
    await feed.hub.close()


@on_a_loop
async def test_a_consumer_past_its_buffer_is_cut_off_and_resumes_from_its_cursor():
    feed = Feed(buffer=4)
    feed.hub.start()
    items = feed.stream("", "", True)
    start = await _next(items)
    await _rows_after_attach(feed, items)
    written = [feed.give("ann", 1) for _ in range(10)]  # more than the buffer, unread
    with pytest.raises(SlowConsumer):
        await _rows(items, 10)
    resumed = feed.stream("", start.cursor, False)
    assert [i.entry.seq for i in await _rows(resumed, 10) if i.entry] == written
    await resumed.aclose()
    await feed.hub.close()


async def _rows_after_attach(feed: Feed, items: AsyncIterator[FeedItem]) -> None:
    """Drive the stream until it reads from the tail: an idle checkpoint comes only from
    there (history is read without waiting)."""
    while (await _next(items)).entry is not None:
        pass


@on_a_loop
async def test_streams_past_the_limit_are_overloaded_and_shutdown_ends_the_open_ones():
    feed = Feed(max_streams=2)
    feed.hub.start()
    feed.give("ann", 1)
    open_streams = [feed.stream("ann", "", False) for _ in range(2)]
    for stream in open_streams:
        await _next(stream)
    with pytest.raises(Overloaded) as refused:
        await _next(feed.stream("ann", "", False))
    assert refused.value.metadata == {"limit": "streams"}
    await feed.hub.close()
    for stream in open_streams:
        with pytest.raises(ShuttingDown):
            await _rows(stream, 5)
    with pytest.raises(ShuttingDown):
        await _next(feed.stream("ann", "", False))


@on_a_loop
async def test_a_closed_stream_frees_its_slot():
    feed = Feed(max_streams=1)
    feed.hub.start()
    for _ in range(3):
        items = feed.stream("ann", "", False)
        await _next(items)
        await items.aclose()
    await feed.hub.close()


@on_a_loop
async def test_bad_user_ids_are_refused_before_any_stream_opens():
    feed = Feed(max_streams=1)
    feed.hub.start()
    with pytest.raises(InvalidField):
        await _next(feed.stream("x" * 129, "", False))
    with pytest.raises(InvalidCursor):
        await _next(feed.stream("ann", "garbage", False))
    items = feed.stream("ann", "", False)  # the refused ones took no slot
    await _next(items)
    await items.aclose()
    await feed.hub.close()


@on_a_loop
async def test_wakeups_from_other_threads_reach_a_session_watch():
    feed = Feed()
    feed.hub.start()
    waiter = await feed.hub.watch_session("cs_1")
    await asyncio.to_thread(feed.hub.wake_sessions, ["cs_2", "cs_1"])
    await asyncio.wait_for(waiter.wait(60), STEP_S)  # woken, not timed out
    waiter.close()
    await feed.hub.close()


@on_a_loop
async def test_a_watch_without_a_deadline_ends_ok_after_max_watch_s_on_its_last_status():
    world = World()
    created = await asyncio.to_thread(world.checkout, "ann")  # (it runs its own loop)
    hub = LiveHub(world.units, max_streams=10, poll_s=60)
    hub.start()
    watch = WatchPaymentStatus(world.status, hub, asyncio.to_thread, max_s=0.2, poll_s=0.05)
    started = asyncio.get_running_loop().time()
    views = [view async for view in watch("ann", created.session_id)]
    assert [v.session.status for v in views] == [PaymentStatus.PENDING]
    assert asyncio.get_running_loop().time() - started < STEP_S
    assert hub.position == 0 and not hub._sessions  # its slot and subscription are gone
    await hub.close()


@on_a_loop
async def test_a_watch_reports_changes_of_status_and_coins_not_of_the_balance_alone():
    world = World()
    created = await asyncio.to_thread(world.checkout, "ann")  # (it runs its own loop)
    hub = LiveHub(world.units, max_streams=10, poll_s=60)
    hub.start()
    watch = WatchPaymentStatus(world.status, hub, asyncio.to_thread, max_s=30, poll_s=30)
    views = watch("ann", created.session_id)
    assert (await asyncio.wait_for(anext(views), STEP_S)).session.status is PaymentStatus.PENDING
    world.grant("ann", 5)  # the balance alone: no message
    hub.wake_sessions([created.session_id])
    await asyncio.to_thread(world.cancel, "ann", created.session_id)
    hub.wake_sessions([created.session_id])
    last = await asyncio.wait_for(anext(views), STEP_S)
    assert last.session.status is PaymentStatus.CANCELLED and last.balance == 5
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(views), STEP_S)
    await hub.close()
