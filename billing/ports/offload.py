from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Offload(Protocol):
    """Runs blocking work (a unit of work: database I/O) somewhere other than the event loop,
    so that awaiting it holds no thread the loop needs. The composition root decides where: a
    thread pool sized for that kind of work (a bulkhead)."""

    def __call__(self, work: Callable[[], T], /) -> Awaitable[T]: ...
