"""Running one use case's work in one unit of work, re-run on a lost race, events published.

Use cases that only touch the database are synchronous: the edge runs the whole of one on a
thread of the right pool. Use cases that also wait on the payment provider are async: between
their provider calls they run each unit of work through `run_async`, which hands it to the
runner's `offload` (a sized thread pool), so no thread or connection is held while the provider
answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TypeVar

from billing.domain.errors import StoreUnavailable, TransientConflict
from billing.ports import Clock, Notifier, Offload, UnitOfWork, UnitOfWorkFactory

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UnitRunner:
    """What every use case needs: transactions, the time, and somewhere to publish events."""

    uow: UnitOfWorkFactory
    clock: Clock
    notifier: Notifier
    max_attempts: int = 5
    offload: Offload = field(default=asyncio.to_thread)

    def now(self) -> datetime:
        return self.clock.now()

    def run(
        self, work: Callable[[UnitOfWork], T], *, read_only: bool = False, snapshot: bool = False
    ) -> T:
        """Run `work` in a fresh unit and commit it; re-run the whole of it after a lost race.

        A domain error raised by `work` rolls the unit back and reaches the caller unchanged.
        """
        for attempt in range(1, self.max_attempts + 1):
            try:
                opened = (
                    self.uow(read_only=True, snapshot=True)
                    if snapshot
                    else self.uow(read_only=read_only)
                )
                with opened as unit:
                    result = work(unit)
                    if not (read_only or snapshot):
                        unit.commit()
                    events = list(unit.events)
            except TransientConflict as conflict:
                log.info("unit of work lost a race, attempt %d: %s", attempt, conflict)
                continue
            if events:
                self.notifier.publish(events)
            return result
        raise StoreUnavailable("the database stayed too busy to finish the request; retry")

    async def run_async(self, work: Callable[[UnitOfWork], T], *, read_only: bool = False) -> T:
        """`run`, off the event loop. If the awaiting task is cancelled (the caller's deadline),
        the unit still finishes or rolls back on its own thread: never half-applied."""
        return await self.offload(partial(self.run, work, read_only=read_only))
