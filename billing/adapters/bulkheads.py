"""Bulkheads: one sized thread pool per kind of blocking work, so one kind cannot starve another.

The service runs on one asyncio event loop (grpc.aio, aiohttp). Database work blocks, so it runs
on threads; which pool a piece of work uses decides what it can delay. A burst of checkouts fills
the checkout pool's queue, not the one GetBalance waits in; a webhook flood queues behind other
webhooks, not behind SpendCoins. Awaiting a bulkhead holds no thread of the loop: an idle stream
or a call waiting on Stripe costs memory only.

Sizes are set on purpose (container.py): a Python process is bound by one core's worth of the
GIL, so more threads than the database round trips they overlap only add switching; each pool
needs as many database connections as it has threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Bulkhead:
    """Implements Offload: `await bulkhead(work)` runs `work()` on one of `threads` threads."""

    def __init__(self, name: str, threads: int) -> None:
        if threads < 1:
            raise ValueError("a bulkhead needs at least one thread")
        self.name = name
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)

    def __repr__(self) -> str:
        return f"Bulkhead({self.name!r}, threads={self.threads})"

    async def __call__(self, work: Callable[[], T], /) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def shutdown(self) -> None:
        """Refuse new work and drop what is queued; running work finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
