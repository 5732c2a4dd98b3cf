"""Bulkhead: work runs on the pool's threads, never on the loop; results and errors come back to
the awaiting task; a caller that leaves before its work starts leaves nothing to run."""

from __future__ import annotations

import asyncio
import threading

import pytest

from billing.adapters.bulkheads import Bulkhead


def test_work_runs_on_the_pools_threads_and_its_result_comes_back():
    lane = Bulkhead("test", 2)

    async def scenario() -> list[str]:
        loop_thread = threading.current_thread().name
        names = await asyncio.gather(*(lane(lambda: threading.current_thread().name)
                                       for _ in range(50)))
        assert loop_thread not in names
        return names

    names = asyncio.run(scenario())
    assert set(names) <= {"test-0", "test-1"}
    lane.shutdown()


def test_an_error_reaches_the_awaiting_task():
    lane = Bulkhead("test", 1)

    def fails() -> None:
        raise LookupError("no such row")

    async def scenario() -> None:
        with pytest.raises(LookupError, match="no such row"):
            await lane(fails)
        assert await lane(lambda: 42) == 42  # the thread carries on

    asyncio.run(scenario())
    lane.shutdown()


def test_work_whose_caller_left_before_it_started_never_runs():
    lane = Bulkhead("test", 1)
    busy, release = threading.Event(), threading.Event()
    ran: list[str] = []

    async def scenario() -> None:
        first = asyncio.create_task(lane(lambda: (busy.set(), release.wait(10))))
        await asyncio.to_thread(busy.wait, 10)  # the only thread is taken
        queued = asyncio.create_task(lane(lambda: ran.append("queued")))
        await asyncio.sleep(0)  # let it queue
        queued.cancel()  # its caller leaves (a deadline)
        release.set()
        await first
        assert await lane(lambda: "after") == "after"  # ran after the cancelled one's turn

    asyncio.run(scenario())
    assert ran == []
    lane.shutdown()


def test_a_shut_down_bulkhead_refuses_new_work():
    lane = Bulkhead("test", 1)
    lane.shutdown()

    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(lane(lambda: None))
