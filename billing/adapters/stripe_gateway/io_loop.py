"""The Stripe SDK's own event loop, on a thread of its own.

The SDK's calls are asynchronous, but each one also spends a millisecond or more of Python
building and reading the request. On the service's loop, a burst of checkouts would queue that
work in front of every other call (a GetBalance arriving in a burst of 200 checkouts would wait
for all of them). On a loop of its own, that work takes turns with the service's loop for the
interpreter (every few milliseconds) instead of running ahead of it: Stripe's I/O is isolated,
and a call in flight still holds no thread of its own, only a socket.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class IoLoop:
    """`await io.run(coroutine)`: the coroutine runs on this loop; cancelling the awaiting task
    cancels it there too."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        loop = self._started()
        if asyncio.get_running_loop() is loop:  # already here (a call made by a call)
            return await coroutine
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))

    def stop(self) -> None:
        """Stop the loop and its thread (what runs on it should be closed first)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
